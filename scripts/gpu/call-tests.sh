#!/usr/bin/env bash
# One call (carry .whl .gpu1 = tasks only): the GPU tests with their failure messages, then the
# paper-scale steps other than the kernel (issue 19).
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh > /dev/null || exit 1
stamp "GPU tests (hf, quant, ddp)"
timeout 110 python3 -m pytest -q -p no:cacheprovider -m gpu -rf --tb=short --durations=5 \
  tests/test_hf_attention.py tests/test_quant_gpu.py tests/test_train_ddp.py > "$OUT/gpu-tests-a.txt" 2>&1; echo "exit $?"
stamp "GPU tests (triton)"
timeout 130 python3 -m pytest -q -p no:cacheprovider -m gpu -rf --tb=line --durations=5 \
  tests/test_triton_softpick.py > "$OUT/gpu-tests-b.txt" 2>&1; echo "exit $?"
grep -E "^FAILED|passed|failed" "$OUT"/gpu-tests-*.txt | cut -c1-250 | head -40
stamp "paper-scale gptq, eval, cell"
PYTHONUNBUFFERED=1 timeout 250 python3 -m qbench.bench.paper_scale --out "$OUT/paper-scale" --steps gptq,eval,cell --eval-limit 400 > "$OUT/paper-scale.log" 2>&1
echo "paper-scale exit $?"; tail -15 "$OUT/paper-scale.log"
stamp done
