#!/usr/bin/env bash
# Call 3 (carry .gpu3): the last GGUF part and the corpus; the retrofit pipeline starts in the
# background (it outlives this call while the machine stays warm); a third determinism store,
# compared with the first (computed in call 2); the GPU tests (issue 16) while the pipeline runs.
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh || exit 1
mkdir -p /tmp/retro
TRAIN_SECONDS=${TRAIN_SECONDS:-360} setsid nohup bash scripts/gpu/retrofit.sh > /tmp/retro/pipeline.log 2>&1 < /dev/null &
sleep 2
bash scripts/gpu/determinism.sh again
stamp "GPU tests"
timeout ${TESTS_SECONDS:-380} python3 -m pytest -p no:cacheprovider -m gpu -n 4 -rfs --tb=short --durations=15 \
  tests/test_quant_gpu.py tests/test_hf_attention.py tests/test_train_ddp.py > "$OUT/gpu-tests.txt" 2>&1
echo "pytest exit $?"; tail -5 "$OUT/gpu-tests.txt" | cut -c1-250
grep -E "^== |^retrofit |cells:" /tmp/retro/pipeline.log | tail -8 | cut -c1-250
cp /tmp/retro/pipeline.log "$OUT/"; stamp "call 3 done"; pack call3
