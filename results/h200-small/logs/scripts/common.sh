# sourced by run1.sh / run2.sh on the GPU machine (repo root): packages, data, deadline helpers
T0=$(date +%s)
LIMIT=${LIMIT:-560}
rem() { echo $(( T0 + LIMIT - $(date +%s) )); }
stamp() { echo "$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s $*" | tee -a $OUT/phases.txt; }
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ ! -f /tmp/site/lm_eval/__init__.py ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 3
fi
export PYTHONPATH=/tmp/site:$PWD
mkdir -p data/corpus data/tasks .gpu/store
if [ ! -f data/corpus/train.tokens.u16 ]; then
  xz -dc .gpu/carry/corpus/train.tokens.u16.xz > data/corpus/train.tokens.u16
  cp -r .gpu/carry/corpus/tokenizer .gpu/carry/corpus/train.tokens.u16.json .gpu/carry/corpus/heldout_eval.txt data/corpus/
fi
if [ ! -d data/tasks/yaml ]; then
  cp -r .gpu/carry/tasks/* data/tasks/
  sed -i "s#/work/main/data/tasks#$PWD/data/tasks#g" data/tasks/yaml/*.yaml
fi
stamp "setup done in $PWD; $(nvidia-smi -L | wc -l) GPUs"
