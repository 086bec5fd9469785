#!/usr/bin/env bash
# determinism.sh twice: two stores of scripts/gpu/determinism.yaml computed at once (one GPU), compared
# determinism.sh again: a third store in this (later) call, compared with the first one
source scripts/gpu/env.sh
mode=$1
run() { qb sweep scripts/gpu/determinism.yaml --results /tmp/det/$1 --no-progress > "$OUT/determinism-$1.log" 2>&1; }
if [ "$mode" = twice ]; then
  stamp determinism twice
  run s1 & run s2 & wait
  python3 -m qbench.bench.compare_stores /tmp/det/s1 /tmp/det/s2 --out "$OUT/determinism-twice.md"; echo "compare exit $?"
else
  stamp determinism again
  run s3
  python3 -m qbench.bench.compare_stores /tmp/det/s1 /tmp/det/s3 --out "$OUT/determinism-again.md"; echo "compare exit $?"
fi
tail -2 "$OUT"/determinism-s*.log
stamp determinism done
