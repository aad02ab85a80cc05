"""The adaptive sampling policy: how many answers each model draws before Δ is decided.

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

One rule is decided before any sample is drawn, on the teacher's side only:

* **student_solved** (:func:`student_solved`, ``delta.skip_solved``): the prompt has gold
  answers and the student's mined answers (at least ``n``) match them with accuracy >=
  the bound (1.0: every one). The teacher is never asked: either it agrees (zero-delta)
  or it is wrong, and distilling a wrong teacher teaches the wrong answer; neither is a
  prompt worth keeping. Such a prompt holds no teacher samples and Δ = 0 by definition
  (pipeline/sampling/measure.py). Unlike the two rules above it is not exact with respect
  to full-``n`` sampling: a teacher that is right but less sure than the student (say 7
  of 8) has Δ >= threshold under full ``n``; benchmarks/teacher_cost.py measures how
  often. A prompt without gold, or whose student answers were not mined, is never
  skipped this way.

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

A stage runs the policy in batched rounds (:func:`pipeline.sampling.draw.sample_adaptive`):

0. :func:`student_solved` sets aside the prompts the teacher is not asked about
   (pipeline/sampling/measure.py: they never reach the engine);
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

The policy's settings come from two config blocks: ``n`` from ``sampling`` (the full
budget), the rest from ``delta`` (:class:`AdaptivePolicy` joins them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb

import numpy as np

from pipeline.core.answers import MatchMode, answers_match
from pipeline.core.config import METRICS, DeltaConfig, Metric, SamplingConfig
from pipeline.core.divergence import Answer, answer_class, answer_counts, delta_report, divergence


@dataclass(frozen=True)
class AdaptivePolicy:
    """The policy's knobs: the budget ``n`` (sampling.n) and delta.{adaptive,k,step,...}.

    ``skip_solved`` is delta.skip_solved (None here: off, so a policy built by hand never
    skips); ``grading`` is how answers are matched to gold for it (mine.grading).
    """

    n: int = 8
    threshold: float = 0.05
    metric: Metric = "jsd"
    adaptive: bool = True
    k: int = 1
    step: int = 2
    unanimous_k: int = 5
    skip_solved: float | None = None
    grading: MatchMode = "relaxed"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not 1 <= self.k <= self.n:
            raise ValueError(f"delta.k must be in [1, sampling.n={self.n}], got {self.k}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown Δ metric {self.metric!r}: use one of {METRICS}")

    @classmethod
    def of(cls, sampling: SamplingConfig, delta: DeltaConfig,
           grading: MatchMode = "relaxed") -> AdaptivePolicy:
        return cls(n=sampling.n, threshold=delta.threshold, metric=delta.metric,
                   adaptive=delta.adaptive, k=delta.k, step=delta.step,
                   unanimous_k=delta.unanimous_k, skip_solved=delta.skip_solved,
                   grading=grading)


# ------------------------------------------------------------------ before any draw

STUDENT_SOLVED = "student_solved"


def student_solved(
    student_answers: Sequence[Answer],
    golds: Sequence[str] | None,
    policy: AdaptivePolicy,
    choices: Sequence[str] | None = None,
) -> bool:
    """Whether the teacher is skipped: gold given, at least ``n`` student answers, and
    their accuracy against gold (``policy.grading``) >= ``policy.skip_solved``.

    Decided on the student's answers alone, before any teacher sample (see the module
    doc). False when the rule is off, without gold, or with fewer than ``n`` answers
    (the student's were not mined: they would be drawn here, after the decision).
    """
    if policy.skip_solved is None or not golds or len(student_answers) < policy.n:
        return False
    right = sum(a is not None and answers_match(a, list(golds), mode=policy.grading,
                                                choices=choices)
                for a in student_answers)
    # Compared as counts, so a bound like 7/8 is met by exactly 7 of 8 despite rounding.
    return right >= policy.skip_solved * len(student_answers) - 1e-9


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
    policy: AdaptivePolicy,
    choices: Sequence[str] | None = None,
) -> bool | None:
    """:func:`fixed_decision_counts` on the answers held so far (the policy's n, threshold, metric)."""
    tc = answer_counts(teacher_answers, choices)
    sc = answer_counts(student_answers, choices)
    keys = list(dict.fromkeys([*tc, *sc]))
    return fixed_decision_counts(
        [tc.get(c, 0) for c in keys], [sc.get(c, 0) for c in keys], policy.n,
        policy.threshold, policy.metric,
    )


def unanimity_k(policy: AdaptivePolicy) -> int:
    """Answers per side the unanimity stop needs: ``unanimous_k``, at least k, at most n."""
    return max(policy.k, min(policy.unanimous_k, policy.n))


def stop_reason(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    policy: AdaptivePolicy,
    choices: Sequence[str] | None = None,
) -> str | None:
    """Why the adaptive policy stops here, short of ``n`` on some side; None: it does not.

    "unanimous": :func:`settled` with :func:`unanimity_k`; "decided": :func:`fixed_decision`
    is not None. None as well when the policy is off or both sides already hold ``n``.
    """
    if not policy.adaptive or (len(teacher_answers) >= policy.n and len(student_answers) >= policy.n):
        return None
    if settled(teacher_answers, student_answers, unanimity_k(policy), choices):
        return "unanimous"
    if fixed_decision(teacher_answers, student_answers, policy, choices) is not None:
        return "decided"
    return None


def first_round_draws(
    n_teacher_have: int, n_student_have: int, policy: AdaptivePolicy
) -> tuple[int, int]:
    """Samples (teacher, student) to draw in the first batched round."""
    target = policy.k if policy.adaptive else policy.n
    return max(0, target - n_teacher_have), max(0, target - n_student_have)


def further_draws(
    teacher_answers: Sequence[Answer],
    student_answers: Sequence[Answer],
    policy: AdaptivePolicy,
    choices: Sequence[str] | None = None,
) -> tuple[int, int]:
    """Samples (teacher, student) of the next round after one: (0, 0) when the policy
    stops (:func:`stop_reason`) or both sides hold ``n``.

    Otherwise ``policy.step`` more per side, capped at ``n``, except for a prompt whose
    answers so far are all one class on both sides: the unanimity stop can still fire, so
    it is brought to exactly :func:`unanimity_k` per side in one round (a side already
    there draws nothing). Not adaptive: all that is missing.
    """
    n_t, n_s = len(teacher_answers), len(student_answers)
    if not policy.adaptive:
        return max(0, policy.n - n_t), max(0, policy.n - n_s)
    if stop_reason(teacher_answers, student_answers, policy, choices):
        return 0, 0
    if settled(teacher_answers, student_answers, 1, choices):
        # Not settled at unanimity_k, so some side holds fewer than u answers.
        u = unanimity_k(policy)
        return max(0, u - n_t), max(0, u - n_s)
    return max(0, min(policy.step, policy.n - n_t)), max(0, min(policy.step, policy.n - n_s))


def adaptive_delta(
    draw: Callable[[str, int], list[Answer]],
    policy: AdaptivePolicy | None = None,
    delta_cfg: DeltaConfig | None = None,
    choices: Sequence[str] | None = None,
    *,
    teacher_answers: Sequence[Answer] = (),
    student_answers: Sequence[Answer] = (),
) -> dict:
    """Run the adaptive policy for one prompt through ``draw(model, m) -> m answers``.

    ``model`` is "teacher" or "student". Answers already held (the student's from ``mine``)
    are passed in and never redrawn. Rounds as in :func:`pipeline.sampling.draw.sample_adaptive`:
    :func:`first_round_draws`, then :func:`further_draws` until it says (0, 0). Returns
    :func:`delta_report` plus ``stopped_early`` (fewer than ``n`` drawn on some side
    because the policy stopped) and ``stop_reason`` ("unanimous", "decided" or None).
    """
    policy = policy or AdaptivePolicy()
    delta_cfg = delta_cfg or DeltaConfig(threshold=policy.threshold, metric=policy.metric)
    t, s = list(teacher_answers), list(student_answers)
    more_t, more_s = first_round_draws(len(t), len(s), policy)
    while True:
        t += _draw(draw, "teacher", more_t)
        s += _draw(draw, "student", more_s)
        reason = stop_reason(t, s, policy, choices)
        if reason:
            break
        more_t, more_s = further_draws(t, s, policy, choices)
        if (more_t, more_s) == (0, 0):
            break
    report = delta_report(t, s, delta_cfg, choices)
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
