"""The `qbench` command. Each area adds its subcommands through a `register...` function."""
import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qbench", description=__doc__)
    parser.add_argument("--recipes", action="append", default=[], metavar="DIR",
                        help="a folder of recipes and sweep files, searched before the shipped ones (repeatable; "
                             "also QBENCH_RECIPES)")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import bench_commands, data_commands
    from .diagnostics import commands as diagnostics_commands
    from .model import commands as model_commands
    from .report import commands as report_commands
    from .sweep import commands as sweep_commands
    from .train.train import register_train_command

    for register in (model_commands.register, data_commands.register, register_train_command, sweep_commands.register,
                     report_commands.register, diagnostics_commands.register, bench_commands.register):
        register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.recipes:
        import os

        os.environ["QBENCH_RECIPES"] = os.pathsep.join([*args.recipes, os.environ.get("QBENCH_RECIPES", "")]).rstrip(os.pathsep)
    from .errors import QBenchError
    try:
        return args.func(args) or 0
    except QBenchError as err:
        print(f"qbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
