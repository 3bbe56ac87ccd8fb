#!/usr/bin/env bash
# evaluate.py on a lent GPU machine in calls of at most 10 minutes, resumable across calls: stored
# samples with the same settings are reused, so the same command continues where the last call
# stopped. Run from the repository root there, with .whl/ and the GGUF parts carried (see
# scripts/device_stage.sh) and, on a fresh machine, the earlier call's outputs/ folder carried back.
# Usage: COMMIT=<hash> bash scripts/device_eval.sh SECONDS [evaluate.py arguments ...]
#   COMMIT names the tree in results_*.json (the copy there has stale git metadata).
#   SECONDS = 0 only stages the files. After SECONDS the run is interrupted (every finished batch of
#   samples is already on disk); outputs/ comes back in $OUT as outputs.tar.part* (15 MiB each).
set -euo pipefail
SECONDS_TO_RUN=$1; shift
source scripts/device_stage.sh
echo "staged: gguf=$([ -f $GGUF ] && echo yes || echo "$(ls /root/gguf-parts | wc -l) parts")"
[ "$SECONDS_TO_RUN" = 0 ] && exit 0
set +e
timeout --signal=INT --kill-after=30 "$SECONDS_TO_RUN" python3 evaluate.py "$@" 2>&1 | tail -40
echo "evaluate.py exit status: ${PIPESTATUS[0]}"
set -e
tar -cf - outputs | split -b 15M -d - $OUT/outputs.tar.part
ls -l $OUT
