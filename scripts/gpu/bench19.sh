#!/usr/bin/env bash
# Issue 19's two unmade measurements, for a stay of their own (carry .whl .ckpt .gpu1, and
# .whl-bnb for the bnb cells): the scorer vs HFLM at 1.8B with every example, on a quiet GPU, then
# the paper grid on a random 1.8B pair end to end (started with setsid: it outlives the call; a
# later call runs `bash scripts/gpu/bench19.sh follow SECONDS`). Writes under $OUT.
source scripts/gpu/env.sh
if [ "${1:-}" = follow ]; then
  end=$((SECONDS + ${2:-500})); while [ $SECONDS -lt $end ] && ! grep -q "^== grid done" /tmp/b19/grid.log; do sleep 10; done
  cp /tmp/b19/grid.log "$OUT/"; tar -czf "$OUT/paper-1.8b.tgz" -C /tmp/b19 results 2>/dev/null; exit 0
fi
bash scripts/gpu/setup.sh || exit 1
[ -d .whl-bnb ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-bnb .whl-bnb/*.whl
export PYTHONPATH=/tmp/site-bnb:$PYTHONPATH
stamp "scorer vs HFLM at 1.8B, every example"
timeout 420 python3 -m qbench.bench.paper_scale --out "$OUT/eval-1.8B" --steps eval --eval-size 1.8B --eval-limit all \
  > "$OUT/eval-1.8B.log" 2>&1; echo "exit $?"; tail -4 "$OUT/eval-1.8B.log" | cut -c1-250
mkdir -p /tmp/b19
setsid nohup bash -c "source scripts/gpu/env.sh; export PYTHONPATH=/tmp/site-bnb:\$PYTHONPATH
  stamp 'random 1.8B pair'; qb bench model --size 1.8B --dtype bfloat16 --repeats 1 --save /tmp/pair-1.8b
  stamp grid; time qb sweep scripts/gpu/paper-1.8b.yaml --results /tmp/b19/results --no-progress
  stamp 'grid done'" > /tmp/b19/grid.log 2>&1 < /dev/null &
sleep 5; tail -3 /tmp/b19/grid.log
