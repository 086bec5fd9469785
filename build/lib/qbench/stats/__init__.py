"""Statistics from per-item results: paired tests and intervals (paired.py) and corrections for
multiple comparisons (multiple.py). No knowledge of sweeps or stores: arrays in, numbers out."""
from .multiple import ALPHA, CORRECTIONS, adjust
from .paired import (AGGREGATIONS, LEVEL, N_RESAMPLES, Estimate, Resampler, Result, bootstrap_p, columns, difference_of_drops,
                     is_binary, mcnemar_exact, metric_value, paired_difference, seed_for, statistic, summarize)

__all__ = ["AGGREGATIONS", "ALPHA", "CORRECTIONS", "LEVEL", "N_RESAMPLES", "Estimate", "Resampler", "Result", "adjust",
           "bootstrap_p", "columns", "difference_of_drops", "is_binary", "mcnemar_exact", "metric_value",
           "paired_difference", "seed_for", "statistic", "summarize"]
