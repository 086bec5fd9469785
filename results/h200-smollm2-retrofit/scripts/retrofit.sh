#!/usr/bin/env bash
# Issue 15 on one H200, started in the background of a GPU stay (setsid: it outlives the call that
# starts it while the machine stays warm) and followed by later calls:
#   SmolLM2-135M (GGUF) continued twice with identical seed, data order, steps and hyper-parameters,
#   once with softmax and once with softpick attention (qbench train --pair --from), both at once on
#   the one GPU; then held-out perplexity (in the training summaries and the sweep's FP cells), the
#   paper's diagnostics on all three arms, and the sweep scripts/gpu/retrofit.yaml on all three.
# Inputs under /tmp: /tmp/gguf.part* (joined here), the corpus text (.gpu/train.txt.xz of the call that
# starts this; copied at once, since the next call replaces the working tree), the bundled held-out text.
# Everything lands in /tmp/retro; collect.sh packs it into $OUT.
# Overrides for a CPU dry run (scripts/gpu/retrofit-dryrun.sh): DEV, MEASURE, STEPS, TRAIN_EXTRA, SWEEP, SWEEP_ARGS.
source scripts/gpu/env.sh
R=/tmp/retro
mkdir -p $R
rm -rf /tmp/repo && mkdir -p /tmp/repo && cp -r qbench scripts recipes benchmarks pyproject.toml /tmp/repo/ && cd /tmp/repo
[ -d qbench/checkpoints/tiny ] || { mkdir -p qbench/checkpoints && ln -sfn /tmp/ckpt/tiny qbench/checkpoints/tiny; }
mkdir -p checkpoints && ln -sfn ../qbench/checkpoints/tiny checkpoints/tiny
export PYTHONPATH=/tmp/site:/tmp/repo
GGUF=/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
stamp "join the GGUF"
mkdir -p /tmp/smollm2 && cat /tmp/gguf.part0 /tmp/gguf.part1 /tmp/gguf.part2 > $GGUF && sha256sum $GGUF | tee $R/gguf.sha256
stamp corpus
mkdir -p /tmp/corpus && xz -dc /tmp/train.txt.xz > /tmp/corpus/train.txt && wc -c /tmp/corpus/train.txt
TRAIN=(--preset retrofit --pair --from $GGUF --corpus /tmp/corpus --device ${DEV:-cuda} --no-progress
       --heldout qbench/checkpoints/tiny/heldout/heldout_eval.txt.gz ${TRAIN_EXTRA:-})
stamp "measure each arm's step time alone (encodes the corpus with SmolLM2's tokenizer once)"
qb train "${TRAIN[@]}" --measure-steps ${MEASURE:-12} --out $R/measure || { stamp "measurement failed"; exit 1; }
# the same number of steps for both arms, chosen so that both, training at once on the one GPU
# (assumed 1.7x slower than alone), finish within TRAIN_SECONDS
STEPS=${STEPS:-$(python3 -c "
import glob, json, os
s = max(json.load(open(f))['seconds_per_step'] for f in glob.glob('$R/measure/measure_*.json'))
print(max(100, int(float(os.environ.get('TRAIN_SECONDS', '330')) / (1.7 * s))))")}
stamp "train both arms at once: $STEPS steps each"
qb train "${TRAIN[@]}" --steps $STEPS --out $R/ft --log-every 50 || { stamp "training failed"; exit 1; }
qb plot-training $R/ft --out $R/ft/loss_curves.png --smooth 25
stamp diagnose
qb diagnose $GGUF $R/ft/softmax $R/ft/softpick --label base softmax-ft softpick-ft --out $R/diagnostics \
  --device ${DEV:-cuda} --samples 16 --seq-len 256 > $R/diagnose.log 2>&1
stamp sweep
qb sweep ${SWEEP:-scripts/gpu/retrofit.yaml} --results $R/results ${SWEEP_ARGS:---workers 4 --workers-per-gpu 4} --no-progress
qb table $R/results --allow-incomplete; qb plot $R/results --allow-incomplete
stamp done
