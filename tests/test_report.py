"""Tables and plots are pure functions of the stored cells: numbers equal the cells, a missing,
failed or damaged cell shows as such (never as a number), captions state the example limit and
the statistics. Old stores (pair manifest, no per-item results) render with independent
standard errors; stores with per-item sidecars get paired tests, corrected p-values and
calibration-seed spreads, for any number of arms."""
import csv
import gzip
import hashlib
import io
import json
import math
import shutil

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from qbench import paths, stats
from qbench.cli import main
from qbench.report import tables
from qbench.report.cells import ReportError, load_grid
from qbench.report.compare import Analysis
from qbench.sweep.store import Store, StoreError

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
    """An old-format record (model.kind, no label, no sidecar)."""
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
    """An old store: pair manifest (sweep.json), old records, no per-item results."""
    store = Store(tmp_path / "sweep")
    store.ensure_writable()
    cells = []
    for (kind, recipe, bits), value in VALUES.items():
        key = _key(kind, recipe, bits)
        cells.append({"key": key, "model": kind, "recipe": recipe or "fp", "bits": bits})
        if value is not None:
            store.write(_record(kind, recipe, bits, value, key))
    (store.root / "sweep.json").write_text(json.dumps(   # the legacy manifest of an old store
        {"name": "demo", "pair": {"softmax": "a", "softpick": "b"}, "tasks": TASKS, "limit": 40,
         "limit_note": "at most 40 examples per task (cpu_limit, running on CPU)", "device": "cpu",
         "recipes": RECIPES, "cells": cells}))
    return store.root


def _rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _write(root):
    return tables.write_tables(load_grid(root))


def test_paper_table_numbers_are_the_stored_ones(results):
    written = _write(results)
    assert sorted(written) == sorted(f"{t}.{e}" for t in ("paper", "deltas", "summary") for e in ("md", "tex", "csv"))
    # each recipe's heading: its name, its weight method and its own description (what it quantizes)
    headings = [line for line in written["paper.md"].read_text().splitlines() if line.startswith("## ")]
    assert headings == ["## rtn (rtn): round to nearest", "## w4a8-rtn (act)"]
    rows = _rows(written["paper.csv"])
    store = Store(results)
    by = {(r["recipe"], r["bits"], r["task"], r["metric"]): r for r in rows}
    for (kind, recipe, bits), value in VALUES.items():
        if recipe is None:
            continue
        row = by[(recipe, str(bits), "qb_arc_easy", "acc")]
        if value is None:
            assert row[f"{kind}_status"] == "missing" and row[kind] == "—"
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


def test_old_store_deltas_use_independent_stderrs(results):
    written = _write(results)
    md = written["deltas.md"].read_text()
    se = math.sqrt(2) * 1.0    # percentage points
    # softpick - softmax: FP +1.00 (not significant), rtn 2-bit +20.00 (significant)
    assert f"| ARC-e acc | +1.00 ± {se:.2f} | +20.00 ± {se:.2f}* | failed |" in md
    # perplexity has no stderr: no mark, shown as ± ?
    assert "| Held-out word ppl | +1.00 ± ? | -340.00 ± ? | failed |" in md
    # change from own full precision, one table per arm
    assert f"| ARC-e acc | -30.00 ± {se:.2f}* | -1.00 ± {se:.2f} |" in md                   # softmax
    assert f"| ARC-e acc | -11.00 ± {se:.2f}* | failed |" in md                           # softpick
    # difference of drops: softpick lost 11, softmax 30 -> +19 points, four stderrs combined
    assert f"| ARC-e acc | +19.00 ± {2.0:.2f}* | failed |" in md
    assert "No per-item results: independent standard errors" in md and "[low, high]" not in md
    rows = _rows(written["deltas.csv"])
    r = next(r for r in rows if (r["family"], r["recipe"], r["bits"], r["metric"]) == ("arms", "rtn", "2", "acc"))
    assert math.isclose(float(r["estimate"]), 0.20) and r["significant"] == "True" and r["method"] == "independent"
    assert r["p"] == "" and r["verdict"] == "better"
    r = next(r for r in rows if (r["family"], r["arm"], r["recipe"], r["bits"], r["metric"]) ==
             ("drop", "softmax", "rtn", "2", "acc"))
    assert math.isclose(float(r["estimate"]), 0.30 - 0.60) and r["verdict"] == "worse"
    r = next(r for r in rows if (r["family"], r["recipe"], r["bits"], r["metric"]) == ("arms", "rtn", "4", "acc"))
    assert r["status"] == "failed" and r["estimate"] == ""


def test_summary_says_who_survives(results):
    grid = load_grid(results)
    analysis = Analysis(grid)
    s2 = tables.survival(grid, analysis, "rtn", "2-bit", "softpick")
    # arc acc and acc_norm: softpick lost 11 points, softmax 30 (significant); held-out ppl: no stderr
    assert (s2.verdict, s2.better, s2.worse, s2.unclear) == ("softpick", 2, 0, 1)
    assert tables.survival(grid, analysis, "rtn", "4-bit", "softpick").text() == "failed"
    assert tables.survival(grid, analysis, "w4a8-rtn", "W4A8", "softpick").text() == "—"
    md = tables.write_tables(grid, analysis)["summary.md"].read_text()
    assert "| rtn | softpick 2:0 (1 n.s.) | failed |" in md
    assert "| w4a8-rtn |  | — |" in md
    # held-out perplexity (no stderr, so not in the verdicts): growth from each model's own FP
    assert "| rtn | x20.00 / x2.86 | x1.02 / failed |" in md
    assert "| w4a8-rtn |  | x1.15 / — |" in md
    assert "at most 40 examples per task" in md
    rows = [r for r in _rows(results / "tables" / "summary.csv") if r["arm"] == "softpick"]
    assert [r["verdict_vs_baseline"] for r in rows] == ["softpick", "failed", "—"]
    softmax = next(r for r in _rows(results / "tables" / "summary.csv") if (r["arm"], r["label"]) == ("softmax", "2-bit"))
    assert float(softmax["qb_heldout_ppl:word_perplexity:ratio_to_fp"]) == 400.0 / 20.0
    assert rows[1]["qb_heldout_ppl:word_perplexity:ratio_to_fp"] == "failed"


def test_without_manifest_grid_comes_from_cells(results):
    (results / "sweep.json").unlink()
    grid = load_grid(results)
    assert not grid.from_manifest and grid.limit == 40
    assert {r["name"] for r in grid.recipes} == {"rtn", "w4a8-rtn"}
    md = tables.write_tables(grid)["paper.md"].read_text()
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
    assert "no such results folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty")]) == 2
    assert "no sweep manifest" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(["table", str(tmp_path / "a-file")]) == 2
    assert "is a file, not a results folder" in capsys.readouterr().err


def test_compare_stores_finds_a_changed_metric(tmp_path):
    """qbench.bench.compare_stores on the committed H200 store: itself equal; one changed value found."""
    from qbench.bench import compare_stores as compare

    store = paths.SOURCE_ROOT / "results" / "h200-tiny-full"
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


def _table_rows(text):
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            # the recipe's name and, for a deltas table, its comparison (the heading's wording may change)
            last = line.rsplit(": ", 1)[-1]
            title = line[3:].split(" (")[0] + (f": {last}" if " - " in last else "")
            out[title] = []
        elif line.startswith("| ") and title:
            out[title].append(line)
    return out


def test_committed_old_store_renders_with_the_same_numbers(tmp_path):
    """results/h200-tiny-full-rerun (pair manifest, old records, no sidecars; its tables are kept as
    the report of 2026-11-28 wrote them): regenerated paper and summary tables have exactly the
    committed rows; each old softpick - softmax table is unchanged."""
    src = paths.SOURCE_ROOT / "results" / "h200-tiny-full-rerun"
    root = tmp_path / "old"
    shutil.copytree(src / "cells", root / "cells")
    shutil.copy(src / "sweep.json", root / "sweep.json")
    written = _write(root)
    for name in ("paper.md", "summary.md"):
        old, new = _table_rows((src / "tables" / name).read_text()), _table_rows(written[name].read_text())
        assert old == new, name
    old, new = _table_rows((src / "tables" / "deltas.md").read_text()), _table_rows(written["deltas.md"].read_text())
    arms = [t for t in old if t.endswith("softpick - softmax")]
    assert len(arms) == 12 and all(old[t] == new[t] for t in arms)
    assert "no per-item results: independent standard errors" in written["deltas.md"].read_text().lower()


# ----------------------------------------------------------------------------- stores with per-item results
N_ITEMS, N_DOCS = 400, 60


def _items_tasks(acc, ll, words):
    return {"qb_arc_easy": {"doc_id": list(range(len(acc))),
                            "metrics": {"acc": {"aggregation": "mean", "values": [float(v) for v in acc]},
                                        "acc_norm": {"aggregation": "mean", "values": [float(v) for v in acc]}}},
            "qb_heldout_ppl": {"doc_id": list(range(len(ll))),
                               "metrics": {"word_perplexity": {"aggregation": "weighted_perplexity",
                                                               "values": [[float(a), float(w)] for a, w in zip(ll, words)]}}}}


def _write_cell(store, key, arm, recipe, bits, label, seed, acc, ll, words, sidecar=True):
    """A cell in the new record format, its metrics computed from its items (as lm-eval aggregates)."""
    tasks = _items_tasks(acc, ll, words)
    p = float(np.mean(acc))
    se = math.sqrt(p * (1 - p) / (len(acc) - 1))
    rec = {"key": key, "status": "done", "model": {"arm": arm, "attention": arm, "hash": arm[:4], "path": arm,
                                                   "format": "qbench"},
           "recipe": None if recipe is None else {"name": recipe, "method": recipe, "calib": {"samples": 4,
                                                                                               "seq_len": 64}},
           "bits": bits, "label": label, "calib_seed": seed, "tasks": TASKS, "limit": None,
           "metrics": {"qb_arc_easy": {"acc": p, "acc_stderr": se, "acc_norm": p, "acc_norm_stderr": se},
                       "qb_heldout_ppl": {"word_perplexity": math.exp(-np.sum(ll) / np.sum(words)),
                                          "word_perplexity_stderr": None}},
           "items": None, "finished_at": "2026-12-01T00:00:00+00:00"}
    store.write(rec, tasks if sidecar else None)


def _flip(acc, rng, k, to):
    """acc with k items flipped to `to` (chosen among those that are not `to`)."""
    out = acc.copy()
    out[rng.choice(np.flatnonzero(out != to), k, replace=False)] = to
    return out


@pytest.fixture
def three_arms(tmp_path):
    """Arms softmax (baseline), softpick, softmax1 (a copy of softmax's items: no effect); recipes
    rtn 4-bit (softmax loses 8 points, softpick 1) and gptq 4-bit over 3 calibration seeds
    (softmax loses 2, 10, 18 points, softpick 1 each: a large but seed-unstable effect)."""
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "three")
    store.ensure_writable()
    fp_acc = (rng.random(N_ITEMS) < 0.6).astype(int)
    ll = -rng.gamma(4.0, 5.0, N_DOCS)
    words = rng.integers(20, 60, N_DOCS).astype(float)
    sp_fp = _flip(fp_acc, rng, 8, 1)
    items = {("softmax", None, None): (fp_acc, ll), ("softpick", None, None): (sp_fp, ll * 0.98),
             ("softmax", "rtn", None): (_flip(fp_acc, rng, 32, 0), ll * 1.10),
             ("softpick", "rtn", None): (_flip(sp_fp, rng, 4, 0), ll * 0.98 * 1.01)}
    for seed, k in zip((0, 1, 2), (8, 40, 72)):
        items[("softmax", "gptq", seed)] = (_flip(fp_acc, rng, k, 0), ll * (1.02 + 0.01 * seed))
        items[("softpick", "gptq", seed)] = (_flip(sp_fp, rng, 4, 0), ll * 0.98 * 1.01)
    for (arm, recipe, seed), v in list(items.items()):
        if arm == "softmax":
            items[("softmax1", recipe, seed)] = v
    cells = []
    for (arm, recipe, seed), (acc, lls) in items.items():
        key = _key(arm, recipe, seed)
        bits, label = (None, "FP") if recipe is None else (4, "4-bit")
        _write_cell(store, key, arm, recipe, bits, label, seed, acc, lls, words)
        cells.append({"key": key, "arm": arm, "recipe": recipe, "bits": bits, "label": label, "calib_seed": seed})
    manifest = {"name": "three", "tasks": TASKS, "limit": None, "limit_note": "", "device": "cpu",
                "arms": [{"name": a, "path": a, "attention": a, "label": a} for a in ("softmax", "softpick", "softmax1")],
                "baseline": "softmax", "compare": "arms",
                "recipes": [{"name": "rtn", "method": "rtn", "bits": [4]},
                            {"name": "gptq", "method": "gptq", "bits": [4], "calib": {"samples": 4, "seq_len": 64}}],
                "cells": cells}
    store.write_manifest(manifest)
    return store.root, items


def _comparison(rows, family, arm, recipe, metric="acc", label="4-bit"):
    return next(r for r in rows if (r["family"], r["arm"], r["recipe"], r["label"], r["metric"]) ==
                (family, arm, recipe, label, metric))


def test_three_arm_store_paired_tables(three_arms):
    root, items = three_arms
    grid = load_grid(root)
    assert [a.name for a in grid.arms] == ["softmax", "softpick", "softmax1"] and grid.others == ["softpick", "softmax1"]
    written = tables.write_tables(grid)
    assert written["paper.md"].parent == root / "tables" / "three"        # tables/<sweep>/ for sweeps/<sweep>.json
    md = written["paper.md"].read_text()
    assert "Entries: softmax / softpick / softmax1" in md
    fp = {a: np.mean(items[(a, None, None)][0]) * 100 for a in ("softmax", "softpick")}
    q = {a: np.mean(items[(a, "rtn", None)][0]) * 100 for a in ("softmax", "softpick")}
    assert f"| ARC-e acc | {fp['softmax']:.2f} / {fp['softpick']:.2f} / {fp['softmax']:.2f} | " \
           f"{q['softmax']:.2f} / {q['softpick']:.2f} / {q['softmax']:.2f} |" in md
    # seeds: mean and sd over the three calibration seeds
    seeds = [np.mean(items[("softmax", "gptq", s)][0]) * 100 for s in (0, 1, 2)]
    assert f"{np.mean(seeds):.2f} (sd {np.std(seeds, ddof=1):.2f})" in md

    rows = _rows(written["deltas.csv"])
    # arm vs arm at rtn 4-bit: McNemar on the two cells' items, corrected over the arms family
    c = _comparison(rows, "arms", "softpick", "rtn")
    assert c["test"] == "mcnemar" and c["method"] == "paired"
    a, b = items[("softmax", "rtn", None)][0], items[("softpick", "rtn", None)][0]
    assert float(c["p"]) == pytest.approx(stats.mcnemar_exact(a, b), rel=1e-9)
    assert float(c["estimate"]) == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    # difference of drops: softpick lost 1 point, softmax 8 -> +7 points, significant; softmax1: 0, p 1
    c = _comparison(rows, "drops", "softpick", "rtn")
    assert float(c["estimate"]) == pytest.approx(0.07, abs=1e-12)
    assert c["test"] == "bootstrap" and float(c["p_adjusted"]) < 0.05 and c["verdict"] == "better"
    assert float(c["low"]) < 0.07 < float(c["high"])
    c1 = _comparison(rows, "drops", "softmax1", "rtn")
    assert float(c1["estimate"]) == 0 and float(c1["p"]) == 1.0 and c1["verdict"] == "n.s."
    # perplexity: softpick's log-likelihoods grew 1 %, softmax's 10 %: log ratio of the growths < 0
    c = _comparison(rows, "drops", "softpick", "rtn", "word_perplexity")
    words = np.asarray([w for _, w in json.loads(gzip.decompress(next(
        (root / "cells").glob("*.items.json.gz")).read_bytes()))["tasks"]["qb_heldout_ppl"]["metrics"]
        ["word_perplexity"]["values"]])
    ll = items[("softmax", None, None)][1]
    expected = (-0.98 * 1.01 * ll.sum() + 0.98 * ll.sum() - (-1.10 * ll.sum() + ll.sum())) / words.sum()
    assert c["scale"] == "log_ratio" and float(c["estimate"]) == pytest.approx(expected, rel=1e-9)
    assert c["verdict"] == "better"
    # seeds: softmax's gptq drop moves with the seed (2, 10, 18 points): the difference of drops is
    # significant in the test but not beyond 2 sd of the per-seed differences
    c = _comparison(rows, "drops", "softpick", "gptq")
    per_seed = [(items[("softpick", "gptq", s)][0].mean() - items[("softpick", None, None)][0].mean())
                - (items[("softmax", "gptq", s)][0].mean() - items[("softmax", None, None)][0].mean())
                for s in (0, 1, 2)]
    assert int(c["seeds"]) == 3 and float(c["seed_sd"]) == pytest.approx(np.std(per_seed, ddof=1), rel=1e-9)
    assert float(c["estimate"]) == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert float(c["p_adjusted"]) < 0.05 and c["significant"] == "False" and c["verdict"] == "within seed spread"
    # p_adjusted = statsmodels' Benjamini-Hochberg over each family's tests
    for family in ("arms", "drop", "drops"):
        fam = [r for r in rows if r["family"] == family and r["p"] != ""]
        assert [float(r["p_adjusted"]) for r in fam] == pytest.approx(
            list(multipletests([float(r["p"]) for r in fam], method="fdr_bh")[1]), rel=1e-9)
    deltas = written["deltas.md"].read_text()
    for title in ("softpick - softmax", "softmax1 - softmax", "softmax, change from own full precision",
                  "softpick, change from own full precision", "softmax1, change from own full precision",
                  "softpick drop - softmax drop", "softmax1 drop - softmax drop"):
        assert deltas.count(f": {title}\n") == 2, title                   # one per recipe
    assert "paired bootstrap percentile interval" in deltas and "Benjamini-Hochberg" in deltas
    assert "No per-item results" not in deltas
    assert "| ARC-e acc | +7.00 [" in deltas and "~ |" in deltas
    summary = written["summary.md"].read_text()
    assert "| rtn (softpick) | softpick 3:0 (0 n.s.) |" in summary
    assert "| rtn (softmax1) | even 0:0 (3 n.s.) |" in summary
    assert "| gptq (softpick) | softpick 1:0 (2 n.s.) |" in summary            # accuracies within seed spread
    plots = (root / "plots" / "three")
    assert main(["plot", str(root)]) == 0 and (plots / "metrics_vs_bits.png").is_file()


def test_tables_are_byte_identical_and_holm_is_an_option(three_arms, capsys):
    root, _ = three_arms
    assert main(["table", str(root)]) == 0
    first = {p.name: p.read_bytes() for p in (root / "tables" / "three").iterdir()}
    assert main(["table", str(root)]) == 0
    assert first == {p.name: p.read_bytes() for p in (root / "tables" / "three").iterdir()}
    assert main(["table", str(root), "--correction", "holm"]) == 0
    rows = _rows(root / "tables" / "three" / "deltas.csv")
    fam = [r for r in rows if r["family"] == "drops" and r["p"] != ""]
    assert [float(r["p_adjusted"]) for r in fam] == pytest.approx(
        list(multipletests([float(r["p"]) for r in fam], method="holm")[1]), rel=1e-9)
    assert "Holm (family-wise error rate)" in (root / "tables" / "three" / "deltas.md").read_text()


def test_small_paired_effect_detected_only_with_items(tmp_path):
    """Two arms at full precision on 2000 items, 90 % agreement, softpick +3 points: with per-item
    results the paired test calls it (McNemar); the same cells without sidecars fall back to the
    independent standard errors, which miss it."""
    from test_stats import _pair

    a, b = _pair(2000, 0.9, 0.03)
    ll, words = -np.ones(N_DOCS) * 50, np.ones(N_DOCS) * 20
    verdicts = {}
    for sidecar in (True, False):
        store = Store(tmp_path / f"pair-{sidecar}")
        store.ensure_writable()
        cells = []
        for arm, acc in (("softmax", a), ("softpick", b)):
            key = _key(arm, sidecar)
            _write_cell(store, key, arm, None, None, "FP", None, acc, ll, words, sidecar=sidecar)
            cells.append({"key": key, "arm": arm, "recipe": None, "bits": None, "label": "FP", "calib_seed": None})
        store.write_manifest({"name": "pair", "tasks": ["qb_arc_easy"], "limit": None,
                              "arms": [{"name": "softmax"}, {"name": "softpick"}], "baseline": "softmax",
                              "recipes": [], "cells": cells})
        c = Analysis(load_grid(store.root)).get("arms", "softpick", "fp", "FP", "qb_arc_easy", "acc")
        verdicts[sidecar] = (c.paired, c.test, c.verdict)
    assert verdicts[True] == (True, "mcnemar", "better")
    assert verdicts[False] == (False, None, "n.s.")


# ----------------------------------------------------------------------------- damage is never hidden
def test_corrupt_sidecar_is_named(three_arms, capsys):
    root, _ = three_arms
    sidecar = sorted((root / "cells").glob("*.items.json.gz"))[0]
    data = bytearray(sidecar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sidecar.write_bytes(bytes(data))
    with pytest.raises(ReportError, match=sidecar.name + ".*sha256"):
        load_grid(root)
    assert main(["table", str(root)]) == 2
    err = capsys.readouterr().err
    assert sidecar.name in err and "--allow-incomplete" in err
    assert not (root / "tables").exists()
    # --allow-incomplete renders, names it and falls back to independent errors for that cell
    assert main(["table", str(root), "--allow-incomplete"]) == 0
    assert sidecar.name in capsys.readouterr().err
    deltas = (root / "tables" / "three" / "deltas.md").read_text()
    assert f"cells/{sidecar.name}" in deltas and "--allow-incomplete" in deltas
    assert "No per-item results: independent standard errors" in deltas


def test_truncated_gzip_with_matching_sha_is_named(three_arms):
    root, _ = three_arms
    cell_file = sorted(p for p in (root / "cells").glob("*.json"))[0]
    rec = json.loads(cell_file.read_text())
    sidecar = root / "cells" / rec["items"]["file"]
    data = sidecar.read_bytes()[:-20]
    sidecar.write_bytes(data)
    rec["items"]["sha256"] = hashlib.sha256(data).hexdigest()
    cell_file.write_text(json.dumps(rec))
    with pytest.raises(ReportError, match=sidecar.name + ".*not a gzip JSON sidecar"):
        load_grid(root)


def test_damaged_cells_and_manifests_are_named(three_arms, capsys):
    root, _ = three_arms
    cells = sorted(p for p in (root / "cells").glob("*.json"))
    truncated, empty, no_metrics = cells[0], cells[1], cells[2]
    truncated.write_text(truncated.read_text()[:100])
    empty.write_text("")
    rec = json.loads(no_metrics.read_text())
    rec["metrics"] = None
    no_metrics.write_text(json.dumps(rec))
    with pytest.raises(ReportError) as err:
        load_grid(root)
    text = str(err.value)
    assert "3 damaged file(s)" in text and all(p.name in text for p in (truncated, empty, no_metrics))
    assert "incomplete" in text
    assert main(["table", str(root), "--allow-incomplete"]) == 0
    paper = (root / "tables" / "three" / "paper.md").read_text()
    assert "corrupt" in paper and "3 damaged file(s)" in paper
    # a corrupt manifest is an error naming it (not "missing")
    (root / "sweeps" / "three.json").write_text("{not json")
    with pytest.raises(StoreError, match="three.json: corrupt sweep manifest"):
        load_grid(root)


def test_several_sweeps_in_one_folder(three_arms, results, capsys):
    root, _ = three_arms
    shutil.copy(results / "sweep.json", root / "sweep.json")        # the legacy manifest of sweep "demo"
    for p in (results / "cells").glob("*.json"):
        shutil.copy(p, root / "cells" / p.name)
    with pytest.raises(ReportError, match=r"2 sweeps \((three, demo|demo, three)\); choose one with --sweep"):
        load_grid(root)
    assert load_grid(root, sweep="three").name == "three"
    assert load_grid(root, sweep="demo").out_dir("tables") == root / "tables"
    with pytest.raises(ReportError, match="no sweep 'other'"):
        load_grid(root, sweep="other")
    assert main(["table", str(root), "--sweep", "demo"]) == 0
    assert "softpick 2:0" in capsys.readouterr().out


def test_compare_models_only_against_own_full_precision(three_arms):
    root, _ = three_arms
    path = root / "sweeps" / "three.json"
    manifest = json.loads(path.read_text())
    manifest["compare"] = "models"
    path.write_text(json.dumps(manifest))
    grid = load_grid(root)
    analysis = Analysis(grid)
    assert grid.others == [] and not analysis.family("arms") and not analysis.family("drops")
    written = tables.write_tables(grid, analysis)
    deltas = written["deltas.md"].read_text()
    assert "softpick - softmax" not in deltas and "drop - " not in deltas
    assert deltas.count("change from own full precision\n") == 6
    summary = written["summary.md"].read_text()
    assert "How much each model loses to quantization" in summary
    assert ("| rtn | softmax 3 worse, 0 better (0 n.s.); softpick 1 worse, 0 better (2 n.s.); "
            "softmax1 3 worse, 0 better (0 n.s.) |") in summary
