"""The Ray executor (qbench/sweep/ray_executor.py) on a real Ray cluster: two nodes started with
`ray start` on this host (a head and a second node joining it, 1 CPU each), shared by the tests of
this module. A small sweep (tiny random pair, 2 tasks, 2 examples, rtn and gptq) runs through it:
a worker killed in the middle of a cell is retried and every cell is stored exactly once, with
metrics bit-identical to the local executor's; inputs shipped through the object store reach a
worker that cannot see the driver's paths; a resumed sweep computes only what is missing; a cell
past its deadline is cancelled and stored as failed.

The cluster writes only under its temporary folder (RAY_TMPDIR, --temp-dir, --plasma-directory;
no dashboard, no usage stats, no auth token in ~/.ray). It is stopped by killing exactly the
processes it started (its process groups and every process carrying its RAY_TMPDIR), not with
`ray stop`, which would stop every Ray process of the machine's user."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from qbench import paths
from qbench.cli import main
from qbench.sweep import Store, expand, load_sweep

from conftest import gptq32, write_sweep

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("use_data_dir")
REPO = Path(__file__).resolve().parents[1]
TASK_TITLE = b"ray::qbench_cell"


def _free_port() -> int:
    """A free port outside the range Ray keeps for its workers (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10000 <= port < 20000:
            return port


def _proc(pid: int) -> dict | None:
    """pgid, state, title and environment of a live process (None: gone, a zombie, or not readable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            return None
        return {"pgid": int(fields[2]), "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes(),
                "environ": Path(f"/proc/{pid}/environ").read_bytes()}
    except (OSError, ValueError, IndexError):
        return None


def _cluster_pids(cluster) -> list[int]:
    """Live processes of the test cluster: in its process groups, or carrying its RAY_TMPDIR (the
    raylet's workers start sessions of their own)."""
    marker = f"RAY_TMPDIR={cluster['tmp']}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            info = _proc(int(entry))
            if info and (info["pgid"] in cluster["groups"] or marker in info["environ"].split(b"\0")):
                out.append(int(entry))
    return out


def _cell_workers(cluster) -> list[int]:
    return [pid for pid in _cluster_pids(cluster) if (_proc(pid) or {}).get("cmdline", b"").startswith(TASK_TITLE)]


def _stop(cluster) -> list[int]:
    """Terminate the cluster's processes (SIGTERM, then SIGKILL); the pids still there after that."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in _cluster_pids(cluster):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + grace
        while _cluster_pids(cluster) and time.time() < end:
            time.sleep(0.2)
    return _cluster_pids(cluster)


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="qbray-"))   # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    port = _free_port()
    cli = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus", "1", "--num-gpus", "0",
           "--object-store-memory", str(100 << 20), "--plasma-directory", str(tmp), "--disable-usage-stats"]
    nodes = [["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", str(tmp),
              "--include-dashboard=false", "--dashboard-port", str(_free_port())],
             ["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1"]]
    state = {"address": f"127.0.0.1:{port}", "tmp": tmp, "env": env, "groups": set()}
    try:
        for node in nodes:
            p = subprocess.Popen(cli + node + ["--dashboard-agent-listen-port", str(_free_port())], env=env, cwd=tmp,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            state["groups"].add(p.pid)
            out = p.communicate(timeout=240)[0]
            assert p.returncode == 0, out[-3000:]
        yield state
    finally:
        left = _stop(state)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


@pytest.fixture
def ray_env(cluster, monkeypatch):
    """This process as a Ray driver of the test cluster (for sweeps run in-process)."""
    for name in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE"):
        monkeypatch.setenv(name, cluster["env"][name])
    return cluster


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory, tiny_pair, calib_text):
    folder = tmp_path_factory.mktemp("raysweep")
    grid = [{"recipe": "rtn", "bits": [4]}, {"recipe": gptq32(folder / "recipes"), "bits": [4]}]
    return write_sweep(folder, tiny_pair, grid, limit=2, cpu_calib={"samples": 4, "seq_len": 32},
                       calibration_text=str(calib_text))


@pytest.fixture(scope="module")
def local(sweep_file, data_dir, tmp_path_factory):
    """The sweep run by the local executor (in this process, one thread: as a 1-CPU Ray task)."""
    results = tmp_path_factory.mktemp("local") / "results"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("QBENCH_DATA", str(data_dir))
        m.setattr(paths, "DATA_DIR", data_dir)
        m.setattr(paths, "TASKS_DIR", data_dir / "tasks")
        assert main(["sweep", str(sweep_file), "--results", str(results), "--no-progress"]) == 0
    records = Store(results).records()
    assert len(records) == 6 and all(r["status"] == "done" for r in records.values())
    return results, records


def _same_numbers(got: dict, want: dict) -> None:
    """Every metric value (and the quantization report) bit-identical, same thread count."""
    assert set(got) == set(want)
    for key, r in got.items():
        assert r["status"] == "done", r["error"]
        assert r["metrics"] == want[key]["metrics"], key
        untimed = [{k: v for k, v in (q or {}).items() if k != "seconds"} for q in (r["quant_report"],
                                                                                   want[key]["quant_report"])]
        assert untimed[0] == untimed[1], key
        assert r["host"]["torch_threads"] == want[key]["host"]["torch_threads"] == 1
        assert r["model"]["path"] == want[key]["model"]["path"]
        assert r["calibration"] == want[key]["calibration"]
    assert sum(len(v) for r in got.values() for v in r["metrics"].values()) >= 6 * 4


def test_killed_worker_is_retried_and_numbers_match_local(cluster, sweep_file, local, data_dir, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "qbench.cli", "sweep", str(sweep_file), "--results", str(results), "--no-progress",
           "--executor", "ray", "--address", cluster["address"]]
    proc = subprocess.Popen(cmd, env={**cluster["env"], "QBENCH_DATA": str(data_dir)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    victim, deadline = None, time.time() + 240
    while victim is None:   # a worker in the middle of a cell: evaluating (the task data's Arrow files mapped)
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        for pid in _cell_workers(cluster):
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            if any(str(data_dir) in line and line.endswith(".arrow") for line in maps.splitlines()):
                os.kill(pid, signal.SIGKILL)
                victim = pid
                break
        time.sleep(0.05)
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out[-4000:]
    assert "ray: 2 node(s); 2 cell(s) at a time (1 CPU each), inputs by path" in out
    assert "6 cells: 6 done (0 already stored, 6 computed now), 0 failed" in out, out[-3000:]
    assert len(re.findall(r"^\[\d/6\] done ", out, flags=re.M)) == 6                 # each cell stored once
    store = Store(results)
    records = store.records()
    manifest = store.read_manifest("t")
    assert set(records) == {c["key"] for c in manifest["cells"]} == set(local[1])   # none lost, same keys
    assert not list(store.cells_dir.glob("*.claim")) and not list(store.cells_dir.glob(".*.tmp"))
    pids = [r["host"]["pid"] for r in records.values()]
    assert victim not in pids and len(set(pids)) == 6       # the killed cell was recomputed; a fresh worker each
    assert len({r["run_id"] for r in records.values()}) == 1 and all(r["attempt"] == 1 for r in records.values())
    _same_numbers(records, local[1])


def test_objects_shipping_resumes_a_sweep(ray_env, sweep_file, local, tmp_path, capsys):
    """A store holding 4 of the 6 cells (copied from the local run): the Ray sweep with inputs
    through the object store computes the 2 others (gptq: calibration text shipped too) and
    leaves the stored ones alone."""
    results = tmp_path / "results"
    shutil.copytree(local[0], results)
    keep = {k for k, r in local[1].items() if r["recipe"] is None or r["recipe"]["name"] != "gptq"}
    for key in set(local[1]) - keep:
        Store(results).path(key).unlink()
    before = {k: Store(results).path(k).stat().st_mtime_ns for k in keep}
    rc = main(["sweep", str(sweep_file), "--results", str(results), "--no-progress", "--executor", "ray",
               "--address", ray_env["address"], "--ray-ship", "objects"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "4 stored, 0 failed before (retried), 0 damaged (recomputed), 2 to compute" in out
    assert "6 cells: 6 done (4 already stored, 2 computed now), 0 failed" in out
    for what in ("checkpoint of arm softmax", "checkpoint of arm softpick", "task data", "calibration text"):
        assert out.count(f"ray: {what} put into the object store") == 1, out   # once per sweep
    store = Store(results)
    assert {k: store.path(k).stat().st_mtime_ns for k in keep} == before
    _same_numbers(store.records(), local[1])


def test_objects_reach_a_worker_without_the_driver_paths(ray_env, sweep_file, local, tmp_path):
    """The cell's spec names paths that exist nowhere: with --ray-ship objects the worker computes
    it from the shipped copies (same key, same numbers); --ray-ship path fails it, naming them."""
    from qbench.sweep.ray_executor import RayExecutor, missing_inputs

    sweep = load_sweep(sweep_file, results_dir=tmp_path / "r")
    spec = next(c for c in expand(sweep) if c.entry == "gptq" and c.arm == "softpick")
    gone = replace(spec, model_path=str(tmp_path / "nowhere" / "softpick"), tasks_dir=str(tmp_path / "nowhere/tasks"),
                   calibration_text=str(tmp_path / "nowhere" / "calib.txt"))
    lines = []
    ex = RayExecutor(sweep, address=ray_env["address"], ship="objects", log=lines.append)
    try:
        ex.submit(gone, "run-x", 1)
        result, end = None, time.time() + 240
        while result is None and time.time() < end:
            result = ex.next_result(timeout=2)
    finally:
        ex.close()
    got_spec, record, _ = result
    assert got_spec is gone and record["key"] == spec.key and record["status"] == "done", record["error"]
    assert record["metrics"] == local[1][spec.key]["metrics"]
    assert record["model"]["path"] == gone.model_path and record["calibration"]["text"] == gone.calibration_text
    assert missing_inputs(spec) is None
    problem = missing_inputs(gone)
    assert all(p in problem for p in (gone.model_path, gone.tasks_dir, gone.calibration_text, "--ray-ship objects"))


def test_a_cell_whose_every_worker_died_is_stored_as_failed(ray_env, sweep_file, tmp_path):
    """Without retries (max_retries=0), a killed worker fails its cell: a failed record naming the
    crash comes back (the driver stores it; a rerun retries the cell)."""
    from qbench.sweep.ray_executor import RayExecutor

    sweep = load_sweep(sweep_file, results_dir=tmp_path / "r")
    spec = expand(sweep)[0]
    ex = RayExecutor(sweep, address=ray_env["address"], max_retries=0, log=lambda line: None)
    try:
        ex.submit(spec, "run-y", 3)
        end = time.time() + 120
        while not _cell_workers(ray_env):
            assert time.time() < end, "no worker started the cell"
            time.sleep(0.05)
        for pid in _cell_workers(ray_env):
            os.kill(pid, signal.SIGKILL)
        result = None
        while result is None and time.time() < end:
            result = ex.next_result(timeout=2)
    finally:
        ex.close()
    got, record, items = result
    assert got is spec and record["key"] == spec.key and items is None
    assert record["status"] == "failed" and record["attempt"] == 3 and record["run_id"] == "run-y"
    assert "retried 0 times): " in record["error"] and "Worker" in record["error"], record["error"]


def test_environment_mismatch_fails_the_cell(sweep_file, tmp_path):
    from qbench.sweep.ray_executor import environment_mismatch

    spec = expand(load_sweep(sweep_file, results_dir=tmp_path / "r"))[2]
    assert environment_mismatch(spec) is None
    ident = json.loads(json.dumps(spec.identity))
    ident["versions"]["torch"] = "0.0"
    ident["code"]["scorer"] = "99"
    problem = environment_mismatch(replace(spec, identity=ident))
    assert "versions.torch: driver '0.0'" in problem and "code.scorer: driver '99'" in problem
    assert "recipe" not in problem
    ident = json.loads(json.dumps(spec.identity))
    ident["recipe"]["weight"]["group_size"] = 16
    assert "resolves the cell's recipe differently" in environment_mismatch(replace(spec, identity=ident))


def test_cell_timeout_cancels_and_fails_the_cell(ray_env, tiny_pair, tmp_path, capsys):
    path = write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}], arms=[{"name": "m", "path": str(tiny_pair[0])}],
                       limit=2)
    rc = main(["sweep", str(path), "--results", str(tmp_path / "r"), "--no-progress", "--executor", "ray",
               "--address", ray_env["address"], "--cell-timeout", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 cells: 0 done (0 already stored, 0 computed now), 2 failed" in out, out[-3000:]
    records = Store(tmp_path / "r").records().values()
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("ran past its deadline of 1 s (--cell-timeout) and was cancelled" in r["error"] for r in records)
    end = time.time() + 30
    while _cell_workers(ray_env) and time.time() < end:     # the cancelled cells' workers are killed
        time.sleep(0.2)
    assert not _cell_workers(ray_env)


def test_ray_options_need_the_ray_executor(tiny_pair, tmp_path, capsys):
    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [4]}], limit=2)
    for extra, message in ((["--cell-timeout", "5"], "field '--cell-timeout': only with --executor ray"),
                           (["--executor", "ray", "--workers", "2"], "field '--workers': is for the local executor")):
        assert main(["sweep", str(path), "--results", str(tmp_path / "r"), *extra]) == 2
        assert capsys.readouterr().err.startswith(f"qbench sweep: error: command line: {message}")
