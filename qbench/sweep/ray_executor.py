"""The Ray executor: `qbench sweep FILE --executor ray [--address ADDR]` computes each cell as a Ray task.

Each cell is one task asking for one GPU when the sweep runs on CUDA, or `--cpus-per-cell` CPU
cores (default 1) on a CPU cluster, in a fresh worker process (`max_calls=1`: no state, CUDA
context or memory fragmentation carries from one cell to the next, as with the local workers).
A worker process that dies (killed, segfault, node lost) has its task retried by Ray up to
MAX_RETRIES = 2 times (3 attempts); a cell whose attempts all died is stored as failed. A cell
running past `--cell-timeout SECONDS` (default: none) is cancelled (its worker is killed) and
stored as failed with that reason; the deadline counts from the cell's submission, which is when
it starts (the driver submits no more cells than the cluster can run at once), and covers Ray's
retries of it.

The driver (the `qbench sweep` process, qbench/sweep/run.py) stays the only writer of the store:
a task returns the cell's record and per-item results as one JSON text, and the driver stores it,
so the workers need no access to the results folder. Resume, failure isolation and the per-cell
claims are the driver's and work as with local workers: this module never touches the store.

Inputs reach the workers in one of two ways (`--ray-ship`):
  * `path` (the default): the spec names the checkpoint, task data and calibration text by their
    (absolute) paths, which must exist on every node: a shared filesystem (NFS, Lustre: what a
    Slurm cluster has) or the same copy at the same place on each node. Nothing but the spec
    crosses the network, and a 1.8B checkpoint is read once per cell from the shared filesystem
    as a local run reads it. It is the default because paper-size clusters have a shared
    filesystem and `objects` copies every checkpoint to every node's memory and disk. A cell
    whose inputs are not there on its node fails at once, naming the path and this option.
  * `objects`: the driver puts each arm's checkpoint files (the top-level files of its folder,
    or the file of a single-file checkpoint), the sweep's task data (manifest, data files and
    task YAMLs) and the calibration text into Ray's object store once, on first use; each task
    fetches what its cell needs, unpacks it into a temporary folder of its worker (deleted after
    the cell) and computes the cell with the spec's paths rewritten to that folder. The paths
    are not part of a cell's key, so the key is the same; the cell checks the unpacked
    checkpoint's content hash against the key as always, and the stored record names the
    driver's paths. Workers then need no shared filesystem at all.

Cost of `objects` for a 1.8B checkpoint, on paper (no 1.8B file on the machine that wrote this):
1.8e9 parameters are 3.6 GB in bfloat16 (7.2 GB in float32). Measured with `measure_transfer`
(CPU, 2 cores, load average about 10; a two-node Ray cluster on one host, object store in
/dev/shm; 256 MiB random blob, best of 3): ray.put 1.8 GB/s, the fetch by a task on the other
node 0.43 GB/s, the worker writing it to its temp folder (with fsync) 0.33 GB/s. Extrapolated to
3.6 GB: the driver's put of one arm takes about 2 s once per sweep (the driver's memory holds
the file twice meanwhile: read, then copied into the object store), and each cell pays the
fetch, about 8 s (later cells on a node read that node's copy), and the unpack, about 11 s,
before loading the model: some 20 s per cell (twice that in float32), small against a 1.8B
cell's minutes on a GPU. It also costs memory: each node's object store holds a copy of every
arm it ran (7.2 GB for a bfloat16 pair; past its size Ray spills to disk), and across hosts the
fetch runs at the network's speed (10 Gb/s: about 3 s per 3.6 GB) rather than loopback's.

Every node needs qbench and the libraries in the driver's versions: the worker compares its
library versions, qbench code-area versions, runtime switches, device (GPU name on CUDA) and
resolved recipe with the identity the driver put into the cell's key, and fails the cell (naming the differences)
rather than store numbers under a key they do not belong to. The driver's QBENCH_* switches
(e.g. QBENCH_SOFTPICK_KERNEL) are forwarded to the workers; the data folder QBENCH_DATA is not
(paths travel in the spec). On CUDA the key holds the GPU's name: run the driver on a node with
the same GPU type as the workers (on Slurm: the first node of the allocation).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import QBenchError
from .cells import CellSpec

SHIP_MODES = ("path", "objects")
MAX_RETRIES = 2              # Ray's retries of a cell whose worker process died (3 attempts in all)
TASK_NAME = "qbench_cell"    # the worker's process title while it computes a cell: "ray::qbench_cell"
CAPACITY_REFRESH_SECONDS = 30.0
_NOT_FORWARDED = ("QBENCH_DATA",)


class RayError(QBenchError, RuntimeError):
    """Ray is not installed, the cluster cannot be reached, or it cannot run the sweep's cells."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayError("--executor ray needs Ray: pip install 'qbench[ray]'") from None
    return ray


def forwarded_env() -> dict[str, str]:
    """The driver's qbench switches that workers must see (paths excluded: they travel in the spec)."""
    return {k: v for k, v in os.environ.items() if k.startswith("QBENCH_") and k not in _NOT_FORWARDED}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def failed_record(spec: CellSpec, run_id: str, attempt: int, error: str) -> dict:
    """The record of a cell that never produced one itself (its worker died, deadline, bad node)."""
    from .compute import base_record, now

    record = base_record(spec, run_id, attempt)
    record.update(status="failed", started_at=now(), finished_at=now(), error=error)
    return record


# ----------------------------------------------------------------------------- the worker side
def _run_cell(payload: str, shipment: dict | None) -> str:
    """A Ray task: compute one cell in this (fresh) worker process; the result as JSON text."""
    from .compute import ModelSource, compute_cell
    from .store import _jsonable

    msg = json.loads(payload)
    spec = CellSpec.from_dict(msg["spec"])
    run_id, attempt = msg["run_id"], msg["attempt"]
    items = None
    with tempfile.TemporaryDirectory(prefix="qbench-cell-") as tmp:
        try:
            if shipment is not None:
                spec = unpack(spec, shipment, Path(tmp).resolve())
            problem = missing_inputs(spec) or environment_mismatch(spec)
        except Exception as err:  # a broken shipment or environment: the cell fails, the sweep goes on
            problem = f"preparing the cell on Ray node {_node()}: {_first_line(err)}"
        if problem:
            record = failed_record(spec, run_id, attempt, problem)
        else:
            record, items = compute_cell(spec, ModelSource(spec.dtype), run_id=run_id, attempt=attempt)
    return json.dumps(_jsonable({"record": record, "items": items}), allow_nan=False)


def _node() -> str:
    import platform

    return platform.node()


def missing_inputs(spec: CellSpec) -> str | None:
    """Why the cell's inputs are not on this node (path shipping without a shared filesystem)."""
    need = [("checkpoint", spec.model_path), ("task data", spec.tasks_dir)]
    if spec.calibration_text:
        need.append(("calibration text", spec.calibration_text))
    gone = [f"{what} {path}" for what, path in need if not os.path.exists(path)]
    if gone:
        return (f"not found on Ray node {_node()}: {', '.join(gone)} (--ray-ship path needs the same paths on every "
                f"node, e.g. a shared filesystem; --ray-ship objects sends them through Ray's object store)")
    return None


def environment_mismatch(spec: CellSpec) -> str | None:
    """How this worker's environment differs from the one the driver put into the cell's key
    (library and qbench code-area versions, runtime switches, device, the resolved recipe)."""
    from .. import identity as code_identity
    from .cells import device_identity, library_versions

    ident = spec.identity
    here = {"versions": library_versions(spec.recipe), "code": code_identity.cell_code_versions(ident["recipe"]),
            "runtime": code_identity.runtime_identity(spec.device, ident["runtime"].get("cpu_threads")),
            "device": device_identity(spec.device)}
    diffs = [f"{part}.{name}: driver {ident[part].get(name)!r}, worker {mine.get(name)!r}"
             for part, mine in here.items() for name in sorted(set(mine) | set(ident[part]))
             if mine.get(name) != ident[part].get(name)]
    if spec.recipe is not None and spec.recipe.to_dict() != ident["recipe"]:
        diffs.append("recipe: this node's qbench resolves the cell's recipe differently")
    if diffs:
        return (f"Ray node {_node()} differs from the driver in what the cell key holds: {'; '.join(diffs)} "
                f"(install the same qbench and libraries on every node)")
    return None


def unpack(spec: CellSpec, shipment: dict, tmp: Path) -> CellSpec:
    """Write the shipped inputs into `tmp` and return the spec with its paths pointing there (the
    key does not change: paths are not part of it)."""
    ray = _ray()
    parts = [(tmp / "model" / shipment["model"]["name"], shipment["model"]),
             (tmp / "tasks", shipment["tasks"])]
    if shipment.get("calibration") is not None:
        parts.append((tmp / "calibration", shipment["calibration"]))
    refs = [ref for _, part in parts for ref in part["files"].values()]
    blobs = iter(ray.get(refs))
    for root, part in parts:
        for rel in part["files"]:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(next(blobs))
    model = tmp / "model" / shipment["model"]["name"]
    changes = {"model_path": str(model / shipment["model"]["single"]) if shipment["model"]["single"] else str(model),
               "tasks_dir": str(tmp / "tasks")}
    for rel in shipment["tasks"]["files"]:   # the task YAMLs name their data by absolute path
        if rel.startswith("yaml/"):
            yml = tmp / "tasks" / rel
            yml.write_text(yml.read_text().replace(shipment["tasks"]["from"], str(tmp / "tasks")))
    if shipment.get("calibration") is not None:
        changes["calibration_text"] = str(tmp / "calibration" / next(iter(shipment["calibration"]["files"])))
    return dataclasses.replace(spec, **changes)


# ----------------------------------------------------------------------------- the driver side
def checkpoint_files(path) -> tuple[str | None, dict[str, Path]]:
    """(file name for a single-file checkpoint else None, {name: path}) of what `objects` ships."""
    p = Path(path)
    if p.is_file():
        return p.name, {p.name: p}
    return None, {f.name: f for f in sorted(p.iterdir()) if f.is_file()}


def task_data_files(tasks_dir, tasks: list[str]) -> dict[str, Path]:
    """The prepared task data a cell of these tasks reads: manifest, data files, task YAMLs."""
    from ..eval import data

    root = Path(tasks_dir)
    manifest = data.read_manifest(root) or {}
    files = {"manifest.json": data.manifest_path(root)}
    for name in tasks:
        info = manifest.get("tasks", {}).get(name)
        if info is not None:
            files[info["file"]] = root / info["file"]
            yml = root / "yaml" / f"{name}.yaml"
            if yml.exists():
                files[f"yaml/{name}.yaml"] = yml
    return files


class RayExecutor:
    """Cells as Ray tasks (see the module docstring); `slots` follows the cluster's capacity."""

    def __init__(self, sweep, address: str | None = None, *, ship: str = "path", cpus_per_cell: float = 1,
                 cell_timeout: float | None = None, max_retries: int = MAX_RETRIES, log=print):
        if ship not in SHIP_MODES:
            raise RayError(f"--ray-ship {ship!r}: expected one of {', '.join(SHIP_MODES)}")
        if not cpus_per_cell > 0:
            raise RayError(f"--cpus-per-cell {cpus_per_cell}: expected a number > 0")
        if cell_timeout is not None and not (cell_timeout > 0 and math.isfinite(cell_timeout)):
            raise RayError(f"--cell-timeout {cell_timeout}: expected a number of seconds > 0")
        ray = _ray()
        self.ray, self.sweep, self.ship, self.log = ray, sweep, ship, log
        self.gpu = sweep.device == "cuda"
        self.cpus, self.timeout, self.max_retries = cpus_per_cell, cell_timeout, max_retries
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs = {"include_dashboard": False} if address is None else {}
            try:
                ray.init(address=address, **kwargs)
            except Exception as err:
                raise RayError(f"cannot start or join the Ray cluster{f' at {address}' if address else ''}: "
                               f"{_first_line(err)}") from None
        env = forwarded_env()
        self.task = ray.remote(num_cpus=cpus_per_cell, num_gpus=1 if self.gpu else 0, max_calls=1,
                               max_retries=max_retries, retry_exceptions=False)(_run_cell).options(
            name=TASK_NAME, runtime_env={"env_vars": env} if env else None)
        self.running: dict = {}          # ObjectRef -> (spec, run_id, attempt, deadline)
        self.shipped: dict = {}          # what `objects` put into the object store, by input
        self.shipped_bytes = 0
        self._capacity, self._capacity_at = 0, -math.inf
        nodes = self._nodes()
        per_cell = "1 GPU" if self.gpu else f"{cpus_per_cell:g} CPU"
        if self.capacity() == 0:
            raise RayError(f"no node of the Ray cluster can run a cell ({per_cell} each): "
                           + "; ".join(f"node {n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, "
                                       f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes))
        deadline = f", deadline {cell_timeout:g} s per cell" if cell_timeout else ""
        log(f"ray: {len(nodes)} node(s); {self.capacity()} cell(s) at a time ({per_cell} each), inputs by {ship}, "
            f"up to {max_retries} retries of a dead worker{deadline}")

    # ------------------------------------------------------------------ capacity
    def _nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def capacity(self) -> int:
        """Cells the cluster can run at once (re-read every CAPACITY_REFRESH_SECONDS)."""
        if time.monotonic() - self._capacity_at > CAPACITY_REFRESH_SECONDS:
            res = [n["Resources"] for n in self._nodes()]
            if self.gpu:
                self._capacity = sum(int(r.get("GPU", 0)) for r in res if r.get("CPU", 0) >= self.cpus)
            else:
                self._capacity = sum(int(r.get("CPU", 0) // self.cpus) for r in res)
            self._capacity_at = time.monotonic()
        return self._capacity

    @property
    def slots(self) -> int:
        return max(1, self.capacity())

    # ------------------------------------------------------------------ shipping
    def _put(self, files: dict[str, Path]) -> dict:
        refs = {}
        for name, path in files.items():
            blob = np.fromfile(path, dtype=np.uint8)   # numpy: workers read it from the object store without a copy
            refs[name] = self.ray.put(blob)
            self.shipped_bytes += blob.nbytes
        return refs

    def _shipped(self, what: str, make) -> dict:
        if what not in self.shipped:
            t0, before = time.perf_counter(), self.shipped_bytes
            self.shipped[what] = make()
            self.log(f"ray: {what} put into the object store ({len(self.shipped[what]['files'])} files, "
                     f"{(self.shipped_bytes - before) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
        return self.shipped[what]

    def shipment(self, spec: CellSpec) -> dict:
        """The object-store references of what the cell reads: its arm's checkpoint, the task data
        and (calibrating recipes) the calibration text, each put once per sweep."""
        arm = self.sweep.arm(spec.arm)

        def model():
            single, files = checkpoint_files(arm.path)
            return {"name": Path(arm.path).name, "single": single, "files": self._put(files)}

        def tasks():
            root = Path(self.sweep.tasks_dir).resolve()
            return {"from": str(root), "files": self._put(task_data_files(root, self.sweep.tasks))}

        out = {"model": self._shipped(f"checkpoint of arm {arm.name}", model),
               "tasks": self._shipped("task data", tasks), "calibration": None}
        if spec.calibration_text:
            text = Path(self.sweep.calibration_text)
            out["calibration"] = self._shipped("calibration text", lambda: {"files": self._put({text.name: text})})
        return out

    # ------------------------------------------------------------------ the executor protocol
    def submit(self, spec: CellSpec, run_id: str, attempt: int) -> None:
        travel = spec
        if self.ship == "path":   # workers do not share the driver's working directory
            travel = dataclasses.replace(
                spec, model_path=os.path.abspath(spec.model_path), tasks_dir=os.path.abspath(spec.tasks_dir),
                calibration_text=spec.calibration_text and os.path.abspath(spec.calibration_text))
        payload = json.dumps({"spec": travel.to_dict(), "run_id": run_id, "attempt": attempt})
        shipment = self.shipment(spec) if self.ship == "objects" else None
        ref = self.task.remote(payload, shipment)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        self.running[ref] = (spec, run_id, attempt, deadline)

    def next_result(self, timeout: float | None = None):
        """(spec, record, items) of a finished, dead or timed-out cell, or None after `timeout` s."""
        if not self.running:
            return None
        wait = timeout
        deadlines = [d for (_, _, _, d) in self.running.values() if d is not None]
        if deadlines:
            left = max(0.0, min(deadlines) - time.monotonic())
            wait = left if wait is None else min(wait, left)
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=wait)
        if ready:
            return self._collect(ready[0])
        now = time.monotonic()
        for ref, (spec, run_id, attempt, deadline) in list(self.running.items()):
            if deadline is not None and now >= deadline:
                self.ray.cancel(ref, force=True)
                del self.running[ref]
                return spec, failed_record(spec, run_id, attempt,
                                           f"the cell ran past its deadline of {self.timeout:g} s (--cell-timeout) "
                                           f"and was cancelled"), None
        return None

    def _collect(self, ref):
        spec, run_id, attempt, _ = self.running.pop(ref)
        try:
            data = json.loads(self.ray.get(ref))
        except self.ray.exceptions.RayError as err:  # every attempt's worker died, node lost, ...
            return spec, failed_record(spec, run_id, attempt,
                                       f"the Ray task of the cell failed (a dead worker is retried "
                                       f"{self.max_retries} times): {_first_line(err)}"), None
        record = data["record"]
        record["model"]["path"] = spec.model_path          # the driver's paths, as a local run records them
        if record.get("calibration"):
            record["calibration"]["text"] = spec.calibration_text
        return spec, record, data["items"]

    def close(self) -> None:
        for ref in list(self.running):      # an interrupted sweep leaves nothing computing on the cluster
            self.ray.cancel(ref, force=True)
        self.running.clear()
        self.shipped.clear()
        if self.owns_ray:
            self.ray.shutdown()


# ----------------------------------------------------------------------------- measuring `objects`
def measure_transfer(mb: int = 256, repeats: int = 3) -> dict:
    """Throughput (bytes/s, best of `repeats`) of what `--ray-ship objects` does with a checkpoint
    file: the driver's ray.put, a task's fetch on another node (this node when there is one
    node), and the task writing it to a temporary file. Needs a connected Ray."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]

    @ray.remote(num_cpus=0, max_calls=1)
    def fetch(refs):
        t0 = time.perf_counter()
        blob = ray.get(refs[0])
        t1 = time.perf_counter()
        with tempfile.NamedTemporaryFile() as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        return blob.nbytes, t1 - t0, time.perf_counter() - t1

    target = NodeAffinitySchedulingStrategy(others[0] if others else here, soft=False)
    blob = np.frombuffer(os.urandom(mb << 20), dtype=np.uint8)
    put, get, write = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = ray.put(blob)
        put.append(time.perf_counter() - t0)
        n, g, w = ray.get(fetch.options(scheduling_strategy=target).remote([ref]))
        assert n == blob.nbytes
        get.append(g)
        write.append(w)
        del ref
    size = blob.nbytes
    return {"bytes": size, "other_node": bool(others), "put_Bps": size / min(put), "get_Bps": size / min(get),
            "write_Bps": size / min(write)}
