"""Speed benchmarks (`qbench bench ...`, qbench/bench/commands.py), one module each:

    attention       softpick kernel vs SDPA softmax vs the torch reference (CUDA; --tune, --compile-only)
    paper_scale     one report at the paper's sizes (kernel, GPTQ at 1.8B, scorer vs HFLM, one cell)
    compare_stores  two result stores of one sweep: same numbers (metrics and per-item values)? where did the time go?
    models          random-initialised models at the paper's sizes (`qbench bench model`, random:SIZE specs)
    kernel_smoke    a quick CUDA check of the softpick kernel (python -m qbench.bench.kernel_smoke)
    gptq_compare    GPTQ of two qbench trees: same weights? which is faster? (python -m qbench.bench.gptq_compare)

`qbench bench attention ARGS` = `python -m qbench.bench.attention ARGS` (and so for paper-scale and
compare-stores). The scorer's benchmark, `qbench bench eval`, lives with the scorer (qbench/eval/bench.py).
Nothing heavy is imported here.
"""
from ..errors import QBenchError


class BenchError(QBenchError):
    """A benchmark that cannot run as asked (a bad argument or store, no CUDA device)."""
