"""Running a sweep: plan against the store, claim, dispatch to an executor, store what comes back.

The driver (this module, in the `qbench sweep` process) is the only writer of the store. An
executor computes cells and hands back (record, items): `InProcess` here, `Processes` (one
worker process per GPU or CPU share, specs in and results out over pipes), or the Ray executor
(qbench/sweep/ray_executor.py). For every cell the driver

  1. skips it if the store holds it as done (also when another process finished it meanwhile),
  2. claims it (a live claim of another process defers it: that process is computing it),
  3. dispatches it, stores the returned record (and items) atomically, releases the claim.

Deferred cells are waited for at the end: done by their owner, or taken over when the owner's
claim goes stale (its process died). A cell that fails is stored as failed and the sweep goes on;
a rerun retries failed and corrupt cells and never recomputes done ones.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .cells import CellSpec
from .compute import ModelSource, compute_cell, stop_if_cuda_lost
from .store import HEARTBEAT_SECONDS, Store
from .sweepfile import SweepError

POLL_SECONDS = 2.0


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- planning
@dataclass
class Plan:
    cells: list[CellSpec]
    state: dict                       # key -> (done | failed | missing | corrupt, reason)
    previous: dict = field(default_factory=dict)   # key -> stored record (done or failed)

    def of(self, state: str) -> list[CellSpec]:
        return [c for c in self.cells if self.state[c.key][0] == state]

    @property
    def todo(self) -> list[CellSpec]:
        """The cells to compute (failed, corrupt and missing), in the sweep's order."""
        return [c for c in self.cells if self.state[c.key][0] != "done"]


def plan(cells: list[CellSpec], store: Store) -> Plan:
    state = store.scan([c.key for c in cells])
    previous = {}
    for c in cells:
        if state[c.key][0] in ("done", "failed"):
            previous[c.key] = store.read(c.key)
    return Plan(cells, state, previous)


# ----------------------------------------------------------------------------- executors
class InProcess:
    """Computes each cell in this process, when it is submitted."""

    slots = 1
    in_process = True

    def __init__(self, dtype: str):
        self.source = ModelSource(dtype)
        self.done: deque = deque()

    def submit(self, spec: CellSpec, run_id: str, attempt: int) -> None:
        record, items = compute_cell(spec, self.source, run_id=run_id, attempt=attempt)
        self.done.append((spec, record, items))

    def next_result(self, timeout: float | None = None):
        return self.done.popleft() if self.done else None

    def close(self) -> None:
        pass


def _set_pdeathsig():  # pragma: no cover - runs in the child
    """Workers die with the parent (kill -9 of the sweep leaves no orphan computing cells)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def worker_threads(workers: int) -> int:
    """CPU threads of each of `workers` local worker processes: an equal share of the cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def cell_threads(device: str, executor: str = "local", workers: int = 1, cpus_per_cell: float | None = None,
                 asked: int | None = None):
    """The torch thread count a CPU cell computes with, which its key holds (None on CUDA): `asked`
    (--cpu-threads) if given, else this process's with one local worker, a worker's share with
    several (also when fewer start because fewer cells are left: the key cannot depend on the
    store), a Ray task's CPUs."""
    if device != "cpu":
        return None
    if asked:
        return asked
    if executor == "ray":
        return max(1, int(cpus_per_cell or 1))
    if workers > 1:
        return worker_threads(workers)
    import torch

    return torch.get_num_threads()


def worker_devices(n: int, device: str, per_gpu: int = 1, threads: int | None = None) -> list[dict]:
    """Environment overrides of each of `n` worker processes: a share of the CPU cores each
    (`threads`, default worker_threads(n): so that n processes' thread pools do not compete for all
    of them) and, on CUDA, a GPU each (`per_gpu` workers share one: small models leave a GPU idle
    while lm-eval works on the CPU)."""
    threads = str(threads or worker_threads(n))
    cpu_share = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if device == "cuda":
        import torch

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
            str(i) for i in range(torch.cuda.device_count())]
        if n > len(ids) * per_gpu:
            raise SweepError("command line", "--workers", f"{n} workers, but only {len(ids)} GPU(s) visible "
                             f"({', '.join(ids) or 'none'}) for {per_gpu} worker(s) per GPU (--workers-per-gpu)")
        return [{**cpu_share, "CUDA_VISIBLE_DEVICES": ids[i // per_gpu]} for i in range(n)]
    return [dict(cpu_share) for _ in range(n)]


class Processes:
    """`n` worker processes (`worker_main`), one per GPU on CUDA: each gets one spec at a time over
    its stdin and answers with one `@@result` JSON line; a worker that dies mid-cell yields a failed
    record for that cell and is replaced."""

    def __init__(self, n: int, device: str, dtype: str, log, per_gpu: int = 1, threads: int | None = None):
        self.envs = worker_devices(n, device, per_gpu, threads)
        self.dtype, self.log = dtype, log
        self.slots = n
        self.run_id, self.attempt = "", {}
        self.results: deque = deque()
        self.cond = threading.Condition()
        self.workers: list[dict] = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> dict:
        env = {**os.environ, **self.envs[i], "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-c", "import sys; from qbench.sweep.run import worker_main; worker_main(sys.argv[1:])",
               self.dtype]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, preexec_fn=_set_pdeathsig if sys.platform == "linux" else None)
        w = {"i": i, "proc": proc, "busy": None}
        threading.Thread(target=self._serve, args=(w,), daemon=True).start()
        return w

    def _serve(self, w: dict) -> None:
        for raw in w["proc"].stdout:
            line = raw.rstrip("\n")
            if line.startswith("@@result "):
                data = json.loads(line[len("@@result "):])
                with self.cond:
                    spec, w["busy"] = w["busy"], None
                    self.results.append((spec, data["record"], data["items"]))
                    self.cond.notify_all()
            elif line.strip():
                self.log(f"[worker {w['i']}] {line}")
        status = w["proc"].wait()
        with self.cond:
            spec, w["busy"] = w["busy"], None
            if spec is not None:   # died mid-cell: the cell is failed, a rerun retries it
                from .compute import base_record, now

                record = base_record(spec, self.run_id, self.attempt.get(spec.key, 1))
                record.update(status="failed", started_at=now(), finished_at=now(),
                              error=f"the worker process died while computing the cell (exit status {status})")
                self.results.append((spec, record, None))
            w["dead"] = True
            self.cond.notify_all()

    def submit(self, spec: CellSpec, run_id: str, attempt: int) -> None:
        """Hand `spec` to an idle worker (a dead one is replaced first); the driver never submits
        more cells than there are workers."""
        with self.cond:
            self.run_id = run_id
            self.attempt[spec.key] = attempt
            n, w = next((n, w) for n, w in enumerate(self.workers) if w["busy"] is None)
            if w.get("dead"):
                self.workers[n] = w = self._start(w["i"])
            w["busy"] = spec
        w["proc"].stdin.write(json.dumps({"spec": spec.to_dict(), "run_id": run_id, "attempt": attempt}) + "\n")
        w["proc"].stdin.flush()

    def next_result(self, timeout: float | None = None):
        with self.cond:
            if not self.results:
                self.cond.wait(timeout)
            return self.results.popleft() if self.results else None

    def close(self) -> None:
        for w in self.workers:
            try:
                w["proc"].stdin.close()
            except OSError:
                pass
        for w in self.workers:
            try:
                w["proc"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                w["proc"].terminate()


def worker_main(argv: list[str]) -> None:
    """A worker process of `Processes`: argv = DTYPE; specs on stdin, results on stdout."""
    (dtype,) = argv
    source = ModelSource(dtype)
    out = sys.stdout
    for raw in sys.stdin:
        msg = json.loads(raw)
        spec = CellSpec.from_dict(msg["spec"])
        record, items = compute_cell(spec, source, run_id=msg["run_id"], attempt=msg["attempt"])
        from .store import _jsonable

        out.write("@@result " + json.dumps(_jsonable({"record": record, "items": items}), allow_nan=False) + "\n")
        out.flush()
        stop_if_cuda_lost(record)


# ----------------------------------------------------------------------------- the driver
@dataclass
class Summary:
    total: int
    cached: int
    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    by_others: list[CellSpec] = field(default_factory=list)   # finished by another process meanwhile
    not_run: list[CellSpec] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run


class _Heartbeat:
    """Refreshes the claims this driver holds, in a background thread."""

    def __init__(self, store: Store, owner: str):
        self.store, self.owner = store, owner
        self.keys: set = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            with self.lock:
                keys = list(self.keys)
            if keys:
                self.store.heartbeat(keys, self.owner)

    def hold(self, key: str) -> None:
        with self.lock:
            self.keys.add(key)

    def drop(self, key: str) -> None:
        with self.lock:
            self.keys.discard(key)


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


def describe(record: dict) -> str:
    m = record["model"]
    arm = m.get("arm", m.get("kind"))
    if record["recipe"] is None:
        return f"{arm:10s} full precision"
    seed = f" seed {record['calib_seed']}" if record.get("calib_seed") else ""
    return f"{arm:10s} {record.get('entry') or record['recipe']['name']} {record.get('label') or record['bits']}{seed}"


def cell_line(record: dict, position: str = "", eta: str | None = None) -> str:
    head = f"{position} {record['status']:6s} {describe(record):34s} {_fmt_seconds(record['seconds']):>6s}".strip()
    if record["status"] == "failed":
        body = (record["error"] or "").splitlines()[0][:200] if record["error"] else ""
    else:
        qr = record.get("quant_report")
        quant = f"{qr['bits_per_weight']:.2f} b/w, err {qr['weight_error']:.3g} | " if qr and qr.get("bits_per_weight") else ""
        body = quant + short_metrics(record["metrics"])
    tail = f"  (ETA {eta})" if eta else ""
    return f"{head}  {body}{tail}"


def _progress_bar(total: int, cached: int, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=cached, unit="cell", dynamic_ncols=True, disable=None if progress else True,
                desc=desc, file=sys.stderr)


def run_cells(todo: list[CellSpec], store: Store, executor, *, run_id: str, previous: dict, total: int,
              cached: int, progress: bool = True, desc: str = "cells", log=print) -> Summary:
    """Compute `todo` through `executor`, claiming each cell and writing each result as it comes."""
    summary = Summary(total=total, cached=cached)
    t_start = time.perf_counter()
    bar = _progress_bar(total, cached, progress, desc)

    def write(line: str) -> None:
        if bar.disable:
            log(line)
        else:
            bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    beat = _Heartbeat(store, run_id)
    beat.thread.start()
    pending, deferred, running = deque(todo), [], {}
    finished = 0

    def settle(spec: CellSpec) -> bool:
        """True when another process has stored the cell as done meanwhile."""
        try:
            record = store.read(spec.key)
        except Exception:
            return False
        if record is not None and record["status"] == "done" and record.get("run_id") != run_id:
            summary.by_others.append(spec)
            bar.update(1)
            write(f"[{cached + finished + len(summary.by_others)}/{total}] done   {spec.describe} "
                  f"(stored by another process)")
            return True
        return False

    try:
        while pending or running or deferred:
            while pending and len(running) < executor.slots:
                spec = pending.popleft()
                if settle(spec):
                    continue
                other = store.claim(spec.key, run_id)
                if other is not None:
                    deferred.append(spec)
                    write(f"waiting: {spec.describe} is being computed by {other.get('owner')} on {other.get('host')}")
                    continue
                beat.hold(spec.key)
                running[spec.key] = spec
                bar.set_postfix_str(", ".join(s.describe for s in running.values()), refresh=True)
                attempt = (previous.get(spec.key) or {}).get("attempt", 0) + 1
                executor.submit(spec, run_id, attempt)
            result = executor.next_result(timeout=POLL_SECONDS) if running else None
            if result is not None:
                spec, record, items = result
                store.write(record, items)
                store.release(spec.key, run_id)
                beat.drop(spec.key)
                running.pop(spec.key, None)
                finished += 1
                (summary.done if record["status"] == "done" else summary.failed).append(record)
                left = len(pending) + len(running) + len(deferred)
                elapsed = time.perf_counter() - t_start
                eta = _fmt_seconds(elapsed / finished * left) if left else None
                write(cell_line(record, f"[{cached + finished + len(summary.by_others)}/{total}]", eta))
                bar.update(1)
                if getattr(executor, "in_process", False):
                    stop_if_cuda_lost(record)   # this process's CUDA context is unusable now
            elif not running and not pending and deferred:
                time.sleep(POLL_SECONDS)
                still = []
                for spec in deferred:
                    if settle(spec):
                        continue
                    if not store.claim_is_live(store.read_claim(spec.key)):
                        write(f"taking over {spec.describe}: its claim went stale")
                        pending.append(spec)
                    else:
                        still.append(spec)
                deferred = still
    finally:
        beat.stop.set()
        for key in list(running):
            store.release(key, run_id)
        bar.close()
        executor.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


def summary_text(summary: Summary, store: Store) -> str:
    computed = len(summary.done) + len(summary.failed)
    others = f", {len(summary.by_others)} computed by another process" if summary.by_others else ""
    lines = [f"{summary.total} cells: {summary.cached + len(summary.done) + len(summary.by_others)} done "
             f"({summary.cached} already stored, {len(summary.done)} computed now{others}), "
             f"{len(summary.failed)} failed"
             + (f", {len(summary.not_run)} not run" if summary.not_run else "")
             + (f"; {computed} computed in {_fmt_seconds(summary.seconds)}" if computed else "")]
    if summary.failed:
        lines.append("failed cells (a rerun retries them):")
        for r in summary.failed:
            err = (r["error"] or "").splitlines()[0][:300] if r["error"] else "?"
            lines.append(f"  {describe(r):34s} {err}  [{store.path(r['key'])}]")
    if summary.not_run:
        lines.append("cells not run (rerun the sweep):")
        for spec in summary.not_run:
            lines.append(f"  {spec.describe}  [{spec.key}]")
    return "\n".join(lines)
