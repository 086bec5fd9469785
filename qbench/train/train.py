"""Training: `qbench train --preset NAME --attention KIND --out DIR`, `--pair` (DIR/softmax and
DIR/softpick), `--from CHECKPOINT` (continued training with the attention switched), `--processes N`
(data parallel, torchrun), `--measure-steps N` (tokens/s of a preset, nothing saved).

The two models of a pair share everything but the attention function: the preset (shape and
recipe), the seed, hence the initial weights (built on the CPU under one seed, or loaded from one
checkpoint; attention has no parameters) and the data order (one seeded numpy generator over the
token file). Each run writes into its folder: the checkpoint (config.json, model.safetensors,
tokenizer files), train_log.csv (one row per step: step, tokens, loss, lr, grad_norm, seconds,
batch_hash) and train_summary.json (command, preset, versions, held-out perplexity next to a
unigram baseline, hashes that prove the pair shares init, data and recipe).

Data: a flat token file (qbench.train.data: <s> doc </s> per document, uint16 or uint32). Each
epoch cuts it into windows of context + 1 tokens at a random offset and visits them in a random
order; a global batch is `batch_size` such windows (inputs = first context tokens, targets = the
next ones), of which each of N data-parallel processes trains on its own 1/N.

Modules: data (token files, sampler), loop (the step loop, optimizer, precision), ddp
(torchrun), start (fresh model or checkpoint, saving), launch (a pair's processes), record.
The command line: qbench/train/commands.py (`python -m qbench.train.train ARGS`, the form a pair's
and torchrun's children run, goes through `qbench train ARGS`). Only the standard library is
imported at module level (the CLI imports this for registration); torch and numpy load when a run
starts.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import one_line
from ..files import file_sha256, make_writable_dir
from ..paths import CORPUS_DIR
from . import ddp
from .corpus import CorpusError
from .data import (TOKEN_CACHE, TrainError, check_token_file, corpus_missing, corpus_token_file, load_tokens,
                   model_token_file, read_sidecar, tokenizer_fingerprint, unigram_perplexity, write_json)
from .loop import OPTIMIZER_IMPLS, PRECISION_TEXT, PRECISIONS
from .presets import COMMON, PRESETS
from .record import device_name, git_commit, recipe_hash, show_path, versions

KINDS = ("softmax", "softpick")   # the two arms of --pair
LOG_FILE = "train_log.csv"
SUMMARY_FILE = "train_summary.json"
PAIR_SUMMARY_FILE = "pair_summary.json"
MEASURE_FILE = "measure.json"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")
__all__ = ["TrainError", "TOKEN_CACHE", "load_tokens"]


# ---------------------------------------------------------------------------------------------
# Presets, inputs, output folders
# ---------------------------------------------------------------------------------------------

def resolve_preset(name: str, steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   micro_batch: int | None = None) -> dict:
    """The preset `name` (a copy) with overrides applied and the common recipe merged in."""
    if name not in PRESETS:
        raise TrainError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    preset = json.loads(json.dumps(PRESETS[name]))
    preset = {"name": name, **COMMON, **preset}
    for key, value in (("steps", steps), ("batch_size", batch_size), ("micro_batch", micro_batch)):
        if value is not None:
            if int(value) < 1:
                raise TrainError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
            preset[key] = int(value)
    if lr is not None:
        if not 0 < float(lr) < 1:
            raise TrainError(f"--lr must lie in (0, 1), got {lr}")
        preset["lr"] = float(lr)
    return preset


def default_tokenizer_dir(corpus_dir: Path | None = None) -> Path:
    return Path(corpus_dir or CORPUS_DIR) / "tokenizer"


def default_heldout(corpus_dir: Path | None = None) -> Path:
    """corpus_dir/heldout_eval.txt(.gz); the plain name when neither exists (reported when used)."""
    from .tokenizer import split_file

    corpus_dir = Path(corpus_dir or CORPUS_DIR)
    try:
        return split_file(corpus_dir, "heldout_eval")
    except CorpusError:
        return corpus_dir / "heldout_eval.txt"


def check_out_dir(out: Path, overwrite: bool) -> Path:
    """Refuse an output folder that is a file or holds a checkpoint (unless overwrite); creates nothing
    (the inputs are checked next, and only then is the folder made)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"output folder {out} is a file")
    if not overwrite and out.is_dir() and any((out / name).exists() for name in CHECKPOINT_FILES):
        raise TrainError(f"output folder {out} already holds a checkpoint; pass --overwrite to replace it")
    return out


def prepare_out_dir(out: Path, overwrite: bool) -> Path:
    """Create `out` and check that it is writable and holds no checkpoint (unless overwrite)."""
    out = check_out_dir(out, overwrite)
    try:
        make_writable_dir(out)
    except OSError as err:
        raise TrainError(f"output folder {out} is not writable: {err.strerror or err}") from None
    return out


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise corpus_missing(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # a folder without tokenizer files, a broken file
        raise TrainError(f"tokenizer in {folder} could not be loaded: {one_line(err)}") from None


def encode_documents(tokenizer, docs: list[str]):
    """<s> doc </s> per document, concatenated: the layout `encode_corpus` gives the training tokens."""
    import numpy as np

    from .tokenizer import encode_stream

    return encode_stream(tokenizer.backend_tokenizer, docs, tokenizer.bos_token_id, tokenizer.eos_token_id, np.int64)


def heldout_windows(path: Path, tokenizer, context: int, n_windows: int):
    """A fixed sample of held-out windows [n, context + 1]: the held-out token stream cut into
    consecutive windows, of which n evenly spaced ones are kept (no randomness). `path` is a split
    file (.txt or .txt.gz, documents separated by the U+241E line) or a uint16 token file (.u16)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"held-out text {path} not found: `qbench data corpus` builds it "
                         f"(or pass --heldout FILE, or --no-eval)")
    if path.suffix in (".u16", ".npy"):
        stream = load_tokens(path).astype(np.int64)
    else:
        from ..text import read_documents

        stream = encode_documents(tokenizer, read_documents(path))
    length = context + 1
    available = len(stream) // length
    if available < 1:
        raise TrainError(f"held-out text {path} has {len(stream)} tokens, fewer than one window of {length}")
    n = min(n_windows, available)
    keep = np.unique(np.linspace(0, available - 1, n).round().astype(np.int64))
    return stream[: available * length].reshape(available, length)[keep]


@dataclass
class RunSpec:
    preset: str
    kind: str
    out: str | None
    seed: int = 0
    steps: int | None = None
    batch_size: int | None = None      # global: sequences per step over all processes
    micro_batch: int | None = None     # sequences per forward pass per process (gradient accumulation)
    lr: float | None = None
    corpus: str | None = None          # corpus folder; None = CORPUS_DIR
    tokens: str | None = None          # token file; None = encode the corpus's train.txt (cached)
    tokenizer: str | None = None       # tokenizer folder; None = the corpus's (or the --from checkpoint's own)
    heldout: str | None = None         # held-out split file; None = the corpus's heldout_eval.txt
    start: str | None = None           # --from: continue training this checkpoint
    evaluate: bool = True
    device: str = "auto"
    nproc: int = 1                     # data-parallel processes (torchrun) per model
    precision: str = "auto"            # loop.PRECISIONS
    optimizer_impl: str = "auto"       # loop.OPTIMIZER_IMPLS
    compile: bool = False
    deterministic: bool = True
    measure_steps: int | None = None   # time this many steps, save nothing
    overwrite: bool = False
    progress: bool = True
    log_every: int = 10
    command: str = field(default_factory=lambda: shlex.join(["qbench", *sys.argv[1:]]))

    def preset_values(self) -> dict:
        steps = self.measure_steps if self.measure_steps is not None else self.steps
        return resolve_preset(self.preset, steps, self.batch_size, self.lr, self.micro_batch)


def check_spec(spec: RunSpec) -> dict:
    """The resolved preset, after the checks that need no file."""
    preset = spec.preset_values()
    from ..attention import KINDS as ATTENTION_KINDS

    if spec.kind != "pair" and spec.kind not in ATTENTION_KINDS:
        raise TrainError(f"unknown attention {spec.kind!r}; expected one of {', '.join(ATTENTION_KINDS)}")
    if spec.start is not None and preset.get("model") is not None:
        raise TrainError(f"--from: preset {spec.preset!r} describes a model shape of its own; continued training "
                         f"takes a preset without one (e.g. retrofit)")
    if spec.start is None and preset.get("model") is None:
        raise TrainError(f"preset {spec.preset!r} continues a checkpoint: pass --from PATH")
    if spec.measure_steps is not None and spec.measure_steps < 2:
        raise TrainError("--measure-steps must be at least 2")
    if spec.out is None and spec.measure_steps is None:
        raise TrainError("--out is needed (only --measure-steps runs without an output folder)")
    if spec.nproc < 1:
        raise TrainError(f"--processes must be at least 1, got {spec.nproc}")
    if spec.precision not in PRECISIONS:
        raise TrainError(f"unknown --precision {spec.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if spec.optimizer_impl not in OPTIMIZER_IMPLS:
        raise TrainError(f"unknown --optimizer-impl {spec.optimizer_impl!r}; expected one of {', '.join(OPTIMIZER_IMPLS)}")
    ddp.check_batch(preset["batch_size"], spec.nproc, preset.get("micro_batch"))
    return preset


@dataclass
class Inputs:
    tokens: Path
    tokenizer: Path | None             # None: the --from checkpoint's own tokenizer
    heldout: Path | None


def resolve_inputs(spec: RunSpec, model_tokenizer=None) -> Inputs:
    """Where the token file, tokenizer and held-out text come from; builds the token cache if needed
    (with `model_tokenizer`, a checkpoint's own tokenizer, when spec.start is set and no
    --tokenizer is given). Checks everything before any training starts."""
    corpus_dir = Path(spec.corpus) if spec.corpus else CORPUS_DIR
    if spec.tokenizer:
        tokenizer_dir = Path(spec.tokenizer)
    elif spec.start:
        if model_tokenizer is None:
            raise TrainError("--from: the checkpoint's tokenizer is needed to encode the corpus")
        tokenizer_dir = None
    else:
        tokenizer_dir = default_tokenizer_dir(corpus_dir)
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise corpus_missing(tokenizer_dir)
    if spec.tokens:
        tokens = Path(spec.tokens)
        if not tokens.is_file():
            raise TrainError(f"token file {tokens} not found")
        check_token_file(tokens, tokenizer_dir, None if tokenizer_dir else model_tokenizer)
    elif tokenizer_dir is not None:
        tokens = corpus_token_file(corpus_dir, tokenizer_dir)
    else:
        tokens = model_token_file(corpus_dir, model_tokenizer)
    heldout = None
    if spec.evaluate and spec.measure_steps is None:
        heldout = Path(spec.heldout) if spec.heldout else default_heldout(corpus_dir)
        if not heldout.is_file():
            raise TrainError(f"held-out text {heldout} not found: `qbench data corpus` builds it "
                             f"(or pass --heldout FILE, or --no-eval)")
    return Inputs(tokens, tokenizer_dir, heldout)


def _kernel_table_version() -> str:
    from ..attention.triton_softpick import config_table_version

    return config_table_version()


def _set_determinism(device, enabled: bool) -> None:
    import torch

    if device.type != "cuda" or not enabled:
        return
    # deterministic cuBLAS and torch kernels where they exist (warn, never fail, where not); the
    # softpick kernel always runs the block sizes of its committed config table
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def _attention_backend(kind: str, device) -> str:
    if kind == "softmax":
        return "torch sdpa"
    if device.type == "cuda" and os.environ.get("QBENCH_SOFTPICK_KERNEL", "1") != "0":
        try:
            from ..attention import triton_softpick

            if triton_softpick.is_available():
                return "triton kernel (qbench.attention.triton_softpick)"
        except ImportError:
            pass
    return "torch reference (qbench.attention.reference)"


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

def train_one(spec: RunSpec, inputs: Inputs | None = None) -> dict:
    """Train one model as `spec` says; returns (and writes) its summary (the measurement with
    --measure-steps)."""
    return train_model(spec, inputs)[1]


def train_model(spec: RunSpec, inputs: Inputs | None = None):
    """Train one model as `spec` says and save it; returns (model as saved, summary). In a
    data-parallel run (torchrun) every rank trains; rank 0 saves and returns the summary, the
    others return None for it."""
    preset = check_spec(spec)
    if spec.kind == "pair":
        raise TrainError("train_model trains one model; use train_pair for --pair")
    ctx, device = ddp.init(spec.device)
    try:
        return _train(spec, preset, inputs, ctx, device)
    finally:
        ddp.close(ctx)


def _train(spec: RunSpec, preset: dict, inputs: Inputs | None, ctx: ddp.Dist, device):
    measuring = spec.measure_steps is not None
    out = Path(spec.out) if spec.out else None
    if out is not None and ctx.main:
        check_out_dir(out, spec.overwrite or measuring)
    started = time.time()

    import torch

    from .loop import precision_of, state_hash, train_loop
    from .start import fresh_model, from_checkpoint, vocab_rows

    _set_determinism(device, spec.deterministic)
    if spec.start:
        start = from_checkpoint(spec.start, spec.kind)
        inputs = inputs or _resolve_once(spec, ctx, start.tokenizer)
        tokenizer = load_tokenizer(inputs.tokenizer) if inputs.tokenizer else start.tokenizer
        model, origin = start.model, start.origin
    else:
        inputs = inputs or _resolve_once(spec, ctx)
        tokenizer = load_tokenizer(inputs.tokenizer)
        model = fresh_model(preset, spec.kind, spec.seed, tokenizer)
        origin = {"fresh": True, "seed": spec.seed}
    if out is not None and ctx.main:
        out = prepare_out_dir(out, spec.overwrite or measuring)   # the inputs are there: now the folder
    tokens = load_tokens(inputs.tokens)
    context = preset["context"]
    vocab = vocab_rows(model)
    if len(tokens) and int(tokens.max()) >= vocab:
        raise TrainError(f"token file {inputs.tokens} holds id {int(tokens.max())}, outside the vocabulary "
                         f"({vocab}): was it encoded with this tokenizer?")
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and context > max_positions:
        raise TrainError(f"preset context {context} exceeds the model's max_position_embeddings {max_positions}")
    windows = None
    if inputs.heldout is not None and ctx.main:
        windows = heldout_windows(inputs.heldout, tokenizer, context, preset["eval_windows"])
    init_hash = state_hash(model) if ctx.main else None
    params = sum(p.numel() for p in model.parameters())
    precision = precision_of(spec.precision, device)
    if precision == "bf16":
        model.to(torch.bfloat16)
    model.to(device)
    warm = max(1, min(5, preset["steps"] // 4)) if measuring else None
    result, details = train_loop(
        model, tokens, preset, seed=spec.seed, device=device, ctx=ctx, precision=precision,
        optimizer_impl=spec.optimizer_impl, compile=spec.compile,
        log_path=out / LOG_FILE if out is not None and ctx.main and not measuring else None,
        log_every=spec.log_every, progress=spec.progress, desc=f"{spec.preset} {spec.kind}", mark_after=warm)
    if not ctx.main:
        return model, None
    token_file_sha = file_sha256(inputs.tokens)
    settings = {"precision_mode": precision, "optimizer_impl": details["optimizer_impl"], "compile": spec.compile,
                "compiled_parts": details["compiled"], "distributed": details["distributed"]}
    if measuring:
        return model, _measurement(spec, preset, result, settings, params, device, out, warm)

    save_dtype = getattr(torch, preset["save_dtype"])
    model.eval()
    if not spec.start:
        tokenizer.model_max_length = context  # what the model was trained on (config: max_position_embeddings)
    from .start import save_trained

    saved_format = save_trained(model, tokenizer, out, spec.kind, save_dtype)
    model.float()  # the weights exactly as saved, computed in float32 (bf16 autocast on CUDA)
    autocast = precision != "fp32"
    batch_size, steps = preset["batch_size"], preset["steps"]
    recipe = {"preset_values": preset, "seed": spec.seed, "precision": precision,
              "optimizer_impl": details["optimizer_impl"], "compile": spec.compile,
              "start": origin.get("content_hash"), "token_file_sha256": token_file_sha}
    cuda = device.type == "cuda"
    summary = {
        "status": "done",
        "command": spec.command,
        "process_command": shlex.join([Path(sys.executable).name, show_path(sys.argv[0]), *sys.argv[1:]]),
        "preset": preset["name"],
        "preset_values": preset,
        "attention": spec.kind,
        "attention_backend": _attention_backend(spec.kind, device),
        "start": origin,
        "seed": spec.seed,
        "steps": steps,
        "batch_size": batch_size,
        "context": context,
        "tokens_seen": steps * batch_size * context,
        "epochs_over_token_file": round(steps * batch_size * (context + 1) / len(tokens), 3),
        "parameters": params,
        "final_train_loss_mean_last_50": round(sum(result.last_losses) / max(1, len(result.last_losses)), 5),
        "train_seconds": round(result.train_seconds, 2),
        "tokens_per_second": round(steps * batch_size * context / max(result.train_seconds, 1e-9)),
        "peak_memory_gib": round(result.peak_memory_bytes / 2**30, 2) if result.peak_memory_bytes else None,
        "device": device_name(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES") if cuda else None,
        "precision": PRECISION_TEXT[precision],
        **settings,
        "deterministic_algorithms": (
            "torch.use_deterministic_algorithms(True, warn_only=True): deterministic cuBLAS and torch kernels "
            "where they exist; torch's flash-attention backward (softmax) is not bitwise deterministic; the "
            "softpick kernel runs the block sizes of its config table (version "
            f"{_kernel_table_version()})" if cuda and spec.deterministic
            else "CPU: bitwise deterministic" if not (cuda or ctx.enabled)
            else f"CPU, {ctx.world} gloo processes: bitwise repeatability not checked" if not cuda else "off"),
        "versions": versions(),
        "git_commit": git_commit(),
        "token_file": {"path": show_path(inputs.tokens), "tokens": int(len(tokens)), "dtype": str(tokens.dtype),
                       "sha256": token_file_sha, "made_from": read_sidecar(inputs.tokens)},
        "tokenizer": {"path": show_path(inputs.tokenizer) if inputs.tokenizer else "the --from checkpoint's own",
                      "tokenizer_json_sha256": file_sha256(Path(inputs.tokenizer) / "tokenizer.json")
                      if inputs.tokenizer and (Path(inputs.tokenizer) / "tokenizer.json").is_file() else None,
                      "fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer)},
        "init_hash": init_hash,
        "data_order_hash": result.data_order_hash,
        "recipe_hash": recipe_hash(recipe),
        "checkpoint": {"format": saved_format, "dtype": preset["save_dtype"],
                       "weights_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")),
                       "checkpoint_bytes": sum(p.stat().st_size for p in out.iterdir()
                                               if p.is_file() and p.name not in (LOG_FILE, SUMMARY_FILE))},
    }
    if windows is not None:
        from .loop import evaluate_perplexity

        ppl = evaluate_perplexity(model, windows, device, autocast=autocast)
        unigram = unigram_perplexity(tokens, windows[:, 1:], len(tokenizer))
        summary["heldout"] = {"file": show_path(inputs.heldout), "windows": int(len(windows)), "context": context,
                              "predicted_tokens": int(windows[:, 1:].size),
                              "weights": f"as saved ({preset['save_dtype']})",
                              "perplexity": round(ppl, 4), "unigram_perplexity": round(unigram, 4),
                              "unigram": "add-one smoothed, fitted on the training token file"}
    summary["total_seconds"] = round(time.time() - started, 2)
    write_json(out / SUMMARY_FILE, summary)
    return model.to(save_dtype), summary


def _resolve_once(spec: RunSpec, ctx: ddp.Dist, model_tokenizer=None) -> Inputs:
    """resolve_inputs, encoding the corpus (when needed) on rank 0 only; the others then find it cached."""
    if ctx.main:
        inputs = resolve_inputs(spec, model_tokenizer)
    ddp.barrier(ctx)
    return inputs if ctx.main else resolve_inputs(spec, model_tokenizer)


def _measurement(spec: RunSpec, preset: dict, result, settings: dict, params: int, device, out, warm: int) -> dict:
    """tokens/s over the steps after the first `warm` (compile, allocator and autotuning warm-up)."""
    t_warm = dict(result.marks)[warm]
    timed = preset["steps"] - warm
    step_tokens = preset["batch_size"] * preset["context"]
    seconds = result.train_seconds - t_warm
    tok_s = timed * step_tokens / max(seconds, 1e-9)
    full = resolve_preset(spec.preset, spec.steps, spec.batch_size, spec.lr, spec.micro_batch)["steps"]
    measured = {
        "preset": spec.preset, "attention": spec.kind, "parameters": params, "device": device_name(device),
        "batch_size": preset["batch_size"], "context": preset["context"], "micro_batch": settings["distributed"]["micro_batch"],
        **settings, "steps_timed": timed, "warmup_steps_untimed": warm,
        "seconds_per_step": round(seconds / timed, 4), "tokens_per_second": round(tok_s),
        "peak_memory_gib": round(result.peak_memory_bytes / 2**30, 2) if result.peak_memory_bytes else None,
        "preset_steps": full, "preset_tokens": full * step_tokens,
        "preset_minutes": round(full * step_tokens / tok_s / 60, 1),
        "tokens_in_30_minutes": int(tok_s * 1800),
        "final_loss": round(result.last_losses[-1], 4) if result.last_losses else None,
        "command": spec.command, "versions": versions(),
    }
    if out is not None:
        name = MEASURE_FILE if spec.kind == "pair" else f"measure_{spec.kind}.json"
        write_json(Path(out) / name, measured)
    return measured


def main(argv=None) -> int:
    """`python -m qbench.train.train ARGS` = `qbench train ARGS` (what --pair, --processes and torchrun run)."""
    from ..cli import main as qbench

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--recorded-command" or a.startswith("--recorded-command=") for a in argv):
        argv += ["--recorded-command", shlex.join(["qbench", "train", *argv])]
    return qbench(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
