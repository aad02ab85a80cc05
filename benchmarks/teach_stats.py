"""Statistics of learning curves: area under the curve, steps to a target, paired tests.

Curves are accuracies at training budgets (optimizer steps) on a log scale, one curve per
seed. Everything here is a plain function of numbers, tested on hand-computed cases
(tests/benchmarks/test_teach.py).

* :func:`auc_log`: the mean accuracy over the budgets, trapezoids on log2(steps), so
  each doubling of the budget weighs the same.
* :func:`steps_to_reach`: the first budget at which a curve reaches a target accuracy,
  interpolated linearly in log2(steps) between budgets; ``inf`` if it never does.
* :func:`bootstrap_steps_to_reach`: that crossing for the seed-mean curve, with a
  percentile interval from resampling the seeds (with replacement).
* :func:`paired_t`: the paired t-test (two-sided) of per-seed differences; the p-value
  from Student's t distribution through the regularised incomplete beta function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def auc_log(steps: Sequence[float], accs: Sequence[float]) -> float:
    """Mean of a curve over log2(steps): trapezoids, divided by the log2 span."""
    if len(steps) != len(accs) or len(steps) < 2:
        raise ValueError("auc_log needs at least two (step, accuracy) points of equal count")
    x = np.log2(np.asarray(steps, dtype=float))
    if np.any(np.diff(x) <= 0):
        raise ValueError("steps must increase")
    y = np.asarray(accs, dtype=float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def steps_to_reach(steps: Sequence[float], accs: Sequence[float], target: float) -> float:
    """The first budget where the curve reaches ``target`` (log-linear interpolation
    between budgets); ``steps[0]`` if it starts there, ``inf`` if it never does."""
    if accs[0] >= target:
        return float(steps[0])
    for i in range(1, len(steps)):
        if accs[i] >= target:
            lo, hi = math.log2(steps[i - 1]), math.log2(steps[i])
            frac = (target - accs[i - 1]) / (accs[i] - accs[i - 1])
            return float(2 ** (lo + frac * (hi - lo)))
    return math.inf


def bootstrap_steps_to_reach(
    steps: Sequence[float],
    curves: Sequence[Sequence[float]],
    target: float,
    *,
    resamples: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> dict[str, float]:
    """Steps for the seed-mean curve to reach ``target``, with a percentile interval over
    seeds resampled with replacement; ``reached``: the share of resamples that reach it."""
    arr = np.asarray(curves, dtype=float)  # (seeds, budgets)
    point = steps_to_reach(steps, arr.mean(axis=0), target)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, arr.shape[0], size=(resamples, arr.shape[0]))
    draws = np.array([steps_to_reach(steps, arr[p].mean(axis=0), target) for p in picks])
    alpha = (1 - level) / 2
    # Order statistics only (no interpolation between an inf and a number): inf sorts last,
    # so a share of resamples that never reach the target opens the upper end.
    lo, hi = np.quantile(draws, [alpha, 1 - alpha], method="inverted_cdf")
    return {"steps": point, "low": float(lo), "high": float(hi),
            "reached": float(np.mean(np.isfinite(draws)))}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2, 0.5, df / (df + t * t))


def paired_t(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired t-test of ``a - b`` (same seeds): mean difference, t, df, two-sided p."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        raise ValueError("a paired t-test needs at least two pairs")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    df = d.size - 1
    if sd == 0:
        t = math.copysign(math.inf, mean) if mean else 0.0
        return {"diff": mean, "t": t, "df": df, "p": 0.0 if mean else 1.0}
    t = mean / (sd / math.sqrt(d.size))
    return {"diff": mean, "t": t, "df": df, "p": t_two_sided_p(t, df)}
