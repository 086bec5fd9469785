"""The `qbench` command. Each area adds its subcommands through a `register...` function."""
import argparse
import sys


def cmd_info(args) -> int:
    from .model import load_checkpoint, read_config, resolve

    folder = resolve(args.path)
    config = read_config(folder)
    ckpt = load_checkpoint(folder)
    params = sum(p.numel() for p in ckpt.model.parameters())
    print(f"checkpoint   {folder}")
    print(f"attention    {config.attention_kind} (attn_impl={config.attn_impl})")
    print(f"architecture hidden {config.hidden_size}, layers {config.num_hidden_layers}, heads {config.num_heads} "
          f"(kv {config.kv_heads}, head_dim {config.head_dim}), mlp {config.mlp_size}, vocab {config.vocab_size}, "
          f"rope_theta {config.rope_theta:g}, tied embeddings {config.tie_word_embeddings}")
    print(f"parameters   {params:,} ({params / 1e6:.2f}M)")
    print(f"tokenizer    {type(ckpt.tokenizer).__name__}, bos {ckpt.tokenizer.bos_token!r}, eos {ckpt.tokenizer.eos_token!r}")
    print(f"content hash {ckpt.content_hash}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="architecture, parameter count and attention kind of a checkpoint")
    info.add_argument("path", help="checkpoint folder (or hub id where a hub is reachable)")
    info.set_defaults(func=cmd_info)
    from . import bench_commands, data_commands
    from .diagnostics import commands as diagnostics_commands
    from .report import commands as report_commands
    from .sweep import commands as sweep_commands
    from .train.train import register_train_command

    for register in (data_commands.register, register_train_command, sweep_commands.register,
                     report_commands.register, diagnostics_commands.register, bench_commands.register):
        register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import QBenchError
    try:
        return args.func(args) or 0
    except QBenchError as err:
        print(f"qbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
