"""Tables from stored cells (pure functions of the results folder), as Markdown, LaTeX and CSV.

    qbench table RESULTS_DIR     ->  RESULTS_DIR/tables/{paper,deltas,summary}.{md,tex,csv}

(a) paper:   per recipe, rows = task metrics, columns = full precision and the bit widths, each
             entry "softmax / softpick" (accuracies in percent, perplexities as they are).
(b) deltas:  per recipe, softpick minus softmax in each cell, and each model's change from its
             own full precision, each with its standard error (the two errors combined as
             independent: sqrt(se1^2 + se2^2)); `*` marks a difference larger than that error.
(c) summary: one line per recipe, one column per bit width: which attention survives the
             quantizer better, counted over the task metrics (see `survival`); then, per
             perplexity metric, each model's perplexity as a multiple of its own full precision.
A missing cell shows as "—", a failed one as "failed"; never as a number. The Markdown and
LaTeX captions state the example limit per task when one was used. The CSV files are long
format with the stored numbers as they are (accuracies as fractions), one row per
(recipe, bits, task, metric).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .cells import FAILED, KINDS, MISSING, Entry, Grid, format_value, is_accuracy, load_grid, metric_label

SIG = "*"


# ----------------------------------------------------------------------------- table model
@dataclass
class Table:
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]


def _status_text(entry: Entry) -> str | None:
    if entry.status == "missing":
        return MISSING
    if entry.status == "failed":
        return FAILED
    return None


def bits_label(recipe: dict, bits: int | None) -> str:
    if bits is None:
        return "FP"
    act = recipe.get("activation") if recipe else None
    if act:
        a = act.get("bits") or act.get("dtype")
        return f"W{bits}A{a}"
    return f"{bits}-bit"


def _cell_text(entry: Entry, task: str, metric: str) -> str:
    status = _status_text(entry)
    if status is not None:
        return status
    value, _ = entry.value(task, metric)
    return format_value(metric, value)


def _columns(recipe: dict) -> list[int | None]:
    return [None] + sorted(recipe["bits"])


def _entry(grid: Grid, kind: str, recipe: dict, bits: int | None) -> Entry:
    return grid.baseline(kind) if bits is None else grid.entry(kind, recipe["name"], bits)


def _recipe_title(recipe: dict) -> str:
    kind = "weight+activation" if recipe.get("activation") else "weight-only"
    calib = recipe.get("calib")
    calib = f", calibration {calib['samples']} x {calib['seq_len']} tokens" if calib else ""
    return f"{recipe['name']} ({recipe['method']}, {kind}{calib})"


# ----------------------------------------------------------------------------- (a) paper layout
def paper_tables(grid: Grid) -> list[Table]:
    out = []
    for recipe in grid.recipes:
        cols = _columns(recipe)
        rows = []
        for task, metric in grid.rows():
            row = [metric_label(task, metric)]
            for bits in cols:
                sm, sp = (_cell_text(_entry(grid, k, recipe, bits), task, metric) for k in KINDS)
                row.append(f"{sm} / {sp}")
            rows.append(row)
        caption = (f"{grid.caption()} Entries: softmax / softpick; accuracies in percent, perplexities "
                   f"as they are; FP = full precision. {MISSING} = not computed, failed = the cell failed "
                   f"(see its cell file).")
        out.append(Table(_recipe_title(recipe), caption, ["task metric"] + [bits_label(recipe, b) for b in cols], rows))
    return out


# ----------------------------------------------------------------------------- (b) deltas
def _scale(metric: str) -> float:
    return 100.0 if is_accuracy(metric) else 1.0


def _combined(*ses) -> float | None:
    if any(s is None or not math.isfinite(s) for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses))


def difference(a: Entry, b: Entry, task: str, metric: str) -> tuple[float | None, float | None, str | None]:
    """(b - a, combined stderr, status text if a or b is not done) in stored units."""
    for e in (a, b):
        status = _status_text(e)
        if status is not None:
            return None, None, status
    va, sa = a.value(task, metric)
    vb, sb = b.value(task, metric)
    if va is None or vb is None:
        return None, None, MISSING
    if not (math.isfinite(va) and math.isfinite(vb)):
        d = vb - va if not (math.isinf(va) and math.isinf(vb) and va == vb) else 0.0
        return d, None, None
    return vb - va, _combined(sa, sb), None


SIG_SE = 2.0   # a difference counts when it exceeds this many standard errors (~95% two-sided)


def significant(d: float | None, se: float | None) -> bool:
    return d is not None and se is not None and se > 0 and math.isfinite(d) and abs(d) > SIG_SE * se


def _delta_text(metric: str, d, se, status) -> str:
    if status is not None:
        return status
    if d is None:
        return MISSING
    s = _scale(metric)
    if not math.isfinite(d):
        text = "+inf" if d > 0 else ("-inf" if d < 0 else "nan")
    else:
        text = f"{d * s:+.2f}"
    text += f" ± {se * s:.2f}" if se is not None else " ± ?"
    return text + (SIG if significant(d, se) else "")


def delta_tables(grid: Grid) -> list[Table]:
    out = []
    for recipe in grid.recipes:
        cols = _columns(recipe)
        rows_diff, rows_drop = [], []
        for task, metric in grid.rows():
            rd, rq = [metric_label(task, metric)], [metric_label(task, metric)]
            for bits in cols:
                sm, sp = (_entry(grid, k, recipe, bits) for k in KINDS)
                rd.append(_delta_text(metric, *difference(sm, sp, task, metric)))
                if bits is not None:
                    parts = []
                    for k, short in zip(KINDS, ("sm", "sp")):
                        d = difference(grid.baseline(k), _entry(grid, k, recipe, bits), task, metric)
                        parts.append(f"{short} {_delta_text(metric, *d)}")
                    rq.append(" / ".join(parts))
            rows_diff.append(rd)
            rows_drop.append(rq)
        base = (f"{grid.caption()} Accuracies in percentage points, perplexities as they are; ± = standard "
                f"error of the difference (stderrs combined as independent; ? = lm-eval gives none for this "
                f"metric); {SIG} = the difference is larger than {SIG_SE:g} standard errors.")
        out.append(Table(f"{_recipe_title(recipe)}: softpick - softmax",
                         base + " Entry: softpick minus softmax in the same cell.",
                         ["task metric"] + [bits_label(recipe, b) for b in cols], rows_diff))
        out.append(Table(f"{_recipe_title(recipe)}: change from own full precision",
                         base + " Entry: quantized minus full precision of the same model "
                                "(sm = softmax, sp = softpick).",
                         ["task metric"] + [bits_label(recipe, b) for b in cols[1:]], rows_drop))
    return out


# ----------------------------------------------------------------------------- (c) summary
@dataclass
class Survival:
    status: str | None          # MISSING / FAILED when a needed cell is not done
    softpick: int = 0           # metrics where softpick lost significantly less than softmax
    softmax: int = 0
    unclear: int = 0            # differences within their standard error (or without one)

    @property
    def verdict(self) -> str:
        if self.status is not None:
            return self.status
        if self.softpick > self.softmax:
            return "softpick"
        if self.softmax > self.softpick:
            return "softmax"
        return "even"

    def text(self) -> str:
        if self.status is not None:
            return self.status
        return f"{self.verdict} {self.softpick}:{self.softmax} ({self.unclear} n.s.)"


def _loss(fp: float, q: float, se_fp, se_q, metric: str) -> tuple[float, float | None]:
    """How much a model lost: accuracy points dropped, or log of the perplexity ratio."""
    if is_accuracy(metric):
        return fp - q, _combined(se_fp, se_q)
    if q <= 0 or fp <= 0:
        return math.nan, None
    if math.isinf(q):
        return math.inf, None
    rel = [None if s is None else s / v for s, v in ((se_fp, fp), (se_q, q))]
    return math.log(q / fp), _combined(*rel)


def _losses(grid: Grid, recipe: dict, bits: int, task: str, metric: str) -> dict | None:
    """{kind: (loss, stderr)} of one task metric at this cell (see _loss); None when a value is
    missing (a cell not done, or a metric it lacks)."""
    out = {}
    for k in KINDS:
        (fp, se_fp), (q, se_q) = (e.value(task, metric) for e in (grid.baseline(k), grid.entry(k, recipe["name"], bits)))
        if fp is None or q is None:
            return None
        out[k] = _loss(fp, q, se_fp, se_q, metric)
    return out


def survival(grid: Grid, recipe: dict, bits: int) -> Survival:
    """Over the task metrics: which model lost less from its own full precision at this cell.
    A metric counts for a model when the difference of the two losses exceeds SIG_SE standard
    errors (four stderrs combined; perplexities compared as log ratios); else it is n.s."""
    entries = {k: (grid.baseline(k), grid.entry(k, recipe["name"], bits)) for k in KINDS}
    for status in (FAILED, MISSING):
        if any(_status_text(e) == status for pair in entries.values() for e in pair):
            return Survival(status)
    out = Survival(None)
    for task, metric in grid.rows():
        losses = _losses(grid, recipe, bits, task, metric)
        if losses is None:
            continue
        (l_sm, s_sm), (l_sp, s_sp) = losses["softmax"], losses["softpick"]
        if math.isnan(l_sm) or math.isnan(l_sp):
            out.unclear += 1
            continue
        if math.isinf(l_sm) or math.isinf(l_sp):
            if l_sm == l_sp:
                out.unclear += 1
            elif l_sm > l_sp:
                out.softpick += 1
            else:
                out.softmax += 1
            continue
        d, se = l_sm - l_sp, _combined(s_sm, s_sp)
        if significant(d, se):
            if d > 0:
                out.softpick += 1
            else:
                out.softmax += 1
        else:
            out.unclear += 1
    return out


def summary_table(grid: Grid) -> Table:
    widths = sorted({b for r in grid.recipes for b in r["bits"]})
    rows = []
    for recipe in grid.recipes:
        row = [recipe["name"]]
        for b in widths:
            row.append(survival(grid, recipe, b).text() if b in recipe["bits"] else "")
        rows.append(row)
    caption = (f"{grid.caption()} Which attention survives which quantizer better: per cell, the model that "
               f"lost less from its own full precision, counted over the task metrics (accuracy points, "
               f"log perplexity ratio). Entry: verdict softpick:softmax = metrics where that model lost "
               f"significantly less (the difference of the two losses exceeds {SIG_SE:g} combined standard errors), "
               f"n.s. = not significant or no standard error. {MISSING} / failed: a cell needed is missing / failed.")
    return Table("Which attention survives quantization better", caption,
                 ["recipe"] + [f"{b}-bit" for b in widths], rows)


def growth_z(grid: Grid, recipe: dict, bits: int, task: str, metric: str) -> float | None:
    """(log growth of softmax - log growth of softpick) / its standard error: > 0 = softpick's
    perplexity grew less. None without stderrs (or when a cell is not done)."""
    losses = _losses(grid, recipe, bits, task, metric)
    if losses is None:
        return None
    (l_sm, s_sm), (l_sp, s_sp) = losses["softmax"], losses["softpick"]
    se = _combined(s_sm, s_sp)
    if se is None or se <= 0 or not (math.isfinite(l_sm) and math.isfinite(l_sp)):
        return None
    return (l_sm - l_sp) / se


def ppl_ratio(grid: Grid, kind: str, recipe: dict, bits: int, task: str, metric: str) -> tuple[float | None, str | None]:
    """(quantized / own full precision, status text if a cell is not done) of a perplexity."""
    fp_e, q_e = grid.baseline(kind), grid.entry(kind, recipe["name"], bits)
    for e in (fp_e, q_e):
        status = _status_text(e)
        if status is not None:
            return None, status
    (fp, _), (q, _) = fp_e.value(task, metric), q_e.value(task, metric)
    if fp is None or q is None or fp <= 0:
        return None, MISSING
    return q / fp, None


def _ratio_text(r: float | None, status: str | None) -> str:
    if status is not None:
        return status
    return f"x{r:.2f}" if math.isfinite(r) else "inf"


def ppl_ratio_tables(grid: Grid) -> list[Table]:
    """Per perplexity metric: how many times its full-precision perplexity each model has after
    quantization (softmax / softpick), recipes x bits. Read with the verdicts: these metrics
    often have no standard error (word perplexity), so the verdicts cannot count them."""
    widths = sorted({b for r in grid.recipes for b in r["bits"]})
    out = []
    for task, metric in grid.rows():
        if is_accuracy(metric):
            continue
        rows = []
        for recipe in grid.recipes:
            row = [recipe["name"]]
            for b in widths:
                if b not in recipe["bits"]:
                    row.append("")
                    continue
                sm, sp = (_ratio_text(*ppl_ratio(grid, k, recipe, b, task, metric)) for k in KINDS)
                z = growth_z(grid, recipe, b, task, metric)
                row.append(f"{sm} / {sp}" + (f" (z {z:+.1f})" if z is not None else ""))
            rows.append(row)
        caption = (f"{grid.caption()} Entry: quantized perplexity as a multiple of the same model's full-precision "
                   f"perplexity, softmax / softpick (smaller = survived better); z = (log growth of softmax - log "
                   f"growth of softpick) / its standard error (four stderrs combined as independent): positive = "
                   f"softpick's grew less, |z| > {SIG_SE:g} counts in the verdicts; none where lm-eval gives no "
                   f"stderr.")
        out.append(Table(f"{metric_label(task, metric)}: growth from full precision", caption,
                         ["recipe"] + [f"{b}-bit" for b in widths], rows))
    return out


# ----------------------------------------------------------------------------- rendering
def to_markdown(tables: list[Table], heading: str) -> str:
    out = [f"# {heading}", ""]
    for t in tables:
        out += [f"## {t.title}", "", f"*{t.caption}*", ""]
        out.append("| " + " | ".join(t.header) + " |")
        out.append("|" + "|".join(["---"] + [":-:"] * (len(t.header) - 1)) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        out.append("")
    return "\n".join(out)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    text = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    text = text.replace("±", r"$\pm$").replace(MISSING, "---").replace("`", "")
    return text


def _latex_cell(text: str) -> str:
    return latex_escape(text).replace(SIG, "$^{" + SIG + "}$")


def to_latex(tables: list[Table], heading: str) -> str:
    out = [f"% {heading}: written by `qbench table` (needs \\usepackage{{booktabs}})", ""]
    for t in tables:
        cols = "l" + "c" * (len(t.header) - 1)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\caption{" + latex_escape(f"{t.title}. {t.caption}") + "}",
                r"\begin{tabular}{" + cols + "}", r"\toprule",
                " & ".join(latex_escape(h) for h in t.header) + r" \\", r"\midrule"]
        for row in t.rows:
            out.append(" & ".join(_latex_cell(c) for c in row) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _csv_value(entry: Entry, task: str, metric: str):
    status = _status_text(entry)
    if status is not None:
        return status, status, ""
    v, se = entry.value(task, metric)
    return "done", (MISSING if v is None else repr(v)), ("" if se is None else repr(se))


def paper_csv(grid: Grid) -> str:
    rows = []
    for recipe in grid.recipes:
        for bits in _columns(recipe):
            for task, metric in grid.rows():
                row = [recipe["name"], recipe["method"], "FP" if bits is None else bits, task, metric]
                for k in KINDS:
                    row += list(_csv_value(_entry(grid, k, recipe, bits), task, metric))
                rows.append(row)
    header = ["recipe", "method", "bits", "task", "metric", "softmax_status", "softmax", "softmax_stderr",
              "softpick_status", "softpick", "softpick_stderr"]
    return _csv_text(header, rows)


def _csv_diff(d, se, status):
    if status is not None:
        return [status, "", ""]
    if d is None:
        return [MISSING, "", ""]
    return [repr(d), "" if se is None else repr(se), significant(d, se)]


def deltas_csv(grid: Grid) -> str:
    rows = []
    for recipe in grid.recipes:
        for bits in _columns(recipe):
            for task, metric in grid.rows():
                sm, sp = (_entry(grid, k, recipe, bits) for k in KINDS)
                row = [recipe["name"], "FP" if bits is None else bits, task, metric]
                row += _csv_diff(*difference(sm, sp, task, metric))
                for k in KINDS:
                    if bits is None:
                        row += ["", "", ""]
                    else:
                        row += _csv_diff(*difference(grid.baseline(k), _entry(grid, k, recipe, bits), task, metric))
                rows.append(row)
    header = ["recipe", "bits", "task", "metric", "softpick_minus_softmax", "stderr", "significant",
              "softmax_change_from_fp", "softmax_change_stderr", "softmax_change_significant",
              "softpick_change_from_fp", "softpick_change_stderr", "softpick_change_significant"]
    return _csv_text(header, rows)


def summary_csv(grid: Grid) -> str:
    ppl = [(t, m) for t, m in grid.rows() if not is_accuracy(m)]
    rows = []
    for recipe in grid.recipes:
        for b in sorted(recipe["bits"]):
            s = survival(grid, recipe, b)
            row = [recipe["name"], b, s.verdict, s.softpick, s.softmax, s.unclear]
            for task, metric in ppl:
                for k in KINDS:
                    r, status = ppl_ratio(grid, k, recipe, b, task, metric)
                    row.append(status if status is not None else repr(r))
            rows.append(row)
    header = ["recipe", "bits", "verdict", "softpick_better", "softmax_better", "not_significant"]
    header += [f"{task}:{metric}:ratio_to_fp:{k}" for task, metric in ppl for k in KINDS]
    return _csv_text(header, rows)


def write_tables(results_dir, grid: Grid | None = None) -> dict[str, Path]:
    """Write every table into RESULTS_DIR/tables/; returns {name: path}. `grid`: the loaded cells
    (default: load them)."""
    grid = grid or load_grid(results_dir)
    out_dir = Path(results_dir) / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    paper, deltas, summary = paper_tables(grid), delta_tables(grid), [summary_table(grid), *ppl_ratio_tables(grid)]
    texts = {
        "paper.md": to_markdown(paper, f"{grid.name}: quantized softmax / softpick (paper layout)"),
        "paper.tex": to_latex(paper, f"{grid.name}: paper layout"),
        "paper.csv": paper_csv(grid),
        "deltas.md": to_markdown(deltas, f"{grid.name}: softpick - softmax, and change from full precision"),
        "deltas.tex": to_latex(deltas, f"{grid.name}: deltas"),
        "deltas.csv": deltas_csv(grid),
        "summary.md": to_markdown(summary, f"{grid.name}: which attention survives quantization better"),
        "summary.tex": to_latex(summary, f"{grid.name}: summary"),
        "summary.csv": summary_csv(grid),
    }
    written = {}
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
        written[name] = out_dir / name
    return written


def summary_screen(results_dir, grid: Grid | None = None) -> str:
    """The summary for the terminal: the verdicts and the last perplexity's growth (the held-out
    perplexity in the paper's task set)."""
    grid = grid or load_grid(results_dir)
    lines = [grid.caption()]
    ratios = ppl_ratio_tables(grid)
    for t in [summary_table(grid)] + ratios[-1:]:
        widths = [max(len(str(r[i])) for r in [t.header] + t.rows) for i in range(len(t.header))]
        lines.append("")
        lines.append(t.title + (" (verdict softpick:softmax = metrics where that model lost significantly less)"
                                if t.title.startswith("Which") else " (softmax / softpick)"))
        for r in [t.header] + t.rows:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append("")
    done = sum(1 for e in grid.entries.values() if e.status == "done")
    failed = sum(1 for e in grid.entries.values() if e.status == "failed")
    lines.append(f"cells: {done} done, {failed} failed, {len(grid.entries) - done - failed} missing"
                 + ("" if grid.from_manifest else " (no sweep.json: grid taken from the stored cells)"))
    return "\n".join(lines)
