"""`qbench bench ...`: speed benchmarks (attention kernel, paper-scale models, evaluation adapter)."""
import runpy
import sys
import time

from .paths import SOURCE_ROOT


def _add_script(bench_sub, command, name, help, examples):
    """`qbench bench COMMAND ARGS...`: runs benchmarks/<name>.py with ARGS."""
    def run(args) -> int:
        script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
        sys.argv = [f"benchmarks/{name}.py", *script_args]
        runpy.run_path(str(SOURCE_ROOT / "benchmarks" / f"{name}.py"), run_name="__main__")
        return 0

    # prefix_chars "+": every "-..." argument (--help too) goes to the script, not to this parser
    p = bench_sub.add_parser(command, help=help, prefix_chars="+", add_help=False)
    p.add_argument("script_args", nargs="*", help=f"passed to benchmarks/{name}.py (e.g. {examples})")
    p.set_defaults(func=run)


def _bench_model(args) -> int:
    """Build the random pair of a paper size, time its forward at one sequence length, save it if asked."""
    import torch

    from . import bench_models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    fields = bench_models.config_fields(args.size, args.layers)
    seq_len = args.seq_len or (fields["max_position_embeddings"] if device == "cuda" else 128)
    print(f"random {args.size} pair: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
    for attention in ("softmax", "softpick"):
        t0 = time.perf_counter()
        model = bench_models.random_model(args.size, attention, args.seed, device, dtype, args.layers)
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
        print(f"{attention:8s} {bench_models.parameter_count(model) / 1e6:8.1f}M parameters ({args.dtype}, {device}), "
              f"built in {built:.1f} s; forward of {args.batch} x {seq_len} tokens: {ms:.1f} ms median of "
              f"{args.repeats} ({tokens / ms * 1e3:,.0f} tokens/s)")
        del model
    if args.save:
        paths = bench_models.save_random_pair(args.size, args.save, args.seed, dtype, args.layers)
        print("saved: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="speed benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_script(bench_sub, "attention", "attention",
                "softpick kernel vs SDPA softmax vs torch reference (CUDA); --tune regenerates the kernel config "
                "table; --compile-only needs no GPU", "--quick --out F, --tune --table-out F")
    _add_script(bench_sub, "paper-scale", "paper_scale",
                "one report at the paper's sizes: kernel vs SDPA and its variants, GPTQ at 1.8B, scorer vs HFLM "
                "at 340M, one cell's time split", "--out DIR, --tiny, --steps kernel,gptq")

    from .bench_models import SIZES

    model = bench_sub.add_parser("model", help="build a random-initialised pair at a paper size (nothing written "
                                               "unless --save) and time its forward")
    model.add_argument("--size", choices=sorted(SIZES), default="340M")
    model.add_argument("--layers", type=int, default=None, help="blocks (default: the size's)")
    model.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    model.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    model.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the context, 4096, "
                                                                 "on CUDA; 128 on CPU)")
    model.add_argument("--batch", type=int, default=1)
    model.add_argument("--repeats", type=int, default=5)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--save", default=None, metavar="DIR",
                       help="also write the pair as checkpoints DIR/softmax and DIR/softpick (bundled tokenizer)")
    model.set_defaults(func=_bench_model)
    from .eval.bench import register_bench_commands

    register_bench_commands(bench_sub)
