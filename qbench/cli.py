"""The `qbench` command. Each area's commands live in its `commands.py`: `register(subparsers)` adds
its top-level commands, `register_data` / `register_bench` its commands of the `data` and `bench`
groups. Every user-facing error derives from qbench.errors.QBenchError and is caught once, here."""
import argparse
import math
import os
import sys


def positive_int(text: str) -> int:
    """argparse type of a count (examples, workers, layers, repeats, ...): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type of a size or a duration: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .bench import commands as bench
    from .diagnostics import commands as diagnostics
    from .eval import commands as eval_
    from .model import commands as model
    from .report import commands as report
    from .sweep import commands as sweep
    from .train import commands as train

    parser = argparse.ArgumentParser(prog="qbench", description="Quantization benchmarks of softmax and softpick "
                                     "attention pairs (`qbench COMMAND --help`: a command's options).")
    parser.add_argument("--recipes", action="append", default=[], metavar="DIR",
                        help="a folder of recipes and sweep files, searched before the shipped ones (repeatable; "
                             "also QBENCH_RECIPES)")
    sub = parser.add_subparsers(dest="command", required=True)
    model.register(sub)
    data = sub.add_parser("data", help="build the corpus, prepare offline task data or fetch real models")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    train.register(sub)
    sweep.register(sub)
    report.register(sub)
    diagnostics.register(sub)
    bench_group = sub.add_parser("bench", help="speed benchmarks")
    bench_sub = bench_group.add_subparsers(dest="bench_command", required=True)
    for area in (train, eval_, model):
        area.register_data(data_sub)
    for area in (bench, eval_):
        area.register_bench(bench_sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.recipes:
        os.environ["QBENCH_RECIPES"] = os.pathsep.join([*args.recipes, os.environ.get("QBENCH_RECIPES", "")]).rstrip(os.pathsep)
    from .errors import QBenchError

    try:
        return args.func(args) or 0
    except QBenchError as err:
        command = " ".join(filter(None, (args.command, getattr(args, "data_command", None),
                                         getattr(args, "bench_command", None))))
        print(f"qbench {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
