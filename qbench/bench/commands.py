"""`qbench bench attention|paper-scale|compare-stores ARGS`: the benchmark modules of this package,
each with its own arguments (`qbench bench attention ARGS` = `python -m qbench.bench.attention
ARGS`); `qbench bench model`: a random pair at a paper size, its forward timed. (`qbench bench
eval`, the scorer's benchmark: qbench/eval/commands.py.)"""
import time
from pathlib import Path

from ..cli import positive_int

# command -> (module of qbench.bench, help, example arguments)
MODULES = {
    "attention": ("attention", "softpick kernel vs SDPA softmax vs torch reference (CUDA); --tune regenerates the "
                               "kernel config table; --compile-only needs no GPU", "--quick --out F, --tune --table-out F"),
    "paper-scale": ("paper_scale", "one report at the paper's sizes: kernel vs SDPA and its variants, GPTQ at 1.8B, "
                                   "scorer vs HFLM at 340M, one cell's time split", "--out DIR, --tiny, --steps kernel,gptq"),
    "compare-stores": ("compare_stores", "two result stores of one sweep: same metrics and per-item values? where did "
                                         "the time go? (exit 1 when a value differs)", "STORE_A STORE_B --out F.md"),
}


def _add_module(bench_sub, command: str, module: str, help: str, examples: str) -> None:
    """`qbench bench COMMAND ARGS...`: qbench.bench.<module>.main(ARGS)."""
    def run(args) -> int:
        from importlib import import_module

        argv = args.module_args[1:] if args.module_args[:1] == ["--"] else args.module_args
        return import_module(f"{__package__}.{module}").main(argv) or 0

    # prefix_chars "+": every "-..." argument (--help too) goes to the module, not to this parser
    p = bench_sub.add_parser(command, help=help, prefix_chars="+", add_help=False)
    p.add_argument("module_args", nargs="*", help=f"passed to qbench.bench.{module} (e.g. {examples})")
    p.set_defaults(func=run)


def cmd_bench_model(args) -> int:
    """Build the random pair of a paper size, time its forward at one sequence length, save it if asked."""
    import torch

    from . import BenchError, models

    if args.save and (Path(args.save).is_file() or any(p.is_file() for p in Path(args.save).parents)):
        raise BenchError(f"--save {args.save}: not a folder")   # refused before the models are built
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    fields = models.config_fields(args.size, args.layers)
    seq_len = args.seq_len or (fields["max_position_embeddings"] if device == "cuda" else 128)
    print(f"random {args.size} pair: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
    for attention in ("softmax", "softpick"):
        t0 = time.perf_counter()
        model = models.random_model(args.size, attention, args.seed, device, dtype, args.layers)
        built = time.perf_counter() - t0
        ids = torch.randint(0, 8192, (args.batch, seq_len), device=device,
                            generator=torch.Generator(device).manual_seed(args.seed))
        with torch.inference_mode():
            model(ids)   # warm-up: kernels compiled, memory allocated
            times = []
            for _ in range(args.repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        times.sort()
        ms = 1000 * times[len(times) // 2]
        tokens = args.batch * seq_len
        print(f"{attention:8s} {models.parameter_count(model) / 1e6:8.1f}M parameters ({args.dtype}, {device}), "
              f"built in {built:.1f} s; forward of {args.batch} x {seq_len} tokens: {ms:.1f} ms median of "
              f"{args.repeats} ({tokens / ms * 1e3:,.0f} tokens/s)")
        del model
    if args.save:
        paths = models.save_random_pair(args.size, args.save, args.seed, dtype, args.layers)
        print("saved: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    return 0


def register_bench(bench_sub) -> None:
    """Add attention, paper-scale, compare-stores and model to the `qbench bench` group."""
    from .models import SIZES

    for command, (module, help, examples) in MODULES.items():
        _add_module(bench_sub, command, module, help, examples)
    model = bench_sub.add_parser("model", help="build a random-initialised pair at a paper size (nothing written "
                                               "unless --save) and time its forward")
    model.add_argument("--size", choices=sorted(SIZES), default="340M")
    model.add_argument("--layers", type=positive_int, default=None, help="blocks (default: the size's)")
    model.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    model.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    model.add_argument("--seq-len", type=positive_int, default=None, help="tokens per row (default: the context, 4096, "
                                                                 "on CUDA; 128 on CPU)")
    model.add_argument("--batch", type=positive_int, default=1)
    model.add_argument("--repeats", type=positive_int, default=5)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--save", default=None, metavar="DIR",
                       help="also write the pair as checkpoints DIR/softmax and DIR/softpick (bundled tokenizer)")
    model.set_defaults(func=cmd_bench_model)
