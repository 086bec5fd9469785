"""`qbench bench ...`: speed benchmarks (attention kernel, evaluation adapter)."""
import runpy
import sys

from .paths import REPO_ROOT


def _bench_attention(args) -> int:
    sys.argv = ["benchmarks/attention.py", *args.script_args]
    runpy.run_path(str(REPO_ROOT / "benchmarks" / "attention.py"), run_name="__main__")
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="speed benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    attention = bench_sub.add_parser("attention", help="softpick kernel vs SDPA softmax vs torch reference (CUDA)")
    attention.add_argument("script_args", nargs="*", help="passed to benchmarks/attention.py (e.g. --quick --out F)")
    attention.set_defaults(func=_bench_attention)
    from .eval.bench import register_bench_commands

    register_bench_commands(bench_sub)
