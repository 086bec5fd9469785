"""The sweep: grid expansion and cell keys, the store (atomic writes, damage reported, claims),
validation before any cell runs, resume after kill -9, concurrent sweeps on one folder, failure
isolation. Real quantizers and real lm-eval runs on a tiny random pair with a few examples per task."""
import errno
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qbench.cli import main
from qbench.sweep import SweepError, expand, key_of, load_sweep
from qbench.sweep import cells as cells_module
from qbench.sweep.store import CorruptCell, Store, StoreError, atomic_write_text
from qbench.sweep.sweepfile import read_sweep_file

from conftest import TASKS, TINY, _text, gptq32, save_tiny, write_recipe, write_sweep

pytestmark = pytest.mark.usefixtures("use_data_dir")


def keys_of(path, **kw):
    return [c.key for c in expand(load_sweep(path, check_store=False, **kw))]


# ----------------------------------------------------------------------------- expansion and keys
def test_grid_expansion(tiny_pair, tmp_path):
    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8, 2]}, {"recipe": "w8a-rtn", "act_bits": [8, 4]},
                                             {"recipe": "kv", "kv_bits": [4, "fp8"]}])
    sweep = load_sweep(path, check_store=False)
    assert [(a.name, a.attention) for a in sweep.arms] == [("softmax", "softmax"), ("softpick", "softpick")]
    assert sweep.baseline == "softmax" and sweep.compare == "arms"
    cells = expand(sweep)
    got = [(c.arm, c.entry, c.bits, c.label) for c in cells]
    assert got == [("softmax", "fp", None, "FP"), ("softpick", "fp", None, "FP"),
                   ("softmax", "rtn", 2, "2-bit"), ("softpick", "rtn", 2, "2-bit"),
                   ("softmax", "rtn", 8, "8-bit"), ("softpick", "rtn", 8, "8-bit"),
                   ("softmax", "w8a-rtn", 8, "W8A8"), ("softpick", "w8a-rtn", 8, "W8A8"),
                   ("softmax", "w8a-rtn", 8, "W8A4"), ("softpick", "w8a-rtn", 8, "W8A4"),
                   ("softmax", "kv", None, "KV4"), ("softpick", "kv", None, "KV4"),
                   ("softmax", "kv", None, "KVFP8"), ("softpick", "kv", None, "KVFP8")]
    assert len({c.key for c in cells}) == len(cells)
    c = cells[2]
    assert c.tasks == TASKS and c.limit == 3 and c.identity["recipe"]["weight"]["group_size"] == 64
    assert c.identity["versions"]["torch"] and c.identity["code"]["quant.rtn"] and c.identity["code"]["scorer"]
    assert "quant.rtn" not in cells[0].identity["code"]          # a baseline runs no quantizer
    assert cells[-1].identity["code"].keys() >= {"quant.core", "quant.kv_cache"} and "quant.rtn" not in cells[-1].identity["code"]
    assert c.identity["eval"]["task_data"]["qb_arc_easy"]
    assert c.identity["device"] == {"type": "cpu"} and c.identity["dtype"] == "float32"
    assert c.identity["runtime"]["QBENCH_SOFTPICK_KERNEL"] == "1"
    assert key_of(c.identity) == c.key
    again = type(c).from_dict(json.loads(json.dumps(c.to_dict())))   # a spec travels as plain data
    assert again.key == c.key and again.recipe.to_dict() == c.recipe.to_dict()


def test_arms_three_and_one(tiny_pair, tokenizer, tmp_path):
    """A sweep names two or more arms (or one); a forced attention kind must fit the checkpoint."""
    third = save_tiny(tmp_path / "third", "softmax", tokenizer, seed=3)
    arms = [{"name": "sm", "path": str(tiny_pair[0])}, {"name": "sp", "path": str(tiny_pair[1])},
            {"name": "sm-seed3", "path": str(third), "label": "softmax (seed 3)"}]
    path = write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}], arms=arms, baseline="sp")
    sweep = load_sweep(path, check_store=False)
    assert [a.name for a in sweep.arms] == ["sm", "sp", "sm-seed3"] and sweep.baseline == "sp"
    cells = expand(sweep)
    assert [(c.arm, c.entry) for c in cells] == [("sm", "fp"), ("sp", "fp"), ("sm-seed3", "fp"),
                                                  ("sm", "rtn"), ("sp", "rtn"), ("sm-seed3", "rtn")]
    man = cells_module.manifest(sweep, cells)
    assert man["baseline"] == "sp" and [a["label"] for a in man["arms"]] == ["sm", "sp", "softmax (seed 3)"]
    one = write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}], arms=[{"name": "m", "path": str(third)}])
    assert [(c.arm, c.entry) for c in expand(load_sweep(one, check_store=False))] == [("m", "fp"), ("m", "rtn")]
    # renaming an arm changes no key
    renamed = [dict(a, name=a["name"] + "x") for a in arms]
    assert keys_of(write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}], arms=renamed,
                               baseline="spx")) == [c.key for c in cells]
    for bad, msg in [([arms[0], dict(arms[0], name="again")], "same checkpoint with the same attention"),
                     ([arms[0], dict(arms[1], name="sm")], "used twice"),
                     ([dict(arms[0], attention="nope")], "is not an attention kind")]:
        with pytest.raises(SweepError, match=msg):
            load_sweep(write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}], arms=bad), check_store=False)
    with pytest.raises(SweepError, match="field 'baseline'"):
        load_sweep(write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}], arms=arms, baseline="x"),
                   check_store=False)


def test_cpu_limit_calib_and_seeds(tiny_pair, tmp_path, calib_text):
    gptq = gptq32(tmp_path / "recipes")
    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [4]}, {"recipe": gptq, "bits": [4]}],
                       limit=None, cpu_limit=5, cpu_calib={"samples": 4, "seq_len": 32},
                       calibration_text=str(calib_text))
    sweep = load_sweep(path, check_store=False)
    assert sweep.effective_limit == 5 and "cpu_limit" in sweep.limit_note()
    assert load_sweep(path, check_store=False, limit=2).effective_limit == 2
    assert load_sweep(path, check_store=False, no_limit=True).effective_limit is None
    assert sweep.points[1].recipe.calib == {"samples": 4, "seq_len": 32, "seed": 0} and "16" not in sweep.calib_note()
    assert "4 x 32 tokens" in sweep.calib_note() and sweep.points[0].recipe.calib is None
    full = load_sweep(path, check_store=False, full_calib=True)
    assert full.points[1].recipe.calib == {"samples": 128, "seq_len": 512, "seed": 0} and not full.calib_note()
    small, big = expand(sweep), expand(full)
    assert [a.key == b.key for a, b in zip(small, big)] == [True] * 4 + [False] * 2   # only gptq's cells
    seeds = load_sweep(write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [4]}, {"recipe": gptq, "bits": [4]}],
                                   limit=None, cpu_limit=5, cpu_calib={"samples": 4, "seq_len": 32}, calib_seeds=3,
                                   calibration_text=str(calib_text)), check_store=False)
    got = [(c.arm, c.entry, c.calib_seed) for c in expand(seeds)][2:]
    assert got == [(a, "rtn", None) for a in ("softmax", "softpick")] + [
        (a, "gptq", s) for s in range(3) for a in ("softmax", "softpick")]
    assert "seeds 0..2" in seeds.calib_note()
    assert [c.key for c in expand(seeds)][:6] == [c.key for c in small]     # seed 0 is the single-seed cell


def test_keys_change_with_every_input_and_only_then(tiny_pair, tokenizer, tmp_path, calib_text, monkeypatch):
    grid = [{"recipe": "rtn", "bits": [4]}, {"recipe": gptq32(tmp_path / "g32"), "bits": [4]}]
    base = write_sweep(tmp_path / "a", tiny_pair, grid, calibration_text=str(calib_text))
    keys = keys_of(base)
    assert keys_of(write_sweep(tmp_path / "b", tiny_pair, grid, calibration_text=str(calib_text))) == keys

    def differs(new_keys, which):   # which: indices of the cells that must change
        for i, (a, b) in enumerate(zip(keys, new_keys)):
            assert (a != b) == (i in which), (i, which)

    everything = range(len(keys))
    softmax_cells = [i for i in everything if i % 2 == 0]
    # a checkpoint with other weights: only its model's cells change
    other = save_tiny(tmp_path / "other_softmax", "softmax", tokenizer, seed=7)
    differs(keys_of(write_sweep(tmp_path / "c", (other, tiny_pair[1]), grid, calibration_text=str(calib_text))),
            softmax_cells)
    # limit, tasks, dtype: everything
    differs(keys_of(base, limit=2), everything)
    differs(keys_of(write_sweep(tmp_path / "d", tiny_pair, grid, tasks=["qb_arc_easy"],
                                calibration_text=str(calib_text))), everything)
    differs(keys_of(write_sweep(tmp_path / "e", tiny_pair, grid, dtype="bfloat16",
                                calibration_text=str(calib_text))), everything)
    # a recipe option: only that recipe's cells
    rec = write_recipe(tmp_path / "recipes", "rtn", weight={"group_size": 32, "symmetric": False})
    differs(keys_of(write_sweep(tmp_path / "f", tiny_pair, [{"recipe": str(rec), "bits": [4]}, grid[1]],
                                calibration_text=str(calib_text))), [2, 3])
    # calibration text content: only the calibrating recipe (gptq)
    other_text = tmp_path / "calib2.txt"
    other_text.write_text(_text(40, 60, seed=3))
    differs(keys_of(write_sweep(tmp_path / "g", tiny_pair, grid, calibration_text=str(other_text))), [4, 5])
    # library versions
    real = cells_module.library_versions
    with monkeypatch.context() as m:
        m.setattr(cells_module, "library_versions", lambda r: {**real(r), "torch": "0.0"})
        differs(keys_of(base), everything)
    # versions of qbench's code areas: a quantizer's only its cells, a common area everything
    from qbench import identity

    def bumped(*areas):
        with monkeypatch.context() as m:
            for area in areas:
                m.setitem(identity.AREAS, area, identity.Area("99", identity.AREAS[area].files, ""))
            return keys_of(base)
    differs(bumped("quant.gptq"), [4, 5])
    differs(bumped("calibration"), [4, 5])
    differs(bumped("quant.rtn"), [2, 3])
    differs(bumped("quant.core"), [2, 3, 4, 5])
    differs(bumped("attention"), everything)
    differs(bumped("scorer"), everything)
    # runtime switches: the softpick kernel switch, the float32 matmul precision
    with monkeypatch.context() as m:
        m.setenv("QBENCH_SOFTPICK_KERNEL", "0")
        differs(keys_of(base), everything)
    import torch

    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        differs(keys_of(base), everything)
    finally:
        torch.set_float32_matmul_precision(precision)
    # the CPU thread count the cells compute with (GPTQ's weights depend on it), and what the
    # command line makes of it: one in-process worker keeps this process's, N workers a share each
    from qbench.sweep.run import cell_threads, worker_threads

    differs([c.key for c in expand(load_sweep(base, check_store=False), cpu_threads=torch.get_num_threads() + 1)],
            everything)
    assert cell_threads("cpu") == torch.get_num_threads() and cell_threads("cuda", workers=4) is None
    assert cell_threads("cpu", workers=2) == worker_threads(2) == max(1, (os.cpu_count() or 1) // 2)
    assert cell_threads("cpu", executor="ray", cpus_per_cell=3) == 3
    # device type
    real_dev = cells_module.device_identity
    monkeypatch.setattr(cells_module, "device_identity", lambda d: {"type": "cuda", "name": "some GPU"})
    differs(keys_of(base), everything)
    monkeypatch.setattr(cells_module, "device_identity", real_dev)
    # names, paths and results folders do not change keys
    assert keys_of(write_sweep(tmp_path / "h", tiny_pair, grid, name="other-name",
                               calibration_text=str(calib_text))) == keys


# ----------------------------------------------------------------------------- the store
def _record(key, **fields):
    return {"key": key, "status": "done", "metrics": {"t": {"ppl": float("inf"), "acc": 0.5}}, **fields}


def test_atomic_store(tmp_path, monkeypatch):
    store = Store(tmp_path / "r")
    store.ensure_writable()
    key = "ab" * 10
    path = store.write(_record(key))
    assert json.loads(path.read_text())["metrics"]["t"] == {"ppl": "inf", "acc": 0.5}   # strict JSON
    assert store.read(key)["status"] == "done"

    # a write that dies before the rename leaves the old file whole and no tmp file
    def boom(src, dst):
        raise OSError("disk died")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="disk died"):
        store.write({**_record(key), "status": "failed"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert store.read(key)["status"] == "done"
    assert sorted(p.name for p in store.cells_dir.iterdir()) == [f"{key}.json"]

    # what a kill -9 in the middle of a write leaves: a tmp file of a dead process; readers ignore
    # it, the next sweep removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = store.cells_dir / f".{'cd' * 10}.json.{int(dead.stdout)}.tmp"
    stray.write_text('{"key": "cdcd')
    mine = store.cells_dir / f".{'ef' * 10}.json.{os.getpid()}.tmp"
    mine.write_text("{")
    assert store.keys() == [key]
    assert store.clean_tmp() == 1 and not stray.exists() and mine.exists()
    atomic_write_text(tmp_path / "x.txt", "hello")
    assert (tmp_path / "x.txt").read_text() == "hello"
    with pytest.raises(ValueError, match="no metrics"):   # a done record without metrics is never written
        store.write({"key": "12" * 10, "status": "done", "metrics": None})


@pytest.mark.parametrize("damage", ["truncated", "empty", "other key", "null metrics", "no metrics",
                                    "sidecar changed", "sidecar missing"])
def test_damage_is_reported_never_hidden(damage, tmp_path):
    store = Store(tmp_path / "r")
    store.ensure_writable()
    key = "ab" * 10
    items = {"t": {"doc_id": [0, 1], "metrics": {"acc": {"aggregation": "mean", "values": [1, 0]}}}}
    store.write(_record(key), items)
    assert store.read_items(store.read(key)) == items and store.scan([key]) == {key: ("done", None)}
    path, sidecar = store.path(key), store.items_path(key)
    if damage == "truncated":
        path.write_text(path.read_text()[:40])
    elif damage == "empty":
        path.write_text("")
    elif damage == "other key":
        path.write_text(json.dumps(_record("cd" * 10)))
    elif damage == "null metrics":
        path.write_text(json.dumps(_record(key, metrics={"t": {"acc": None}})))
    elif damage == "no metrics":
        path.write_text(json.dumps({"key": key, "status": "done", "metrics": None}))
    elif damage == "sidecar changed":
        sidecar.write_bytes(gzip.compress(b'{"schema": 1, "key": "x", "tasks": {}}'))
    elif damage == "sidecar missing":
        sidecar.unlink()
    state, reason = store.scan([key])[key]
    assert state == "corrupt" and (str(path) in reason or str(sidecar) in reason), reason
    with pytest.raises(CorruptCell):
        record = store.read(key)
        store.read_items(record)


def test_manifests_of_several_sweeps(tmp_path):
    store = Store(tmp_path / "r")
    store.ensure_writable()
    assert store.read_manifest() is None
    store.write_manifest({"name": "a", "cells": []})
    assert store.read_manifest()["name"] == "a"
    store.write_manifest({"name": "b", "cells": [{"key": "k"}]})
    with pytest.raises(StoreError, match="choose one with --sweep"):
        store.read_manifest()
    assert store.read_manifest("a")["cells"] == [] and store.manifest_names() == ["a", "b"]
    with pytest.raises(StoreError, match="no sweep named 'c'"):
        store.read_manifest("c")
    store.manifest_path("b").write_text('{"name": "b", "cel')
    with pytest.raises(StoreError, match="corrupt sweep manifest"):
        store.read_manifest("b")
    legacy = Store(tmp_path / "old")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sweep.json").write_text(json.dumps({"name": "full", "cells": []}))
    assert legacy.manifest_names() == ["full"] and legacy.read_manifest()["name"] == "full"


def test_claims(tmp_path, monkeypatch):
    from qbench.sweep import store as store_module

    store = Store(tmp_path / "r")
    store.ensure_writable()
    key = "ab" * 10
    assert store.claim(key, "run-a") is None
    assert store.claim(key, "run-b")["owner"] == "run-a"          # held by a live owner
    assert store.claim(key, "run-a") is None                      # its owner may refresh it
    store.release(key, "run-b")                                   # not b's to release
    assert store.read_claim(key)["owner"] == "run-a"
    # a claim whose process is gone (same host) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = store.read_claim(key)
    store.claim_path(key).write_text(json.dumps({**claim, "pid": int(dead.stdout)}))
    assert store.claim(key, "run-b") is None and store.read_claim(key)["took_over"] == "run-a"
    # a claim not refreshed for STALE_SECONDS is taken over; a heartbeat keeps it
    store.heartbeat([key], "run-b")
    monkeypatch.setattr(store_module, "STALE_SECONDS", -1.0)
    assert store.claim(key, "run-c") is None
    store.release(key, "run-c")
    assert store.read_claim(key) is None


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["unknown recipe", "bits", "unknown task", "not a pair", "unwritable",
                                  "unknown field", "no calibration text", "group size", "no layer",
                                  "results is a file", "axes"])
def test_bad_sweep_fails_before_any_cell(case, tiny_pair, tmp_path, capsys):
    grid = [{"recipe": "rtn", "bits": [4]}]
    pair, results, extra, tasks = tiny_pair, tmp_path / "results", {}, TASKS
    expected = {"unknown recipe": "no recipe named 'nope'", "bits": "does not support 5-bit",
                "unknown task": "unknown task or task set 'nope'", "not a pair": "given as the softpick model",
                "unwritable": "cannot be created", "unknown field": "field 'oops': unknown field",
                "no calibration text": "field 'calibration_text'",
                "group size": "48 does not divide in_features=64",
                "no layer": "selects no linear layer", "results is a file": "is a file, not a folder",
                "axes": "field 'grid[1].act_bits'"}[case]
    if case == "unknown recipe":
        grid = grid + [{"recipe": "nope", "bits": [4]}]
    elif case == "bits":
        grid = grid + [{"recipe": "hqq", "bits": [4, 5]}]
    elif case == "unknown task":
        tasks = ["qb_arc_easy", "nope"]
    elif case == "not a pair":
        pair = (tiny_pair[0], tiny_pair[0])
    elif case == "unwritable":
        (tmp_path / "file").write_text("")
        results = tmp_path / "file" / "results"
    elif case == "unknown field":
        extra = {"oops": 1}
    elif case == "no calibration text":
        grid = grid + [{"recipe": gptq32(tmp_path / "rec"), "bits": [4]}]
        extra = {"calibration_text": str(tmp_path / "missing.txt")}
    elif case == "group size":
        grid = grid + [{"recipe": str(write_recipe(tmp_path / "rec", "g48", weight={"group_size": 48,
                                                                                   "symmetric": False})),
                        "bits": [4]}]
    elif case == "no layer":
        grid = grid + [{"recipe": str(write_recipe(tmp_path / "rec", "none", layers={"include": ["*.nothing"]})),
                        "bits": [4]}]
    elif case == "results is a file":
        results = tmp_path / "results.txt"
        results.write_text("")
    elif case == "axes":
        grid = grid + [{"recipe": "hqq", "bits": [4], "act_bits": ["eight"]}]
    path = write_sweep(tmp_path, pair, grid, tasks=tasks, **extra)
    rc = main(["sweep", str(path), "--results", str(results)])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err, err
    assert not results.is_dir() or not (results / "cells").exists() or not any((results / "cells").iterdir())
    with pytest.raises(SweepError):
        load_sweep(path, results_dir=results)


def test_full_disk_stops_the_sweep_cleanly(tiny_pair, tmp_path, capsys, monkeypatch):
    from qbench.sweep import store as store_module

    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8]}], limit=2)
    real, calls = store_module.atomic_write_text, []

    def full(p, text):
        if Path(p).suffix == ".json" and Path(p).parent.name == "cells":
            calls.append(p)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(p, text)
    monkeypatch.setattr(store_module, "atomic_write_text", full)
    rc = main(["sweep", str(path), "--results", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left" in err and "Traceback" not in err and len(calls) == 1, err
    assert not list((tmp_path / "r" / "cells").glob("*.json"))


def test_a_cpu_cell_computes_with_the_thread_count_of_its_key(tiny_pair, tmp_path, data_dir):
    """The key holds the thread count (GPTQ's weights depend on it); the cell sets it, whatever
    the process had."""
    import torch

    from qbench.sweep.compute import ModelSource, compute_cell

    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8]}], limit=2)
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    try:
        spec = expand(load_sweep(path, check_store=False, device="cpu"), cpu_threads=want)[-1]
        assert spec.identity["runtime"]["cpu_threads"] == want and spec.recipe is not None
        record, _ = compute_cell(spec, ModelSource())
        assert record["status"] == "done", record["error"]
        assert record["host"]["torch_threads"] == want == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- resume after kill -9
def _snapshot(cells_dir: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in cells_dir.glob("*.json")}


def _sweep_cmd(path, results, *extra):
    return [sys.executable, "-m", "qbench.cli", "sweep", str(path), "--results", str(results), "--no-progress",
            *extra]


def test_resume_after_kill_9(tiny_pair, tmp_path, data_dir):
    grid = [{"recipe": "rtn", "bits": [4, 8]}, {"recipe": "hqq", "bits": [4]}]
    path = write_sweep(tmp_path, tiny_pair, grid, limit=2)
    results = tmp_path / "results"
    cells_dir = results / "cells"
    env = {**os.environ, "QBENCH_DATA": str(data_dir)}
    # one process with a worker's share of the cores: the keys hold the CPU thread count, so the
    # rerun's two workers find its cells under the same keys
    from qbench.sweep.run import worker_threads

    proc = subprocess.Popen(_sweep_cmd(path, results), env={**env, "OMP_NUM_THREADS": str(worker_threads(2))},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while not list(cells_dir.glob("*.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no cell finished in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _snapshot(cells_dir)
    assert 1 <= len(before) < 8

    # the rerun, with two worker processes sharing out the remaining cells (the killed sweep's
    # claim is taken over at once: its process is gone)
    done = subprocess.run(_sweep_cmd(path, results, "--workers", "2"), env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(before)} stored, 0 failed before (retried), 0 damaged (recomputed), {8 - len(before)} to compute" \
        in done.stdout
    lines = [line for line in done.stdout.splitlines() if re.match(r"\[\d+/8\] done ", line)]
    assert len(lines) == 8 - len(before)                                          # each cell once
    manifest = json.loads((results / "sweeps" / "t.json").read_text())
    keys = {c["key"] for c in manifest["cells"]}
    after = _snapshot(cells_dir)
    assert set(after) == {f"{k}.json" for k in keys} and len(keys) == 8          # none lost, none extra
    assert not [p for p in cells_dir.iterdir() if p.suffix not in (".json", ".gz") and p.name != ".lock"]
    for name, (content, mtime) in before.items():                               # not recomputed
        assert after[name] == (content, mtime)
    records = [json.loads(content) for content, _ in after.values()]            # none truncated
    assert all(r["status"] == "done" and r["metrics"]["qb_arc_easy"]["acc"] is not None for r in records)
    assert len({r["run_id"] for r in records}) == 2
    rerun = [r for r in records if r["run_id"] != json.loads(next(iter(before.values()))[0])["run_id"]]
    assert len({r["host"]["pid"] for r in rerun}) == 2                          # both workers computed
    assert {(r["model"]["arm"], None if r["recipe"] is None else r["recipe"]["name"], r["bits"]) for r in records} \
        == {(k, None, None) for k in ("softmax", "softpick")} | {
            (k, r, b) for k in ("softmax", "softpick") for r, b in [("rtn", 4), ("rtn", 8), ("hqq", 4)]}
    q = next(r for r in records if r["recipe"] and r["recipe"]["name"] == "hqq")["quant_report"]
    assert q["layers_quantized"] > 0 and q["weight_error"] > 0
    # with another thread count per cell the keys differ, and the dry run says where the cells are
    other = 2 if worker_threads(2) == 1 else 1
    dry = subprocess.run(_sweep_cmd(path, results, "--dry-run", "--cpu-threads", str(other)), env=env,
                         capture_output=True, text=True, timeout=400)
    assert dry.returncode == 0 and "0 stored" in dry.stdout, dry.stdout[-2000:]
    assert (f"note: 8 of the cells to compute are stored for {worker_threads(2)} CPU thread(s) per cell (this run: "
            f"{other}); `--cpu-threads {worker_threads(2)}` uses them") in dry.stdout
    # cells stored on another machine (another CPU in their identity, so other keys) are named, not used
    other_cpu = tmp_path / "other-cpu"
    (other_cpu / "cells").mkdir(parents=True)
    for content, _ in after.values():
        record = json.loads(content)
        record["identity"]["runtime"]["cpu"] = "AVX2; GenuineIntel another CPU; flags 000000000000"
        record["key"] = key_of(record["identity"])
        (other_cpu / "cells" / f"{record['key']}.json").write_text(json.dumps(record))
    dry = subprocess.run(_sweep_cmd(path, other_cpu, "--dry-run"), env=env, capture_output=True, text=True,
                         timeout=400)
    assert dry.returncode == 0 and "0 stored" in dry.stdout and "8 to compute" in dry.stdout, dry.stdout[-2000:]
    assert ("note: 8 of the cells to compute are stored for another CPU (AVX2; GenuineIntel another CPU; "
            "flags 000000000000, ") in dry.stdout and "they are recomputed here" in dry.stdout
    # a third run with the stored thread count computes nothing
    env["OMP_NUM_THREADS"] = str(worker_threads(2))
    again = subprocess.run(_sweep_cmd(path, results), env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and "8 stored, 0 failed before (retried), 0 damaged (recomputed), 0 to compute" \
        in again.stdout
    assert _snapshot(cells_dir) == after
    # a damaged cell: the dry run names it (exit 2), the sweep recomputes it
    victim = cells_dir / sorted(after)[0]
    victim.write_text(victim.read_text()[:100])
    dry = subprocess.run(_sweep_cmd(path, results, "--dry-run"), env=env, capture_output=True, text=True, timeout=400)
    assert dry.returncode == 2 and f"damaged: {victim}" in dry.stdout and "DAMAGED, recompute" in dry.stdout
    fixed = subprocess.run(_sweep_cmd(path, results), env=env, capture_output=True, text=True, timeout=400)
    assert fixed.returncode == 0 and "1 damaged (recomputed)" in fixed.stdout
    assert json.loads(victim.read_text())["status"] == "done"


def test_two_sweeps_on_one_folder_compute_each_cell_once(tiny_pair, tmp_path, data_dir):
    """The same sweep started twice at once, and a second sweep with another name on the same
    folder: every cell is computed by exactly one process, and each sweep keeps its manifest."""
    grid = [{"recipe": "rtn", "bits": [4, 8]}]
    path = write_sweep(tmp_path, tiny_pair, grid, limit=2)
    other = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8]}, {"recipe": "hqq", "bits": [4]}],
                        name="u", limit=2)
    results = tmp_path / "results"
    env = {**os.environ, "QBENCH_DATA": str(data_dir)}
    procs = [subprocess.Popen(_sweep_cmd(p, results), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for p in (path, path, other)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    store = Store(results)
    records = store.records()
    assert len(records) == 8                       # 6 cells of t, 2 more of u (u's rtn 8-bit and FP are t's)
    computed = sum(int(re.search(r"(\d+) computed now", o).group(1)) for o in outs)
    assert computed == 8, outs                     # nobody computed a cell another process computed
    assert len({r["run_id"] for r in records.values()}) >= 2
    assert store.manifest_names() == ["t", "u"]
    assert {c["key"] for c in store.read_manifest("u")["cells"]} <= set(records)
    assert not list(store.cells_dir.glob("*.claim"))


# ----------------------------------------------------------------------------- failure isolation
def test_failed_cell_is_isolated_and_retried(tiny_pair, tmp_path, capsys, monkeypatch):
    """A quantizer that raises inside one cell (here: hqq, made to fail): that cell is stored as
    failed with its traceback, the sweep goes on, a rerun retries it and nothing else."""
    from qbench.quant import hqq

    def broken(self, linear, recipe, bits):
        raise RuntimeError("library exploded")
    monkeypatch.setattr(hqq.HQQ, "quantize_layer", broken)
    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "hqq", "bits": [4]}, {"recipe": "rtn", "bits": [8]}],
                       limit=2)
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "6 cells: 4 done (0 already stored, 4 computed now), 2 failed" in out
    assert "failed cells (a rerun retries them):" in out and out.count("library exploded") >= 2
    store = Store(results)
    records = store.records()
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["recipe"]["name"] == "hqq" for r in failed)
    assert all("library exploded" in r["error"] and "Traceback" in r["traceback"] and r["attempt"] == 1
               for r in failed)
    done_before = {k: store.path(k).stat().st_mtime_ns for k, r in records.items() if r["status"] == "done"}
    assert main(["sweep", str(path), "--results", str(results), "--no-progress"]) == 1
    assert "4 stored, 2 failed before (retried), 0 damaged (recomputed), 0 to compute" in capsys.readouterr().out
    records = store.records()
    assert all(r["attempt"] == 2 for r in records.values() if r["status"] == "failed")
    assert {k: store.path(k).stat().st_mtime_ns for k in done_before} == done_before
    assert all(r["attention_backends"] for r in records.values() if r["status"] == "done")
    # tables and plots from the store: the stored numbers, "failed" where a cell failed
    assert main(["table", str(results)]) == 0 and main(["plot", str(results)]) == 0
    paper = (results / "tables" / "t" / "paper.md").read_text()
    assert "at most 2 examples per task (limit)" in paper and "failed" in paper
    assert list((results / "plots" / "t").glob("*.png"))


def test_nan_model_cells_fail_and_the_rest_run(tiny_pair, tokenizer, tmp_path, capsys):
    """A model that produces NaN: its cells are stored as failed (NaN metrics, or the quantizer's
    non-finite check), the other model's cells are done."""
    import torch

    from qbench.model import new_model, save_checkpoint

    model = new_model("softpick", seed=0, **TINY)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("o_proj.weight"))[0, 0] = float("nan")
    save_checkpoint(model, tokenizer, tmp_path / "nan_softpick")
    path = write_sweep(tmp_path, (tiny_pair[0], tmp_path / "nan_softpick"), [{"recipe": "rtn", "bits": [8]}], limit=2)
    assert main(["sweep", str(path), "--results", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "4 cells: 2 done (0 already stored, 2 computed now), 2 failed" in capsys.readouterr().out
    records = Store(tmp_path / "r").records().values()
    assert {r["model"]["arm"] for r in records if r["status"] == "done"} == {"softmax"}
    failed = {r["recipe"] is None: r["error"] for r in records if r["status"] == "failed"}
    assert "NaN" in failed[True] and "non-finite" in failed[False]


def test_extends_takes_the_base_fields_and_overrides_some(tiny_pair, tmp_path):
    base = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8, 2]}], name="base")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(json.dumps({"extends": f"../{base.name}", "name": "child", "limit": 2}))
    data_, _ = read_sweep_file(child)
    assert data_["name"] == "child" and data_["limit"] == 2 and data_["grid"] == [{"recipe": "rtn", "bits": [8, 2]}]
    assert "extends" not in data_
    assert len(keys_of(child)) == len(keys_of(base)) == 6 and set(keys_of(child)).isdisjoint(keys_of(base))
    child.write_text(json.dumps({"extends": f"../{base.name}", "name": "child"}))
    assert keys_of(child) == keys_of(base)   # the name is not part of a key
    child.write_text(json.dumps({"extends": f"../{base.name}", "name": "child",
                                 "arms": [{"name": "x", "path": str(tiny_pair[1])}]}))
    data_, _ = read_sweep_file(child)        # arms of the child replace the base's pair
    assert "pair" not in data_ and data_["arms"][0]["name"] == "x"
    for small, full in (("recipes/small/full.yaml", "recipes/full.yaml"), ("recipes/small/paper.yaml",
                                                                           "recipes/paper.yaml")):
        got, want = read_sweep_file(small)[0], read_sweep_file(full)[0]
        assert got["grid"] == want["grid"] and got["pair"]["softmax"] == "checkpoints/small/softmax"
    loop = tmp_path / "loop.yaml"
    loop.write_text(json.dumps({"extends": "loop.yaml", "name": "loop"}))
    with pytest.raises(SweepError, match="cycle"):
        read_sweep_file(loop)
    child.write_text(json.dumps({"extends": "missing.yaml", "name": "child"}))
    with pytest.raises(SweepError, match="field 'extends': no such sweep file"):
        read_sweep_file(child)
