#!/usr/bin/env bash
# Call 3 (carry .gpu3): the last GGUF part and the corpus; the retrofit pipeline starts in the
# background (it outlives this call while the machine stays warm); the third determinism store;
# then the pipeline is followed until FOLLOW seconds have passed, and what exists is packed.
source scripts/gpu/env.sh
bash scripts/gpu/setup.sh || exit 1
mkdir -p /tmp/retro
TRAIN_SECONDS=${TRAIN_SECONDS:-300} setsid nohup bash scripts/gpu/retrofit.sh > /tmp/retro/pipeline.log 2>&1 < /dev/null &
sleep 2
bash scripts/gpu/determinism.sh again
bash scripts/gpu/follow.sh "${FOLLOW:-300}"
