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
Most prompts are easy: both models give the same answer every time; many others are
plainly different. The adaptive policy draws ``k`` samples per model first, then rounds of
``step`` more per model, and stops a prompt after a round as soon as either rule fires:

* **unanimous**: both sides hold at least ``unanimous_k`` answers (:func:`unanimity_k`),
  all of one class, the same on both sides (:func:`settled`); the prompt is called
  zero-delta. This rule can differ from full-``n`` sampling: a stray answer may have come
  later. When a side already holds more answers (the student's ``n`` from ``mine``) all of
  them must agree: more evidence is never thrown away. While both sides are still all one
  class but short of ``unanimous_k``, the next round brings them to exactly that count.
* **decided**: the zero-delta decision that full-``n`` sampling would make is already fixed
  whatever the remaining draws are (:func:`fixed_decision`). This rule is exact: its
  decision is full-``n``'s by construction.

Otherwise the prompt draws on, up to ``n`` per side. ``step`` >= n-k gives two rounds.

*The fixed-decision test.* With ``a`` teacher and ``b`` student answers held, the remaining
``max(0, n-a)`` and ``max(0, n-b)`` draws are completed adversarially (a side holding
more than ``n`` keeps its counts). If the minimum of Δ over all completions is >= the
threshold, every completion is non-zero-delta; if the maximum is < the threshold, every
completion is zero-delta. Why a finite search is exact, for all three metrics:

* Minimum: JSD, TV and Hellinger² are f-divergences (Hellinger a monotone function of
  one), so by the data-processing inequality merging answer classes never increases Δ.
  Any completion that uses new classes is therefore no smaller than the one with all its
  new classes merged into ONE new class shared by both sides: the search runs over the
  observed classes plus one new class. Δ is moreover a sum over classes of a term convex
  in that class's count, so for a fixed completion of one side, greedy marginal
  allocation (one draw at a time to the class that raises Δ least) gives the exact
  minimum over the other side's completions (separable convex objective under one sum
  constraint). So one side's integer compositions are enumerated (numpy, batched) and the
  other side filled greedily; cheap heuristic completions go first, and if one already
  gives Δ < threshold the enumeration is skipped (the prompt is not certainly
  non-zero-delta).
* Maximum: Δ is jointly convex in (p, q) (Hellinger through Hellinger²), and the
  completions of each side form a simplex scaled by its remaining draws, with integer
  vertices; a convex function on a product of simplices is maximised at a vertex. So
  each side puts all its remaining draws into one class: an observed one or a fresh one
  exclusive to that side (a fresh class shared by both is the merge of two exclusive
  ones, never larger by the same inequality).

A margin of 1e-9 around the threshold keeps float rounding from ever deciding a tie
(it can only make the policy draw more). The verdict depends only on the multiset of
(teacher, student) count pairs and is cached on it.

A stage runs the policy in batched rounds (:func:`pipeline.audit.sample_adaptive`):

1. :func:`first_round_draws` says how many samples each model needs for the first round
   (``k`` minus what it already has; the student often has ``n`` from the ``mine`` stage,
   then 0), one batched engine call per model;
2. after each round, :func:`stop_reason` says whether a prompt stops ("unanimous",
   "decided" or None) and :func:`further_draws` how many more each model needs
   ((0, 0) when stopped or full), one batched call per model for the open prompts.

:func:`adaptive_delta` drives the same policy through a callback for one prompt. The
saving and the decision agreement with full-``n`` sampling are measured in
benchmarks/bench_adaptive.py, which chose the defaults: ``k=1``, ``unanimous_k=5``,
``step=2`` (see benchmarks/results/adaptive.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb
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
    adaptive: bool = True  # rounds of samples, stop early by unanimity or a fixed decision
    k: int = 1  # first-round samples per model (defaults: see bench_adaptive)
    step: int = 2  # samples per model added by each further round (>= n-k: two rounds)
    unanimous_k: int = 5  # answers per model the unanimity stop needs (at least k, at most n)
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
        if self.step < 1:
            raise ValueError(f"delta.step must be >= 1, got {self.step}")
        if self.unanimous_k < 1:
            raise ValueError(f"delta.unanimous_k must be >= 1, got {self.unanimous_k}")
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


# Margin on the threshold for the fixed-decision stop: a completion whose Δ lies within
# it of the threshold (float rounding, class order) keeps the prompt open. Conservative:
# it can only make the policy draw more, never change a decision.
_FIXED_TOL = 1e-9
# Above this many enumerated completions the exact minimum is not computed and the prompt
# stays open (conservative). N=8 needs at most a few hundred.
_MAX_COMPOSITIONS = 200_000


@lru_cache(maxsize=1024)
def _compositions(total: int, parts: int) -> np.ndarray:
    """Every ordered way to write ``total`` as ``parts`` non-negative ints: (rows, parts)."""
    if parts == 1:
        return np.array([[total]], dtype=np.int64)
    rows = []
    for bars in combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(parts)])
    out = np.array(rows, dtype=np.int64)
    out.setflags(write=False)
    return out


def _greedy_fill(x0: np.ndarray, q: np.ndarray, r: int, total: int, metric: Metric) -> np.ndarray:
    """Per row, the Δ-minimising way to add ``r`` draws to counts ``x0`` against the fixed
    distributions ``q`` (rows, classes); returns the minimal Δ per row.

    Δ (JSD, TV, Hellinger²) is a sum over classes of a term convex in that class's count,
    and greedy marginal allocation is optimal for a separable convex objective under one
    sum constraint (Hellinger is a monotone function of Hellinger², same argmin).
    """
    x = np.array(x0, dtype=float)
    rows, classes = x.shape
    eye = np.eye(classes)
    idx = np.arange(rows)
    for _ in range(r):
        cand = (x[:, None, :] + eye[None, :, :]) / total
        best = divergence(cand, q[:, None, :], metric).argmin(axis=1)
        x[idx, best] += 1.0
    return divergence(x / total, q, metric)


def _min_completion(
    a: np.ndarray, b: np.ndarray, ra: int, rb: int, na: int, nb: int, metric: Metric,
    threshold: float | None = None,
) -> float:
    """min Δ over completions (``a``, ``b``: counts incl. one shared new class, zeros).

    Side b's completions are enumerated, side a is filled greedily (exact, see
    :func:`_greedy_fill`); the side with fewer compositions is the enumerated one (Δ is
    symmetric). With ``threshold``, cheap heuristic completions are tried first and a
    value below ``threshold`` from them is returned at once (the prompt is open anyway).
    Returns -inf when the enumeration would be too large (treated as open).
    """
    classes = len(a)
    if comb(ra + classes - 1, classes - 1) < comb(rb + classes - 1, classes - 1):
        a, b, ra, rb, na, nb = b, a, rb, ra, nb, na
    if threshold is not None and rb > 0:
        # Heuristics: side b puts all its remaining draws into one class (each class in
        # turn), or spreads them like side a's answers so far (largest remainders).
        share = a / a.sum() * rb if a.sum() else np.full(classes, rb / classes)
        prop = np.floor(share).astype(np.int64)
        prop[np.argsort(-(share - prop), kind="stable")[: rb - prop.sum()]] += 1
        ys = np.vstack([np.eye(classes, dtype=np.int64) * rb, prop])
        d = _greedy_fill(np.broadcast_to(a, ys.shape), (b + ys) / nb, ra, na, metric)
        if d.min() < threshold:
            return float(d.min())
    ys = _compositions(rb, classes)
    if len(ys) > _MAX_COMPOSITIONS:
        return float("-inf")
    best = np.inf
    for lo in range(0, len(ys), 4096):  # bounded memory for the (rows, classes, classes) step
        chunk = ys[lo : lo + 4096]
        d = _greedy_fill(np.broadcast_to(a, chunk.shape), (b + chunk) / nb, ra, na, metric)
        best = min(best, float(d.min()))
    return best


def _max_completion(
    a: np.ndarray, b: np.ndarray, ra: int, rb: int, na: int, nb: int, metric: Metric
) -> float:
    """max Δ over completions (``a``, ``b``: observed counts only).

    Δ is convex in (p, q), so over the product of the two simplices of completions it is
    largest at a vertex: each side puts all its remaining draws into one class, an
    observed one or a fresh one of its own (a fresh class shared by both sides is the
    merge of two own ones, never larger by the data-processing inequality).
    """
    classes = len(a)
    a2 = np.concatenate([a, [0, 0]])  # observed classes, fresh (side a), fresh (side b)
    b2 = np.concatenate([b, [0, 0]])
    xa = a2 + ra * np.eye(classes + 2, dtype=np.int64)[: classes + 1] if ra else a2[None]
    eye_b = np.eye(classes + 2, dtype=np.int64)
    xb = b2 + rb * eye_b[[*range(classes), classes + 1]] if rb else b2[None]
    p = np.repeat(xa, len(xb), axis=0) / na
    q = np.tile(xb, (len(xa), 1)) / nb
    return float(divergence(p, q, metric).max())


def _prepared(
    teacher_counts: Sequence[int], student_counts: Sequence[int], n: int
) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    a = np.asarray(teacher_counts, dtype=np.int64).reshape(-1)
    b = np.asarray(student_counts, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError("teacher_counts and student_counts must be aligned (same length)")
    keep = (a > 0) | (b > 0)
    a, b = a[keep], b[keep]
    ta, tb = int(a.sum()), int(b.sum())
    return a, b, max(0, n - ta), max(0, n - tb), max(n, ta), max(n, tb)


def completion_range(
    teacher_counts: Sequence[int],
    student_counts: Sequence[int],
    n: int,
    metric: Metric = "jsd",
) -> tuple[float, float]:
    """(min, max) of Δ over every completion of both sides to ``n`` answers (exact).

    Counts are per class, aligned; the remaining draws may fall into observed classes or
    any new ones (see the module doc for why the search below covers them all). A side
    holding more than ``n`` answers keeps its counts. The minimum is -inf if the
    enumeration would be too large (never at N=8).
    """
    a, b, ra, rb, na, nb = _prepared(teacher_counts, student_counts, n)
    if ra == 0 and rb == 0:
        d = float(divergence(a / na, b / nb, metric))
        return d, d
    lo = _min_completion(np.append(a, 0), np.append(b, 0), ra, rb, na, nb, metric)
    return lo, _max_completion(a, b, ra, rb, na, nb, metric)


@lru_cache(maxsize=1 << 16)
def _fixed_decision(
    pairs: tuple[tuple[int, int], ...], n: int, threshold: float, metric: Metric
) -> bool | None:
    a, b, ra, rb, na, nb = _prepared([p[0] for p in pairs], [p[1] for p in pairs], n)
    if ra == 0 and rb == 0:
        return bool(divergence(a / na, b / nb, metric) < threshold)
    if _max_completion(a, b, ra, rb, na, nb, metric) < threshold - _FIXED_TOL:
        return True
    a1, b1 = np.append(a, 0), np.append(b, 0)  # one new class, shared by both sides
    lo = _min_completion(a1, b1, ra, rb, na, nb, metric, threshold + _FIXED_TOL)
    if lo >= threshold + _FIXED_TOL:
        return False
    return None


def fixed_decision_counts(
    teacher_counts: Sequence[int],
    student_counts: Sequence[int],
    n: int,
    threshold: float = 0.05,
    metric: Metric = "jsd",
) -> bool | None:
    """The zero-delta decision full-``n`` sampling will make, if it is already fixed.

    ``teacher_counts`` and ``student_counts`` are answer counts per class, aligned (the
    same class at the same position). The remaining draws (``n`` minus what a side holds;
    none for a side holding more) may fall anywhere, observed classes or new ones: True
    when every completion is zero-delta, False when none is, None when it is still open.
    The result depends only on the multiset of (teacher, student) count pairs and is
    cached on it.
    """
    if len(teacher_counts) != len(student_counts):
        raise ValueError("teacher_counts and student_counts must be aligned (same length)")
    if metric not in METRICS:
        raise ValueError(f"unknown Δ metric {metric!r}: use one of {METRICS}")
    pairs = tuple(
        sorted((int(t), int(s)) for t, s in zip(teacher_counts, student_counts) if t or s)
    )
    return _fixed_decision(pairs, int(n), float(threshold), metric)


def fixed_decision(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    cfg: DeltaConfig,
    choices: Sequence[str] | None = None,
) -> bool | None:
    """:func:`fixed_decision_counts` on the answers held so far (``cfg``: n, threshold, metric)."""
    tc = answer_counts(teacher_answers, choices)
    sc = answer_counts(student_answers, choices)
    keys = list(dict.fromkeys([*tc, *sc]))
    return fixed_decision_counts(
        [tc.get(c, 0) for c in keys], [sc.get(c, 0) for c in keys], cfg.n, cfg.threshold,
        cfg.metric,
    )


def unanimity_k(cfg: DeltaConfig) -> int:
    """Answers per side the unanimity stop needs: ``unanimous_k``, at least k, at most n."""
    return max(cfg.k, min(cfg.unanimous_k, cfg.n))


def stop_reason(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    cfg: DeltaConfig,
    choices: Sequence[str] | None = None,
) -> str | None:
    """Why the adaptive policy stops here, short of ``n`` on some side; None: it does not.

    "unanimous": :func:`settled` with :func:`unanimity_k`; "decided": :func:`fixed_decision`
    is not None. None as well when the policy is off or both sides already hold ``n``.
    """
    if not cfg.adaptive or (len(teacher_answers) >= cfg.n and len(student_answers) >= cfg.n):
        return None
    if settled(teacher_answers, student_answers, unanimity_k(cfg), choices):
        return "unanimous"
    if fixed_decision(teacher_answers, student_answers, cfg, choices) is not None:
        return "decided"
    return None


def needs_more_samples(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    k: int,
    n: int | None = None,
    choices: Sequence[str] | None = None,
) -> bool:
    """Whether the unanimity rule alone wants more samples for this prompt.

    False when settled (see :func:`settled`) or, given ``n``, when both sides already have n.
    The full policy (both rules, the round schedule) is :func:`further_draws`.
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
    """Samples (teacher, student) of the next round after one: (0, 0) when the policy
    stops (:func:`stop_reason`) or both sides hold ``n``.

    Otherwise ``cfg.step`` more per side, capped at ``n``, except for a prompt whose
    answers so far are all one class on both sides: the unanimity stop can still fire, so
    it is brought to exactly :func:`unanimity_k` per side in one round (a side already
    there draws nothing). Not adaptive: all that is missing.
    """
    n_t, n_s = len(teacher_answers), len(student_answers)
    if not cfg.adaptive:
        return max(0, cfg.n - n_t), max(0, cfg.n - n_s)
    if stop_reason(teacher_answers, student_answers, cfg, choices):
        return 0, 0
    if settled(teacher_answers, student_answers, 1, choices):
        # Not settled at unanimity_k, so some side holds fewer than u answers.
        u = unanimity_k(cfg)
        return max(0, u - n_t), max(0, u - n_s)
    return max(0, min(cfg.step, cfg.n - n_t)), max(0, min(cfg.step, cfg.n - n_s))


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
    are passed in and never redrawn. Rounds as in :func:`pipeline.audit.sample_adaptive`:
    :func:`first_round_draws`, then :func:`further_draws` until it says (0, 0). Returns
    :func:`delta_report` plus ``stopped_early`` (fewer than ``n`` drawn on some side
    because the policy stopped) and ``stop_reason`` ("unanimous", "decided" or None).
    """
    cfg = cfg or DeltaConfig()
    t, s = list(teacher_answers), list(student_answers)
    more_t, more_s = first_round_draws(len(t), len(s), cfg)
    while True:
        t += _draw(draw, "teacher", more_t)
        s += _draw(draw, "student", more_s)
        reason = stop_reason(t, s, cfg, choices)
        if reason:
            break
        more_t, more_s = further_draws(t, s, cfg, choices)
        if (more_t, more_s) == (0, 0):
            break
    report = delta_report(t, s, cfg, choices)
    report["stopped_early"] = reason is not None
    report["stop_reason"] = reason
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
