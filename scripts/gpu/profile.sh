#!/usr/bin/env bash
# One call (carry .whl .ckpt .gpu19): cProfile of our scorer at 1.8B and 340M, shared and plain rows.
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh > /dev/null || exit 1
for size in 1.8B 340M; do
  stamp "profile $size"; timeout 250 python3 scripts/gpu/profile_scorer.py $size "$OUT/profile-$size.txt" > "$OUT/profile-$size.log" 2>&1
  echo "exit $?"; grep -a "^== share" "$OUT/profile-$size.txt" | cut -c1-400
done
