#!/usr/bin/env bash
# Call 2 (carry .gpu2): GGUF part 1; the determinism check, two stores at once (issue 13).
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh || exit 1
bash scripts/gpu/determinism.sh twice
stamp "call 2 done"; pack call2
