"""diagnose_pair(): the Table 2 diagnostics of both models of a pair, with spread over sub-samples.

The sample of `samples` windows is split into `subsamples` consecutive groups; every Table 2
number is reported as its value over all windows ("value") and as the mean and sample standard
deviation of the values over the groups ("mean", "sd"), since these statistics move from one
sample of text to another (feasibility.md: kurtosis 71 vs 89 on a rerun).
"""
from __future__ import annotations

import hashlib
import statistics
import time

import torch

from .. import paths
from .collect import HIDDEN_RULE, SUMMARY_METRICS, WINDOW_RULE, collect, per_layer, read_documents, sample_windows, \
    summarize
from .quant_error import read_quant_errors

DEFAULT_TEXT = paths.BUNDLED_HELDOUT / "heldout_eval.txt.gz"
DEFAULTS = dict(samples=16, seq_len=256, seed=0, subsamples=4, attention="auto", chunk=256, batch_size=4)


def diagnose_pair(pair, text=DEFAULT_TEXT, samples: int = 16, seq_len: int = 256, seed: int = 0,
                  subsamples: int = 4, results=None, attention: str = "auto", chunk: int = 256,
                  batch_size: int = 4, include_first_query: bool = True) -> dict:
    """Diagnostics of a loaded qbench.model.Pair (models stay on their device and dtype).

    text: a held-out file or a list of documents. results: a sweep's results folder (optional)
    for the per-layer quantization error. Returns a JSON-able dict (see write_diagnostics).
    """
    if samples < 1 or seq_len < 2:
        raise ValueError("need samples >= 1 and seq_len >= 2")
    if subsamples < 1 or samples % subsamples:
        raise ValueError(f"--samples {samples} must be a multiple of --subsamples {subsamples}")
    t0 = time.time()
    docs, text_desc = read_documents(text)
    input_ids, starts = sample_windows(pair.softmax.tokenizer, docs, samples, seq_len, seed)
    groups = [list(range(g * (samples // subsamples), (g + 1) * (samples // subsamples))) for g in range(subsamples)]
    result = {
        "sample": {"text": text_desc, "samples": samples, "seq_len": seq_len, "seed": seed, "subsamples": subsamples,
                   "window_rule": WINDOW_RULE, "start_documents": starts,
                   "tokens_sha256": hashlib.sha256(input_ids.numpy().tobytes()).hexdigest()},
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
    for ckpt in pair:
        model = ckpt.model
        param = next(model.parameters())
        t1 = time.time()
        stats, path = collect(model, input_ids, attention, chunk, batch_size, include_first_query)
        pooled = summarize(stats)
        subs = [summarize(stats, g) for g in groups]
        summary = {}
        for name in SUMMARY_METRICS:
            values = [s[name] for s in subs]
            summary[name] = {"value": pooled[name], "mean": statistics.fmean(values),
                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "subsamples": values}
        result["models"][ckpt.kind] = {
            "path": str(ckpt.path), "hash": ckpt.content_hash, "attention_path": path,
            "device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
            "num_layers": model.config.num_hidden_layers, "num_heads": model.config.num_heads,
            "summary": summary, "per_layer": per_layer(stats), "seconds": round(time.time() - t1, 3)}
    if results is not None:
        hashes = {c.kind: c.content_hash for c in pair}
        result["quant_error"] = read_quant_errors(results, hashes, pair.softmax.model.config.num_hidden_layers)
    result["seconds"] = round(time.time() - t0, 3)
    return result


def diagnose(softmax_path, softpick_path, device=None, dtype=torch.float32, **kwargs) -> dict:
    """Load the pair and run diagnose_pair (kwargs as there)."""
    from ..model import load_pair

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return diagnose_pair(load_pair(softmax_path, softpick_path, device=device, dtype=dtype), **kwargs)
