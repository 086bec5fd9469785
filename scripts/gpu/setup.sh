#!/usr/bin/env bash
# Every call of a stay: carried wheels into /tmp/site (and bitsandbytes, .whl-bnb, into /tmp/site-bnb:
# it travels in a call of its own), task data into /tmp/qbdata, an environment report; each once.
source scripts/gpu/env.sh
stamp setup
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done || exit 1
fi
if [ -d .whl-bnb ] && [ ! -f /tmp/site-bnb/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-bnb .whl-bnb/*.whl \
    && touch /tmp/site-bnb/.done || exit 1
fi
# large inputs travel in parts, one .gpuN folder per call (carried: ignored by git)
for t in .gpu*/tasks.tar.xz; do [ -d /tmp/qbdata/tasks ] || [ ! -f "$t" ] || tar -xJf "$t" -C /tmp/qbdata; done
for f in .gpu*/gguf.part* .gpu*/train.txt.xz; do [ -f "$f" ] && cp "$f" /tmp/; done
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  python3 -c "import torch, triton, transformers, lm_eval; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'lm_eval', lm_eval.__version__)"
} 2>&1 | tee "$OUT/env.txt"
stamp setup done
