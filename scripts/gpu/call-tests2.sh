#!/usr/bin/env bash
# Failure messages of the failing GPU tests (first few), then the eval and cell steps of paper-scale.
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh > /dev/null || exit 1
timeout 40 python3 -m pytest -q -p no:cacheprovider -m gpu -rf --tb=short tests/test_hf_attention.py > "$OUT/gpu-tests-hf.txt" 2>&1; echo "exit $?"
timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu -rf --tb=short --maxfail=3 tests/test_quant_gpu.py > "$OUT/gpu-tests-quant.txt" 2>&1; echo "exit $?"
grep -E "^FAILED|^E  " "$OUT"/gpu-tests-hf.txt "$OUT"/gpu-tests-quant.txt | cut -c1-300 | head -30
PYTHONUNBUFFERED=1 timeout 190 python3 -m qbench.bench.paper_scale --out "$OUT/paper-scale" --steps eval,cell --eval-limit 400 > "$OUT/paper-scale.log" 2>&1
echo "paper-scale exit $?"; tail -8 "$OUT/paper-scale.log"
