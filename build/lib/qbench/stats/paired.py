"""Paired tests and intervals from per-item results: every model of a sweep answers the same items.

A statistic of one cell is computed from sums over its items (`statistic`), on the scale the
comparisons use: an accuracy as a fraction (mean of 0/1), a perplexity as its log, bits per byte
as its log (so differences of perplexity metrics are log ratios). A bootstrap resample is n item
indices drawn with replacement; `Resampler` draws B of them once per item set and every
statistic of every cell on those items is computed on the same resamples, so a difference of
two cells (or of two drops) is resampled jointly, item by item (a paired bootstrap).

    r = Resampler(n)
    est = Estimate.combine([(+1, r.estimate("mean", acc_b)), (-1, r.estimate("mean", acc_a))])   # B - A
    summarize(est)                       # estimate, 95 % percentile interval, bootstrap p-value

p-values: for two accuracies (0/1 per item, one cell each) the exact McNemar test (a binomial
test on the discordant pairs, scipy's binomtest); otherwise a bootstrap z-test: z = estimate /
bootstrap standard error, two-sided normal p (a continuous p-value, so that corrections over
hundreds of comparisons are not floored at 1/B as a percentile p-value would be).
Everything is seeded: the same inputs give the same numbers, bit for bit.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95
_BATCH = 250           # resamples per batch (bounds memory: batch x items counts)

# aggregation (lm-eval's, as in the per-item sidecar) -> number of columns per item
AGGREGATIONS = {"mean": 1, "perplexity": 1, "weighted_perplexity": 2, "bits_per_byte": 2}


def seed_for(name: str) -> int:
    """A fixed seed derived from a name (e.g. a task): tables are reproducible byte for byte."""
    return int.from_bytes(hashlib.sha256(f"qbench-bootstrap:{name}".encode()).digest()[:8], "little")


def columns(aggregation: str, values) -> np.ndarray:
    """Per-item values as an (n, k) float array: [value] for mean / perplexity (a log-likelihood),
    [loglikelihood, weight] for weighted_perplexity / bits_per_byte."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATIONS)})")
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1)
    if x.shape[1] != AGGREGATIONS[aggregation]:
        raise ValueError(f"{aggregation}: expected {AGGREGATIONS[aggregation]} value(s) per item, got {x.shape[1]}")
    return x


def statistic(aggregation: str, sums, n: int):
    """The statistic on the comparison scale from column sums (..., k) over n items: the mean;
    log perplexity (perplexity: exp(-mean ll); weighted: exp(-sum ll / sum weight)); log bits
    per byte (-sum ll / sum bytes / ln 2)."""
    s = np.asarray(sums, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if aggregation == "mean":
            return s[..., 0] / n
        if aggregation == "perplexity":
            return -s[..., 0] / n
        if aggregation == "weighted_perplexity":
            return -s[..., 0] / s[..., 1]
        return np.log(-s[..., 0] / s[..., 1] / math.log(2))


def metric_value(aggregation: str, stat):
    """The metric itself from `statistic` (exp of a log scale)."""
    return stat if aggregation == "mean" else np.exp(stat)


class Resampler:
    """B bootstrap resamples of n items, drawn once (seeded); `sums` applies them to any columns.
    The resamples are those of scipy.stats.bootstrap(paired=True) with the same Generator."""

    def __init__(self, n: int, n_resamples: int = N_RESAMPLES, seed: int = 0):
        if n < 1:
            raise ValueError("a bootstrap needs at least one item")
        self.n, self.n_resamples, self.seed = n, n_resamples, seed
        self._counts = None

    def _batches(self) -> list[np.ndarray]:
        """The resamples as (rows, n) float32 count arrays (how often each item is drawn)."""
        if self._counts is None:
            rng = np.random.default_rng(self.seed)
            self._counts = []
            for start in range(0, self.n_resamples, _BATCH):
                rows = min(_BATCH, self.n_resamples - start)
                idx = rng.integers(0, self.n, (rows, self.n)) + (np.arange(rows)[:, None] * self.n)
                self._counts.append(np.bincount(idx.ravel(), minlength=rows * self.n)
                                    .reshape(rows, self.n).astype(np.float32))
        return self._counts

    def sums(self, x: np.ndarray) -> np.ndarray:
        """(B, k) sums of the columns of x (n, k) over each resample."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] != self.n:
            raise ValueError(f"expected {self.n} items, got {x.shape[0]}")
        return np.concatenate([c.astype(np.float64) @ x for c in self._batches()])

    def estimate(self, aggregation: str, values) -> "Estimate":
        x = columns(aggregation, values)
        return Estimate(float(statistic(aggregation, x.sum(axis=0), self.n)),
                        statistic(aggregation, self.sums(x), self.n))


@dataclass(frozen=True, eq=False)
class Estimate:
    """A statistic and its bootstrap replicates; differences keep the pairing (same resamples)."""
    value: float
    reps: np.ndarray

    @staticmethod
    def combine(terms: list[tuple[int, "Estimate"]]) -> "Estimate":
        """sum of sign * estimate over (sign, estimate) terms, replicate by replicate."""
        return Estimate(float(sum(s * e.value for s, e in terms)), sum(s * e.reps for s, e in terms))

    @staticmethod
    def mean(estimates: list["Estimate"]) -> "Estimate":
        """The mean over calibration seeds (each seed's cell on the same items)."""
        return Estimate(float(np.mean([e.value for e in estimates])), np.mean([e.reps for e in estimates], axis=0))


@dataclass(frozen=True)
class Result:
    estimate: float
    low: float
    high: float
    se: float           # bootstrap standard error
    p: float
    test: str           # "mcnemar" (exact) or "bootstrap" (bootstrap z-test)


def bootstrap_p(estimate: float, se: float) -> float:
    """Two-sided p of the bootstrap z-test (estimate / bootstrap standard error vs a normal)."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return math.nan
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    from scipy.stats import norm

    return float(2 * norm.sf(abs(estimate) / se))


def mcnemar_exact(a, b) -> float:
    """Exact McNemar test of two paired 0/1 vectors: two-sided binomial test of the discordant
    pairs (a right / b wrong vs a wrong / b right) against 1/2. 1.0 without discordant pairs."""
    from scipy.stats import binomtest

    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    n_ab, n_ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n_ab + n_ba == 0:
        return 1.0
    return float(binomtest(n_ba, n_ab + n_ba, 0.5).pvalue)


def is_binary(values) -> bool:
    v = np.asarray(values, dtype=np.float64)
    return v.ndim == 1 and bool(np.all((v == 0) | (v == 1)))


def summarize(est: Estimate, p: float | None = None, level: float = LEVEL) -> Result:
    """Percentile interval and bootstrap standard error of `est`; p: given (McNemar) or the
    bootstrap z-test's."""
    reps = est.reps[np.isfinite(est.reps)]
    if len(reps) < len(est.reps) or not math.isfinite(est.value):
        return Result(est.value, math.nan, math.nan, math.nan, math.nan if p is None else p,
                      "bootstrap" if p is None else "mcnemar")
    alpha = (1 - level) / 2
    low, high = np.percentile(reps, [100 * alpha, 100 * (1 - alpha)])
    se = float(np.std(reps, ddof=1))
    test = "bootstrap" if p is None else "mcnemar"
    return Result(est.value, float(low), float(high), se, bootstrap_p(est.value, se) if p is None else p, test)


# ----------------------------------------------------------------------------- the three comparisons
def paired_difference(a, b, aggregation: str = "mean", n_resamples: int = N_RESAMPLES, seed: int = 0) -> Result:
    """B minus A on the same items (arm vs arm, or quantized vs full precision of one arm): accuracy
    points (fraction) or a log ratio (perplexity metrics). McNemar p for 0/1 accuracies."""
    r = Resampler(len(a), n_resamples, seed)
    est = Estimate.combine([(-1, r.estimate(aggregation, a)), (+1, r.estimate(aggregation, b))])
    p = mcnemar_exact(a, b) if aggregation == "mean" and is_binary(a) and is_binary(b) else None
    return summarize(est, p)


def difference_of_drops(fp_a, q_a, fp_b, q_b, aggregation: str = "mean", n_resamples: int = N_RESAMPLES,
                        seed: int = 0) -> Result:
    """(quantized - full precision of B) - (quantized - full precision of A), the four cells
    resampled jointly by item; bootstrap z-test p."""
    r = Resampler(len(fp_a), n_resamples, seed)
    terms = [(+1, fp_a), (-1, q_a), (-1, fp_b), (+1, q_b)]
    return summarize(Estimate.combine([(s, r.estimate(aggregation, v)) for s, v in terms]))
