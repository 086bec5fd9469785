"""Tables and plots are pure functions of the stored cells: numbers equal the cells, a missing
or failed cell shows as such (never as a number), captions state the example limit."""
import csv
import hashlib
import io
import json
import math

import pytest

from qbench import paths
from qbench.cli import main
from qbench.report import tables
from qbench.report.cells import load_grid
from qbench.sweep.store import Store

TASKS = ["qb_arc_easy", "qb_heldout_ppl"]
RECIPES = [{"name": "rtn", "method": "rtn", "bits": [2, 4], "activation": None, "description": "round to nearest"},
           {"name": "w4a8-rtn", "method": "act", "bits": [4], "activation": {"bits": 8}, "description": ""}]

# (kind, recipe, bits) -> (arc acc, arc acc stderr, held-out word ppl); None = missing, "failed" = failed
VALUES = {
    ("softmax", None, None): (0.60, 0.01, 20.0),
    ("softpick", None, None): (0.61, 0.01, 21.0),
    ("softmax", "rtn", 2): (0.30, 0.01, 400.0),
    ("softpick", "rtn", 2): (0.50, 0.01, 60.0),
    ("softmax", "rtn", 4): (0.59, 0.01, 20.5),
    ("softpick", "rtn", 4): "failed",
    ("softmax", "w4a8-rtn", 4): (0.58, 0.02, 23.0),
    ("softpick", "w4a8-rtn", 4): None,
}


def _key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _record(kind, recipe, bits, value, key):
    rec = {"key": key, "status": "done", "model": {"kind": kind, "hash": "abc"}, "bits": bits,
           "recipe": None if recipe is None else {"name": recipe, "method": "rtn" if recipe == "rtn" else "act",
                                                  **({"activation": {"bits": 8}} if recipe != "rtn" else {})},
           "tasks": TASKS, "limit": 40, "metrics": None, "finished_at": "2026-11-28T00:00:00+00:00"}
    if value == "failed":
        rec.update(status="failed", error="RuntimeError: boom", traceback="...")
    else:
        acc, se, ppl = value
        rec["metrics"] = {"qb_arc_easy": {"acc": acc, "acc_stderr": se, "acc_norm": acc, "acc_norm_stderr": se},
                          "qb_heldout_ppl": {"word_perplexity": ppl, "word_perplexity_stderr": None}}
    return rec


@pytest.fixture
def results(tmp_path):
    store = Store(tmp_path / "sweep")
    store.ensure_writable()
    cells = []
    for (kind, recipe, bits), value in VALUES.items():
        key = _key(kind, recipe, bits)
        cells.append({"key": key, "model": kind, "recipe": recipe or "fp", "bits": bits})
        if value is not None:
            store.write(_record(kind, recipe, bits, value, key))
    store.write_manifest({"name": "demo", "tasks": TASKS, "limit": 40,
                          "limit_note": "at most 40 examples per task (cpu_limit, running on CPU)",
                          "device": "cpu", "recipes": RECIPES, "cells": cells})
    return store.root


def _rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_paper_table_numbers_are_the_stored_ones(results):
    written = tables.write_tables(results)
    assert sorted(written) == sorted(f"{t}.{e}" for t in ("paper", "deltas", "summary") for e in ("md", "tex", "csv"))
    rows = _rows(written["paper.csv"])
    store = Store(results)
    by = {(r["recipe"], r["bits"], r["task"], r["metric"]): r for r in rows}
    for (kind, recipe, bits), value in VALUES.items():
        if recipe is None:
            continue
        row = by[(recipe, str(bits), "qb_arc_easy", "acc")]
        if value is None:
            assert row[f"{kind}_status"] == "missing" or row[kind] == "—"
            assert row[kind] == "—"
        elif value == "failed":
            assert row[kind] == "failed" and row[f"{kind}_status"] == "failed"
        else:
            stored = store.read(_key(kind, recipe, bits))["metrics"]["qb_arc_easy"]
            assert float(row[kind]) == stored["acc"] and float(row[f"{kind}_stderr"]) == stored["acc_stderr"]
    fp = by[("rtn", "FP", "qb_heldout_ppl", "word_perplexity")]
    assert float(fp["softmax"]) == 20.0 and float(fp["softpick"]) == 21.0 and fp["softmax_stderr"] == ""

    md = written["paper.md"].read_text()
    assert "| ARC-e acc | 60.00 / 61.00 | 30.00 / 50.00 | 59.00 / failed |" in md
    assert "| Held-out word ppl | 20.00 / 21.00 | 400.00 / 60.00 | 20.50 / failed |" in md
    assert "| ARC-e acc | 60.00 / 61.00 | 58.00 / — |" in md          # w4a8: softpick missing
    assert "| task metric | FP | W4A8 |" in md
    assert md.count("at most 40 examples per task") == 2              # one caption per recipe table
    tex = written["paper.tex"].read_text()
    assert "59.00 / failed" in tex and "58.00 / ---" in tex and "at most 40 examples per task" in tex
    assert r"\begin{tabular}" in tex and "qb_" not in tex


def test_deltas_and_marks(results):
    written = tables.write_tables(results)
    md = written["deltas.md"].read_text()
    se = math.sqrt(2) * 1.0    # percentage points
    # softpick - softmax: FP +1.00 (not significant), rtn 2-bit +20.00 (significant)
    assert f"| ARC-e acc | +1.00 ± {se:.2f} | +20.00 ± {se:.2f}* | failed |" in md
    # perplexity has no stderr: no mark, shown as ± ?
    assert "| Held-out word ppl | +1.00 ± ? | -340.00 ± ? | failed |" in md
    # change from own full precision
    assert f"| ARC-e acc | sm -30.00 ± {se:.2f}* / sp -11.00 ± {se:.2f}* | sm -1.00 ± {se:.2f} / sp failed |" in md
    rows = _rows(written["deltas.csv"])
    r = next(r for r in rows if (r["recipe"], r["bits"], r["metric"]) == ("rtn", "2", "acc"))
    assert math.isclose(float(r["softpick_minus_softmax"]), 0.20) and r["significant"] == "True"
    assert math.isclose(float(r["softmax_change_from_fp"]), 0.30 - 0.60)
    r = next(r for r in rows if (r["recipe"], r["bits"], r["metric"]) == ("rtn", "4", "acc"))
    assert r["softpick_minus_softmax"] == "failed" and r["softpick_change_from_fp"] == "failed"


def test_summary_says_who_survives(results):
    grid = load_grid(results)
    rtn, wa = RECIPES
    s2 = tables.survival(grid, rtn, 2)
    # arc acc and acc_norm: softpick lost 11 points, softmax 30 (significant); held-out ppl: no stderr
    assert (s2.verdict, s2.softpick, s2.softmax, s2.unclear) == ("softpick", 2, 0, 1)
    assert tables.survival(grid, rtn, 4).text() == "failed"
    assert tables.survival(grid, wa, 4).text() == "—"
    md = tables.write_tables(results)["summary.md"].read_text()
    assert "| rtn | softpick 2:0 (1 n.s.) | failed |" in md
    assert "| w4a8-rtn |  | — |" in md
    # held-out perplexity (no stderr, so not in the verdicts): growth from each model's own FP
    assert "| rtn | x20.00 / x2.86 | x1.02 / failed |" in md
    assert "| w4a8-rtn |  | x1.15 / — |" in md
    assert "at most 40 examples per task" in md
    rows = _rows(results / "tables" / "summary.csv")
    assert [r["verdict"] for r in rows] == ["softpick", "failed", "—"]
    assert float(rows[0]["qb_heldout_ppl:word_perplexity:ratio_to_fp:softmax"]) == 400.0 / 20.0
    assert rows[1]["qb_heldout_ppl:word_perplexity:ratio_to_fp:softpick"] == "failed"


def test_without_manifest_grid_comes_from_cells(results):
    (results / "sweep.json").unlink()
    grid = load_grid(results)
    assert not grid.from_manifest and grid.limit == 40
    assert {r["name"] for r in grid.recipes} == {"rtn", "w4a8-rtn"}
    md = tables.write_tables(results)["paper.md"].read_text()
    assert "59.00 / failed" in md and "58.00 / —" in md and "at most 40 examples per task" in md


def test_cli_table_and_plot(results, tmp_path, capsys):
    assert main(["table", str(results)]) == 0
    out = capsys.readouterr().out
    assert "softpick 2:0" in out and "cells: 6 done, 1 failed, 1 missing" in out
    assert "x20.00 / x2.86" in out
    assert main(["plot", str(results)]) == 0
    pngs = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert pngs == sorted(["metrics_vs_bits.png", "qb_arc_easy_acc.png", "qb_arc_easy_acc_norm.png",
                           "qb_heldout_ppl_word_perplexity.png"])
    assert all((results / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert main(["table", str(tmp_path / "nothing")]) == 2
    assert "no sweep.json and no cells" in capsys.readouterr().err


def test_compare_stores_finds_a_changed_metric(tmp_path):
    """benchmarks/compare_stores.py on the committed H200 store: itself equal; one changed value found."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("compare_stores", paths.REPO_ROOT / "benchmarks" / "compare_stores.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    store = paths.REPO_ROOT / "results" / "h200-tiny-full"
    copy = tmp_path / "copy"
    shutil.copytree(store / "cells", copy / "cells")
    text, same = compare.report(store, copy)
    assert same and "differing: 0" in text and "50 with the same key" in text
    cell_file = sorted((copy / "cells").glob("*.json"))[0]
    cell = json.loads(cell_file.read_text())
    task = next(iter(cell["metrics"]))
    metric = next(k for k, v in cell["metrics"][task].items() if v is not None)
    cell["metrics"][task][metric] += 1e-9
    cell_file.write_text(json.dumps(cell))
    text, same = compare.report(store, copy)
    assert not same and "differing: 1" in text and f"{task} {metric}" in text
    assert compare.main([str(store), str(copy)]) == 1


def test_two_standard_errors_make_a_difference_count(results):
    assert tables.significant(2.5, 1.0) and tables.significant(-2.5, 1.0)
    assert not tables.significant(1.5, 1.0) and not tables.significant(3.0, None)
    # the growth z of a perplexity needs stderrs: the held-out word perplexity has none
    grid = load_grid(results)
    assert tables.growth_z(grid, RECIPES[0], 2, "qb_heldout_ppl", "word_perplexity") is None
    # with stderrs: log-ratio losses 0.2 (softmax) and 0.0 (softpick), each ±(0.1, 0.1) relative
    (l_sm, s_sm), (l_sp, s_sp) = tables._loss(10.0, 10.0 * math.exp(0.2), 1.0, math.exp(0.2), "perplexity"), \
        tables._loss(10.0, 10.0, 1.0, 1.0, "perplexity")
    assert math.isclose((l_sm - l_sp) / math.hypot(s_sm, s_sp), 0.2 / 0.2)
