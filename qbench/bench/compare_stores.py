"""Compare two result stores of the same sweep: did a rerun reproduce every number, and where
did the time go?  Usage: qbench bench compare-stores STORE_A STORE_B [--out FILE.md]
(= python -m qbench.bench.compare_stores ...)

Cells are matched by key (keys hash every input of a cell, so matching keys = same computation).
Reports: keys in one store only, metric values that differ (with the largest relative
difference), per-item values that differ (the per-item sidecars of the shared cells that have one
in both stores, matched by task, metric and document id), and per store the summed cell time split
into copy / quantize / evaluate, the CPU seconds and the thread counts the cells ran with. Exit
code 1 when any shared cell's metrics or per-item values differ, 2 when a store has no finished
cells or a sidecar is damaged.
"""
import argparse
import sys
from pathlib import Path

from qbench.sweep.store import Store

from . import BenchError

PHASES = ("load", "copy", "calibration_batch", "quantize", "evaluate")   # "load": records that time it


def load_cells(store: Path) -> dict:
    cells = {key: r for key, r in Store(store).records().items() if r["status"] == "done"}
    if not cells:
        raise BenchError(f"{store}: no finished cells in {store / 'cells'}")
    return cells


def metric_differences(a: dict, b: dict) -> tuple[int, list]:
    """(values compared, [(cell label, task, metric, a, b)] that differ)."""
    compared, diffs = 0, []
    for key in sorted(set(a) & set(b)):
        for task, metrics in a[key]["metrics"].items():
            for name, va in metrics.items():
                vb = b[key]["metrics"].get(task, {}).get(name)
                if va is None and vb is None:
                    continue
                compared += 1
                if va != vb:
                    diffs.append((label(a[key]), task, name, va, vb))
    return compared, diffs


def _item_values(items: dict, task: str, metric: str) -> dict:
    """{doc id: value} of one task metric of a sidecar's tasks ({} when absent)."""
    t = items.get(task) or {}
    return dict(zip(t.get("doc_id") or [], ((t.get("metrics") or {}).get(metric) or {}).get("values") or []))


def item_differences(store_a: Path, store_b: Path, a: dict, b: dict) -> tuple[int, int, list]:
    """(cells with a sidecar in both stores, per-item values compared, [(cell label, task, metric,
    values that differ, values compared)]) over the shared cells. A document in one sidecar only
    counts as a differing value. A damaged or missing sidecar is an error (CorruptCell names it)."""
    sa, sb = Store(store_a), Store(store_b)
    cells, compared, diffs = 0, 0, []
    for key in sorted(set(a) & set(b)):
        ia, ib = sa.read_items(a[key]), sb.read_items(b[key])
        if ia is None or ib is None:
            continue
        cells += 1
        for task in sorted(set(ia) | set(ib)):
            metrics = set((ia.get(task) or {}).get("metrics") or {}) | set((ib.get(task) or {}).get("metrics") or {})
            for metric in sorted(metrics):
                va, vb = _item_values(ia, task, metric), _item_values(ib, task, metric)
                docs = set(va) | set(vb)
                differ = sum(1 for doc in docs if doc not in va or doc not in vb or va[doc] != vb[doc])
                compared += len(docs)
                if differ:
                    diffs.append((label(a[key]), task, metric, differ, len(docs)))
    return cells, compared, diffs


def label(cell: dict) -> str:
    recipe = cell["recipe"]["name"] if cell.get("recipe") else "fp"
    bits = f" {cell['label']}" if cell.get("label") else (f" {cell['bits']}-bit" if cell.get("bits") else "")
    model = cell["model"]
    return f"{model.get('arm') or model.get('kind')} {recipe}{bits}"   # old records: model.kind


def backend_differences(a: dict, b: dict) -> list:
    """[(cell label, backends in A, in B)] for shared cells whose recorded attention paths differ
    (e.g. other kernel configs: softpick:triton:fwd(...))."""
    return [(label(a[key]), sorted(a[key].get("attention_backends") or []), sorted(b[key].get("attention_backends") or []))
            for key in sorted(set(a) & set(b))
            if sorted(a[key].get("attention_backends") or []) != sorted(b[key].get("attention_backends") or [])]


def time_split(cells: dict) -> dict:
    split = {phase: sum(c["timing"].get(phase, 0.0) for c in cells.values()) for phase in PHASES}
    split["cell"] = sum(c["seconds"] for c in cells.values())
    split["cpu"] = sum(c["timing"].get("cpu_seconds", 0.0) for c in cells.values())
    split["threads"] = sorted({str(c.get("host", {}).get("torch_threads")) for c in cells.values()})
    return split


def report(store_a: Path, store_b: Path) -> tuple[str, bool]:
    a, b = load_cells(store_a), load_cells(store_b)
    compared, diffs = metric_differences(a, b)
    lines = [f"# {store_a} vs {store_b}", "",
             f"- cells: {len(a)} / {len(b)} finished; {len(set(a) & set(b))} with the same key; "
             f"{len(set(a) - set(b))} only in A, {len(set(b) - set(a))} only in B",
             f"- metric values compared: {compared}; differing: {len(diffs)}"]
    for cell, task, name, va, vb in diffs[:20]:
        lines.append(f"  - {cell} {task} {name}: {va!r} vs {vb!r}")
    item_cells, item_compared, item_diffs = item_differences(store_a, store_b, a, b)
    lines.append(f"- per-item values compared: {item_compared} (shared cells with per-item results in both: "
                 f"{item_cells}); differing: {sum(d[3] for d in item_diffs)}")
    for cell, task, name, differ, n in item_diffs[:20]:
        lines.append(f"  - {cell} {task} {name}: {differ} of {n} items differ")
    backends = backend_differences(a, b)
    lines.append(f"- cells whose attention paths (kernel configs) differ: {len(backends)}")
    for cell, ba, bb in backends[:10]:
        lines.append(f"  - {cell}: {ba} vs {bb}")
    ta, tb = time_split(a), time_split(b)
    lines += ["", "| seconds summed over cells | A | B | A / B |", "|---|--:|--:|--:|"]
    for row in ("cell", *PHASES, "cpu"):
        ratio = f"{ta[row] / tb[row]:.2f}" if tb[row] else "—"
        lines.append(f"| {row} | {ta[row]:.1f} | {tb[row]:.1f} | {ratio} |")
    lines.append(f"| torch threads per worker | {', '.join(ta['threads'])} | {', '.join(tb['threads'])} | |")
    return "\n".join(lines) + "\n", not diffs and not item_diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qbench bench compare-stores", description=__doc__.splitlines()[0])
    p.add_argument("store_a", type=Path)
    p.add_argument("store_b", type=Path)
    p.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = p.parse_args(argv)
    if args.out and not args.out.parent.is_dir():
        raise BenchError(f"--out {args.out}: folder {args.out.parent} not found")   # before the stores are read
    text, same = report(args.store_a, args.store_b)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    from qbench.cli import main as qbench

    sys.exit(qbench(["bench", "compare-stores", *sys.argv[1:]]))
