#!/usr/bin/env bash
# Call 1 of the stay (carry .whl .ckpt .gpu1): setup (wheels, tasks, the bundled pair, GGUF part 0),
# then on a quiet GPU the scorer vs lm-eval's HFLM on random paper-size models, every example (issue 19).
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh || exit 1
for size in 1.8B 340M; do
  stamp "scorer vs HFLM at $size, all examples"
  timeout $([ $size = 1.8B ] && echo 290 || echo 150) python3 -m qbench.bench.paper_scale --out "$OUT/eval-$size" \
    --steps eval --eval-size $size --eval-limit all > "$OUT/eval-$size.log" 2>&1
  echo "exit $?"; tail -4 "$OUT/eval-$size.log" | cut -c1-250
done
stamp "call 1 done"; pack call1
