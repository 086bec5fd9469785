"""qbench.bench.compare_stores (`qbench bench compare-stores A B`): a rerun that ran other kernel
configs is named (issue 13); per-item values of shared cells are compared (their sidecars)."""
import gzip
import json
import shutil

from qbench import paths
from qbench.bench import compare_stores as compare
from qbench.cli import main
from qbench.sweep.store import Store

H200 = paths.SOURCE_ROOT / "results" / "h200-tiny-full"


def test_cells_with_other_attention_paths_are_listed(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(H200 / "cells", copy / "cells")
    cell_file = sorted((copy / "cells").glob("*.json"))[0]
    cell = json.loads(cell_file.read_text())
    cell["attention_backends"] = ["softpick:triton:fwd(64,64,4,3)"]
    cell_file.write_text(json.dumps(cell))
    text, same = compare.report(H200, copy)
    assert same   # the metrics did not change
    assert "attention paths (kernel configs) differ: 1" in text and "fwd(64,64,4,3)" in text
    new_style = {**cell, "model": {"arm": "softpick-ft", "attention": "softpick", "hash": "h", "path": "p"},
                 "label": "W4A8"}
    assert compare.label(new_style).startswith("softpick-ft ") and compare.label(new_style).endswith(" W4A8")


def _items(acc, loglik):
    return {"qb_arc_easy": {"doc_id": [0, 1, 2], "metrics": {"acc": {"aggregation": "mean", "values": acc}}},
            "qb_lambada": {"doc_id": [5, 6], "metrics": {"perplexity": {"aggregation": "perplexity", "values": loglik}}}}


def _store_with_items(root, records, items):
    store = Store(root)
    store.ensure_writable()
    for record, its in zip(records, items):
        store.write(record, its)
    return store


def test_per_item_values_of_shared_cells_are_compared(tmp_path, capsys):
    records = [Store(H200).read(key) for key in Store(H200).keys()[:2]]
    same_items = [_items([1, 0, 1], [-1.5, -2.25]), _items([0, 0, 1], [-3.0, -0.5])]
    a = _store_with_items(tmp_path / "a", records, same_items)
    _store_with_items(tmp_path / "b", records, same_items)
    text, same = compare.report(tmp_path / "a", tmp_path / "b")
    assert same and "per-item values compared: 10 (shared cells with per-item results in both: 2); differing: 0" in text

    # B: one answer flipped in the first cell, one log-likelihood changed in the second; metrics untouched
    _store_with_items(tmp_path / "b", records, [_items([1, 1, 1], [-1.5, -2.25]), _items([0, 0, 1], [-3.0, -0.5000001])])
    text, same = compare.report(tmp_path / "a", tmp_path / "b")
    assert not same and "metric values compared" in text and "; differing: 0\n" in text.split("per-item")[0]
    assert "per-item values compared: 10 (shared cells with per-item results in both: 2); differing: 2" in text
    first, second = (compare.label(r) for r in records)
    assert f"  - {first} qb_arc_easy acc: 1 of 3 items differ" in text
    assert f"  - {second} qb_lambada perplexity: 1 of 2 items differ" in text
    out = tmp_path / "report.md"
    assert main(["bench", "compare-stores", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 1
    assert out.read_text() == capsys.readouterr().out

    # a cell without a sidecar in one store is not compared item by item; a damaged sidecar is an error
    shutil.copytree(H200 / "cells", tmp_path / "old" / "cells")
    text, same = compare.report(tmp_path / "a", tmp_path / "old")
    assert same and "per-item values compared: 0 (shared cells with per-item results in both: 0)" in text
    sidecar = a.items_path(records[0]["key"])
    sidecar.write_bytes(gzip.compress(b"{}"))
    assert main(["bench", "compare-stores", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.startswith(f"qbench bench compare-stores: error: {sidecar}: ")


def test_a_store_without_finished_cells_is_an_error(tmp_path, capsys):
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    assert main(["bench", "compare-stores", str(H200), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err == f"qbench bench compare-stores: error: {tmp_path / 'empty'}: no finished cells in {tmp_path / 'empty' / 'cells'}\n"
