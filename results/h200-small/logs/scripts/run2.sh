# call 2 (same warm machine): finish the small full sweep on 4 GPUs, the paper sweep from the same
# cells, the diagnostics, then whatever of the tiny sweep is left
. .gpu/carry/common.sh
if [ ! -f checkpoints/small/softpick/model.safetensors ]; then stamp "NO small checkpoints here"; exit 4; fi
stamp "small full sweep start (4 GPUs)"
timeout $(rem) python -m qbench.cli sweep recipes/small/full.yaml --results .gpu/store/small-full \
   --workers 4 --no-progress > $OUT/small-sweep-2.log 2>&1
stamp "small full sweep end rc=$?"
mkdir -p .gpu/store/small-paper/cells && cp -n .gpu/store/small-full/cells/*.json .gpu/store/small-paper/cells/
timeout $(rem) python -m qbench.cli sweep recipes/small/paper.yaml --results .gpu/store/small-paper \
   --workers 4 --no-progress > $OUT/small-paper.log 2>&1
stamp "small paper sweep end rc=$?"
timeout $(rem) python -m qbench.cli diagnose recipes/small/full.yaml --results .gpu/store/small-full \
   --out .gpu/store/small-diagnostics --samples 64 --seq-len 512 --device cuda > $OUT/small-diag.log 2>&1
stamp "small diagnostics end rc=$?"
timeout $(rem) python -m qbench.cli sweep recipes/full.yaml --results .gpu/store/tiny-full \
   --workers 4 --no-progress > $OUT/tiny-sweep-2.log 2>&1
stamp "tiny sweep end rc=$?"
tar czf $OUT/run2.tgz --exclude='*.safetensors' .gpu/store checkpoints/small 2>/dev/null
stamp "packed"
