#!/usr/bin/env bash
# Predictor training on a lent GPU machine, in calls of at most 10 minutes, resumable across calls
# and sessions. Run from the repository root there; what it needs travels in git-ignored folders:
#   .whl/, .gguf1/ ... .ggufN/  wheels and the GGUF in parts: see scripts/device_stage.sh
#   .train-archive/          train-text.tar.xz whole, or in parts as .train-archive1/part ... (joined once
#                            `xz -t` passes); unpacked in /root once
#   .ckpt/ (or .ckpt1/, .ckpt2/ ...)  run.tar.part* brought back by an earlier call (resume from it);
#                            the parts may come over several calls: unpacked once the joined tar reads whole
# Usage: bash scripts/device_train.sh CONFIG SECONDS [key=value ...]
#   SECONDS = 0 only stages the files. Training stops after SECONDS (killed; checkpoints every
#   train.save_every steps survive) and the run folder, minus older checkpoints, comes back in
#   $OUT as run.tar.part* (15 MiB each) plus metrics.jsonl.
set -euo pipefail
CONFIG=$1; SECONDS_TO_TRAIN=$2; shift 2
RUN=/root/run

source scripts/device_stage.sh
archive_ok() { xz -t "$1" 2>/dev/null; }
tar_ok() { tar -tf "$1" >/dev/null 2>&1; }
join_parts train-archive /root/train-text.tar.xz archive_ok
[ -f .train-archive/train-text.tar.xz ] && cp .train-archive/train-text.tar.xz /root/train-text.tar.xz
if [ ! -d /root/train-text ] && [ -f /root/train-text.tar.xz ]; then
  mkdir -p /root/train-text && tar -xJf /root/train-text.tar.xz -C /root/train-text
fi
join_parts ckpt /root/run.tar tar_ok
if [ ! -d $RUN ] && [ -f /root/run.tar ]; then
  mkdir -p $RUN && tar -xf /root/run.tar -C $RUN
fi
echo "staged: gguf=$([ -f $GGUF ] && echo yes || echo "$(ls /root/gguf-parts | wc -l) parts") text=$([ -d /root/train-text ] && echo yes || echo no) run=$(ls $RUN/checkpoints 2>/dev/null | tr '\n' ' ') ckpt-parts=$(ls /root/ckpt-parts | tr '\n' ' ')"
[ "$SECONDS_TO_TRAIN" = 0 ] && exit 0

RESUME=(); [ -d $RUN/checkpoints ] && RESUME=(--resume)
set +e
timeout --signal=KILL "$SECONDS_TO_TRAIN" python3 train.py --config "$CONFIG" "${RESUME[@]}" \
  model.source=$GGUF data.sources=[/root/train-text] train.output_dir=$RUN train.tensorboard=false \
  train.progress=false train.log_every=10 "$@" 2>&1 | grep -v "^{\"step\"" | tail -20
set -e
latest=$(ls $RUN/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
echo "latest checkpoint: step $latest"
(cd $RUN && tar -cf - config.yaml metrics.jsonl checkpoints/$latest $(ls -d summary.json predictor 2>/dev/null)) \
  | split -b 15M -d - $OUT/run.tar.part
cp $RUN/metrics.jsonl $OUT/
ls -l $OUT
