"""lm-eval's bootstrap standard error, computed in this process, vectorized where that is exact.

lm-eval bootstraps the stderr of perplexity-type aggregates (here: LAMBADA perplexity): chunks of
at most 1000 resamples, chunk i drawn with `random.Random(i).choices(xs, k=len(xs))`, each
resample aggregated with the metric, on a process pool of one process per CPU. At 5153 LAMBADA
items and 1000 draws that is ~2 s of pure Python per evaluation (plus forking the evaluating
process), most of lm-eval's own time per cell.

`bootstrap_stderr` here gives the same number:
* for `perplexity` (exp(-sum(xs) / len(xs))) the same resamples are drawn with numpy: a
  RandomState holding random.Random(i)'s Mersenne Twister state yields the same doubles (both
  use the 53-bit genrand_res53), `floor(u * n)` the same indices as random.choices, and the sums
  are taken left to right (np.cumsum, as Python's float sum); a self-check against lm-eval's own
  code on first use (and a test) guards this, and on any difference lm-eval's code is used;
* for every other metric, lm-eval's own chunk loop runs in this process (its DISABLE_MULTIPROC
  path: the same chunks, seeds and order as the pool).
"""
from __future__ import annotations

import math
import random

_STATE = {"verified": None, "lm_eval": None}   # self-check result; lm-eval's own bootstrap_stderr


def _perplexity_draws(xs, n_draws: int, seed: int) -> list[float]:
    """perplexity of `n_draws` resamples of xs drawn as random.Random(seed).choices(xs, k=len(xs))."""
    import numpy as np

    pool = np.asarray(xs, dtype=np.float64)
    n = len(pool)
    version, internal, _ = random.Random(seed).getstate()
    rs = np.random.RandomState()
    rs.set_state(("MT19937", np.array(internal[:-1], dtype=np.uint32), internal[-1]))
    out = []
    rows = max(1, (1 << 22) // max(n, 1))        # resamples per block (~32 MB of doubles)
    for start in range(0, n_draws, rows):
        k = min(rows, n_draws - start)
        idx = np.floor(rs.random_sample(k * n) * float(n)).astype(np.int64).reshape(k, n)
        sums = np.cumsum(pool[idx], axis=1)[:, -1]
        out.extend(math.exp(-(float(s) / n)) for s in sums)
    return out


def _draws(f, xs, iters: int) -> list[float]:
    """The resampled statistics in lm-eval's order: chunks of min(1000, iters), chunk i seeded i."""
    from lm_eval.api import metrics as lm_metrics

    chunk = min(1000, iters)
    if f is lm_metrics.perplexity and _fast_perplexity_ok():
        res = []
        for i in range(iters // chunk):
            res.extend(_perplexity_draws(xs, chunk, i))
        return res
    return lm_metrics._bootstrap_internal_no_mp(f, xs, iters)


def _fast_perplexity_ok() -> bool:
    """Once per process: do the numpy draws equal lm-eval's own on a small sample?"""
    if _STATE["verified"] is None:
        from lm_eval.api import metrics as lm_metrics

        rnd = random.Random(12345)
        xs = [-rnd.random() * 10 for _ in range(37)]
        theirs = []
        for i in range(2):
            r = random.Random(i)
            theirs.extend(lm_metrics.perplexity(r.choices(xs, k=len(xs))) for _ in range(25))
        try:
            ours = _perplexity_draws(xs, 25, 0) + _perplexity_draws(xs, 25, 1)
        except Exception:   # pragma: no cover - e.g. a numpy without RandomState.set_state
            ours = None
        _STATE["verified"] = ours == theirs
    return _STATE["verified"]


def bootstrap_stderr(f, xs, iters: int) -> float:
    """lm_eval.api.metrics.bootstrap_stderr's value, computed in this process (see module doc)."""
    from lm_eval.api import metrics as lm_metrics

    print("bootstrapping for stddev:", f.__name__)
    return lm_metrics.sample_stddev(_draws(f, xs, iters))


def lm_eval_bootstrap_stderr():
    """lm-eval's own bootstrap_stderr (also after install())."""
    from lm_eval.api import metrics as lm_metrics

    return _STATE["lm_eval"] or lm_metrics.bootstrap_stderr


def install() -> None:
    """Route lm-eval's stderr bootstrap through bootstrap_stderr (idempotent; lm-eval's
    stderr_for_metric looks the function up in lm_eval.api.metrics at call time)."""
    from lm_eval.api import metrics as lm_metrics

    if lm_metrics.bootstrap_stderr is not bootstrap_stderr:
        _STATE["lm_eval"] = lm_metrics.bootstrap_stderr
        lm_metrics.bootstrap_stderr = bootstrap_stderr
