"""The runner: computes the cells of a sweep that the store does not hold yet.

Scale-out ready: a cell is a pure function of its `CellSpec` (checkpoint content, resolved
recipe, bits, tasks and limit, calibration text, device, dtype, library and code versions: all
in the spec, and all hashed into its key), and the result store (`RESULTS_DIR/cells/`, one
atomically written file per cell) is the only state shared between processes. Any engine that
can run `compute_cell(CellSpec.from_dict(d), ModelSource(...))` on a worker and write the record
with `Store.write` (Ray tasks, a cluster scheduler's array jobs, ...) can dispatch the cells of
`expand(sweep)` without a redesign; `--workers N` is the one-host version of this (one process
per GPU, each handed the next pending cell's spec when it is idle, so no cell runs twice).

Reproducibility: the key holds every input a cell's numbers depend on; it does not hold the
floating-point reduction order, which the number of CPU threads, the CPU's instruction set or
the GPU's kernels can change. Recomputing a cell under another thread count (e.g. `--workers 2`,
one thread each, instead of one process with two) can move its last digits, and GPTQ, which
rounds column by column, can amplify that; each record states the thread count it ran with.

Per process, the pair is loaded once (lazily: not at all when every cell is cached); each cell
quantizes a fresh copy of its model. A cell that raises (library error, out of memory, NaN) is
stored as failed with its traceback and the sweep goes on; a rerun retries failed cells and
never recomputes done ones.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .spec import CellSpec, Sweep
from .store import Store



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- per-process state
class ModelSource:
    """The pair of a sweep, loaded once per process (on first use) and kept on the CPU as masters;
    each cell gets its own copy on the cell's device. Also caches calibration batches."""

    def __init__(self, softmax_path, softpick_path, dtype: str = "float32"):
        self.paths = {"softmax": str(softmax_path), "softpick": str(softpick_path)}
        self.dtype = dtype
        self.pair = None
        self.load_seconds = 0.0
        self._calib = {}

    def checkpoint(self, kind: str):
        if self.pair is None:
            import torch

            from ..model import load_pair

            t0 = time.perf_counter()
            self.pair = load_pair(self.paths["softmax"], self.paths["softpick"], device="cpu",
                                  dtype=getattr(torch, self.dtype))
            self.load_seconds = time.perf_counter() - t0
        return getattr(self.pair, kind)

    def fresh_model(self, kind: str, device: str):
        """A copy of the model that the cell may change (quantization works in place)."""
        master = self.checkpoint(kind).model
        model = copy.deepcopy(master)
        return model.to(device).eval()

    def calibration(self, recipe, text_path: str):
        from ..quant import recipe_calibration

        c = recipe.calib
        key = (text_path, c["samples"], c["seq_len"], c["seed"])
        if key not in self._calib:
            tokenizer = self.checkpoint("softmax").tokenizer   # the pair shares its tokenizer
            self._calib[key] = recipe_calibration(recipe, tokenizer, text_path)
        return self._calib[key]


# ----------------------------------------------------------------------------- one cell
def base_record(spec: CellSpec, run_id: str | None = None, attempt: int = 1) -> dict:
    ident = spec.identity
    calibration = None
    if ident["calibration"] is not None:
        calibration = {**ident["calibration"], "text": spec.calibration_text}
    return {
        "key": spec.key,
        "status": None,
        "sweep": spec.sweep,
        "model": {"kind": spec.kind, "hash": ident["model"]["hash"], "path": spec.model_path},
        "recipe": ident["recipe"],
        "bits": spec.bits,
        "tasks": list(spec.tasks),
        "limit": spec.limit,
        "calibration": calibration,
        "eval": dict(spec.eval),
        "metrics": None,
        "n_samples": None,
        "quant_report": None,
        "versions": ident["versions"],
        "code_versions": ident["code"],
        "device": {**ident["device"], "dtype": spec.dtype},
        "seconds": None,
        "timing": {},
        "started_at": None,
        "finished_at": None,
        "run_id": run_id,
        "attempt": attempt,
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                 "torch_threads": _torch_threads(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
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


def compute_cell(spec: CellSpec, source: ModelSource, run_id: str | None = None, attempt: int = 1) -> dict:
    """Compute one cell and return its record (status done or failed). Never raises for a
    failure of the cell itself; KeyboardInterrupt and SystemExit pass through. What libraries
    print meanwhile is kept out of the console and stored (its tail) in the record's `log`."""
    import torch

    record = base_record(spec, run_id, attempt)
    record["started_at"] = _now()
    t0, cpu0 = time.perf_counter(), time.process_time()
    output = _Tail()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), _library_warnings_to(output):
            _compute(spec, source, record)
        _check_finite(record["metrics"])
        record["status"] = "done"
    except Exception as err:  # the cell failed; the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
    finally:
        gc.collect()
        cuda_error = _release_cuda_memory(torch)
    if cuda_error:  # a sticky CUDA error (e.g. illegal memory access): store the cell, then this process stops
        record["status"] = "failed"
        record["error"] = record["error"] or f"CUDA context lost: {cuda_error}"
        record["cuda_context_lost"] = True
    record["seconds"] = time.perf_counter() - t0
    record["timing"]["cpu_seconds"] = time.process_time() - cpu0
    record["log"] = output.getvalue()
    record["finished_at"] = _now()
    return record


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


def _compute(spec: CellSpec, source: ModelSource, record: dict) -> None:
    """Quantize a fresh copy of the model and evaluate it; fills the record's results."""
    timing = record["timing"]
    ckpt = source.checkpoint(spec.kind)
    if ckpt.content_hash != spec.identity["model"]["hash"]:
        raise RuntimeError(f"{spec.model_path} changed since the sweep was expanded "
                           f"(content hash {ckpt.content_hash}, expected {spec.identity['model']['hash']})")
    t = time.perf_counter()
    model = source.fresh_model(spec.kind, spec.device)
    timing["copy"] = time.perf_counter() - t
    if spec.recipe is not None:
        from ..quant import quantize

        calib = None
        if spec.recipe.calib is not None:
            t = time.perf_counter()
            calib = source.calibration(spec.recipe, spec.calibration_text)
            timing["calibration_batch"] = time.perf_counter() - t
        t = time.perf_counter()
        report = quantize(model, spec.recipe, spec.bits, calib=calib)
        timing["quantize"] = time.perf_counter() - t
        record["quant_report"] = report.to_dict()
    from ..eval import evaluate

    t = time.perf_counter()
    metrics, details = evaluate(model, ckpt.tokenizer, tasks=spec.tasks, limit=spec.limit,
                                batch_size=spec.eval.get("batch_size"),
                                max_batch_tokens=spec.eval.get("max_batch_tokens"),
                                scorer=spec.eval.get("scorer", "qbench"),
                                bootstrap_iters=spec.eval.get("bootstrap_iters", 1000),
                                tasks_dir=spec.tasks_dir, online=False, return_details=True)
    timing["evaluate"] = time.perf_counter() - t
    record["metrics"] = metrics
    record["n_samples"] = details.get("n_samples")


# ----------------------------------------------------------------------------- reporting lines
def _fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def short_metrics(metrics: dict | None) -> str:
    """One number or two per task: the paper's headline metrics."""
    if not metrics:
        return ""
    from ..report.cells import format_value, metric_label, task_metrics

    parts = []
    for task, values in metrics.items():
        shown = [f"{metric_label(task, m)} {format_value(m, values.get(m))}" for m in task_metrics(task, values)[:2]]
        parts.append(", ".join(shown))
    return " | ".join(parts)


def _what(record: dict) -> str:
    return "full precision" if record["recipe"] is None else f"{record['recipe']['name']} {record['bits']}-bit"


def cell_line(record: dict, position: str = "", eta: str | None = None) -> str:
    model = record["model"]["kind"]
    head = f"{position} {record['status']:6s} {model:8s} {_what(record):22s} {_fmt_seconds(record['seconds']):>6s}".strip()
    if record["status"] == "failed":
        body = (record["error"] or "").splitlines()[0][:200] if record["error"] else ""
    else:
        qr = record.get("quant_report")
        quant = f"{qr['bits_per_weight']:.2f} b/w, err {qr['weight_error']:.3g} | " if qr else ""
        body = quant + short_metrics(record["metrics"])
    tail = f"  (ETA {eta})" if eta else ""
    return f"{head}  {body}{tail}"


# ----------------------------------------------------------------------------- planning
@dataclass
class Plan:
    cells: list[CellSpec]
    cached: list[CellSpec]            # done in the store: never recomputed
    retry: list[CellSpec]             # failed in the store: computed again
    pending: list[CellSpec]           # missing: computed
    previous: dict = field(default_factory=dict)   # key -> stored record (done or failed)

    @property
    def todo(self) -> list[CellSpec]:
        """The cells to compute (failed and missing), in the sweep's order."""
        done = {c.key for c in self.cached}
        return [c for c in self.cells if c.key not in done]


def plan(cells: list[CellSpec], store: Store) -> Plan:
    cached, retry, pending, previous = [], [], [], {}
    for c in cells:
        record = store.read(c.key)
        if record is None:
            pending.append(c)
            continue
        previous[c.key] = record
        (cached if record["status"] == "done" else retry).append(c)
    return Plan(cells, cached, retry, pending, previous)


# ----------------------------------------------------------------------------- running
@dataclass
class Summary:
    total: int
    cached: int
    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    not_run: list[CellSpec] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run


def _print(line: str) -> None:
    print(line, flush=True)


def _writer(bar, log):
    """Lines above the progress bar (stdout, flushed: it may be a pipe to tee) or plain lines."""
    if bar.disable:
        return log

    def write(line: str) -> None:
        bar.write(line, file=sys.stdout)
        sys.stdout.flush()
    return write


def _progress_bar(total: int, cached: int, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=cached, unit="cell", dynamic_ncols=True, disable=None if progress else True,
                desc=desc, file=sys.stderr)


def run_cells(todo: list[CellSpec], store: Store, source: ModelSource, *, run_id: str, previous: dict,
              total: int, cached: int, progress: bool = True, desc: str = "cells", log=_print) -> Summary:
    """Compute `todo` in this process, writing each record as soon as it is done."""
    summary = Summary(total=total, cached=cached)
    t_start = time.perf_counter()
    bar = _progress_bar(total, cached, progress, desc)
    write = _writer(bar, log)
    computed_seconds = []
    try:
        for i, spec in enumerate(todo):
            bar.set_postfix_str(spec.label, refresh=True)
            attempt = previous.get(spec.key, {}).get("attempt", 0) + 1
            record = compute_cell(spec, source, run_id=run_id, attempt=attempt)
            store.write(record)
            stop_if_cuda_lost(record)
            (summary.done if record["status"] == "done" else summary.failed).append(record)
            computed_seconds.append(record["seconds"])
            left = len(todo) - i - 1
            eta = _fmt_seconds(sum(computed_seconds) / len(computed_seconds) * left) if left else None
            position = f"[{cached + i + 1}/{total}]"
            write(cell_line(record, position, eta))
            bar.update(1)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


def _set_pdeathsig():  # pragma: no cover - runs in the child
    """Workers die with the parent (kill -9 of the sweep leaves no orphan computing cells)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def worker_devices(n: int, device: str) -> list[dict]:
    """Environment overrides of each of `n` worker processes: a share of the CPU cores each (so
    that n processes' thread pools do not compete for all of them) and, on CUDA, one GPU each."""
    threads = str(max(1, (os.cpu_count() or 1) // n))
    cpu_share = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if device == "cuda":
        import torch

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
            str(i) for i in range(torch.cuda.device_count())]
        if n > len(ids):
            raise ValueError(f"--workers {n}: only {len(ids)} GPU(s) visible ({', '.join(ids) or 'none'}); "
                             f"one worker per GPU")
        return [{**cpu_share, "CUDA_VISIBLE_DEVICES": ids[i]} for i in range(n)]
    return [dict(cpu_share) for _ in range(n)]


def run_workers(n: int, sweep: Sweep, todo: list[CellSpec], store: Store, *,
                run_id: str, total: int, cached: int, progress: bool = True, log=_print) -> Summary:
    """Run `todo` in `n` worker processes (`worker_main`, one per GPU on CUDA), handing each idle
    worker the next cell's spec (JSON, `CellSpec.to_dict`) over its stdin, so no cell goes to two
    workers and a slow cell does not hold up the others. Workers report `@@cell KEY LINE` after
    storing a cell and `@@ready` when they want the next one; the parent draws the progress bar."""
    envs = worker_devices(n, sweep.device)
    summary = Summary(total=total, cached=cached)
    t_start = time.perf_counter()
    bar = _progress_bar(total, cached, progress, f"{sweep.name} ({n} workers)")
    write = _writer(bar, log)
    lock = threading.Lock()
    queue = [c.key for c in todo]
    by_key = {c.key: c for c in todo}
    running: dict[int, str | None] = {}
    finished = []
    procs = []
    for i in range(n):
        env = {**os.environ, **envs[i], "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-c", "import sys; from qbench.sweep.runner import worker_main; worker_main(sys.argv[1:])",
               str(sweep.softmax), str(sweep.softpick), sweep.dtype, str(store.root), run_id]
        procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1,
                                      preexec_fn=_set_pdeathsig if sys.platform == "linux" else None))

    def give_next(i: int, proc) -> None:
        with lock:
            key = queue.pop(0) if queue else None
            running[i] = key
            if key is not None:
                bar.set_postfix_str(", ".join(by_key[k].label for k in running.values() if k), refresh=True)
        try:
            if key is None:
                proc.stdin.close()
            else:
                proc.stdin.write(json.dumps(by_key[key].to_dict()) + "\n")
                proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def serve(i: int, proc) -> None:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line == "@@ready":
                give_next(i, proc)
            elif line.startswith("@@cell "):
                _, key, text = line.split(" ", 2)
                with lock:
                    finished.append(key)
                    done_now = len(finished)
                    left = len(todo) - done_now
                    elapsed = time.perf_counter() - t_start
                    eta = _fmt_seconds(elapsed / done_now * left) if left else None
                    write(f"[{cached + done_now}/{total}] {text}" + (f"  (ETA {eta})" if eta else "")
                          + f"  [worker {i}]")
                    bar.update(1)
            elif line.strip():
                with lock:
                    write(f"[worker {i}] {line}")

    threads = [threading.Thread(target=serve, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
        for p in procs:
            p.wait()
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    finally:
        bar.close()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            lost = running.get(i)
            log(f"worker {i} exited with status {p.returncode}" + (f" while computing {by_key[lost].label}" if lost else ""))
    for spec in todo:
        record = store.read(spec.key)
        if record is None or record.get("run_id") != run_id:
            summary.not_run.append(spec)
        elif record["status"] == "done":
            summary.done.append(record)
        else:
            summary.failed.append(record)
    summary.seconds = time.perf_counter() - t_start
    return summary


def worker_main(argv: list[str]) -> None:
    """A worker process of `run_workers`: argv = SOFTMAX_DIR SOFTPICK_DIR DTYPE RESULTS_DIR RUN_ID."""
    softmax, softpick, dtype, results_dir, run_id = argv
    serve_cells(Store(results_dir), ModelSource(softmax, softpick, dtype), run_id)


def serve_cells(store: Store, source: ModelSource, run_id: str, stdin=None, stdout=None) -> int:
    """Worker side of `run_workers`: compute the cells whose specs arrive on stdin, one JSON per line
    (`CellSpec.from_dict` checks that each key is the hash of its identity)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    computed = 0

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    say("@@ready")
    for raw in stdin:
        spec = CellSpec.from_dict(json.loads(raw))
        previous = store.read(spec.key)
        if previous is None or previous["status"] != "done":
            attempt = (previous or {}).get("attempt", 0) + 1
            record = compute_cell(spec, source, run_id=run_id, attempt=attempt)
            store.write(record)
            stop_if_cuda_lost(record)
            computed += 1
            say(f"@@cell {spec.key} {cell_line(record)}")
        say("@@ready")
    return computed


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def summary_text(summary: Summary, store: Store) -> str:
    computed = len(summary.done) + len(summary.failed)
    lines = [f"{summary.total} cells: {summary.cached + len(summary.done)} done "
             f"({summary.cached} already stored, {len(summary.done)} computed now), {len(summary.failed)} failed"
             + (f", {len(summary.not_run)} not run" if summary.not_run else "")
             + (f"; {computed} computed in {_fmt_seconds(summary.seconds)}" if computed else "")]
    if summary.failed:
        lines.append("failed cells (a rerun retries them):")
        for r in summary.failed:
            err = (r["error"] or "").splitlines()[0][:300] if r["error"] else "?"
            lines.append(f"  {r['model']['kind']:8s} {_what(r):22s} {err}  [{store.path(r['key'])}]")
    if summary.not_run:
        lines.append("cells not run (a worker stopped early; rerun the sweep):")
        for spec in summary.not_run:
            lines.append(f"  {spec.label}  [{spec.key}]")
    return "\n".join(lines)
