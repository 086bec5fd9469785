"""benchmarks/compare_stores.py: a rerun that ran other kernel configs is named (issue 13)."""
import importlib.util
import json
import shutil

from qbench import paths


def _compare():
    spec = importlib.util.spec_from_file_location("compare_stores", paths.SOURCE_ROOT / "benchmarks" / "compare_stores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cells_with_other_attention_paths_are_listed(tmp_path):
    compare = _compare()
    store = paths.SOURCE_ROOT / "results" / "h200-tiny-full"
    copy = tmp_path / "copy"
    shutil.copytree(store / "cells", copy / "cells")
    cell_file = sorted((copy / "cells").glob("*.json"))[0]
    cell = json.loads(cell_file.read_text())
    cell["attention_backends"] = ["softpick:triton:fwd(64,64,4,3)"]
    cell_file.write_text(json.dumps(cell))
    text, same = compare.report(store, copy)
    assert same   # the metrics did not change
    assert "attention paths (kernel configs) differ: 1" in text and "fwd(64,64,4,3)" in text
    new_style = {**cell, "model": {"arm": "softpick-ft", "attention": "softpick", "hash": "h", "path": "p"},
                 "label": "W4A8"}
    assert compare.label(new_style).startswith("softpick-ft ") and compare.label(new_style).endswith(" W4A8")
