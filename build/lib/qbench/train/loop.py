"""The training loop and what it needs: loss, optimizer, precision, compile, schedule, hashes.

Works on qbench's own model and on transformers causal LMs (e.g. SmolLM2 loaded by
qbench.model.load_model): `forward_hidden` runs the decoder, `lm_loss` the head and the loss
(logits in float32).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ddp
from .data import TrainError, WindowSampler, batch_hash, gather_windows

LOG_COLUMNS = ("step", "tokens", "loss", "lr", "grad_norm", "seconds", "batch_hash")
PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for-loop")


# ---------------------------------------------------------------------------------------------
# Model pieces
# ---------------------------------------------------------------------------------------------

def forward_hidden(model, x):
    """Final hidden states [B, T, hidden] of a causal LM (after its final norm)."""
    from ..model import QBenchForCausalLM

    if isinstance(model, QBenchForCausalLM):
        return model.model(x)[0]
    return model.base_model(input_ids=x, use_cache=False)[0]


def head_weight(model):
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise TrainError(f"{type(model).__name__}: an LM head with a bias is not supported")
    return head.weight


def lm_loss(hidden, weight, targets):
    import torch.nn.functional as F

    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _loss_module(model, loss_fn):
    import torch

    class LossOf(torch.nn.Module):
        """What DDP wraps: a window batch [B, T + 1] in, the mean next-token loss out."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return loss_fn(forward_hidden(self.model, x[:, :-1]), head_weight(self.model), x[:, 1:])

    return LossOf()


def state_hash(model) -> str:
    """sha256 of all tensors of the state dict (float32 bytes, sorted by name)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def precision_of(name: str, device) -> str:
    """The precision a run uses: `auto` = bf16 autocast over fp32 weights on CUDA, fp32 on the CPU."""
    if name not in PRECISIONS:
        raise TrainError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16-autocast" if device.type == "cuda" else "fp32"
    return name


PRECISION_TEXT = {"fp32": "float32", "bf16-autocast": "bf16 autocast, fp32 master weights",
                  "bf16": "bf16 weights and optimizer state (no autocast, no fp32 master copy)"}


def make_optimizer(model, preset: dict, impl: str, device):
    """AdamW of the preset (decay on matrices only); impl: `auto` = fused on CUDA, torch's default
    elsewhere. Returns (optimizer, the implementation used)."""
    import torch

    if impl not in OPTIMIZER_IMPLS:
        raise TrainError(f"unknown optimizer implementation {impl!r}; expected one of {', '.join(OPTIMIZER_IMPLS)}")
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "default"
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False},
               "default": {}}[impl]
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = preset["optimizer"]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=preset["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"], **options), impl


def compile_parts(model) -> list[str]:
    """torch.compile the parts around attention (each layer's norms and MLP, the final norm): the
    attention call, and with it the softpick kernel, stays eager; the state dict keeps its names.
    Returns the names of the compiled modules' kinds."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise TrainError(f"--compile: {type(model).__name__} has no .layers to compile parts of")
    kinds = set()
    for layer in layers:
        for name, part in layer.named_children():
            if "norm" in name or name == "mlp":
                part.compile()
                kinds.add(name)
    final = getattr(model.base_model, "norm", None)
    if final is not None:
        final.compile()
        kinds.add("final norm")
    return sorted(kinds)


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate of step `step` (0-based): linear warmup to `peak`, then cosine to min_ratio * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_perplexity(model, windows, device, autocast: bool, batch: int = 16) -> float:
    """exp(mean next-token loss) over all predicted positions of `windows` [n, context + 1]."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i:i + batch]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = lm_loss(forward_hidden(model, x[:, :-1]), head_weight(model), x[:, 1:])
            total += float(loss) * x[:, 1:].numel()
            count += x[:, 1:].numel()
    return math.exp(total / count)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

@dataclass
class LoopResult:
    train_seconds: float
    last_losses: list[float]
    data_order_hash: str
    marks: list[tuple[int, float]] = field(default_factory=list)   # (steps done, seconds) at each sync
    peak_memory_bytes: int | None = None


def train_loop(model, tokens, preset: dict, *, seed: int, device, ctx: ddp.Dist, precision: str,
               optimizer_impl: str = "auto", compile: bool = False, log_path: Path | None = None,
               log_every: int = 10, progress: bool = False, desc: str = "", mark_after: int | None = None):
    """Train `model` (already on `device`, in its training dtype) for preset["steps"] steps of
    preset["batch_size"] windows of preset["context"] + 1 tokens; this rank trains on its shard of
    each global batch. Writes one log row per step to `log_path` (rank 0). Returns
    (LoopResult, details) where details record the optimizer implementation and compiled parts."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    context, batch_size, steps = preset["context"], preset["batch_size"], preset["steps"]
    micro = ddp.check_batch(batch_size, ctx.world, preset.get("micro_batch"))
    mine = ddp.shard(ctx, batch_size)
    local = mine.stop - mine.start
    autocast = precision == "bf16-autocast"
    optimizer, impl = make_optimizer(model, preset, optimizer_impl, device)
    loss_fn = lm_loss
    compiled = []
    if compile:
        compiled = compile_parts(model)
        loss_fn = torch.compile(lm_loss)
    step_module = ddp.wrap(ctx, _loss_module(model, loss_fn), device)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = WindowSampler(len(tokens), context + 1, batch_size, seed)
    order = hashlib.sha256()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    pending: list[tuple] = []
    last_losses: list[float] = []
    marks: list[tuple[int, float]] = []
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not (progress and ctx.main),
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    log_file = open(log_path, "w", newline="") if log_path is not None else None
    writer = csv.writer(log_file) if log_file else None
    if writer:
        writer.writerow(LOG_COLUMNS)
    model.train()
    try:
        t0 = time.perf_counter()
        last_flush_time, last_flush_step = t0, 0
        for step in range(steps):
            starts = sampler.next_starts()
            digest = None
            if ctx.main:   # the hash of the whole global batch: the same as a one-process run's
                digest = batch_hash(gather_windows(tokens, starts, context + 1))
                order.update(digest.encode())
            x = torch.from_numpy(gather_windows(tokens, starts[mine], context + 1))
            x = x.pin_memory().to(device, non_blocking=True) if cuda else x
            lr = lr_at(step, preset["lr"], preset["warmup_steps"], steps, preset["min_lr_ratio"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = None
            for i in range(0, local, micro):
                last = i + micro >= local
                sync = contextlib.nullcontext() if last or not ctx.enabled else step_module.no_sync()
                with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = step_module(x[i:i + micro])
                    (loss * (micro / local)).backward()
                part = loss.detach().float() * (micro / local)
                step_loss = part if step_loss is None else step_loss + part
            grad_norm = torch.nn.utils.clip_grad_norm_(params, preset["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending.append((step + 1, lr, step_loss, grad_norm.detach().float(), digest, time.perf_counter() - t0))
            if len(pending) >= log_every or step + 1 == steps or step + 1 == mark_after:
                losses = ddp.mean_across(ctx, torch.stack([p[2] for p in pending]))
                values = torch.stack([losses, torch.stack([p[3] for p in pending])], 1).tolist()
                now = time.perf_counter()
                marks.append((pending[-1][0], now - t0))
                for (n, lr_n, _, _, h, sec), (loss_v, gn_v) in zip(pending, values):
                    if not math.isfinite(loss_v):
                        raise TrainError(f"{desc}: the loss became {loss_v} at step {n} (lr {lr_n:.3g})")
                    if writer:
                        writer.writerow([n, n * batch_size * context, f"{loss_v:.5f}", f"{lr_n:.6g}",
                                         f"{gn_v:.4f}", f"{sec:.3f}", h])
                    last_losses = (last_losses + [loss_v])[-50:]
                if log_file:
                    log_file.flush()
                done = pending[-1][0]
                tok_s = (done - last_flush_step) * batch_size * context / max(now - last_flush_time, 1e-9)
                bar.set_postfix(loss=f"{values[-1][0]:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                bar.update(done - last_flush_step)
                last_flush_time, last_flush_step = now, done
                pending = []
        if cuda:
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
    finally:
        bar.close()
        if log_file:
            log_file.close()
    result = LoopResult(train_seconds, last_losses, order.hexdigest()[:16] if ctx.main else "",
                        marks, torch.cuda.max_memory_allocated(device) if cuda else None)
    details = {"optimizer_impl": impl, "compiled": compiled,
               "distributed": ctx.record(batch_size, micro)}
    return result, details
