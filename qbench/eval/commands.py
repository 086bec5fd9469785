"""`qbench data prepare` (the offline task data: qbench/eval/data.py) and `qbench bench eval` (the
scorer against lm-eval's stock HFLM, its noise floor and per-call overhead: qbench/eval/bench.py)."""
import argparse

from .. import paths
from ..cli import positive_int


def cmd_prepare(args) -> int:
    from .data import prepare

    prepare(heldout=args.heldout, force=args.force)
    return 0


def cmd_bench_eval(args) -> int:
    from .bench import bench_batch_check, bench_eval, bench_overhead
    from .tasks import check_prepared, resolve_tasks

    check_prepared(resolve_tasks(args.tasks))   # unknown or unprepared tasks: refused before the model loads

    common = dict(model_path=args.model, tasks=args.tasks, limit=args.limit, device=args.device, dtype=args.dtype,
                  out=args.out)
    if args.batch_check:
        bench_batch_check(settings=((args.max_batch_tokens or 4096, args.batch_size),
                                    (args.check_max_batch_tokens, args.check_batch_size)), **common)
    elif args.overhead:
        bench_overhead(calls=args.calls, **common)
    else:
        bench_eval(hf_batch_size=args.hf_batch_size, batch_size=args.batch_size,
                   max_batch_tokens=args.max_batch_tokens, **common)
    return 0


def register_data(data_sub) -> None:
    """Add `prepare` to the `qbench data` group."""
    from . import data

    p = data_sub.add_parser(
        "prepare", help="extract the benchmark tasks (paper: ARC-Easy, LAMBADA, PIQA, SciQ, held-out "
                        "perplexity; extended: also HellaSwag, WinoGrande, ARC-Challenge, BoolQ, OpenBookQA) "
                        "from local data and write their lm-eval YAMLs",
        description=data.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", default=None,
                   help=f"held-out text file for qb_heldout_ppl (gzip, documents separated by a line "
                        f"holding only U+241E; default {data.DEFAULT_HELDOUT})")
    p.add_argument("--force", action="store_true", help="extract again even if the data is there")
    p.set_defaults(func=cmd_prepare)


def register_bench(bench_sub) -> None:
    """Add `eval` to the `qbench bench` group."""
    from . import bench

    p = bench_sub.add_parser("eval", help="time our lm-eval scorer against lm-eval's stock HFLM "
                                          "(--batch-check: its noise floor; --overhead: per-call overhead)",
                             description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"checkpoint folder (default {paths.BUNDLED_SOFTMAX}), or "
                                                  "random:SIZE[:ATTENTION] for a random model at a paper size "
                                                  "(random:340M, random:1.8B:softpick; qbench/bench/models.py)")
    p.add_argument("--tasks", default="paper", help="task set or comma-separated tasks (default paper)")
    p.add_argument("--limit", type=positive_int, default=None, help="examples per task (default all)")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--hf-batch-size", type=positive_int, default=32, help="batch size of the stock HFLM (default 32)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="most rows per forward of ours (default: no cap)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=None,
                   help="token budget per forward of ours (default 32768 on CUDA, 4096 on CPU; "
                        "--batch-check: 4096)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--batch-check", action="store_true",
                      help="score with two batch settings (--max-batch-tokens/--batch-size and "
                           "--check-max-batch-tokens/--check-batch-size) and count the items that change")
    mode.add_argument("--overhead", action="store_true",
                      help="split evaluate() calls into task set-up, scoring and lm-eval's own work")
    p.add_argument("--check-max-batch-tokens", type=positive_int, default=512,
                   help="--batch-check: token budget of the second setting (default 512)")
    p.add_argument("--check-batch-size", type=positive_int, default=1,
                   help="--batch-check: rows per forward of the second setting (default 1)")
    p.add_argument("--calls", type=positive_int, default=3, help="--overhead: timed calls per mode (default 3)")
    p.add_argument("--out", default=None, help="also write the result as JSON here (e.g. results/bench/eval-h200.json)")
    p.set_defaults(func=cmd_bench_eval)
