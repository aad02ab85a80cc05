"""Answer distributions, the divergence Δ between teacher and student, and adaptive sampling.

Answer classes
--------------
Each sampled answer (already extracted, see pipeline/answers.py) falls into the class of
its normal form (:func:`pipeline.answers.normalize_answer`, with the prompt's choices).
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
and the (α/2, 1-α/2) percentiles. It is deterministic under ``seed``. With 8 samples a side
the plug-in Δ is biased upwards (two draws of the same distribution rarely look identical)
and the interval reflects the sampling noise of *that estimate*, not of the true divergence;
the zero-delta decision uses the point estimate.

Adaptive sampling
-----------------
Most prompts are easy: both models give the same answer every time. The adaptive policy
draws ``k`` samples per model first and stops when both are unanimous on the same class;
otherwise it draws up to ``n``. A stage uses it in two batched rounds:

1. :func:`first_round_draws` says how many samples each model needs for the first round
   (``k`` minus what it already has; the student often has ``n`` from the ``mine`` stage,
   then 0), one batched engine call per model;
2. :func:`further_draws` on the answers so far says how many more each model needs
   (0, 0 when settled), a second batched call for the undecided prompts.

When a side already holds more than ``k`` answers (the student's ``n`` from ``mine``) all
of them must be unanimous: more evidence is never thrown away. :func:`adaptive_delta`
drives the same policy through a callback for one prompt. The saving and the decision
agreement with full-``n`` sampling are measured in benchmarks/bench_adaptive.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.answers import normalize_answer

Metric = Literal["jsd", "tv", "hellinger"]
Answer = str | None
NO_ANSWER = "[no answer]"
METRICS = ("jsd", "tv", "hellinger")
DEFAULT_INSTRUCTION = (
    "Answer the question. Keep any reasoning short and end with a final line of the form "
    "'Answer: <value>'."
)


@dataclass
class DeltaConfig:
    """How Δ is measured for each prompt (one block of the run config)."""

    metric: Literal["jsd", "tv", "hellinger"] = "jsd"
    threshold: float = 0.05  # zero-delta when Δ < threshold
    n: int = 8  # samples per model (the full budget)
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512  # reasoning models need room before "Answer:"
    adaptive: bool = True  # draw k first, stop early when both are unanimous
    k: int = 3  # first-round samples per model (see bench_adaptive)
    bootstrap: int = 200  # bootstrap resamples for the Δ interval (0: none)
    ci_level: float = 0.9  # two-sided coverage of the percentile interval
    seed: int = 0  # sampling and bootstrap seed
    instruction: str = DEFAULT_INSTRUCTION  # appended to each question sent to the models

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"delta.metric must be one of {METRICS}, got {self.metric!r}")
        if self.n < 1:
            raise ValueError(f"delta.n must be >= 1, got {self.n}")
        if not 1 <= self.k <= self.n:
            raise ValueError(f"delta.k must be in [1, n={self.n}], got {self.k}")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"delta.ci_level must be in (0, 1), got {self.ci_level}")
        if self.bootstrap < 0:
            raise ValueError(f"delta.bootstrap must be >= 0, got {self.bootstrap}")


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
        seed=cfg.seed,
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


# ---------------------------------------------------------------------------- adaptive


def settled(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    k: int,
    choices: Sequence[str] | None = None,
) -> bool:
    """Both sides hold >= k answers, each side unanimous, on the same class."""
    if len(teacher_answers) < k or len(student_answers) < k:
        return False
    classes = {answer_class(a, choices) for a in [*teacher_answers, *student_answers]}
    return len(classes) == 1


def needs_more_samples(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    k: int,
    n: int | None = None,
    choices: Sequence[str] | None = None,
) -> bool:
    """Whether the adaptive policy wants more samples for this prompt.

    False when settled (see :func:`settled`) or, given ``n``, when both sides already have n.
    """
    if n is not None and len(teacher_answers) >= n and len(student_answers) >= n:
        return False
    return not settled(teacher_answers, student_answers, k, choices)


def first_round_draws(
    n_teacher_have: int, n_student_have: int, cfg: DeltaConfig
) -> tuple[int, int]:
    """Samples (teacher, student) to draw in the first batched round."""
    target = cfg.k if cfg.adaptive else cfg.n
    return max(0, target - n_teacher_have), max(0, target - n_student_have)


def further_draws(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    cfg: DeltaConfig,
    choices: Sequence[str] | None = None,
) -> tuple[int, int]:
    """Samples (teacher, student) still to draw after a round: (0, 0) when settled or full."""
    if cfg.adaptive and settled(teacher_answers, student_answers, cfg.k, choices):
        return 0, 0
    return max(0, cfg.n - len(teacher_answers)), max(0, cfg.n - len(student_answers))


def adaptive_delta(
    draw: Callable[[str, int], list[Answer]],
    cfg: DeltaConfig | None = None,
    choices: Sequence[str] | None = None,
    *,
    teacher_answers: Sequence[Answer] = (),
    student_answers: Sequence[Answer] = (),
) -> dict:
    """Run the adaptive policy for one prompt through ``draw(model, m) -> m answers``.

    ``model`` is "teacher" or "student". Answers already held (the student's from ``mine``)
    are passed in and never redrawn. Returns :func:`delta_report` plus ``stopped_early``.
    """
    cfg = cfg or DeltaConfig()
    t, s = list(teacher_answers), list(student_answers)
    need_t, need_s = first_round_draws(len(t), len(s), cfg)
    t += _draw(draw, "teacher", need_t)
    s += _draw(draw, "student", need_s)
    more_t, more_s = further_draws(t, s, cfg, choices)
    stopped_early = (
        cfg.adaptive and (more_t, more_s) == (0, 0) and (len(t) < cfg.n or len(s) < cfg.n)
    )
    t += _draw(draw, "teacher", more_t)
    s += _draw(draw, "student", more_s)
    report = delta_report(t, s, cfg, choices)
    report["stopped_early"] = bool(stopped_early)
    return report


def _draw(draw: Callable[[str, int], list[Answer]], model: str, m: int) -> list[Answer]:
    if m <= 0:
        return []
    got = list(draw(model, m))
    if len(got) != m:
        raise ValueError(f"draw({model!r}, {m}) returned {len(got)} answers, expected {m}")
    return got


def samples_saved(n_drawn: int, n_prompts: int, cfg: DeltaConfig, models: int = 2) -> float:
    """Fraction of the full-n budget (n per model per prompt) that was not drawn."""
    full = n_prompts * cfg.n * models
    return 0.0 if full == 0 else 1.0 - n_drawn / full
