#!/usr/bin/env bash
# Issue 19's two unmade measurements, for a stay of their own, in three calls made back to back:
#   bash scripts/gpu/bench19.sh eval       carry .whl .ckpt .gpu19 (stage.sh: the task data alone):
#                                          the scorer vs HFLM at 1.8B, then 340M, every example, quiet GPU
#   bash scripts/gpu/bench19.sh grid 500   carry .whl-bnb: bitsandbytes, then the paper grid on a random
#                                          1.8B pair (paper-1.8b.yaml) started with setsid (it outlives
#                                          the call), followed for 500 s
#   bash scripts/gpu/bench19.sh follow 500 (no carry) waits on, then brings back its log (with `time`)
#                                          and store
source scripts/gpu/env.sh
mode=${1:-eval}
if [ "$mode" = eval ]; then
  bash scripts/gpu/setup.sh || exit 1
  for size in 1.8B 340M; do
    stamp "scorer vs HFLM at $size, every example"
    timeout $((530 - SECONDS)) python3 -m qbench.bench.paper_scale --out "$OUT/eval-$size" \
      --steps eval --eval-size $size --eval-limit all > "$OUT/eval-$size.log" 2>&1
    echo "exit $?"; grep -a "scorer \|plain rows\|HFLM  \|speed-up\|difference" "$OUT/eval-$size.log" | cut -c1-300
  done
  exit 0
fi
if [ "$mode" = grid ]; then
  bash scripts/gpu/setup.sh > /dev/null || exit 1   # installs the carried bitsandbytes
  mkdir -p /tmp/b19
  setsid nohup bash -c "source scripts/gpu/env.sh
    stamp 'random 1.8B pair'; qb bench model --size 1.8B --dtype bfloat16 --repeats 1 --save /tmp/pair-1.8b
    stamp grid; time qb sweep scripts/gpu/paper-1.8b.yaml --results /tmp/b19/results --no-progress \
      --workers 2 --workers-per-gpu 2
    stamp 'grid done'" > /tmp/b19/grid.log 2>&1 < /dev/null &
fi
end=$((SECONDS + ${2:-500}))
while [ $SECONDS -lt $end ] && ! grep -q "grid done" /tmp/b19/grid.log; do sleep 10; done
tail -5 /tmp/b19/grid.log | cut -c1-200
cp /tmp/b19/grid.log "$OUT/"; tar -czf "$OUT/paper-1.8b.tgz" -C /tmp/b19 results 2>/dev/null; ls -la "$OUT"
