"""The comparisons the tables make, computed once per grid (pure function of the stored cells).

Three families, each corrected for multiple comparisons over all its tests in the sweep:
  arms   arm X minus the baseline arm at equal recipe and column (full precision included);
  drop   quantized minus full precision of one arm;
  drops  the difference of drops: (quantized - FP of X) - (quantized - FP of the baseline arm),
         the paper's question (compare: models has only `drop`).
Each comparison is paired when every cell it needs has per-item results on the same documents:
a bootstrap over items (qbench.stats; accuracies in points, perplexity metrics as log ratios),
with the exact McNemar p for two single-seed accuracies and the bootstrap z-test's p otherwise.
Without per-item results it is today's independent comparison: the stored standard errors
combined as independent, significant beyond SIG_SE of them, no p-value.

Calibration seeds: a position with several seeds is their mean; the comparison is formed per
seed (cells matched by seed; a position without seeds is the same for every seed) and averaged;
it counts as significant only when the test is AND |mean difference| > SEED_SD x the standard
deviation of the per-seed differences.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .. import stats
from .cells import CORRUPT, FAILED, FP, FP_LABEL, MISSING, Entry, Grid, is_accuracy

SIG_SE = 2.0     # independent comparisons: a difference counts beyond this many standard errors
SEED_SD = 2.0    # seeds: a difference counts only beyond this many sds of the per-seed differences
FAMILIES = {"arms": "arm minus baseline arm", "drop": "quantized minus own full precision",
            "drops": "difference of drops from full precision"}


@dataclass
class Comparison:
    family: str
    arm: str                    # arms/drops: the arm compared with the baseline; drop: the arm
    recipe: str
    label: str
    task: str
    metric: str
    status: str | None = None   # MISSING / FAILED / corrupt: a needed cell is not done (or a value lacks)
    paired: bool = False
    log: bool = False           # estimate is a log ratio (perplexity metrics: paired, or any drops)
    estimate: float | None = None
    low: float | None = None    # paired: percentile interval
    high: float | None = None
    se: float | None = None     # independent: combined standard error
    p: float | None = None
    test: str | None = None     # "mcnemar" | "bootstrap"
    p_adj: float | None = None
    seeds: int = 1
    seed_sd: float | None = None

    @property
    def favours(self) -> bool | None:
        """True when the estimate is in the arm's (or the quantized model's) favour; None at 0/nan."""
        e = self.estimate
        if e is None or math.isnan(e) or e == 0:
            return None
        return (e > 0) == is_accuracy(self.metric)

    @property
    def test_significant(self) -> bool:
        """Paired: corrected p < ALPHA; independent: beyond SIG_SE standard errors."""
        e = self.estimate
        if self.status is not None or e is None or not math.isfinite(e):
            return False
        if self.paired:
            return self.p_adj is not None and self.p_adj < stats.ALPHA
        return self.se is not None and self.se > 0 and abs(e) > SIG_SE * self.se

    @property
    def beyond_seeds(self) -> bool:
        return self.seed_sd is None or abs(self.estimate) > SEED_SD * self.seed_sd

    @property
    def significant(self) -> bool:
        return self.test_significant and self.beyond_seeds

    @property
    def within_seed_spread(self) -> bool:
        return self.test_significant and not self.beyond_seeds

    @property
    def verdict(self) -> str:
        if self.status is not None:
            return self.status
        if self.within_seed_spread:
            return "within seed spread"
        if not self.significant:
            return "n.s."
        return "better" if self.favours else "worse"


# ----------------------------------------------------------------------------- per-item data
class TaskItems:
    """Per-item values of one task for every cell that has them on the task's common documents,
    resampled once (seed from the task name) so that all comparisons of the task are paired."""

    def __init__(self, task: str, grid: Grid):
        cells = [c for e in grid.entries.values() for c in e.cells if c.items and task in c.items]
        docs = Counter(tuple(sorted(c.items[task]["doc_id"])) for c in cells)
        self.cols: dict = {}        # (cell key, metric) -> (aggregation, column slice, values (n, k))
        if not docs:
            return
        ref = max(docs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        blocks, start = [], 0
        for c in cells:
            t = c.items[task]
            if tuple(sorted(t["doc_id"])) != ref:
                continue
            order = np.argsort(np.asarray(t["doc_id"]), kind="stable")
            for metric, m in sorted(t["metrics"].items()):
                agg = m.get("aggregation")
                if agg not in stats.AGGREGATIONS or (agg == "mean") != is_accuracy(metric):
                    continue
                x = stats.columns(agg, m["values"])[order]
                self.cols[(c.key, metric)] = (agg, slice(start, start + x.shape[1]), x)
                blocks.append(x)
                start += x.shape[1]
        if blocks:
            x = np.concatenate(blocks, axis=1)
            self.n = len(ref)
            resampler = stats.Resampler(self.n, stats.N_RESAMPLES, stats.seed_for(task))
            self.point, self.reps = x.sum(axis=0), resampler.sums(x)

    def has(self, key: str, metric: str) -> bool:
        return (key, metric) in self.cols

    def estimate(self, key: str, metric: str) -> stats.Estimate:
        agg, cols, _ = self.cols[(key, metric)]
        return stats.Estimate(float(stats.statistic(agg, self.point[cols], self.n)),
                              stats.statistic(agg, self.reps[:, cols], self.n))

    def binary(self, key: str, metric: str) -> np.ndarray | None:
        agg, _, x = self.cols[(key, metric)]
        return x[:, 0] if agg == "mean" and stats.is_binary(x[:, 0]) else None


# ----------------------------------------------------------------------------- one comparison
# A comparison is a signed sum of positions: arms and drop [(-1, A), (+1, B)] = B - A; drops
# [(+1, FP base), (-1, Q base), (-1, FP X), (+1, Q X)] = (Q X - FP X) - (Q base - FP base).
def _seed_groups(terms: list[tuple[int, Entry]]) -> list[list[tuple[int, object]]] | None:
    """Per calibration seed, the (sign, cell) terms; positions without seeds are the same for every
    seed, seeded ones are matched on their common seeds (None when they share none)."""
    seeded = [e for _, e in terms if e.seeded]
    common = set.intersection(*({c.calib_seed for c in e.cells} for e in seeded)) if seeded else {None}
    if not common:
        return None
    return [[(s, next(c for c in e.cells if c.calib_seed == seed) if e.seeded else e.cells[0]) for s, e in terms]
            for seed in sorted(common, key=lambda x: (x is not None, x or 0))]


def _sd(values: list[float | None]) -> float | None:
    if len(values) < 2 or not all(v is not None and math.isfinite(v) for v in values):
        return None
    return float(np.std(values, ddof=1))


def _paired(cmp: Comparison, groups, items: TaskItems) -> None:
    m = cmp.metric
    per_seed = [stats.Estimate.combine([(s, items.estimate(c.key, m)) for s, c in g]) for g in groups]
    p = None
    if len(groups) == 1 and len(groups[0]) == 2:          # two single-seed cells: McNemar for 0/1 items
        (_, a), (_, b) = groups[0]
        va, vb = items.binary(a.key, m), items.binary(b.key, m)
        p = stats.mcnemar_exact(va, vb) if va is not None and vb is not None else None
    r = stats.summarize(stats.Estimate.mean(per_seed), p)
    cmp.paired, cmp.log = True, not is_accuracy(m)
    cmp.estimate, cmp.low, cmp.high, cmp.test = r.estimate, r.low, r.high, r.test
    cmp.p = None if math.isnan(r.p) else r.p
    cmp.seed_sd = _sd([e.value for e in per_seed])


def _combined(*ses) -> float | None:
    if any(s is None or not math.isfinite(s) for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses))


def _difference(vb: float, va: float) -> float:
    return 0.0 if math.isinf(va) and math.isinf(vb) and va == vb else vb - va


def _log_drop(fp: float, q: float, se_fp, se_q) -> tuple[float, float | None]:
    """log(q / fp) of a perplexity metric and its (relative, independent) standard error."""
    if q <= 0 or fp <= 0 or (math.isinf(q) and math.isinf(fp)):
        return math.nan, None
    if math.isinf(q) or math.isinf(fp):
        return (math.inf if math.isinf(q) else -math.inf), None
    return math.log(q / fp), _combined(None if se_fp is None else se_fp / fp, None if se_q is None else se_q / q)


def _stored(metric: str, vals: list[tuple[float, float | None]]) -> tuple[float, float | None]:
    """(estimate, independent stderr) from stored (value, stderr) per term: a difference in stored
    units (arms, drop); for drops accuracy points or the log ratio of the perplexity growths."""
    if len(vals) == 2:
        (va, sa), (vb, sb) = vals
        return _difference(vb, va), (_combined(sa, sb) if math.isfinite(va) and math.isfinite(vb) else None)
    (fa, sfa), (qa, sqa), (fb, sfb), (qb, sqb) = vals
    if is_accuracy(metric):
        return (qb - fb) - (qa - fa), _combined(sfa, sqa, sfb, sqb)
    (da, sda), (db, sdb) = _log_drop(fa, qa, sfa, sqa), _log_drop(fb, qb, sfb, sqb)
    return _difference(db, da), _combined(sda, sdb)


def _independent(cmp: Comparison, terms: list[tuple[int, Entry]], groups) -> None:
    vals = [e.value(cmp.task, cmp.metric) for _, e in terms]
    if any(v is None for v, _ in vals):
        cmp.status = MISSING
        return
    cmp.estimate, cmp.se = _stored(cmp.metric, vals)
    cmp.log = len(terms) == 4 and not is_accuracy(cmp.metric)
    if len(groups) > 1:
        per_seed = [[c.value(cmp.task, cmp.metric) for _, c in g] for g in groups]
        cmp.seed_sd = _sd([None if any(v is None for v, _ in vs) else _stored(cmp.metric, vs)[0] for vs in per_seed])


def _compare(items: TaskItems, cmp: Comparison, terms: list[tuple[int, Entry]]) -> Comparison:
    for status in (CORRUPT, FAILED, "missing"):
        if any(e.status == status for _, e in terms):
            cmp.status = MISSING if status == "missing" else status
            return cmp
    groups = _seed_groups(terms)
    if groups is None:
        cmp.status = MISSING
        return cmp
    cmp.seeds = len(groups)
    if all(items.has(c.key, cmp.metric) for g in groups for _, c in g):
        _paired(cmp, groups, items)
    else:
        _independent(cmp, terms, groups)
    return cmp


# ----------------------------------------------------------------------------- all comparisons
class Analysis:
    """Every comparison of a grid, corrected per family (`correction`: a key of stats.CORRECTIONS)."""

    def __init__(self, grid: Grid, correction: str = stats.multiple.DEFAULT):
        if correction not in stats.CORRECTIONS:
            raise ValueError(f"unknown correction {correction!r}")
        self.grid, self.correction = grid, correction
        self.items = {task: TaskItems(task, grid) for task in grid.tasks}
        self.by_key: dict = {}
        for recipe in [{"name": FP}] + grid.recipes:
            cols = [(FP_LABEL, None)] if recipe["name"] == FP else grid.columns(recipe["name"])
            for label, bits in cols:
                for task, metric in grid.rows():
                    self._add_position(recipe["name"], label, task, metric)
        for family in FAMILIES:
            group = [c for c in self.by_key.values() if c.family == family]
            for c, p in zip(group, stats.adjust([c.p for c in group], correction)):
                c.p_adj = p

    def _add_position(self, recipe: str, label: str, task: str, metric: str) -> None:
        g, items = self.grid, self.items[task]

        def add(family, arm, terms):
            cmp = Comparison(family, arm, recipe, label, task, metric)
            self.by_key[(family, arm, recipe, label, task, metric)] = _compare(items, cmp, terms)

        quantized = recipe != FP
        for x in g.others:
            add("arms", x, [(-1, g.entry(g.baseline, recipe, label)), (+1, g.entry(x, recipe, label))])
        if not quantized:
            return
        for a in g.arms:
            add("drop", a.name, [(-1, g.fp(a.name)), (+1, g.entry(a.name, recipe, label))])
        for x in g.others:
            add("drops", x, [(+1, g.fp(g.baseline)), (-1, g.entry(g.baseline, recipe, label)),
                             (-1, g.fp(x)), (+1, g.entry(x, recipe, label))])

    def get(self, family: str, arm: str, recipe: str, label: str, task: str, metric: str) -> Comparison:
        return self.by_key[(family, arm, FP if label == FP_LABEL else recipe, label, task, metric)]

    def family(self, family: str) -> list[Comparison]:
        return [c for c in self.by_key.values() if c.family == family]

    def tested(self, family: str) -> int:
        return sum(1 for c in self.family(family) if c.p is not None)

    def value_interval(self, entry: Entry, task: str, metric: str) -> tuple[float, float] | None:
        """95 % interval of a position's metric value: paired bootstrap over items when the cells
        have them (mean over seeds), else value +- 1.96 stderr; None without either."""
        if entry.status != "done":
            return None
        items = self.items[task]
        if all(items.has(c.key, metric) for c in entry.cells):
            est = stats.Estimate.mean([items.estimate(c.key, metric) for c in entry.cells])
            r = stats.summarize(est)
            agg = items.cols[(entry.cells[0].key, metric)][0]
            if math.isnan(r.low):
                return None
            return float(stats.metric_value(agg, r.low)), float(stats.metric_value(agg, r.high))
        v, se = entry.value(task, metric)
        if v is None or se is None or not (math.isfinite(v) and math.isfinite(se)):
            return None
        return v - 1.96 * se, v + 1.96 * se
