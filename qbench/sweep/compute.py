"""One cell: quantize a fresh copy of an arm's model and evaluate it; returns the record to store.

A cell is a pure function of its `CellSpec` (everything it depends on is in the spec and hashed
into its key), so any executor (this process, worker processes, Ray tasks) can compute it; only
the driver writes the store. On CPU the key holds the torch thread count, which the cell sets
before it computes (GPTQ's weights depend on it), and the CPU (vector capability, model, flags:
qbench.identity.cpu_numerics); it does not hold the GPU model's reduction order; each record
states the thread count and device it ran with.

Per process, each arm is loaded once (lazily: not at all when every cell is stored) and kept on
the CPU as a master; each cell quantizes a copy on the cell's device. A cell that raises
(library error, out of memory, NaN) is returned as failed with its traceback; KeyboardInterrupt
and SystemExit pass through.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import math
import os
import platform
import re
import time
import traceback
from datetime import datetime, timezone

from .cells import CellSpec


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelSource:
    """The arms of a sweep, each loaded once per process (on first use) and kept on the CPU as a
    master; each cell gets its own copy on the cell's device. Also caches calibration batches."""

    def __init__(self, dtype: str = "float32"):
        self.dtype = dtype
        self._loaded = {}
        self._calib = {}
        self.load_seconds = 0.0

    def checkpoint(self, path: str, attention: str):
        key = (path, attention)
        if key not in self._loaded:
            import torch

            from ..model import load_model

            t0 = time.perf_counter()
            self._loaded[key] = load_model(path, attention=attention, device="cpu", dtype=getattr(torch, self.dtype))
            self.load_seconds += time.perf_counter() - t0
        return self._loaded[key]

    def fresh_model(self, spec: CellSpec):
        """A copy of the arm's model that the cell may change (quantization works in place)."""
        master = self.checkpoint(spec.model_path, spec.attention).model
        return copy.deepcopy(master).to(spec.device).eval()

    def calibration(self, spec: CellSpec):
        from ..quant import recipe_calibration

        c = spec.recipe.calib
        tokenizer = self.checkpoint(spec.model_path, spec.attention).tokenizer
        key = (spec.calibration_text, c["samples"], c["seq_len"], c["seed"], id(tokenizer))
        if key not in self._calib:
            self._calib[key] = recipe_calibration(spec.recipe, tokenizer, spec.calibration_text)
        return self._calib[key]


def base_record(spec: CellSpec, run_id: str | None = None, attempt: int = 1) -> dict:
    ident = spec.identity
    calibration = None
    if ident["calibration"] is not None:
        calibration = {**ident["calibration"], "text": spec.calibration_text}
    return {
        "key": spec.key,
        "status": None,
        "sweep": spec.sweep,
        "model": {"arm": spec.arm, "attention": spec.attention, "hash": ident["model"]["hash"],
                  "path": spec.model_path},
        "recipe": ident["recipe"],
        "entry": spec.entry,
        "bits": spec.bits,
        "label": spec.label,
        "calib_seed": spec.calib_seed,
        "tasks": list(spec.tasks),
        "limit": spec.limit,
        "calibration": calibration,
        "eval": dict(spec.eval),
        "metrics": None,
        "items": None,
        "n_samples": None,
        "quant_report": None,
        "attention_backends": None,
        "versions": ident["versions"],
        "code_versions": ident["code"],
        "runtime": ident["runtime"],
        "device": {**ident["device"], "dtype": spec.dtype},
        "seconds": None,
        "timing": {},
        "started_at": None,
        "finished_at": None,
        "run_id": run_id,
        "attempt": attempt,
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                 "node": platform.node(), "pid": os.getpid(), "torch_threads": _torch_threads(),
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "error": None,
        "traceback": None,
        "log": None,
        "identity": ident,
    }


_PROGRESS = re.compile(r"\d+%\|.*\|")   # progress-bar lines are left out of a cell's log


class _Tail(io.TextIOBase):
    """Keeps the last `limit` characters written (a cell's console output: library warnings and
    progress bars stay out of the sweep's own output and go into the cell's record)."""

    def __init__(self, limit: int = 4000):
        self.limit, self.text = limit, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text = (self.text + s)[-4 * self.limit:]
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> str:
        lines = [line.split("\r")[-1].rstrip() for line in self.text.split("\n")]
        return "\n".join(line for line in lines if line and not _PROGRESS.search(line))[-self.limit:]


@contextlib.contextmanager
def _library_warnings_to(stream):
    """Log records of transformers (which logs through its own handler on the real stderr) go to
    `stream` too, i.e. into the cell's log rather than between the sweep's lines."""
    import logging

    logger = logging.getLogger("transformers")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    saved = logger.propagate, logger.handlers[:]
    logger.handlers = [handler]
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate, logger.handlers = saved[0], saved[1]


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # pragma: no cover
        return None


def _check_finite(metrics: dict) -> None:
    bad = [f"{task} {name}" for task, values in metrics.items() for name, v in values.items()
           if isinstance(v, float) and math.isnan(v)]
    if bad:
        raise FloatingPointError(f"NaN metrics: {', '.join(bad)}")


def compute_cell(spec: CellSpec, source: ModelSource, run_id: str | None = None,
                 attempt: int = 1) -> tuple[dict, dict | None]:
    """Compute one cell: (record with status done or failed, per-item results or None). Never
    raises for a failure of the cell itself. What libraries print meanwhile is kept out of the
    console and stored (its tail) in the record's `log`."""
    import torch

    threads = spec.identity["runtime"].get("cpu_threads")
    if threads and spec.device == "cpu" and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)   # the count the cell's key holds (GPTQ's numbers depend on it)
    record = base_record(spec, run_id, attempt)
    record["started_at"] = now()
    t0, cpu0 = time.perf_counter(), time.process_time()
    output = _Tail()
    items = None
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), _library_warnings_to(output):
            items = _compute(spec, source, record)
        _check_finite(record["metrics"])
        record["status"] = "done"
    except Exception as err:  # the cell failed; the sweep goes on
        record["status"] = "failed"
        record["metrics"] = None
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        items = None
    finally:
        gc.collect()
        cuda_error = _release_cuda_memory(torch)
    if cuda_error:  # a sticky CUDA error (e.g. illegal memory access): store the cell, then this process stops
        record["status"] = "failed"
        record["error"] = record["error"] or f"CUDA context lost: {cuda_error}"
        record["cuda_context_lost"] = True
        items = None
    record["seconds"] = time.perf_counter() - t0
    record["timing"]["cpu_seconds"] = time.process_time() - cpu0
    record["log"] = output.getvalue()
    record["finished_at"] = now()
    return record, items


def _release_cuda_memory(torch) -> str | None:
    """Free cached CUDA memory; the error text if the CUDA context is unusable after the cell."""
    if not torch.cuda.is_available():
        return None
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def stop_if_cuda_lost(record: dict) -> None:
    """After storing a cell that broke the CUDA context, no further cell can run in this process."""
    if record.get("cuda_context_lost"):
        raise SystemExit(f"CUDA context lost while computing {record['key']} (stored as failed); rerun the sweep")


def _compute(spec: CellSpec, source: ModelSource, record: dict) -> dict:
    """Quantize a fresh copy of the model and evaluate it; fills the record, returns the items."""
    from ..attention import backend_log

    timing = record["timing"]
    ckpt = source.checkpoint(spec.model_path, spec.attention)
    if ckpt.content_hash != spec.identity["model"]["hash"]:
        raise RuntimeError(f"{spec.model_path} changed since the sweep was expanded "
                           f"(content hash {ckpt.content_hash}, expected {spec.identity['model']['hash']})")
    t = time.perf_counter()
    model = source.fresh_model(spec)
    timing["copy"] = time.perf_counter() - t
    with backend_log() as backends:
        if spec.recipe is not None:
            from ..quant import quantize

            calib = None
            if spec.recipe.calib is not None:
                t = time.perf_counter()
                calib = source.calibration(spec)
                timing["calibration_batch"] = time.perf_counter() - t
            t = time.perf_counter()
            report = quantize(model, spec.recipe, spec.bits, calib=calib)
            timing["quantize"] = time.perf_counter() - t
            record["quant_report"] = report.to_dict()
        from ..eval import evaluate

        t = time.perf_counter()
        metrics, details, items = evaluate(
            model, ckpt.tokenizer, tasks=spec.tasks, limit=spec.limit, batch_size=spec.eval.get("batch_size"),
            max_batch_tokens=spec.eval.get("max_batch_tokens"), scorer=spec.eval.get("scorer", "qbench"),
            bootstrap_iters=spec.eval.get("bootstrap_iters", 1000), tasks_dir=spec.tasks_dir, online=False,
            return_details=True, return_items=True)
        timing["evaluate"] = time.perf_counter() - t
    record["metrics"] = metrics
    record["n_samples"] = details.get("n_samples")
    record["timing"]["evaluate_split"] = details.get("timing")
    record["attention_backends"] = sorted(backends)
    return items
