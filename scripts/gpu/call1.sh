#!/usr/bin/env bash
# Call 1 of the stay (carry .whl .gpu1): setup, the kernel benchmark on a quiet GPU, the GPU tests.
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh || exit 1
stamp "kernel benchmark (quiet GPU)"
timeout 170 python3 -m qbench.bench.paper_scale --out "$OUT/paper-scale" --steps kernel > "$OUT/paper-scale.log" 2>&1
echo "paper-scale exit $?"
stamp "GPU tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > "$OUT/gpu-tests.txt" 2>&1; echo "pytest exit $?"
tail -4 "$OUT/gpu-tests.txt"
stamp "call 1 done"
