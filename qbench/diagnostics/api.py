"""diagnose_arms(): the Table 2 diagnostics of one or more checkpoints (arms), with spread over sub-samples.

The sample of `samples` windows is split into `subsamples` consecutive groups; every Table 2
number is reported as its value over all windows ("value") and as the mean and sample standard
deviation of the values over the groups ("mean", "sd"), since these statistics move from one
sample of text to another (feasibility.md: kurtosis 71 vs 89 on a rerun).
"""
from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

import torch

from .. import paths
from .collect import HIDDEN_RULE, DiagnosticsError, SUMMARY_METRICS, WINDOW_RULE, collect, per_layer, read_documents, sample_windows, \
    summarize
from .quant_error import read_quant_errors

DEFAULT_TEXT = paths.BUNDLED_HELDOUT / "heldout_eval.txt.gz"
DEFAULTS = dict(samples=16, seq_len=256, seed=0, subsamples=4, attention_path="auto", chunk=256, batch_size=4)


def check_sample(samples: int, seq_len: int, subsamples: int, chunk: int = 1, batch_size: int = 1) -> None:
    for flag, value, least in (("--samples", samples, 1), ("--seq-len", seq_len, 2), ("--chunk", chunk, 1),
                               ("--batch-size", batch_size, 1)):
        if value < least:
            raise DiagnosticsError(f"{flag} must be at least {least}, got {value}")
    if subsamples < 1 or samples % subsamples:
        raise DiagnosticsError(f"--samples {samples} must be a multiple of --subsamples {subsamples}")


def check_seq_len(seq_len: int, max_positions: int | None, where: str) -> None:
    if max_positions is not None and seq_len > max_positions:
        raise DiagnosticsError(f"--seq-len {seq_len} is past the {max_positions} positions of {where} "
                               "(max_position_embeddings)")


def diagnose_arms(arms, text=DEFAULT_TEXT, samples: int = 16, seq_len: int = 256, seed: int = 0,
                  subsamples: int = 4, results=None, attention_path: str = "auto", chunk: int = 256,
                  batch_size: int = 4, include_first_query: bool = True) -> dict:
    """Diagnostics of loaded checkpoints: `arms` is a list of (label, qbench.model.Checkpoint)
    (models stay on their device and dtype). Every arm reads the same documents and windows
    (tokenized by its own tokenizer: the same tokens when arms share one).

    text: a held-out file or a list of documents. results: a sweep's results folder (optional)
    for the per-layer quantization error. Returns a JSON-able dict (see write_diagnostics).
    """
    check_sample(samples, seq_len, subsamples, chunk, batch_size)
    labels = [label for label, _ in arms]
    if not arms or len(set(labels)) != len(labels):
        raise DiagnosticsError(f"need one or more arms with distinct labels, got {labels}")
    for label, ckpt in arms:
        check_seq_len(seq_len, getattr(ckpt.model.config.get_text_config(), "max_position_embeddings", None),
                      f"{label} ({ckpt.path})")
    t0 = time.time()
    docs, text_desc = read_documents(text)
    groups = [list(range(g * (samples // subsamples), (g + 1) * (samples // subsamples))) for g in range(subsamples)]
    result = {
        "sample": {"text": text_desc, "samples": samples, "seq_len": seq_len, "seed": seed, "subsamples": subsamples,
                   "window_rule": WINDOW_RULE},
        "definitions": {
            "sink": "share (%) of (window, layer, head) whose attention to the first token, averaged over all "
                    "query positions " + ("(query 0 included, as Gu et al.)" if include_first_query else
                                          "(query 0 excluded)") + ", exceeds eps",
            "sparsity": "share (%) of exact zeros in the causal part (lower triangle incl. diagonal) of the maps",
            "kurtosis": "Pearson m4/m2^2 over all hidden-state values of all layers (normal = 3)",
            "hidden_states": HIDDEN_RULE,
            "linear_input_max_abs": "largest |x| at the input of each linear layer of a block (what a per-tensor "
                                    "activation quantizer must cover)",
            "spread": f"value over all {samples} windows; mean and sd over {subsamples} sub-samples of "
                      f"{samples // subsamples} consecutive windows",
        },
        "models": {},
    }
    for label, ckpt in arms:
        model = ckpt.model
        param = next(model.parameters())
        input_ids, starts = sample_windows(ckpt.tokenizer, docs, samples, seq_len, seed)
        tokens = hashlib.sha256(input_ids.numpy().tobytes()).hexdigest()
        result["sample"].setdefault("start_documents", starts)
        result["sample"].setdefault("tokens_sha256", tokens)
        t1 = time.time()
        stats, path = collect(model, input_ids, attention_path, chunk, batch_size, include_first_query)
        pooled = summarize(stats)
        subs = [summarize(stats, g) for g in groups]
        summary = {}
        for name in SUMMARY_METRICS:
            values = [s[name] for s in subs]
            summary[name] = {"value": pooled[name], "mean": statistics.fmean(values),
                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "subsamples": values}
        config = model.config.get_text_config()
        result["models"][label] = {
            "path": str(ckpt.path), "hash": ckpt.content_hash, "attention": ckpt.attention, "format": ckpt.format,
            "architecture": type(model).__name__, "attention_path": path, "tokens_sha256": tokens,
            "device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
            "num_layers": config.num_hidden_layers, "num_heads": config.num_attention_heads,
            "summary": summary, "per_layer": per_layer(stats), "seconds": round(time.time() - t1, 3)}
    if results is not None:
        hashes = {label: c.content_hash for label, c in arms}
        layers = max(c.model.config.get_text_config().num_hidden_layers for _, c in arms)
        result["quant_error"] = read_quant_errors(results, hashes, layers)
    result["seconds"] = round(time.time() - t0, 3)
    return result


def diagnose_pair(pair, text=DEFAULT_TEXT, **kwargs) -> dict:
    """diagnose_arms of a qbench.model.Pair, labelled softmax and softpick."""
    return diagnose_arms([(c.kind, c) for c in pair], text, **kwargs)


def diagnose(paths, attention=None, labels=None, device=None, dtype=torch.float32, **kwargs) -> dict:
    """Load the checkpoints (any format; `attention`: None or one kind or None per path, forcing
    it) and run diagnose_arms (kwargs as there). Labels default to arm_labels(paths)."""
    from ..model import load_model

    paths = [str(p) for p in paths]
    forced = attention if isinstance(attention, (list, tuple)) else [attention] * len(paths)
    if len(forced) != len(paths):
        raise DiagnosticsError(f"--attention: give one kind, or one per checkpoint ({len(paths)}), got {len(forced)}")
    labels = labels or arm_labels(paths, forced)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    arms = [(label, load_model(p, a, device=device, dtype=dtype)) for label, p, a in zip(labels, paths, forced)]
    return diagnose_arms(arms, **kwargs)


def arm_labels(paths, attention=None) -> list[str]:
    """A label per checkpoint: its folder or file name (without .gguf), with the forced kind when
    one is given, numbered when names repeat."""
    attention = attention or [None] * len(paths)
    names = [Path(p.removeprefix("hf:")).name.removesuffix(".gguf") + (f" ({a})" if a else "")
             for p, a in zip(map(str, paths), attention)]
    return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]
