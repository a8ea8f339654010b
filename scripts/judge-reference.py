#!/usr/bin/python3
"""Writes tests/data/judge-reference.json: the baseline judge's p-values as SciPy computes them.

Run once, offline, by hand (Debian: apt-get install python3-scipy; then
`/usr/bin/python3 scripts/judge-reference.py`). The table is committed; no test needs SciPy.
Mann-Whitney U: scipy.stats.mannwhitneyu(x, y, alternative=..., method="asymptotic",
use_continuity=True) — the normal approximation with the tie correction, as rollwatch computes.
Fisher: scipy.stats.fisher_exact([[a, A - a], [b, B - b]], alternative="greater").
"""
import json
import random

import scipy
from scipy.stats import fisher_exact, mannwhitneyu

rng = random.Random(22)


def gauss(n, mu, sd, digits=None):
    out = [rng.gauss(mu, sd) for _ in range(n)]
    return [round(v, digits) if digits is not None else v for v in out]


samples = {
    "small, no ties": (gauss(10, 1.2, 0.1), gauss(10, 1.0, 0.1)),
    "ties: whole numbers 1..4": ([rng.randint(2, 4) for _ in range(25)], [rng.randint(1, 3) for _ in range(25)]),
    "identical": ([5.0] * 15, [5.0] * 15),
    "identical spread": ([float(i % 7) for i in range(30)], [float(i % 7) for i in range(30)]),
    "7 of 10 at 100x (spinnaker#6278)": ([1.0, 1.1, 0.9] + [100.0] * 7, [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.1, 0.9, 1.0]),
    "400 vs 400, +10%, rounded to ms": (gauss(400, 0.110, 0.02, 3), gauss(400, 0.100, 0.02, 3)),
    "400 vs 400, same distribution": (gauss(400, 0.1, 0.02, 3), gauss(400, 0.1, 0.02, 3)),
    "unequal sizes 12 vs 30": (gauss(12, 10.5, 1.0), gauss(30, 10.0, 1.0)),
    "candidate lower": (gauss(20, 90.0, 5.0), gauss(20, 100.0, 5.0)),
    "140ms vs 100ms, 40 each": (gauss(40, 0.140, 0.01, 4), gauss(40, 0.100, 0.01, 4)),
}

mw = []
for name, (x, y) in samples.items():
    greater = mannwhitneyu(x, y, alternative="greater", method="asymptotic", use_continuity=True)
    less = mannwhitneyu(x, y, alternative="less", method="asymptotic", use_continuity=True)
    mw.append({"name": name, "x": x, "y": y, "u": float(greater.statistic), "p_greater": float(greater.pvalue),
               "p_less": float(less.pvalue)})

tables = [
    ("sparse errors 1% vs 0.1% (kayenta#426)", 30, 3000, 3, 3000),
    ("no errors either side", 0, 1000, 0, 1000),
    ("same ratio", 5, 100, 5, 100),
    ("12 vs 5 of 1000", 12, 1000, 5, 1000),
    ("a million requests, 0.23% vs 0.2%", 2300, 1000000, 2000, 1000000),
    ("one error vs none (kayenta#799)", 1, 200, 0, 5000),
    ("5% vs 0.01%", 50, 1000, 10, 100000),
    ("7 vs 1 of 150", 7, 150, 1, 150),
    ("candidate better", 1, 1000, 20, 1000),
    ("errors everywhere", 900, 1000, 800, 1000),
]
fisher = []
for name, a, at, b, bt in tables:
    _, p = fisher_exact([[a, at - a], [b, bt - b]], alternative="greater")
    fisher.append({"name": name, "a_bad": a, "a_total": at, "b_bad": b, "b_total": bt, "p_greater": float(p)})

out = {"generated_by": f"scripts/judge-reference.py with SciPy {scipy.__version__}", "mann_whitney": mw,
       "fisher": fisher}
with open("tests/data/judge-reference.json", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
for r in mw:
    print(f"MW {r['name']}: U={r['u']} p>={r['p_greater']:.3e} p<={r['p_less']:.3e}")
for r in fisher:
    print(f"Fisher {r['name']}: p={r['p_greater']:.3e}")
