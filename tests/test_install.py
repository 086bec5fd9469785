"""qbench as an installed package: the wheel, installed into a fresh virtual environment outside
the checkout, finds its recipes, sweep files and bundled pair and runs a sweep from another folder."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from qbench import paths


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with the qbench wheel installed (its dependencies seen through a .pth file pointing
    at this environment's site-packages, where .pth files are not processed: the checkout's
    editable install stays invisible)."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(paths.SOURCE_ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next((root / "dist").glob("qbench-*.whl"))
    venv = root / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the qbench that this environment's site-packages holds (an editable install of a
    # checkout, seen through deps.pth) would otherwise count as installed already, and the wheel be skipped
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


def test_wheel_runs_a_sweep_from_another_folder(installed, data_dir, tmp_path):
    env = {**os.environ, "QBENCH_DATA": str(data_dir), "PYTHONPATH": ""}   # (a PYTHONPATH would find the checkout)
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import qbench, qbench.paths as p; print(qbench.__file__); print(p.BUNDLED_SOFTMAX)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.split()
    assert all(str(installed) in w for w in where), where            # the installed copy, not the checkout's
    sweep = tmp_path / "mine.yaml"
    sweep.write_text(json.dumps({"name": "mine", "pair": "bundled", "tasks": ["qb_arc_easy", "qb_heldout_ppl"],
                                 "limit": 2, "grid": [{"recipe": "rtn", "bits": [8]}]}))
    run = subprocess.run([str(installed / "bin" / "qbench"), "sweep", str(sweep), "--results", "out", "--no-progress"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "4 cells: 4 done" in run.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json")]
    assert len(records) == 4 and {r["model"]["path"] for r in records} == {
        str(Path(where[1])), str(Path(where[1]).parent / "softpick")}
    # shipped sweep files and recipes by name, from any folder; a user recipe folder comes first
    dry = subprocess.run([str(installed / "bin" / "qbench"), "sweep", "full", "--dry-run", "--results", "x"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert dry.returncode == 0 and "sweep full" in dry.stdout, dry.stdout[-2000:] + dry.stderr[-2000:]
    mine = tmp_path / "my-recipes"
    mine.mkdir()
    (mine / "rtn.yaml").write_text(json.dumps({"name": "rtn", "method": "rtn", "bits": [8],
                                               "weight": {"group_size": 32, "symmetric": True}}))
    dry = subprocess.run([str(installed / "bin" / "qbench"), "--recipes", str(mine), "sweep", str(sweep), "--dry-run",
                          "--results", "out"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert dry.returncode == 0 and "2 stored" in dry.stdout and "2 to compute" in dry.stdout, dry.stdout[-2000:]
    # the benchmarks are modules of the package: `qbench bench ...` runs them from any folder
    same = subprocess.run([str(installed / "bin" / "qbench"), "bench", "compare-stores", "out", "out"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert same.returncode == 0 and "metric values compared: " in same.stdout, same.stdout[-2000:] + same.stderr[-2000:]
    help_ = subprocess.run([str(installed / "bin" / "python"), "-m", "qbench.bench.attention", "--help"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: qbench bench attention "), help_.stderr[-2000:]
