#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), prepares the offline task data, and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export QBENCH_DATA=${QBENCH_DATA:-$PWD/data}   # task data, downloads and caches stay in the checkout
./scripts/setup.sh
.venv/bin/qbench data prepare
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
