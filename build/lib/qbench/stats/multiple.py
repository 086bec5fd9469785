"""Corrections for multiple comparisons (statsmodels' multipletests) over one family of tests."""
from __future__ import annotations

import math

# name -> (statsmodels method, what the caption says it controls)
CORRECTIONS = {
    "bh": ("fdr_bh", "Benjamini-Hochberg (false discovery rate)"),
    "holm": ("holm", "Holm (family-wise error rate)"),
}
DEFAULT = "bh"
ALPHA = 0.05


def adjust(pvalues: list[float | None], method: str = DEFAULT) -> list[float | None]:
    """Corrected p-values in the input order; None (or nan) entries are not tests: they stay None
    and do not count in the family."""
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r} (known: {', '.join(CORRECTIONS)})")
    tested = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: list[float | None] = [None] * len(pvalues)
    if not tested:
        return out
    from statsmodels.stats.multitest import multipletests

    corrected = multipletests([pvalues[i] for i in tested], alpha=ALPHA, method=CORRECTIONS[method][0])[1]
    for i, p in zip(tested, corrected):
        out[i] = float(p)
    return out
