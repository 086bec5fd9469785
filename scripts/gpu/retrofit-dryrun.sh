#!/usr/bin/env bash
# CPU dry run of retrofit.sh before a GPU stay: the same pipeline on this machine (.venv ready,
# `qbench data models smollm2-135m` and `qbench data corpus` done), with a few steps of a tiny
# batch, a 3 MB corpus and 2 examples per task; everything in /tmp/retro as on the GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PWD/.venv/bin:$PATH QBENCH_DATA=${QBENCH_DATA:-$PWD/data}
rm -rf /tmp/retro /tmp/smollm2 /tmp/corpus
split -b 42991616 -d -a 1 "$QBENCH_DATA/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" /tmp/gguf.part
head -c 3000000 "$QBENCH_DATA/corpus/train.txt" | xz -c > /tmp/train.txt.xz
mkdir -p /tmp/retro /tmp/qbdata && ln -sfn "$QBENCH_DATA/tasks" /tmp/qbdata/tasks   # env.sh points QBENCH_DATA there
sed 's/^limit: null/limit: 2\ncpu_calib: {samples: 4, seq_len: 64}/' scripts/gpu/retrofit.yaml > /tmp/retro-dryrun.yaml
SWEEP=/tmp/retro-dryrun.yaml DEV=cpu MEASURE=3 STEPS=4 TRAIN_EXTRA="--batch-size 2 --micro-batch 2" SWEEP_ARGS="--limit 2 --device cpu" \
  bash scripts/gpu/retrofit.sh 2>&1 | tee /tmp/retro/pipeline.log
