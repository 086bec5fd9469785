#!/usr/bin/env bash
# Call 2 (carry .gpu2 .ckpt): the GGUF's second part; the determinism check, two stores at once.
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh || exit 1
bash scripts/gpu/determinism.sh twice
stamp "call 2 done"
