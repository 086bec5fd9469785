#!/usr/bin/env bash
# Call 4 (carry .whl-bnb): bitsandbytes, its GPU tests; then the retrofit pipeline is followed until
# FOLLOW seconds have passed, and what exists is packed (collect.sh).
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh > /dev/null || exit 1
stamp "GPU tests of bitsandbytes"
timeout 120 python3 -m pytest -p no:cacheprovider -m gpu -n 4 -rfs --tb=short -k bnb tests/test_quant_gpu.py > "$OUT/gpu-tests-bnb.txt" 2>&1
echo "pytest exit $?"; tail -3 "$OUT/gpu-tests-bnb.txt" | cut -c1-250
bash scripts/gpu/follow.sh "${FOLLOW:-400}"
stamp "call 4 done"; pack call4
