"""Pair training: `qbench train --preset NAME --attention softmax|softpick --out DIR` and
`qbench train --preset NAME --pair --out DIR` (DIR/softmax and DIR/softpick).

The two models of a pair share everything but the attention function: the preset (shape and
recipe), the seed, hence the initial weights (built on the CPU under one seed; attention has no
parameters) and the data order (one seeded numpy generator over the token file). Each run writes
into its folder: the checkpoint (config.json, model.safetensors, tokenizer files), train_log.csv
(one row per step: step, tokens, loss, lr, grad_norm, seconds, batch_hash) and train_summary.json
(command, preset, versions, held-out perplexity next to a unigram baseline, hashes that prove the
pair shares init and data).

Data: a flat uint16 token file (`encode_corpus`: <s> doc </s> per document). Each epoch cuts it
into windows of context + 1 tokens at a random offset and visits them in a random order; a
batch is `batch_size` such windows (inputs = first context tokens, targets = the next ones).

Only the standard library is imported at module level (the CLI imports this for registration);
torch and numpy load when a run starts.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import QBenchError
from ..files import atomic_write_text, file_sha256, make_writable_dir
from ..paths import CORPUS_DIR, REPO_ROOT
from .corpus import CorpusError
from .presets import COMMON, PRESETS

KINDS = ("softmax", "softpick")
TOKEN_CACHE = "train.tokens.u16"            # encoded train.txt, next to it in the corpus folder
LOG_FILE = "train_log.csv"
SUMMARY_FILE = "train_summary.json"
PAIR_SUMMARY_FILE = "pair_summary.json"
LOG_COLUMNS = ("step", "tokens", "loss", "lr", "grad_norm", "seconds", "batch_hash")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


class TrainError(QBenchError, RuntimeError):
    """Training cannot start or did not finish: bad preset, missing corpus, unwritable folder..."""


# ---------------------------------------------------------------------------------------------
# Presets, inputs, output folders
# ---------------------------------------------------------------------------------------------

def resolve_preset(name: str, steps: int | None = None, batch_size: int | None = None) -> dict:
    """The preset `name` (a copy) with overrides applied and the common recipe merged in."""
    if name not in PRESETS:
        raise TrainError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    preset = json.loads(json.dumps(PRESETS[name]))
    preset = {"name": name, **COMMON, **preset}
    for key, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None:
            if int(value) < 1:
                raise TrainError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
            preset[key] = int(value)
    return preset


def corpus_missing(what: Path) -> TrainError:
    return TrainError(f"corpus not built yet: {what} not found; `qbench data corpus` builds it "
                      f"(or pass --tokens FILE and --tokenizer DIR)")


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


def default_token_file(corpus_dir: Path | None = None, tokenizer_dir: Path | None = None) -> Path:
    """corpus_dir/train.tokens.u16, encoded from train.txt on first use, and again whenever
    train.txt or tokenizer.json differ from those it was encoded from (recorded, by sha256, in the
    sidecar train.tokens.u16.json). Written atomically: concurrent runs never see half a file."""
    corpus_dir = Path(corpus_dir or CORPUS_DIR)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else default_tokenizer_dir(corpus_dir)
    train_txt = corpus_dir / "train.txt"
    if not train_txt.is_file():
        raise corpus_missing(train_txt)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise corpus_missing(tokenizer_dir / "tokenizer.json")
    cache = corpus_dir / TOKEN_CACHE
    made_from = {"train_txt_sha256": file_sha256(train_txt),
                 "tokenizer_json_sha256": file_sha256(tokenizer_dir / "tokenizer.json")}
    made = _read_sidecar(cache) if cache.is_file() else None
    if made is not None and {k: made.get(k) for k in made_from} == made_from:
        return cache
    from .tokenizer import encode_corpus

    print(f"qbench train: encoding {train_txt} -> {cache} (once per corpus and tokenizer)", file=sys.stderr)
    ids = encode_corpus(corpus_dir, tokenizer_dir, cache)   # written atomically
    _write_json(_sidecar(cache), {**made_from, "tokens": int(len(ids)),
                                  "layout": "<s> doc </s> per document of train.txt, uint16, numpy.save"})
    return cache


def _sidecar(token_file: Path) -> Path:
    return Path(token_file).with_name(Path(token_file).name + ".json")


def _read_sidecar(token_file: Path) -> dict | None:
    try:
        return json.loads(_sidecar(token_file).read_text())
    except (OSError, ValueError):
        return None


def check_token_file(token_file: Path, tokenizer_dir: Path) -> None:
    """Refuse a token file whose sidecar says it was encoded with another tokenizer."""
    made_from = _read_sidecar(token_file)
    tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
    if made_from and made_from.get("tokenizer_json_sha256") and tokenizer_json.is_file():
        if made_from["tokenizer_json_sha256"] != file_sha256(tokenizer_json):
            raise TrainError(f"token file {token_file} was encoded with another tokenizer than {tokenizer_dir} "
                             f"(see {_sidecar(token_file)}); encode it again (delete it and run without --tokens)")


def prepare_out_dir(out: Path, overwrite: bool) -> Path:
    """Create `out` and check that it is writable and holds no checkpoint (unless overwrite)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"output folder {out} is a file")
    if not overwrite and out.is_dir() and any((out / name).exists() for name in CHECKPOINT_FILES):
        raise TrainError(f"output folder {out} already holds a checkpoint; pass --overwrite to replace it")
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
        raise TrainError(f"tokenizer in {folder} could not be loaded: {type(err).__name__}: {err}") from None


def load_tokens(path: Path):
    """A token file as a uint16 array: the `numpy.save` format that `encode_corpus` writes, or raw
    little-endian uint16 (any other file)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"token file {path} not found (write one with encode_corpus, or leave out --tokens "
                         f"to encode the corpus: `qbench data corpus` builds it)")
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    if is_npy:
        try:
            tokens = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise TrainError(f"token file {path} could not be read: {err}") from None
        if tokens.dtype != np.uint16 or tokens.ndim != 1:
            raise TrainError(f"token file {path} holds {tokens.dtype} {tokens.shape}, expected a flat uint16 array")
        return tokens
    if path.stat().st_size % 2:
        raise TrainError(f"token file {path} has an odd size: not a uint16 token file")
    return np.fromfile(path, dtype="<u2").astype(np.uint16)


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


def unigram_perplexity(train_tokens, targets, vocab: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on the training tokens."""
    import numpy as np

    counts = np.bincount(train_tokens, minlength=vocab).astype(np.float64)
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab)
    return float(math.exp(-logp[np.asarray(targets).reshape(-1)].mean()))


# ---------------------------------------------------------------------------------------------
# Data order, schedule
# ---------------------------------------------------------------------------------------------

class WindowSampler:
    """Start positions of windows of `window` tokens: each epoch picks a random offset, cuts the
    token stream into consecutive windows from there and shuffles them. Seeded, so two runs with
    one seed on one token file see the same batches in the same order."""

    def __init__(self, n_tokens: int, window: int, batch_size: int, seed: int):
        import numpy as np

        if n_tokens < window + 1:
            raise TrainError(f"the token file has {n_tokens} tokens, fewer than one window of {window}")
        self.n_tokens, self.window, self.batch_size = n_tokens, window, batch_size
        self.rng = np.random.default_rng(seed)
        self.queue = np.zeros(0, dtype=np.int64)

    def next_starts(self):
        import numpy as np

        while len(self.queue) < self.batch_size:
            offset = int(self.rng.integers(self.window))
            if self.n_tokens - offset < self.window:
                offset = 0
            count = (self.n_tokens - offset) // self.window
            starts = offset + self.window * self.rng.permutation(count)
            self.queue = np.concatenate([self.queue, starts])
        starts, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size:]
        return starts


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate of step `step` (0-based): linear warmup to `peak`, then cosine to min_ratio * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_hash(batch) -> str:
    return hashlib.sha256(batch.astype("<u2").tobytes()).hexdigest()[:16]


def state_hash(model) -> str:
    """sha256 of all tensors of the state dict (float32 bytes, sorted by name)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

@dataclass
class RunSpec:
    preset: str
    kind: str
    out: str
    seed: int = 0
    steps: int | None = None
    batch_size: int | None = None
    tokens: str | None = None          # uint16 token file; None = encode the corpus (cached)
    tokenizer: str | None = None       # tokenizer folder; None = CORPUS_DIR/tokenizer
    heldout: str | None = None         # held-out split file; None = CORPUS_DIR/heldout_eval.txt
    evaluate: bool = True
    device: str = "auto"
    compile: bool = False
    autocast: bool | None = None       # bf16 autocast; None = on CUDA only
    deterministic: bool = True
    overwrite: bool = False
    progress: bool = True
    log_every: int = 10
    command: str = field(default_factory=lambda: shlex.join(["qbench", *sys.argv[1:]]))


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise TrainError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def _set_determinism(device, enabled: bool) -> None:
    import torch

    if device.type != "cuda" or not enabled:
        return
    # deterministic cuBLAS and torch kernels where they exist (warn, never fail, where not); the
    # softpick kernel with fixed block sizes (autotuning picks by timing, which can differ per run)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("QBENCH_SOFTPICK_AUTOTUNE", "0")
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


def lm_loss(hidden, head_weight, targets):
    import torch.nn.functional as F

    logits = F.linear(hidden, head_weight)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def build_model(preset: dict, kind: str, seed: int, tokenizer):
    """A fresh model of the preset: same weights for both kinds given the seed (built on the CPU)."""
    from ..model import new_model

    fields = dict(preset["model"])
    vocab = len(tokenizer)
    if fields.get("vocab_size") is None:
        fields["vocab_size"] = 64 * math.ceil(vocab / 64)
    if vocab > fields["vocab_size"]:
        raise TrainError(f"the tokenizer has {vocab} tokens but preset {preset['name']!r} has vocab_size "
                         f"{fields['vocab_size']}")
    fields.update(max_position_embeddings=preset["context"], bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise TrainError("the tokenizer needs bos and eos tokens")
    return new_model(kind, seed=seed, **fields)


def _versions() -> dict:
    import numpy
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "numpy": numpy.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _show_path(path) -> str:
    """A path as the summary records it: relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass
class Inputs:
    tokens: Path
    tokenizer: Path
    heldout: Path | None


def resolve_inputs(spec: RunSpec) -> Inputs:
    """Where the token file, tokenizer and held-out text come from; builds the token cache if needed.
    Checks everything before any training starts."""
    tokenizer_dir = Path(spec.tokenizer) if spec.tokenizer else default_tokenizer_dir()
    if spec.tokens:
        tokens = Path(spec.tokens)
        if not tokens.is_file():
            raise TrainError(f"token file {tokens} not found")
        if not tokenizer_dir.is_dir():
            raise corpus_missing(tokenizer_dir)
        check_token_file(tokens, tokenizer_dir)
    else:
        tokens = default_token_file(None, tokenizer_dir)
    heldout = None
    if spec.evaluate:
        heldout = Path(spec.heldout) if spec.heldout else default_heldout()
        if not heldout.is_file():
            raise TrainError(f"held-out text {heldout} not found: `qbench data corpus` builds it "
                             f"(or pass --heldout FILE, or --no-eval)")
    return Inputs(tokens, tokenizer_dir, heldout)


def evaluate_perplexity(model, windows, device, autocast: bool, batch: int = 16) -> float:
    """exp(mean next-token loss) over all predicted positions of `windows` [n, context + 1]."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i:i + batch]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                hidden = model.model(x[:, :-1])[0]
                loss = lm_loss(hidden, model.lm_head.weight, x[:, 1:])
            total += float(loss) * x[:, 1:].numel()
            count += x[:, 1:].numel()
    return math.exp(total / count)


def train_one(spec: RunSpec, inputs: Inputs | None = None) -> dict:
    """Train one model as `spec` says; returns (and writes) its summary."""
    return train_model(spec, inputs)[1]


def train_model(spec: RunSpec, inputs: Inputs | None = None):
    """Train one model as `spec` says and save it; returns (model as saved, summary)."""
    if spec.kind not in KINDS:
        raise TrainError(f"unknown attention {spec.kind!r}; expected one of {', '.join(KINDS)}")
    preset = resolve_preset(spec.preset, spec.steps, spec.batch_size)
    out = prepare_out_dir(Path(spec.out), spec.overwrite)
    inputs = inputs or resolve_inputs(spec)
    started = time.time()

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..model import save_checkpoint

    device = pick_device(spec.device)
    _set_determinism(device, spec.deterministic)
    tokenizer = load_tokenizer(inputs.tokenizer)
    tokens = load_tokens(inputs.tokens)
    context, batch_size, steps = preset["context"], preset["batch_size"], preset["steps"]
    model = build_model(preset, spec.kind, spec.seed, tokenizer)
    vocab = model.config.vocab_size
    if len(tokens) and int(tokens.max()) >= vocab:
        raise TrainError(f"token file {inputs.tokens} holds id {int(tokens.max())}, outside the vocabulary "
                         f"({vocab}): was it encoded with this tokenizer?")
    windows = None
    if inputs.heldout is not None:
        windows = heldout_windows(inputs.heldout, tokenizer, context, preset["eval_windows"])
    init_hash = state_hash(model)
    params = sum(p.numel() for p in model.parameters())
    model.to(device).train()

    cuda = device.type == "cuda"
    autocast = cuda if spec.autocast is None else spec.autocast
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    opt_cfg = preset["optimizer"]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": opt_cfg["weight_decay"]}, {"params": vectors, "weight_decay": 0.0}],
        lr=preset["lr"], betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"], **({"fused": True} if cuda else {}))
    loss_fn = lm_loss
    if spec.compile:
        # compile the parts around attention (norms, MLPs, head + loss): the attention call, and
        # with it the softpick kernel, stays eager; the state dict keeps its names
        for layer in model.model.layers:
            for part in (layer.attn_norm, layer.mlp_norm, layer.mlp):
                part.compile()
        model.model.norm.compile()
        loss_fn = torch.compile(lm_loss)

    sampler = WindowSampler(len(tokens), context + 1, batch_size, spec.seed)
    offsets = np.arange(context + 1, dtype=np.int64)
    order = hashlib.sha256()
    params_list = list(model.parameters())
    log_path = out / LOG_FILE
    pending: list[tuple] = []
    last_losses: list[float] = []
    bar = tqdm(total=steps, desc=f"{spec.preset} {spec.kind}", unit="step", disable=not spec.progress,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    with open(log_path, "w", newline="") as log_file:
        writer = csv.writer(log_file)
        writer.writerow(LOG_COLUMNS)
        t0 = time.perf_counter()
        last_flush_time, last_flush_step = t0, 0
        for step in range(steps):
            batch = tokens[sampler.next_starts()[:, None] + offsets]
            digest = batch_hash(batch)
            order.update(digest.encode())
            x = torch.from_numpy(batch.astype(np.int64))
            x = x.pin_memory().to(device, non_blocking=True) if cuda else x
            lr = lr_at(step, preset["lr"], preset["warmup_steps"], steps, preset["min_lr_ratio"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                hidden = model.model(x[:, :-1])[0]
                loss = loss_fn(hidden, model.lm_head.weight, x[:, 1:])
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params_list, preset["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending.append((step + 1, lr, loss.detach(), grad_norm.detach(), digest, time.perf_counter() - t0))
            if len(pending) >= spec.log_every or step + 1 == steps:
                values = torch.stack([torch.stack([p[2].float(), p[3].float()]) for p in pending]).tolist()
                for (n, lr_n, _, _, h, sec), (loss_v, gn_v) in zip(pending, values):
                    if not math.isfinite(loss_v):
                        raise TrainError(f"{spec.kind}: the loss became {loss_v} at step {n} (lr {lr_n:.3g})")
                    writer.writerow([n, n * batch_size * context, f"{loss_v:.5f}", f"{lr_n:.6g}",
                                     f"{gn_v:.4f}", f"{sec:.3f}", h])
                    last_losses = (last_losses + [loss_v])[-50:]
                log_file.flush()
                now = time.perf_counter()
                done = pending[-1][0]
                tok_s = (done - last_flush_step) * batch_size * context / max(now - last_flush_time, 1e-9)
                bar.set_postfix(loss=f"{values[-1][0]:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                bar.update(done - last_flush_step)
                last_flush_time, last_flush_step = now, done
                pending = []
        if cuda:
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
    bar.close()

    save_dtype = getattr(torch, preset["save_dtype"])
    model.eval()
    tokenizer.model_max_length = context  # what the model was trained on (config: max_position_embeddings)
    save_checkpoint(model, tokenizer, out, dtype=save_dtype)
    model.float()  # the weights exactly as saved, computed in float32 (bf16 autocast on CUDA)
    summary = {
        "status": "done",
        "command": spec.command,
        "process_command": shlex.join([Path(sys.executable).name, _show_path(sys.argv[0]), *sys.argv[1:]]),
        "preset": preset["name"],
        "preset_values": preset,
        "attention": spec.kind,
        "attention_backend": _attention_backend(spec.kind, device),
        "seed": spec.seed,
        "steps": steps,
        "batch_size": batch_size,
        "context": context,
        "tokens_seen": steps * batch_size * context,
        "epochs_over_token_file": round(steps * batch_size * (context + 1) / len(tokens), 3),
        "parameters": params,
        "final_train_loss_mean_last_50": round(sum(last_losses) / max(1, len(last_losses)), 5),
        "train_seconds": round(train_seconds, 2),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores, "
                                                                  f"{torch.get_num_threads()} threads)",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES") if cuda else None,
        "precision": "bf16 autocast, fp32 master weights" if autocast else "float32",
        "compile": spec.compile,
        "deterministic_algorithms": (
            "torch.use_deterministic_algorithms(True, warn_only=True): deterministic cuBLAS and torch kernels "
            "where they exist; torch's flash-attention backward (softmax) is not bitwise deterministic; the "
            "softpick kernel runs fixed block sizes (QBENCH_SOFTPICK_AUTOTUNE="
            f"{os.environ.get('QBENCH_SOFTPICK_AUTOTUNE', '1')})" if cuda and spec.deterministic
            else "CPU: bitwise deterministic" if not cuda else "off"),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "token_file": {"path": _show_path(inputs.tokens), "tokens": int(len(tokens)),
                       "sha256": file_sha256(inputs.tokens), "made_from": _read_sidecar(inputs.tokens)},
        "tokenizer": {"path": _show_path(inputs.tokenizer),
                      "tokenizer_json_sha256": file_sha256(Path(inputs.tokenizer) / "tokenizer.json")
                      if (Path(inputs.tokenizer) / "tokenizer.json").is_file() else None},
        "init_hash": init_hash,
        "data_order_hash": order.hexdigest()[:16],
        "checkpoint": {"dtype": preset["save_dtype"],
                       "model_safetensors_bytes": (out / "model.safetensors").stat().st_size,
                       "checkpoint_bytes": sum(p.stat().st_size for p in out.iterdir()
                                               if p.is_file() and p.name not in (LOG_FILE, SUMMARY_FILE))},
    }
    if windows is not None:
        ppl = evaluate_perplexity(model, windows, device, autocast=autocast)
        unigram = unigram_perplexity(tokens, windows[:, 1:], len(tokenizer))
        summary["heldout"] = {"file": _show_path(inputs.heldout), "windows": int(len(windows)), "context": context,
                              "predicted_tokens": int(windows[:, 1:].size),
                              "weights": f"as saved ({preset['save_dtype']})",
                              "perplexity": round(ppl, 4), "unigram_perplexity": round(unigram, 4),
                              "unigram": "add-one smoothed, fitted on the training token file"}
    summary["total_seconds"] = round(time.time() - started, 2)
    _write_json(out / SUMMARY_FILE, summary)
    return model.to(save_dtype), summary


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# A pair
# ---------------------------------------------------------------------------------------------

def train_pair(spec: RunSpec, concurrent: bool | None = None) -> dict:
    """Train spec.out/softmax and spec.out/softpick with one seed, one data order, one recipe.
    On CUDA the two run as two concurrent processes by default (tiny models leave the GPU idle
    between kernels), each on a GPU of its own when two are visible; each process is
    deterministic on its own. On the CPU they run one after the other. Writes
    spec.out/pair_summary.json."""
    resolve_preset(spec.preset, spec.steps, spec.batch_size)
    root = prepare_out_dir(Path(spec.out), overwrite=True)
    for kind in KINDS:
        prepare_out_dir(root / kind, spec.overwrite)
    inputs = resolve_inputs(spec)
    if concurrent is None:
        concurrent = spec.device != "cpu" and _cuda_available()
    started = time.time()
    if concurrent:
        summaries = _run_children(spec, inputs, root)
    else:
        summaries = {kind: train_one(_with(spec, kind=kind, out=str(root / kind)), inputs) for kind in KINDS}
    pair = {
        "command": spec.command,
        "preset": spec.preset,
        "seed": spec.seed,
        "concurrent_processes": concurrent,
        "device": summaries["softmax"].get("device"),
        "gpus": {kind: s.get("cuda_visible_devices") for kind, s in summaries.items()},
        "wall_seconds": round(time.time() - started, 2),
        "same_init": summaries["softmax"]["init_hash"] == summaries["softpick"]["init_hash"],
        "same_data_order": summaries["softmax"]["data_order_hash"] == summaries["softpick"]["data_order_hash"],
        "models": {kind: {key: s.get(key) for key in ("attention_backend", "steps", "tokens_seen", "parameters",
                                                       "final_train_loss_mean_last_50", "train_seconds",
                                                       "init_hash", "data_order_hash", "heldout")}
                   for kind, s in summaries.items()},
    }
    _write_json(root / PAIR_SUMMARY_FILE, pair)
    if not (pair["same_init"] and pair["same_data_order"]):
        raise TrainError(f"the two runs did not share init and data order: see {root / PAIR_SUMMARY_FILE}")
    return pair


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _with(spec: RunSpec, **changes) -> RunSpec:
    return RunSpec(**{**asdict(spec), **changes})


def _child_argv(spec: RunSpec, inputs: Inputs, kind: str, out: Path) -> list[str]:
    # absolute paths: the children run in the repository root, wherever the parent was started
    argv = [sys.executable, "-m", "qbench.train.train", "--preset", spec.preset, "--attention", kind,
            "--out", str(Path(out).resolve()), "--seed", str(spec.seed), "--tokens", str(Path(inputs.tokens).resolve()),
            "--tokenizer", str(Path(inputs.tokenizer).resolve()), "--device", spec.device,
            "--log-every", str(spec.log_every), "--no-progress", "--recorded-command", spec.command]
    for flag, value in (("--steps", spec.steps), ("--batch-size", spec.batch_size)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--heldout", str(Path(inputs.heldout).resolve())] if inputs.heldout else ["--no-eval"]
    argv += ["--compile"] if spec.compile else []
    argv += [] if spec.deterministic else ["--no-deterministic"]
    argv += ["--overwrite"] if spec.overwrite else []
    return argv


def _run_children(spec: RunSpec, inputs: Inputs, root: Path) -> dict:
    from tqdm.auto import tqdm

    preset = resolve_preset(spec.preset, spec.steps, spec.batch_size)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    child_env = _child_envs(spec.device)
    procs, logs, bars = {}, {}, {}
    for i, kind in enumerate(KINDS):
        (root / kind / LOG_FILE).unlink(missing_ok=True)
        logs[kind] = open(root / f"{kind}.log", "w")
        procs[kind] = subprocess.Popen(_child_argv(spec, inputs, kind, root / kind), stdout=logs[kind],
                                       stderr=subprocess.STDOUT, env={**env, **child_env[i]}, cwd=REPO_ROOT)
        bars[kind] = tqdm(total=preset["steps"], desc=f"{spec.preset} {kind}", unit="step", position=i,
                          disable=not spec.progress, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        while any([p.poll() is None for p in procs.values()]):  # a list: poll every process
            time.sleep(2.0)
            for kind in KINDS:
                _update_bar(bars[kind], root / kind / LOG_FILE)
            if any(p.returncode for p in procs.values()):  # one failed: the pair is lost, stop the other
                for p in procs.values():
                    if p.poll() is None:
                        p.terminate()
                for p in procs.values():
                    p.wait()
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        raise
    finally:
        for kind in KINDS:
            _update_bar(bars[kind], root / kind / LOG_FILE)
            bars[kind].close()
            logs[kind].close()
    failed = {kind: p.returncode for kind, p in procs.items() if p.returncode}
    if failed:
        failed = {kind: rc for kind, rc in failed.items() if rc != -15} or failed  # not the one we stopped
        tails = "\n".join(f"--- {kind} (exit {rc}), end of {root / f'{kind}.log'}:\n"
                          + "\n".join((root / f"{kind}.log").read_text().splitlines()[-15:])
                          for kind, rc in failed.items())
        raise TrainError(f"training failed for {', '.join(failed)}\n{tails}")
    return {kind: json.loads((root / kind / SUMMARY_FILE).read_text()) for kind in KINDS}


def _child_envs(device: str) -> list[dict]:
    """Environment overrides of the two children: on the CPU half the cores each (instead of both
    fighting over all of them); on CUDA a GPU each when two are visible and the device is not
    pinned (cuda:N), else none (both share the one device)."""
    from ..sweep.runner import worker_devices

    if device == "cpu":
        return worker_devices(len(KINDS), "cpu")
    if device not in ("auto", "cuda") or not _cuda_available():
        return [{}, {}]
    try:
        return worker_devices(len(KINDS), "cuda")
    except ValueError:  # one GPU visible
        return [{}, {}]


def _update_bar(bar, log_path: Path) -> None:
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return
    if len(lines) < 2:
        return
    last = lines[-1].split(",")
    if len(last) != len(LOG_COLUMNS):
        return
    bar.set_postfix(loss=last[2], refresh=False)
    bar.update(int(last[0]) - bar.n)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help=f"training preset: {', '.join(PRESETS)}")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--attention", help="train one model: softmax or softpick")
    which.add_argument("--pair", action="store_true", help="train OUT/softmax and OUT/softpick (same seed, "
                                                           "init, data order and recipe)")
    parser.add_argument("--out", required=True, help="output folder (the checkpoint; with --pair, the pair's folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order (0)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size (sequences per step)")
    parser.add_argument("--tokens", help="uint16 token file (encode_corpus); default: the corpus's train.txt, "
                                         f"encoded once into {TOKEN_CACHE} next to it")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the corpus's tokenizer/)")
    parser.add_argument("--heldout", help="held-out split for perplexity (default: the corpus's heldout_eval.txt); "
                                          ".txt, .txt.gz or a .u16 token file")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out perplexity")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--compile", action="store_true", help="torch.compile norms, MLPs and the loss (off)")
    parser.add_argument("--no-deterministic", action="store_true",
                        help="on CUDA, do not ask torch for deterministic algorithms")
    parser.add_argument("--sequential", action="store_true",
                        help="with --pair on CUDA, train the two one after the other (default: two processes at once)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in the output folder")
    parser.add_argument("--prepare-only", action="store_true",
                        help="check the inputs, encode the corpus if needed, print what a run would use, and stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-every", type=int, default=10,
                        help="read the loss back from the device every N steps (every step is logged)")
    parser.add_argument("--recorded-command", help=argparse.SUPPRESS)


def spec_from_args(args) -> RunSpec:
    return RunSpec(preset=args.preset, kind=args.attention or "pair", out=args.out, seed=args.seed,
                   steps=args.steps, batch_size=args.batch_size, tokens=args.tokens, tokenizer=args.tokenizer,
                   heldout=args.heldout, evaluate=not args.no_eval, device=args.device, compile=args.compile,
                   deterministic=not args.no_deterministic, overwrite=args.overwrite,
                   progress=not args.no_progress, log_every=max(1, args.log_every),
                   command=args.recorded_command or shlex.join(["qbench", *sys.argv[1:]]))


def cmd_train(args) -> int:
    try:
        spec = spec_from_args(args)
        if args.prepare_only:
            print(format_prepared(spec, resolve_inputs(spec)))
            return 0
        if args.pair:
            pair = train_pair(spec, concurrent=False if args.sequential else None)
            print(format_pair(pair))
        else:
            summary = train_one(spec)
            print(format_summary(summary, spec.out))
    except (TrainError, CorpusError) as err:   # CorpusError: a missing split or tokenizer file
        print(f"qbench: error: {err}", file=sys.stderr)
        return 2
    return 0


def format_prepared(spec: RunSpec, inputs: Inputs) -> str:
    preset = resolve_preset(spec.preset, spec.steps, spec.batch_size)
    n_tokens = len(load_tokens(inputs.tokens))
    seen = preset["steps"] * preset["batch_size"] * preset["context"]
    lines = [f"preset {preset['name']}: {preset['steps']} steps x {preset['batch_size']} x {preset['context']} "
             f"= {seen / 1e6:.1f}M tokens seen ({seen / max(n_tokens, 1):.1f} passes over the token file)"]
    for label, path in (("tokens", inputs.tokens), ("sidecar", _sidecar(inputs.tokens)),
                        ("tokenizer", inputs.tokenizer), ("held-out", inputs.heldout)):
        if path is not None and Path(path).exists():
            size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() \
                else Path(path).stat().st_size
            lines.append(f"  {label:9s} {_show_path(path)} ({size / 1e6:.2f} MB)")
    lines.append(f"  {n_tokens:,} training tokens")
    return "\n".join(lines)


def format_summary(summary: dict, out) -> str:
    held = summary.get("heldout")
    ppl = (f", held-out ppl {held['perplexity']:.2f} vs unigram {held['unigram_perplexity']:.1f}" if held else "")
    return (f"{summary['attention']}: {summary['steps']} steps, {summary['tokens_seen'] / 1e6:.1f}M tokens, "
            f"{summary['train_seconds']:.0f} s, final loss {summary['final_train_loss_mean_last_50']:.3f}{ppl} -> {out}")


def format_pair(pair: dict) -> str:
    lines = [f"pair {pair['preset']} (seed {pair['seed']}): same init {pair['same_init']}, "
             f"same data order {pair['same_data_order']}, {pair['wall_seconds']:.0f} s wall"]
    for kind, m in pair["models"].items():
        m = {**m, "attention": kind}
        lines.append("  " + format_summary(m, kind))
    return "\n".join(lines)


def register_train_command(subparsers) -> None:
    """Add `qbench train` to the CLI's subparsers."""
    parser = subparsers.add_parser("train", help="train a model or a softmax/softpick pair from a preset",
                                   description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train)


def main(argv=None) -> int:
    """`python -m qbench.train.train ARGS` = `qbench train ARGS` (what --pair runs in each process)."""
    parser = argparse.ArgumentParser(prog="qbench train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    if not args.recorded_command:
        args.recorded_command = shlex.join(["qbench", "train", *(sys.argv[1:] if argv is None else argv)])
    return cmd_train(args)


if __name__ == "__main__":
    sys.exit(main())
