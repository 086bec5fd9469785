# Sourced by every script of a GPU stay (the device tool runs them from the repository root;
# $OUT comes back). Wheels carried in .whl/ (.whl-bnb/) are installed once per machine into /tmp/site
# (/tmp/site-bnb) by setup.sh; task
# data, the bundled pair and large inputs are kept under /tmp between the calls of one stay.
set -uo pipefail
export PYTHONUNBUFFERED=1 QBENCH_DATA=/tmp/qbdata HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH=/tmp/site-bnb:/tmp/site:$PWD
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/qbdata
qb() { python3 -m qbench.cli "$@"; }
# the bundled pair travels in one call only (.ckpt/tiny, carried); later calls find it under /tmp
if [ -d .ckpt/tiny ] && [ ! -d /tmp/ckpt/tiny ]; then mkdir -p /tmp/ckpt && cp -r .ckpt/tiny /tmp/ckpt/; fi
# (the copied tree can hold an empty qbench/checkpoints/tiny/ when the real one was moved out for
# the stay: the stay of 2026-12-02b lost its first call's scorer runs to that)
if [ ! -f qbench/checkpoints/tiny/softmax/tokenizer.json ] && [ -d /tmp/ckpt/tiny ]; then
  rm -rf qbench/checkpoints/tiny && mkdir -p qbench/checkpoints && ln -s /tmp/ckpt/tiny qbench/checkpoints/tiny
fi
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
# pack NAME: everything under $OUT into one $OUT/NAME.tgz (a call brings back at most 8 files)
pack() { tar -czf "/tmp/$1.tgz" -C "$OUT" . && rm -rf "${OUT:?}"/* && mv "/tmp/$1.tgz" "$OUT/" && ls -la "$OUT"; }
