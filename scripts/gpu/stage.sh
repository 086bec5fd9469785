#!/usr/bin/env bash
# Builds the folders a GPU stay carries (ignored by git; add `/.gpu*/` and `/.ckpt/` to
# .git/info/exclude): each call may carry 64 MiB in all, working tree included, so the inputs go
# in parts, one folder per call (README.md here has the plan):
#   call 1: .whl   wheels for the GPU host's CPython 3.12 (lm-eval and what it needs, gguf, hqq,
#                  quanto, torchao, pytest-xdist)
#           .ckpt  the bundled pair (qbench/checkpoints/tiny; its tokenizer serves the random models)
#           .gpu1  task data (tasks.tar.xz) + GGUF part 0 (what room is left)
#   call 2: .gpu2  GGUF part 1 (a whole transfer)
#   call 3: .gpu3  GGUF part 2 + the corpus (train.txt.xz)
#   .gpu19         the task data alone (bench19.sh's first call, with .whl and .ckpt)
# bitsandbytes (43 MB) does not fit next to these; WITH_BNB=1 puts it into .whl-bnb for a call of its own.
# Needs: .venv (scripts/setup.sh), prepared task data and `qbench data models smollm2-135m` in
# QBENCH_DATA, and `qbench data corpus` output in CORPUS (default DATA/corpus).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=$PWD/.venv/bin/python
DATA=${QBENCH_DATA:-$PWD/data}
CORPUS=${CORPUS:-$DATA/corpus}
GGUF=$DATA/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
TREE=$(git ls-files -z | grep -zv '^results/\|^qbench/checkpoints/' | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
LIMIT=$((64 * 1024 * 1024 - TREE - 500000))   # bytes per call beyond the working tree (results/, checkpoints moved out)
for f in "$DATA/tasks" "$GGUF" "$CORPUS/train.txt"; do [ -e "$f" ] || { echo "stage.sh: missing $f" >&2; exit 2; }; done
rm -rf .whl .gpu1 .gpu2 .gpu3 .gpu19 .ckpt && mkdir -p .whl .gpu1 .gpu2 .gpu3 .gpu19 .ckpt
py312() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$1" "${@:2}"; }
py312 .whl lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
  more-itertools==11.2.1 nltk==3.10.4 pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 \
  pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 \
  termcolor==3.3.0 optimum-quanto==0.2.7 gguf==0.19.0 torchao==0.18.0 pytest-xdist==3.8.0 execnet==2.1.2
"$PY" -m pip wheel -q --no-deps -w .whl sqlitedict==2.1.0 word2number==1.1 hqq==0.2.8.post1 rouge-score==0.1.2
if [ "${WITH_BNB:-0}" = 1 ]; then mkdir -p .whl-bnb && py312 .whl-bnb bitsandbytes==0.50.2; fi
tar -cJf .gpu1/tasks.tar.xz -C "$DATA" tasks && cp .gpu1/tasks.tar.xz .gpu19/
cp -r qbench/checkpoints/tiny .ckpt/
bytes() { find "$@" -type f -printf '%s\n' | awk '{s += $1} END {print s}'; }   # what the transfer counts
PART0=$((LIMIT - $(bytes .whl .ckpt .gpu1)))
part() { dd if="$GGUF" of="$1" bs=4M iflag=skip_bytes,count_bytes skip="$2" ${3:+count=$3} status=none; }
part .gpu1/gguf.part0 0 $PART0
part .gpu2/gguf.part1 $PART0 $LIMIT
part .gpu3/gguf.part2 $((PART0 + LIMIT))
cat .gpu1/gguf.part0 .gpu2/gguf.part1 .gpu3/gguf.part2 | cmp - "$GGUF"
xz -T2 -6 -c "$CORPUS/train.txt" > .gpu3/train.txt.xz
for call in ".whl .ckpt .gpu1" .gpu2 .gpu3; do
  b=$(bytes $call); echo "$call: $b bytes (room $LIMIT)"; [ "$b" -le "$LIMIT" ] || { echo "stage.sh: $call too large" >&2; exit 1; }
done
