#!/usr/bin/env bash
# The full bit-width sweep on the bundled pair, from a fresh machine to tables and plots:
#
#   ./run_sweep.sh                       # recipes/full.yaml -> results/full/{cells,tables,plots}
#   ./run_sweep.sh recipes/paper.yaml    # another sweep file -> results/<its name>/
#   ./run_sweep.sh recipes/full.yaml --no-limit     # further options go to `qbench sweep`
#
# Steps: scripts/setup.sh (creates .venv, installs qbench and its libraries), `qbench data
# prepare` (the paper's tasks from local data), `qbench sweep` (resumable: run it again after an
# interruption and it computes only what is missing or failed), `qbench table`, `qbench plot`.
# On CPU the sweep file's cpu_limit (examples per task) and cpu_calib (calibration batch size)
# apply, and the tables' captions say so; on GPU every example is used. Workers: one per GPU,
# or on CPU one per core (up to 4); QBENCH_WORKERS=N overrides. The output is also appended to
# results/<name>/run_sweep.log. Exit status: 0 when every cell is done, 1 when some failed
# (tables and plots are written either way; failed cells show as "failed").
set -euo pipefail
cd "$(dirname "$0")"
export QBENCH_DATA=${QBENCH_DATA:-$PWD/data}   # task data, downloads and caches stay in the checkout
SECONDS=0
SWEEP=recipes/full.yaml
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  SWEEP=$1
  shift
fi

scripts/setup.sh
QB=.venv/bin/qbench
PY=.venv/bin/python
$QB data prepare

NAME=$($PY -c 'import sys; from qbench.sweep.sweepfile import read_sweep_file
print(read_sweep_file(sys.argv[1])[0]["name"])' "$SWEEP")   # as qbench reads it (extends: included)
RESULTS=results/$NAME
WORKERS=${QBENCH_WORKERS:-$($PY -c 'import os, torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(n or max(1, min(4, len(os.sched_getaffinity(0)))))')}
mkdir -p "$RESULTS"
LOG=$RESULTS/run_sweep.log
{
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) ./run_sweep.sh $SWEEP $*"
  echo "== host: $(uname -srm), $(nproc) cores; workers: $WORKERS"
} | tee -a "$LOG"

status=0
$QB sweep "$SWEEP" --results "$RESULTS" --workers "$WORKERS" "$@" | tee -a "$LOG" || status=$?
if [ "$status" -ge 2 ]; then   # the sweep file or an option is wrong, or it was interrupted: nothing to table
  exit "$status"
fi
$QB table "$RESULTS" | tee -a "$LOG"
$QB plot "$RESULTS" | tee -a "$LOG"
echo "== run_sweep.sh finished in $((SECONDS / 60))m$((SECONDS % 60))s (sweep exit status $status)" | tee -a "$LOG"
exit $status
