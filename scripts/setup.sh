#!/usr/bin/env bash
# Creates .venv and installs qbench with everything it needs (CPU machine: torch CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${QBENCH_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import qbench, lm_eval, hqq, optimum.quanto, bitsandbytes, rdata, ray" 2>/dev/null; then
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q torch==2.13.0          # CPU build; installed first, kept by constraints.txt
  "$PY" -m pip install -q -c constraints.txt -e '.[dev,ray]'   # ray: tests/test_ray.py
fi
echo "environment ready: $VENV"
