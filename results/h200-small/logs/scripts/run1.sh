# call 1: train the small pair on GPUs 0,1 while the tiny full sweep reruns on GPUs 2,3;
# then start the small full sweep on GPUs 0,1 until the deadline
. .gpu/carry/common.sh
stamp "tiny sweep start (GPUs 2,3)"
(CUDA_VISIBLE_DEVICES=2,3 timeout $(rem) python -m qbench.cli sweep recipes/full.yaml --results .gpu/store/tiny-full \
   --workers 2 --no-progress > $OUT/tiny-sweep.log 2>&1; echo "tiny sweep rc=$?" >> $OUT/tiny-sweep.log; stamp "tiny sweep end") &
stamp "train start (GPUs 0,1)"
CUDA_VISIBLE_DEVICES=0,1 timeout $(rem) python -m qbench.cli train --preset small --pair --out checkpoints/small \
   --tokens data/corpus/train.tokens.u16 --no-progress > $OUT/train.log 2>&1
stamp "train end rc=$?"
if [ -f checkpoints/small/pair_summary.json ]; then
  stamp "small sweep start (GPUs 0,1)"
  CUDA_VISIBLE_DEVICES=0,1 timeout $(rem) python -m qbench.cli sweep recipes/small/full.yaml \
     --results .gpu/store/small-full --workers 2 --no-progress > $OUT/small-sweep-1.log 2>&1
  stamp "small sweep end rc=$?"
fi
wait
sha256sum checkpoints/small/*/model.safetensors > checkpoints/small/weights.sha256 2>/dev/null
tar czf $OUT/run1.tgz --exclude='*.safetensors' .gpu/store checkpoints/small 2>/dev/null
stamp "packed"
