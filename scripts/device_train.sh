#!/usr/bin/env bash
# Predictor training on a lent GPU machine, in calls of at most 10 minutes, resumable across calls
# and sessions. Run from the repository root there; what it needs travels in git-ignored folders:
#   .whl/                    wheels the GPU image lacks (gguf, tensorboardX, wonderwords)
#   .gguf1/part ... .gguf4/  the embedded SmolLM2 GGUF in four parts (split -n 4), one or more per call;
#                            joined in /root once all four have arrived (sha256 checked)
#   .train-archive/          train-text.tar.xz (unpacked in /root once)
#   .ckpt/                   run.tar.part* + run.tar.nparts brought back by an earlier call (resume from
#                            it); the parts may come over several calls: unpacked once all have arrived
# Usage: bash scripts/device_train.sh CONFIG SECONDS [key=value ...]
#   SECONDS = 0 only stages the files. Training stops after SECONDS (killed; checkpoints every
#   train.save_every steps survive) and the run folder, minus older checkpoints, comes back in
#   $OUT as run.tar.part* (15 MiB each) plus metrics.jsonl.
set -euo pipefail
CONFIG=$1; SECONDS_TO_TRAIN=$2; shift 2
GGUF=/root/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
RUN=/root/run

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

mkdir -p /root/gguf-parts
for i in 1 2 3 4; do [ -f .gguf$i/part ] && cp .gguf$i/part /root/gguf-parts/$i; done
if [ ! -f $GGUF ] && [ "$(ls /root/gguf-parts | wc -l)" = 4 ]; then
  cat /root/gguf-parts/{1,2,3,4} > $GGUF
  echo "$GGUF_SHA  $GGUF" | sha256sum -c -
fi
if [ ! -d /root/train-text ] && [ -f .train-archive/train-text.tar.xz ]; then
  mkdir -p /root/train-text && tar -xJf .train-archive/train-text.tar.xz -C /root/train-text
fi
mkdir -p /root/ckpt-parts
ls .ckpt/run.tar.* >/dev/null 2>&1 && cp .ckpt/run.tar.* /root/ckpt-parts/
if [ ! -d $RUN ] && [ -f /root/ckpt-parts/run.tar.nparts ] \
    && [ "$(ls /root/ckpt-parts/run.tar.part* | wc -l)" = "$(cat /root/ckpt-parts/run.tar.nparts)" ]; then
  mkdir -p $RUN && cat /root/ckpt-parts/run.tar.part* | tar -x -C $RUN
fi
echo "staged: gguf=$([ -f $GGUF ] && echo yes || echo "$(ls /root/gguf-parts | wc -l)/4 parts") text=$([ -d /root/train-text ] && echo yes || echo no) run=$(ls $RUN/checkpoints 2>/dev/null | tr '\n' ' ') ckpt-parts=$(ls /root/ckpt-parts | tr '\n' ' ')"
[ "$SECONDS_TO_TRAIN" = 0 ] && exit 0

RESUME=(); [ -d $RUN/checkpoints ] && RESUME=(--resume)
set +e
timeout --signal=KILL "$SECONDS_TO_TRAIN" python3 train.py --config "$CONFIG" "${RESUME[@]}" \
  model.source=$GGUF data.sources=[/root/train-text] train.output_dir=$RUN train.tensorboard=false \
  train.progress=false train.log_every=10 "$@" 2>&1 | grep -v "^{\"step\"" | tail -20
set -e
latest=$(ls $RUN/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
echo "latest checkpoint: step $latest"
(cd $RUN && tar -cf - config.yaml metrics.jsonl checkpoints/$latest $(ls summary.json predictor 2>/dev/null)) \
  | split -b 15M -d - $OUT/run.tar.part
ls $OUT/run.tar.part* | wc -l > $OUT/run.tar.nparts
cp $RUN/metrics.jsonl $OUT/
ls -l $OUT
