#!/usr/bin/env bash
# follow.sh SECONDS: wait until the retrofit pipeline is done (or SECONDS have passed), then pack.
source scripts/gpu/env.sh
end=$((SECONDS + $1))
while [ $SECONDS -lt $end ] && ! grep -qE "^== .* (done|training failed|measurement failed)$" /tmp/retro/pipeline.log; do sleep 10; done
grep -E "^== |^pair|^  soft|cells:|^\[" /tmp/retro/pipeline.log | tail -25 | cut -c1-220
bash scripts/gpu/collect.sh
