"""Answer distributions and the divergence Δ between teacher and student.

Answer classes
--------------
Each sampled answer (already extracted, see pipeline/answers.py) falls into the class of
its normal form (:func:`pipeline.core.answers.normalize_answer`, with the prompt's choices).
Classes are *equality* classes: relaxed matching (5% tolerance) is not transitive and so
cannot define a partition. A None answer (no final answer: reasoning cut off, a refusal)
forms its own class ``NO_ANSWER``; a normal form never ends with punctuation, so
``"[no answer]"`` cannot collide with a real answer.

Δ
-
The empirical answer distributions p (teacher) and q (student) are compared by

* ``jsd`` (default): Jensen-Shannon divergence in bits, ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2;
  in [0, 1], 0 iff p = q, symmetric, and never above ``tv``;
* ``tv``: total variation, ½Σ|p-q|, in [0, 1];
* ``hellinger``: sqrt(½Σ(√p-√q)²), in [0, 1].

A prompt is *zero-delta* when Δ < ``threshold`` (default 0.05). Note what 0.05 means at
N=8 per model for JSD: a unanimous teacher against a student with one stray answer gives
Δ≈0.066 (not zero-delta), while 7/1 against 6/2 on the same majority gives Δ≈0.019.

Uncertainty
-----------
:func:`delta_ci` is a **percentile bootstrap**: B resamples of each side with replacement
(a multinomial draw from each empirical distribution, both sides independent), Δ on each,
and the (α/2, 1-α/2) percentiles. It is deterministic under ``seed`` (``delta.bootstrap_seed``). With 8 samples a side
the plug-in Δ is biased upwards (two draws of the same distribution rarely look identical)
and the interval reflects the sampling noise of *that estimate*, not of the true divergence;
the zero-delta decision uses the point estimate.

The adaptive policy that decides how many answers to draw lives in
pipeline/sampling/policy.py; this module is the maths it and every report share.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from pipeline.core.answers import normalize_answer
from pipeline.core.config import METRICS, DeltaConfig, Metric

Answer = str | None
NO_ANSWER = "[no answer]"


# ------------------------------------------------------------------------ distributions


def answer_class(answer: Answer, choices: Sequence[str] | None = None) -> str:
    """The equivalence class (normal form) of one answer; None -> NO_ANSWER."""
    if answer is None:
        return NO_ANSWER
    return normalize_answer(answer, choices)


def answer_counts(answers: Sequence[Answer], choices: Sequence[str] | None = None) -> Counter:
    """Counts per class, in first-seen order (which breaks majority ties deterministically)."""
    return Counter(answer_class(a, choices) for a in answers)


def answer_distribution(
    answers: Sequence[Answer], choices: Sequence[str] | None = None
) -> dict[str, float]:
    """Empirical probability per class."""
    if not answers:
        raise ValueError("answer_distribution needs at least one answer")
    counts = answer_counts(answers, choices)
    total = sum(counts.values())
    return {c: v / total for c, v in counts.items()}


def _aligned(p: dict[str, float], q: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    keys = list(dict.fromkeys([*p, *q]))
    return (np.array([p.get(k, 0.0) for k in keys]), np.array([q.get(k, 0.0) for k in keys]))


def divergence(p: np.ndarray, q: np.ndarray, metric: Metric = "jsd") -> np.ndarray:
    """Δ between probability vectors along the last axis (batched: shape (..., classes))."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if metric == "tv":
        return 0.5 * np.abs(p - q).sum(axis=-1)
    if metric == "hellinger":
        h = np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(axis=-1))
        return np.clip(h, 0.0, 1.0)
    if metric == "jsd":
        m = 0.5 * (p + q)
        # log2(p) - log2(m) rather than log2(p / m): no overflow for subnormal p and m.
        lm = np.log2(np.where(m > 0, m, 1.0))
        kp = np.where(p > 0, p * (np.log2(np.where(p > 0, p, 1.0)) - lm), 0.0)
        kq = np.where(q > 0, q * (np.log2(np.where(q > 0, q, 1.0)) - lm), 0.0)
        # Rounding can leave -1e-17 or 1+1e-16; the true value is in [0, 1].
        return np.clip(0.5 * (kp.sum(axis=-1) + kq.sum(axis=-1)), 0.0, 1.0)
    raise ValueError(f"unknown Δ metric {metric!r}: use one of {METRICS}")


def distribution_delta(p: dict[str, float], q: dict[str, float], metric: Metric = "jsd") -> float:
    """Δ between two class -> probability dicts."""
    pv, qv = _aligned(p, q)
    return float(divergence(pv, qv, metric))


def delta(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    metric: Metric = "jsd",
    choices: Sequence[str] | None = None,
) -> float:
    """Δ between the teacher's and the student's empirical answer distributions."""
    return distribution_delta(
        answer_distribution(teacher_answers, choices),
        answer_distribution(student_answers, choices),
        metric,
    )


def is_zero_delta(d: float, threshold: float = 0.05) -> bool:
    """Zero-delta: the two models agree closely enough that the prompt teaches nothing."""
    return d < threshold


# -------------------------------------------------------------------------- uncertainty


def delta_ci(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    metric: Metric = "jsd",
    choices: Sequence[str] | None = None,
    *,
    bootstrap: int = 200,
    ci_level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval for Δ (see module doc); (Δ, Δ) when bootstrap == 0."""
    p = answer_distribution(teacher_answers, choices)
    q = answer_distribution(student_answers, choices)
    if bootstrap == 0:
        d = distribution_delta(p, q, metric)
        return d, d
    pv, qv = _aligned(p, q)
    rng = np.random.default_rng(seed)
    nt, ns = len(teacher_answers), len(student_answers)
    # Resampling n answers with replacement == one multinomial draw from the empirical p.
    tb = rng.multinomial(nt, pv / pv.sum(), size=bootstrap) / nt
    sb = rng.multinomial(ns, qv / qv.sum(), size=bootstrap) / ns
    ds = divergence(tb, sb, metric)
    alpha = 1.0 - ci_level
    lo, hi = np.quantile(ds, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------- report


def _majority(counts: Counter) -> tuple[str, float]:
    cls, c = counts.most_common(1)[0]
    return cls, c / sum(counts.values())


def delta_report(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    cfg: DeltaConfig | None = None,
    choices: Sequence[str] | None = None,
) -> dict:
    """Δ with its interval, the decision, majorities and both distributions (JSON-ready).

    ``teacher_agreement`` is the share of the teacher's samples in its majority class (1.0:
    unanimous); a majority of ``NO_ANSWER`` means the model mostly gave no final answer.
    """
    cfg = cfg or DeltaConfig()
    tc, sc = answer_counts(teacher_answers, choices), answer_counts(student_answers, choices)
    if not tc or not sc:
        raise ValueError("delta_report needs at least one answer per model")
    p = {c: v / len(teacher_answers) for c, v in tc.items()}
    q = {c: v / len(student_answers) for c, v in sc.items()}
    d = distribution_delta(p, q, cfg.metric)
    lo, hi = delta_ci(
        teacher_answers,
        student_answers,
        cfg.metric,
        choices,
        bootstrap=cfg.bootstrap,
        ci_level=cfg.ci_level,
        seed=cfg.bootstrap_seed,
    )
    t_major, t_agree = _majority(tc)
    s_major, s_agree = _majority(sc)
    return {
        "delta": d,
        "ci_low": lo,
        "ci_high": hi,
        "ci_method": "percentile-bootstrap" if cfg.bootstrap else "none",
        "metric": cfg.metric,
        "zero_delta": is_zero_delta(d, cfg.threshold),
        "teacher_majority": t_major,
        "teacher_agreement": t_agree,
        "student_majority": s_major,
        "student_agreement": s_agree,
        "n_teacher": len(teacher_answers),
        "n_student": len(student_answers),
        "distributions": {"teacher": p, "student": q},
    }


