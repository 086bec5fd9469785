"""Tables from stored cells (pure functions of the results folder), as Markdown, LaTeX and CSV.

    qbench table RESULTS_DIR     ->  RESULTS_DIR/tables/{paper,deltas,summary}.{md,tex,csv}
                                     (tables/<sweep>/ for a `sweeps/<sweep>.json` manifest)

(a) paper:   per recipe, rows = task metrics, columns = full precision and the recipe's column
             labels, each entry "arm1 / arm2 / ..." in arm order (accuracies in percent,
             perplexities as they are; several calibration seeds: mean and sd).
(b) deltas:  per recipe, for every non-baseline arm X: X minus the baseline arm; for every arm:
             quantized minus its own full precision; for every X: the difference of drops. Each
             entry: effect, interval (paired) or standard error (independent), corrected p-value
             and mark (see compare.py for the statistics).
(c) summary: one line per recipe (and arm), one column per weight width: which arm survives the
             quantizer better, counted over the task metrics from the difference of drops; then,
             per perplexity metric, each arm's perplexity as a multiple of its own full precision.
A missing cell shows as "—", a failed one as "failed", a damaged one as "corrupt"; never as a
number. Captions state the example limit, the statistics and the correction used. The CSV files
are long format: stored numbers as they are (accuracies as fractions), statistics to 10 digits.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .. import stats
from ..files import atomic_write_text
from .cells import FAILED, FP, FP_LABEL, MISSING, Entry, Grid, format_value, is_accuracy, metric_label
from .compare import FAMILIES, SEED_SD, SIG_SE, Analysis, Comparison

SIG = "*"
SEED_MARK = "~"


@dataclass
class Table:
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]


def _status_text(entry: Entry) -> str | None:
    return {"done": None, "missing": MISSING}.get(entry.status, entry.status)


def _cell_text(entry: Entry, task: str, metric: str) -> str:
    status = _status_text(entry)
    if status is not None:
        return status
    value, _ = entry.value(task, metric)
    text = format_value(metric, value)
    sd = entry.seed_sd(task, metric)
    return text if sd is None else f"{text} (sd {sd * (100 if is_accuracy(metric) else 1):.2f})"


def _recipe_title(recipe: dict, describe: bool = True) -> str:
    """'name (weight method, calibration): the recipe's own description' (what a recipe quantizes
    (weights, activations, KV cache, attention maps) is said once, in its description)."""
    calib = recipe.get("calib")
    calib = f", calibration {calib['samples']} x {calib['seq_len']} tokens" if calib else ""
    description = f": {recipe['description']}" if describe and recipe.get("description") else ""
    return f"{recipe['name']} ({recipe.get('method') or 'no weight method'}{calib}){description}"


def _columns(grid: Grid, recipe: dict) -> list[str]:
    return [FP_LABEL] + [label for label, _ in grid.columns(recipe["name"])]


def _position(grid: Grid, arm: str, recipe: dict, label: str) -> Entry:
    return grid.fp(arm) if label == FP_LABEL else grid.entry(arm, recipe["name"], label)


def _arms_text(grid: Grid) -> str:
    return " / ".join(grid.arm_label(a.name) for a in grid.arms)


# ----------------------------------------------------------------------------- (a) paper layout
def paper_tables(grid: Grid) -> list[Table]:
    seeds = any(e.seeded and len(e.cells) > 1 for e in grid.entries.values())
    out = []
    for recipe in grid.recipes:
        cols = _columns(grid, recipe)
        rows = []
        for task, metric in grid.rows():
            rows.append([metric_label(task, metric)] + [
                " / ".join(_cell_text(_position(grid, a.name, recipe, label), task, metric) for a in grid.arms)
                for label in cols])
        caption = (f"{grid.caption()} Entries: {_arms_text(grid)}; accuracies in percent, perplexities "
                   f"as they are; FP = full precision. {MISSING} = not computed, failed = the cell failed "
                   f"(see its cell file).")
        if seeds:
            caption += " Several calibration seeds: their mean, sd = standard deviation over the seeds."
        out.append(Table(_recipe_title(recipe), caption, ["task metric"] + cols, rows))
    return out


# ----------------------------------------------------------------------------- (b) deltas
def _p_text(p: float | None) -> str:
    if p is None:
        return ""
    return " p<0.001" if p < 0.001 else f" p={p:.3f}"


def _effect(c: Comparison, v: float) -> str:
    if c.log:
        return f"x{math.exp(v):.3f}" if v < 700 else "x inf"
    if not math.isfinite(v):
        return "+inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return f"{v * (100 if is_accuracy(c.metric) else 1):+.2f}"


def _mark(c: Comparison) -> str:
    return SIG if c.significant else (SEED_MARK if c.within_seed_spread else "")


def comparison_text(c: Comparison) -> str:
    if c.status is not None:
        return c.status
    if c.estimate is None:
        return MISSING
    spread = (lambda v: f"{v:.3f}") if c.log else (lambda v: f"{v * (100 if is_accuracy(c.metric) else 1):.2f}")
    if c.paired:
        interval = "" if math.isnan(c.low) else f" [{_effect(c, c.low)}, {_effect(c, c.high)}]"
        text = _effect(c, c.estimate) + interval + _p_text(c.p_adj)
    else:
        text = _effect(c, c.estimate) + (f" ± {spread(c.se)}" if c.se is not None else " ± ?")
    if c.seed_sd is not None:
        text += f" (sd {spread(c.seed_sd)}, {c.seeds} seeds)"
    return text + _mark(c)


def _stats_caption(analysis: Analysis, comparisons: list[Comparison]) -> str:
    """What the entries of a table mean: the statistics actually present in it."""
    done = [c for c in comparisons if c.status is None and c.estimate is not None]
    parts = []
    if any(c.paired for c in done):
        family = comparisons[0].family
        name = stats.CORRECTIONS[analysis.correction][1]
        parts.append(
            f"[low, high] = {stats.LEVEL:.0%} paired bootstrap percentile interval ({stats.N_RESAMPLES} resamples "
            f"of the items, every cell compared resampled jointly); p = exact McNemar test for two single-seed "
            f"accuracies, else bootstrap z-test (estimate / bootstrap standard error, normal reference), "
            f"corrected by {name} over the {analysis.tested(family)} tests of this family ({FAMILIES[family]}, "
            f"whole sweep); {SIG} = corrected p < {stats.ALPHA:g}. Perplexity metrics: x = ratio (exp of the "
            f"paired log-ratio difference).")
    if any(not c.paired for c in done):
        ppl = ("x = ratio of the two growths, ± of its log" if comparisons[0].family == "drops"
               else "the difference as they are")
        parts.append(
            f"No per-item results: independent standard errors (± = stored stderrs combined as "
            f"sqrt(se1^2 + se2^2 ...); ? = lm-eval gives none); {SIG} = larger than {SIG_SE:g} standard "
            f"errors, not corrected for multiple comparisons. Perplexity metrics: {ppl}.")
    if any(c.seed_sd is not None for c in done):
        parts.append(
            f"Calibration seeds: the mean over seeds; sd = standard deviation of the per-seed differences in "
            f"the entry's units (of the log where the entry is a ratio); a "
            f"difference counts only when also |mean| > {SEED_SD:g} sd; {SEED_MARK} = significant in the test "
            f"but within that spread.")
    return " ".join(parts)


def _delta_table(grid: Grid, analysis: Analysis, recipe: dict, family: str, arm: str, cols: list[str],
                 title: str, what: str) -> Table:
    rows, comps = [], []
    for task, metric in grid.rows():
        row = [metric_label(task, metric)]
        for label in cols:
            c = analysis.get(family, arm, recipe["name"], label, task, metric)
            comps.append(c)
            row.append(comparison_text(c))
        rows.append(row)
    caption = f"{grid.caption()} Accuracies in percentage points. {_stats_caption(analysis, comps)} Entry: {what}."
    return Table(f"{_recipe_title(recipe, describe=False)}: {title}", caption, ["task metric"] + cols, rows)


def delta_tables(grid: Grid, analysis: Analysis) -> list[Table]:
    out = []
    base = grid.arm_label(grid.baseline)
    for recipe in grid.recipes:
        cols = _columns(grid, recipe)
        for x in grid.others:
            out.append(_delta_table(grid, analysis, recipe, "arms", x, cols, f"{grid.arm_label(x)} - {base}",
                                    f"{grid.arm_label(x)} minus {base} in the same cell"))
        for a in grid.arms:
            name = grid.arm_label(a.name)
            out.append(_delta_table(grid, analysis, recipe, "drop", a.name, cols[1:],
                                    f"{name}, change from own full precision",
                                    f"quantized minus full precision of {name}"))
        for x in grid.others:
            name = grid.arm_label(x)
            out.append(_delta_table(
                grid, analysis, recipe, "drops", x, cols[1:], f"{name} drop - {base} drop",
                f"(quantized - FP of {name}) - (quantized - FP of {base}): positive accuracy / ratio below x1 = "
                f"{name} lost less"))
    return out


# ----------------------------------------------------------------------------- (c) summary
@dataclass
class Survival:
    status: str | None          # MISSING / FAILED / corrupt when a needed cell is not done
    arm: str = ""
    baseline: str = ""
    better: int = 0             # metrics where the arm lost significantly less than the baseline arm
    worse: int = 0
    unclear: int = 0            # not significant (or without a test)

    @property
    def verdict(self) -> str:
        if self.status is not None:
            return self.status
        return self.arm if self.better > self.worse else (self.baseline if self.worse > self.better else "even")

    def text(self) -> str:
        return self.status if self.status is not None else \
            f"{self.verdict} {self.better}:{self.worse} ({self.unclear} n.s.)"


def _entries_status(entries: list[Entry]) -> str | None:
    for status in (FAILED, "corrupt", "missing"):
        if any(e.status == status for e in entries):
            return MISSING if status == "missing" else status
    return None


def survival(grid: Grid, analysis: Analysis, recipe: str, label: str, arm: str) -> Survival:
    """Over the task metrics: did `arm` lose less from its own full precision than the baseline
    arm at this position? A metric counts when its difference of drops is significant (an
    infinite drop on one side counts for the other); else it is n.s."""
    b = grid.baseline
    entries = [grid.fp(b), grid.entry(b, recipe, label), grid.fp(arm), grid.entry(arm, recipe, label)]
    out = Survival(_entries_status(entries), grid.arm_label(arm), grid.arm_label(b))
    if out.status is not None:
        return out
    for task, metric in grid.rows():
        c = analysis.get("drops", arm, recipe, label, task, metric)
        if c.status is not None or c.estimate is None:
            continue
        decided = c.significant or math.isinf(c.estimate)
        if not decided or c.favours is None:
            out.unclear += 1
        elif c.favours:
            out.better += 1
        else:
            out.worse += 1
    return out


def _drop_counts(grid: Grid, analysis: Analysis, recipe: str, label: str, arm: str) -> str:
    status = _entries_status([grid.fp(arm), grid.entry(arm, recipe, label)])
    if status is not None:
        return status
    verdicts = [analysis.get("drop", arm, recipe, label, t, m).verdict for t, m in grid.rows()]
    return (f"{grid.arm_label(arm)} {verdicts.count('worse')} worse, {verdicts.count('better')} better "
            f"({len(verdicts) - verdicts.count('worse') - verdicts.count('better')} n.s.)")


def _by_width(grid: Grid, recipe: str, width: int, text) -> str:
    """The entry of a (recipe, width) summary cell: text(label) for its one label, or each label's."""
    labels = [label for label, b in grid.columns(recipe) if b == width]
    if len(labels) == 1:
        return text(labels[0])
    return "; ".join(f"{label}: {text(label)}" for label in labels)


def width_header(bits: int | None) -> str:
    return "no weights" if bits is None else f"{bits}-bit"


def summary_tables(grid: Grid, analysis: Analysis) -> list[Table]:
    widths = grid.widths()
    header = ["recipe"] + [width_header(b) for b in widths]
    rows = []
    if grid.others:
        for recipe in grid.recipes:
            for x in grid.others:
                name = recipe["name"] if len(grid.others) == 1 else f"{recipe['name']} ({grid.arm_label(x)})"
                rows.append([name] + [_by_width(grid, recipe["name"], b, lambda label: survival(
                    grid, analysis, recipe["name"], label, x).text()) for b in widths])
        comps = analysis.family("drops")
        caption = (f"{grid.caption()} Which attention survives which quantizer better: per cell, the arm that lost "
                   f"less from its own full precision, counted over the task metrics (accuracy points, log "
                   f"perplexity ratio). Entry: verdict arm:{grid.arm_label(grid.baseline)} = metrics where that arm "
                   f"lost significantly less (the difference of drops, see deltas), n.s. = not significant or "
                   f"no test. {_stats_caption(analysis, comps)} {MISSING} / failed: a cell needed is missing / failed.")
        return [Table("Which attention survives quantization better", caption, header, rows)]
    for recipe in grid.recipes:
        rows.append([recipe["name"]] + [_by_width(grid, recipe["name"], b, lambda label: "; ".join(
            _drop_counts(grid, analysis, recipe["name"], label, a.name) for a in grid.arms)) for b in widths])
    comps = analysis.family("drop")
    caption = (f"{grid.caption()} The sweep compares different models: each only against its own full "
               f"precision. Entry per model: task metrics significantly worse / better than full precision. "
               f"{_stats_caption(analysis, comps)}")
    return [Table("How much each model loses to quantization", caption, header, rows)]


def ppl_ratio(grid: Grid, arm: str, recipe: str, label: str, task: str, metric: str) -> tuple[float | None, str | None]:
    """(quantized / own full precision, status text if a cell is not done) of a perplexity."""
    fp_e, q_e = grid.fp(arm), grid.entry(arm, recipe, label)
    status = _entries_status([fp_e, q_e])
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


def _growth_note(c: Comparison) -> str | None:
    """z of the independent difference of log growths (positive = the arm's grew less), or the
    paired test's corrected p and mark."""
    if c.status is not None or c.estimate is None:
        return None
    if c.paired:
        return _p_text(c.p_adj).strip() + _mark(c) if c.p_adj is not None else None
    if c.se is None or c.se <= 0 or not math.isfinite(c.estimate):
        return None
    return f"z {-c.estimate / c.se:+.1f}"


def ppl_ratio_tables(grid: Grid, analysis: Analysis) -> list[Table]:
    """Per perplexity metric: how many times its full-precision perplexity each arm has after
    quantization, recipes x widths, with the difference-of-drops test of each non-baseline arm."""
    widths = grid.widths()
    out = []
    for task, metric in grid.rows():
        if is_accuracy(metric):
            continue
        comps = []

        def text(recipe, label):
            ratios = " / ".join(_ratio_text(*ppl_ratio(grid, a.name, recipe, label, task, metric)) for a in grid.arms)
            notes = []
            for x in grid.others:
                c = analysis.get("drops", x, recipe, label, task, metric)
                comps.append(c)
                notes.append(_growth_note(c))
            notes = [n for n in notes if n is not None]
            return ratios + (f" ({', '.join(notes)})" if notes else "")

        rows = [[r["name"]] + [_by_width(grid, r["name"], b, lambda label: text(r["name"], label)) for b in widths]
                for r in grid.recipes]
        caption = (f"{grid.caption()} Entry: quantized perplexity as a multiple of the same arm's full-precision "
                   f"perplexity, {_arms_text(grid)} (smaller = survived better).")
        if grid.others:
            caption += (f" In brackets, per arm other than {grid.arm_label(grid.baseline)}, the difference of its "
                        f"log growth and the baseline's: p (paired) or z = (log growth of the baseline - log growth "
                        f"of the arm) / its standard error (independent; positive = the arm's grew less, "
                        f"|z| > {SIG_SE:g} counts in the verdicts; none where lm-eval gives no stderr). "
                        f"{_stats_caption(analysis, comps)}")
        out.append(Table(f"{metric_label(task, metric)}: growth from full precision", caption,
                         ["recipe"] + [width_header(b) for b in widths], rows))
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
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"$<$", ">": r"$>$", "|": r"$|$"}


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


def _num(v) -> str:
    """A computed statistic in the CSV: 10 significant digits (stable across BLAS builds)."""
    return "" if v is None else f"{v:.10g}"


def _positions(grid: Grid, recipe: dict):
    for label in _columns(grid, recipe):
        bits = None if label == FP_LABEL else dict(grid.columns(recipe["name"]))[label]
        yield label, ("FP" if label == FP_LABEL else bits)


def paper_csv(grid: Grid) -> str:
    rows = []
    for recipe in grid.recipes:
        for label, bits in _positions(grid, recipe):
            for task, metric in grid.rows():
                row = [recipe["name"], recipe.get("method"), label, bits, task, metric]
                for a in grid.arms:
                    e = _position(grid, a.name, recipe, label)
                    status = _status_text(e)
                    v, se = e.value(task, metric)
                    value = status if status is not None else (MISSING if v is None else repr(v))
                    row += [e.status, value, "" if se is None else repr(se), len(e.cells),
                            _num(e.seed_sd(task, metric))]
                rows.append(row)
    header = ["recipe", "method", "label", "bits", "task", "metric"]
    for a in grid.arms:
        header += [f"{a.name}_status", a.name, f"{a.name}_stderr", f"{a.name}_seeds", f"{a.name}_seed_sd"]
    return _csv_text(header, rows)


def deltas_csv(grid: Grid, analysis: Analysis) -> str:
    """One row per comparison (the full-precision arm comparisons once, as recipe fp)."""
    positions = [({"name": FP}, FP_LABEL, "FP")] + [
        (recipe, label, bits) for recipe in grid.recipes for label, bits in grid.columns(recipe["name"])]
    rows = []
    for recipe, label, bits in positions:
        for task, metric in grid.rows():
            for family in FAMILIES:
                if family != "arms" and label == FP_LABEL:
                    continue
                for arm in ([a.name for a in grid.arms] if family == "drop" else grid.others):
                    c = analysis.get(family, arm, recipe["name"], label, task, metric)
                    method = None if c.estimate is None or c.status else ("paired" if c.paired else "independent")
                    rows.append([family, recipe["name"], label, bits, task, metric, arm,
                                 FP if family == "drop" else grid.baseline, c.status or "done", method,
                                 ("log_ratio" if c.log else "difference"), _num(c.estimate), _num(c.low),
                                 _num(c.high), _num(c.se), c.test, _num(c.p), _num(c.p_adj),
                                 analysis.correction if c.p is not None else "", c.seeds, _num(c.seed_sd),
                                 c.significant, c.verdict])
    header = ["family", "recipe", "label", "bits", "task", "metric", "arm", "against", "status", "method", "scale",
              "estimate", "low", "high", "stderr", "test", "p", "p_adjusted", "correction", "seeds", "seed_sd",
              "significant", "verdict"]
    return _csv_text(header, rows)


def summary_csv(grid: Grid, analysis: Analysis) -> str:
    ppl = [(t, m) for t, m in grid.rows() if not is_accuracy(m)]
    rows = []
    for recipe in grid.recipes:
        for label, bits in grid.columns(recipe["name"]):
            for a in grid.arms:
                row = [recipe["name"], label, bits, a.name]
                if a.name in grid.others:
                    s = survival(grid, analysis, recipe["name"], label, a.name)
                    row += [s.verdict, s.better, s.worse, s.unclear]
                else:
                    row += ["", "", "", ""]
                verdicts = [analysis.get("drop", a.name, recipe["name"], label, t, m).verdict for t, m in grid.rows()]
                row += [verdicts.count("worse"), verdicts.count("better")]
                for task, metric in ppl:
                    r, status = ppl_ratio(grid, a.name, recipe["name"], label, task, metric)
                    row.append(status if status is not None else repr(r))
                rows.append(row)
    header = ["recipe", "label", "bits", "arm", "verdict_vs_baseline", "arm_lost_less", "baseline_lost_less",
              "not_significant", "metrics_worse_than_fp", "metrics_better_than_fp"]
    header += [f"{task}:{metric}:ratio_to_fp" for task, metric in ppl]
    return _csv_text(header, rows)


def write_tables(grid: Grid, analysis: Analysis | None = None) -> dict[str, Path]:
    """Write every table into the grid's tables folder; returns {name: path}."""
    analysis = analysis or Analysis(grid)
    out_dir = grid.out_dir("tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    paper, deltas = paper_tables(grid), delta_tables(grid, analysis)
    summary = summary_tables(grid, analysis) + ppl_ratio_tables(grid, analysis)
    arms = _arms_text(grid)
    texts = {
        "paper.md": to_markdown(paper, f"{grid.name}: quantized {arms} (paper layout)"),
        "paper.tex": to_latex(paper, f"{grid.name}: paper layout"),
        "paper.csv": paper_csv(grid),
        "deltas.md": to_markdown(deltas, f"{grid.name}: differences between arms, and change from full precision"),
        "deltas.tex": to_latex(deltas, f"{grid.name}: deltas"),
        "deltas.csv": deltas_csv(grid, analysis),
        "summary.md": to_markdown(summary, f"{grid.name}: " + (
            "which attention survives quantization better" if grid.others else "how much each model loses")),
        "summary.tex": to_latex(summary, f"{grid.name}: summary"),
        "summary.csv": summary_csv(grid, analysis),
    }
    written = {}
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
        written[name] = out_dir / name
    return written


def summary_screen(grid: Grid, analysis: Analysis | None = None) -> str:
    """The summary for the terminal: the verdicts and the last perplexity's growth (the held-out
    perplexity in the paper's task set)."""
    analysis = analysis or Analysis(grid)
    lines = [grid.caption()]
    for t in summary_tables(grid, analysis) + ppl_ratio_tables(grid, analysis)[-1:]:
        widths = [max(len(str(r[i])) for r in [t.header] + t.rows) for i in range(len(t.header))]
        lines.append("")
        lines.append(t.title + (f" (verdict arm:{grid.arm_label(grid.baseline)} = metrics where that arm lost "
                                f"significantly less)" if t.title.startswith("Which") else
                                ("" if t.title.startswith("How") else f" ({_arms_text(grid)})")))
        for r in [t.header] + t.rows:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append("")
    statuses = [c.status for e in grid.entries.values() for c in e.cells]
    corrupt = statuses.count("corrupt")
    lines.append(f"cells: {statuses.count('done')} done, {statuses.count('failed')} failed, "
                 f"{statuses.count('missing')} missing" + (f", {corrupt} corrupt" if corrupt else "")
                 + ("" if grid.from_manifest else " (no sweep manifest: grid taken from the stored cells)"))
    return "\n".join(lines)
