"""Running a model over a fixed sample of held-out text and collecting per-window statistics.

The sample: `samples` windows of `seq_len` tokens. Window k starts at the beginning of a
distinct document chosen at random with `seed` (random.Random(seed).sample over the documents),
with the tokenizer's <s>. Documents are encoded as `<s> text </s>`; when the chosen document
is shorter than seq_len, the window continues into the documents that follow it in the file
(wrapping round at the end). No padding: every window is exactly seq_len tokens.

Per window we keep: the attention to the first key averaged over queries, per (layer, head);
the number of exact zeros in the causal part, per (layer, head); the moments and extremes of the
hidden states per layer; the largest |input| of every linear layer of the blocks. Everything in
the report is a function of these, so sub-samples need no second forward pass.

Hidden states = the output of every transformer block (the residual stream after layers
1..L), taken before the final norm; the embeddings and the final-norm output are not included.

Attention statistics come from one of two paths with the same definitions:
- "maps": the model's own reference path (`output_attentions=True`, full [B, H, T, T] maps);
- "chunked": q and k (after RoPE, as attend receives them: every model qbench loads routes its
  attention through qbench.attention.attend, whose `observe` hook hands them over) give the
  maps `chunk` query rows at a time, reduced at once: never T x T in memory, and the model
  itself keeps its fast attention (SDPA / the Triton kernel).
Any attention kind of qbench.attention.kinds, with its reference arithmetic and the module's scale.
"auto" takes "maps" while all layers' maps of a batch fit in MAPS_BUDGET bytes, else "chunked".
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attention import kinds
from ..errors import QBenchError
from ..attention.reference import repeat_kv, scaled_scores
from ..files import file_sha256
from ..model.modeling import QBenchModel
from .metrics import Moments, attention_row_stats, causal_mask

MAPS_BUDGET = 256 * 2 ** 20
WINDOW_RULE = ("each window starts with <s> at the beginning of a distinct document drawn at random (seeded); "
               "documents are encoded <s> text </s>; when its document is shorter than the window, the window "
               "continues into the documents that follow it in the file")
HIDDEN_RULE = "output of every transformer block (residual stream, before the final norm); embeddings excluded"
# linear layers of a block (by their own name, in qbench's and transformers' models), grouped by
# the activation they read
LINEAR_GROUPS = {"attn_in": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",),
                 "mlp_in": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}


class DiagnosticsError(QBenchError, ValueError):
    """Bad diagnostics input (sample sizes, text, lengths past a model's positions, an output path)."""


# --------------------------------------------------------------------------- the sample
def read_documents(text) -> tuple[list[str], str]:
    """(documents, description). `text` is a held-out file (documents separated by a line holding
    only U+241E, gzip or plain) or a list of documents."""
    if isinstance(text, (list, tuple)):
        docs = [d for d in text if d.strip()]
        digest = hashlib.sha256("\u241e".join(docs).encode()).hexdigest()
        return docs, f"{len(docs)} given documents (sha256 {digest[:16]})"
    from ..eval.data import read_heldout

    path = Path(text)
    if not path.is_file():
        raise DiagnosticsError(f"held-out text not found: {path}")
    digest = file_sha256(path)
    docs = read_heldout(path)
    from ..paths import SOURCE_ROOT

    shown = path.resolve().relative_to(SOURCE_ROOT) if path.resolve().is_relative_to(SOURCE_ROOT) else path
    return docs, f"{shown} (sha256 {digest[:16]}, {len(docs)} documents)"


def sample_windows(tokenizer, documents: list[str], samples: int, seq_len: int, seed: int):
    """(input_ids [samples, seq_len] int64, start document indices). See the module docstring."""
    if samples > len(documents):
        raise DiagnosticsError(f"the held-out text has {len(documents)} documents; windows start at distinct "
                         f"documents, so ask for at most that many samples (got {samples})")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    cache: dict[int, list[int]] = {}

    def tokens(i):
        if i not in cache:
            ids = tokenizer(documents[i], add_special_tokens=False)["input_ids"]
            cache[i] = ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
        return cache[i]

    starts = random.Random(seed).sample(range(len(documents)), samples)
    windows = []
    for s in starts:
        ids, j = [], s
        while len(ids) < seq_len:
            if j - s >= len(documents):
                raise DiagnosticsError(f"the held-out text has fewer than {seq_len} tokens in all")
            ids += tokens(j % len(documents))
            j += 1
        windows.append(ids[:seq_len])
    return torch.tensor(windows, dtype=torch.long), starts


# --------------------------------------------------------------------------- attention rows
def attention_rows(q: torch.Tensor, k: torch.Tensor, kind: str, row_offset: int, scale=None, mask=None) -> torch.Tensor:
    """Rows row_offset.. of causal attention maps, float32, from q rows [B, H, R, D] and keys
    k [B, H, K, D] with K = row_offset + R (no padding); the reference arithmetic of `kind`.
    mask: the rows' slice [B|1, 1, R, K] of a model's visibility mask (sliding windows), if any."""
    valid = causal_mask(q.shape[-2], k.shape[-2], row_offset, q.device)[None, None]
    if mask is not None:
        valid = valid & mask
    return kinds.get(kind).normalise(scaled_scores(q, k, scale), valid)


def chunked_attention_stats(q, k, kind: str, chunk: int = 256, include_first_query: bool = True, scale=None,
                            mask=None):
    """(first-token attention averaged over queries [B, H] float64, causal zeros [B, H] int64)
    from q [B, H, T, D] and k [B, H|Hkv, T, D] after RoPE, `chunk` query rows at a time."""
    k = repeat_kv(k, q.shape[1])
    t = q.shape[-2]
    first = torch.zeros(q.shape[:2], dtype=torch.float64, device=q.device)
    zeros = torch.zeros(q.shape[:2], dtype=torch.int64, device=q.device)
    count = 0
    for start in range(0, t, chunk):
        end = min(t, start + chunk)
        rows_mask = None if mask is None else mask[..., start:end, :end]
        w = attention_rows(q[:, :, start:end], k[:, :, :end], kind, start, scale, rows_mask)
        f, n, z, _ = attention_row_stats(w, start, include_first_query)
        first += f
        zeros += z
        count += n
    return first / count, zeros


def maps_attention_stats(weights, include_first_query: bool = True):
    """The same pair of statistics from full maps [B, H, T, T]."""
    f, n, z, _ = attention_row_stats(weights, 0, include_first_query)
    return f / n, z


# --------------------------------------------------------------------------- one model
@dataclass
class WindowStats:
    """Per-window statistics of one model (N windows, L layers, H heads, M linear layers)."""
    seq_len: int
    first: np.ndarray                 # [N, L, H] mean attention to the first key
    zeros: np.ndarray                 # [N, L, H] exact zeros in the causal part
    hidden: np.ndarray                # [N, L, 7] Moments.as_list() of each block's output
    linear_max: np.ndarray            # [N, M] max |input| of each linear layer
    linear_names: list[str] = field(default_factory=list)

    @property
    def causal_per_map(self) -> int:
        return self.seq_len * (self.seq_len + 1) // 2


def choose_attention_path(mode: str, config, batch_size: int, seq_len: int) -> str:
    if mode in ("maps", "chunked"):
        return mode
    if mode != "auto":
        raise ValueError(f"attention path {mode!r}: expected auto, maps or chunked")
    c = config.get_text_config()
    size = 4 * batch_size * c.num_hidden_layers * c.num_attention_heads * seq_len ** 2
    return "maps" if size <= MAPS_BUDGET else "chunked"


def decoder_layers(model) -> nn.ModuleList:
    """The transformer blocks of a causal LM (qbench's or transformers'): the `layers` list."""
    n = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {n} decoder layers found")


def _base_model_attentions(model, ids, output_attentions: bool):
    """Run the model's decoder without the lm_head (most of a small model's work); the attention maps."""
    base = model.get_decoder()
    if isinstance(base, QBenchModel):
        return base(ids, output_attentions=output_attentions)[2]
    return base(input_ids=ids, output_attentions=output_attentions, use_cache=False).attentions


@torch.no_grad()
def collect(model, input_ids: torch.Tensor, attention: str = "auto", chunk: int = 256, batch_size: int = 4,
            include_first_query: bool = True) -> tuple[WindowStats, str]:
    """Run `model` (any causal LM qbench loads) over the windows and return (WindowStats, path used)."""
    from ..model import attention_modules

    path = choose_attention_path(attention, model.config, batch_size, input_ids.shape[1])
    blocks = decoder_layers(model)
    attn = attention_modules(model)
    if len(attn) != len(blocks):
        raise ValueError(f"{type(model).__name__}: {len(attn)} attention modules for {len(blocks)} layers")
    state: dict = {}
    handles = []

    def block_hook(i):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            state["hidden"][i] = [m.as_list() for m in Moments.of_rows(x)]
        return hook

    def linear_hook(name):
        def hook(module, args):
            x = args[0]
            if id(x) not in state["seen"]:  # q/k/v (and gate/up) read the same tensor: reduce it once
                lo, hi = torch.aminmax(x.detach().flatten(1), dim=1)
                state["seen"][id(x)] = (x, torch.maximum(-lo, hi).double().cpu())
            state["linear"][name] = state["seen"][id(x)][1]
        return hook

    def observer(i):
        def observe(q, k, kind, scale, key_mask, mask):
            if key_mask is not None:
                raise ValueError("diagnostics windows are never padded")
            state["attn"][i] = chunked_attention_stats(q, k, kind, chunk, include_first_query, scale, mask)
        return observe

    linear_names = []
    prefix = {id(b): f"model.layers.{i}" for i, b in enumerate(blocks)}
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(block_hook(i)))
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                full = f"{prefix[id(block)]}.{name}"
                linear_names.append(full)
                handles.append(module.register_forward_pre_hook(linear_hook(full)))
    if path == "chunked":
        for i, (_, module) in enumerate(attn):
            module.attn_observer = observer(i)
    device = next(model.parameters()).device
    first, zeros, hidden, linear = [], [], [], []
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            state.update(hidden={}, linear={}, attn={}, seen={})
            ids = input_ids[start:start + batch_size].to(device)
            attentions = _base_model_attentions(model, ids, path == "maps")
            if path == "maps":
                stats = [maps_attention_stats(w, include_first_query) for w in attentions]
            else:
                stats = [state["attn"][i] for i in range(len(blocks))]
            first.append(torch.stack([s[0] for s in stats], 1).cpu())      # [B, L, H]
            zeros.append(torch.stack([s[1] for s in stats], 1).cpu())
            hidden.append(np.array([[state["hidden"][i][b] for i in range(len(blocks))]
                                    for b in range(ids.shape[0])], dtype=np.float64))
            linear.append(torch.stack([state["linear"][n] for n in linear_names], 1))
            del attentions
            state.clear()
    finally:
        for h in handles:
            h.remove()
        for _, module in attn:
            module.attn_observer = None
    stats = WindowStats(seq_len=input_ids.shape[1], first=torch.cat(first).numpy(), zeros=torch.cat(zeros).numpy(),
                        hidden=np.concatenate(hidden), linear_max=torch.cat(linear).numpy(),
                        linear_names=linear_names)
    return stats, path


# --------------------------------------------------------------------------- summaries
SUMMARY_METRICS = ("sink_0.2", "sink_0.3", "kurtosis", "min_act", "max_act", "sparsity")


def summarize(stats: WindowStats, windows=None) -> dict:
    """Table 2 quantities over the given windows (all by default): sink rates and sparsity in %."""
    idx = np.arange(stats.first.shape[0]) if windows is None else np.asarray(windows)
    first, zeros = stats.first[idx], stats.zeros[idx]
    layers = [Moments(*row) for row in stats.hidden[idx].reshape(-1, 7)]
    total = Moments.merge_all(layers)
    return {
        "sink_0.2": 100.0 * float((first > 0.2).mean()),
        "sink_0.3": 100.0 * float((first > 0.3).mean()),
        "kurtosis": total.kurtosis,
        "min_act": total.min,
        "max_act": total.max,
        "sparsity": 100.0 * float(zeros.sum()) / (zeros.size * stats.causal_per_map),
    }


def per_layer(stats: WindowStats) -> dict:
    """Per-layer curves over all windows."""
    n_layers = stats.first.shape[1]
    moments = [Moments.merge_all([Moments(*stats.hidden[w, i]) for w in range(stats.hidden.shape[0])])
               for i in range(n_layers)]
    linear = stats.linear_max.max(0)
    by_name = dict(zip(stats.linear_names, linear.tolist()))
    groups = {}
    for group, leaves in LINEAR_GROUPS.items():
        groups[group] = [max((v for n, v in by_name.items() if n.startswith(f"model.layers.{i}.")
                              and n.rsplit(".", 1)[-1] in leaves), default=float("nan"))
                         for i in range(n_layers)]
    groups["all"] = [max((v for n, v in by_name.items() if n.startswith(f"model.layers.{i}.")), default=float("nan"))
                     for i in range(n_layers)]
    return {
        "hidden_kurtosis": [m.kurtosis for m in moments],
        "hidden_min": [m.min for m in moments],
        "hidden_max": [m.max for m in moments],
        "sink_0.3": (100.0 * (stats.first > 0.3).mean(axis=(0, 2))).tolist(),
        "first_token_attention_max_head": stats.first.mean(0).max(1).tolist(),
        "sparsity": (100.0 * stats.zeros.sum(axis=(0, 2)) / (stats.zeros.shape[0] * stats.zeros.shape[2]
                                                            * stats.causal_per_map)).tolist(),
        "linear_input_max_abs": groups,
        "linear_input_max_abs_by_module": by_name,
    }
