"""`qbench info PATH`: what a checkpoint is (cheap: headers only); `qbench data models`: fetch the
real models of real-models.md."""
from __future__ import annotations

import argparse


def info_lines(info, content_hash: str) -> list[str]:
    a = info.architecture_fields
    src = info.source
    where = f"{src.gguf_file} in {src.folder}" if src.gguf_file else str(src.folder)
    tokenizer = "in the GGUF metadata" if src.format == "gguf" else ", ".join(
        sorted(p.name for p in src.folder.iterdir() if "token" in p.name or p.name in ("vocab.json", "merges.txt")))
    lines = [
        f"checkpoint    {info.path}",
        f"format        {info.format} ({where}; weights {', '.join(info.weight_files)})",
        f"architecture  {info.architecture} ({info.model_type}): hidden {a['hidden_size']}, layers "
        f"{a['num_hidden_layers']}, heads {a['num_heads']} (kv {a['kv_heads']}, head_dim {a['head_dim']}), "
        f"mlp {a['mlp_size']}, vocab {a['vocab_size']}, rope_theta {a['rope_theta']:g}, "
        f"tied embeddings {a['tie_word_embeddings']}",
        f"parameters    {info.parameters:,} ({info.parameters / 1e6:.2f}M)",
        f"attention     {info.attention} ({info.attention_source})",
        f"weights       {info.weight_dtype}",
    ]
    if info.gguf_types:
        lines.append("quantization  " + ", ".join(f"{t}: {n} tensor{'s' if n > 1 else ''}" for t, n in info.gguf_types.items())
                     + " (dequantized to float when loaded)")
    lines += [f"positions     {info.max_positions}", f"tokenizer     {tokenizer}", f"content hash  {content_hash}"]
    return lines


def cmd_info(args) -> int:
    from . import checkpoint_hash, inspect_checkpoint

    info = inspect_checkpoint(args.path, args.attention)
    print("\n".join(info_lines(info, checkpoint_hash(args.path, args.attention))))
    return 0


def cmd_models(args) -> int:
    from . import real

    names = args.names or list(real.REAL_MODELS)
    models = [real.get(n) for n in names]   # unknown names refused before any download
    if args.list:
        for m in models:
            path = real.model_file(m.name)
            state = "present" if path.is_file() else "not fetched"
            print(f"{m.name:20s} {m.size / 1e6:8.1f} MB  {state:11s}  {m.description}")
        return 0
    for m in models:
        print(real.fetch_model(m.name))
    return 0


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="format, architecture, parameters, attention kind and weight types "
                                              "of a checkpoint (reads headers only)")
    info.add_argument("path", help="a checkpoint folder (paper format or transformers), a .gguf file, or hf:ORG/NAME")
    info.add_argument("--attention", help="force an attention kind (as a sweep arm can)")
    info.set_defaults(func=cmd_info)


def register_data(data_subparsers) -> None:
    """Add `models` to the `qbench data` group."""
    from .real import __doc__ as doc

    p = data_subparsers.add_parser("models", help="fetch, verify and assemble the real models of real-models.md",
                                   description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default: all)")
    p.add_argument("--list", action="store_true", help="list the models and whether they are fetched")
    p.set_defaults(func=cmd_models)
