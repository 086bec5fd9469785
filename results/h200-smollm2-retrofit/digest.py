"""The README's digest of tables/smollm2-retrofit/deltas.csv (run from the repository root):
per grid point, softpick-ft's drop from its own full precision minus softmax-ft's, for LAMBADA
accuracy (points), LAMBADA and held-out perplexity (ratio of growths), with 95 % paired bootstrap
intervals, and how many of the 9 task metrics differ significantly (BH-corrected) each way.

    python results/h200-smollm2-retrofit/digest.py > results/h200-smollm2-retrofit/digest.md
"""
import csv
import math
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parent
rows = [r for r in csv.DictReader(open(ROOT / "tables/smollm2-retrofit/deltas.csv"))
        if r["family"] == "drops" and r["arm"] == "softpick-ft" and r["against"] == "softmax-ft"]
points = defaultdict(dict)
order = []
for r in rows:
    key = (r["recipe"], r["label"])
    if key not in points:
        order.append(key)
    points[key][(r["task"], r["metric"])] = r


def fmt(r, scale):
    if r is None or r["status"] != "done":
        return "-"
    e, lo, hi = (float(r[k]) for k in ("estimate", "low", "high"))
    star = "*" if r["significant"] == "True" else ""
    if scale == "points":
        return f"{100 * e:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{star}"
    return f"x{math.exp(e):.3g} [x{math.exp(lo):.3g}, x{math.exp(hi):.3g}]{star}"


print("| recipe | point | LAMBADA acc, points | LAMBADA ppl growth ratio | held-out ppl growth ratio | metrics better / worse for softpick-ft (of 9) |")
print("|---|---|---|---|---|---|")
for key in order:
    m = points[key]
    better = sum(r["significant"] == "True" and r["verdict"] == "better" for r in m.values())
    worse = sum(r["significant"] == "True" and r["verdict"] == "worse" for r in m.values())
    print(f"| {key[0]} | {key[1]} | {fmt(m.get(('qb_lambada_openai', 'acc')), 'points')} | "
          f"{fmt(m.get(('qb_lambada_openai', 'perplexity')), 'ratio')} | "
          f"{fmt(m.get(('qb_heldout_ppl', 'word_perplexity')), 'ratio')} | {better} / {worse} |")
print("\nPositive points / ratio below x1: softpick-ft lost less than softmax-ft from its own full "
      "precision. * = significant after Benjamini-Hochberg over the sweep's difference-of-drops tests.")
