"""The adaptive sampling policy: unanimity, the exact fixed-decision stop, round planning."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.config import METRICS, DeltaConfig, SamplingConfig
from pipeline.core.divergence import delta, divergence, is_zero_delta
from pipeline.sampling.policy import (
    AdaptivePolicy,
    adaptive_delta,
    first_round_draws,
    fixed_decision,
    fixed_decision_counts,
    further_draws,
    settled,
    stop_reason,
    student_solved,
    unanimity_k,
)

# -------------------------------------------------------------------------- adaptive


def test_settled_needs_k_unanimous_answers_on_the_same_class() -> None:
    assert settled(["5", "5.0", "5"], ["5%", "5", "5"], k=3)
    assert not settled(["5", "5"], ["5", "5", "5"], k=3)  # too few teacher answers
    assert not settled(["5", "5", "6"], ["5", "5", "5"], k=3)  # teacher not unanimous
    assert not settled(["5"] * 3, ["6"] * 3, k=3)  # unanimous, different answers
    assert settled([None] * 3, [None] * 3, k=3)  # both give no answer: Δ = 0 either way


def test_student_answers_from_mine_must_all_agree() -> None:
    # The student holds 8 answers: one stray one keeps the prompt open.
    assert not settled(["5"] * 3, ["5"] * 7 + ["6"], k=3)
    assert settled(["5"] * 3, ["5"] * 8, k=3)


def test_round_planning_fresh_and_reused_student() -> None:
    # Two rounds, unanimity at k: the previous policy's planning (step >= n - k), plus the
    # fixed-decision stop, which none of these prompts meets yet.
    cfg = AdaptivePolicy(n=8, k=3, unanimous_k=3, step=5)
    assert first_round_draws(0, 0, cfg) == (3, 3)
    assert first_round_draws(0, 8, cfg) == (3, 0)  # student reused from mine
    assert first_round_draws(0, 0, AdaptivePolicy(n=8, k=3, adaptive=False)) == (8, 8)
    assert further_draws(["1"] * 3, ["1"] * 3, cfg) == (0, 0)
    assert further_draws(["1"] * 3, ["2"] * 3, cfg) == (5, 5)
    assert further_draws(["1"] * 3, ["1"] * 7 + ["2"], cfg) == (5, 0)
    assert further_draws(["1"] * 3, ["1"] * 3, AdaptivePolicy(n=8, k=3, adaptive=False)) == (5, 5)


def test_round_planning_multi_round() -> None:
    cfg = AdaptivePolicy(n=8, k=1, unanimous_k=5, step=2)
    assert first_round_draws(0, 0, cfg) == (1, 1)
    # Both still all one class: brought to exactly unanimous_k in one round.
    assert further_draws(["1"], ["1"], cfg) == (4, 4)
    assert further_draws(["1"], ["1"] * 8, cfg) == (4, 0)
    assert further_draws(["1"] * 5, ["1"] * 5, cfg) == (0, 0)  # settled at 5
    # Open prompts take `step` more, capped at n.
    assert further_draws(["1", "2"], ["1", "2"], cfg) == (2, 2)
    assert further_draws(["1", "2"] * 3 + ["1"], ["2", "1"] * 3 + ["2"], cfg) == (1, 1)
    assert further_draws(["1", "2"] * 4, ["1", "2"] * 4, cfg) == (0, 0)  # both full
    # A fixed decision stops the prompt: one teacher "A" against eight student "B".
    assert further_draws(["A"], ["B"] * 8, cfg) == (0, 0)


def test_unanimity_k_is_clamped_to_k_and_n() -> None:
    assert unanimity_k(AdaptivePolicy(n=8, k=1, unanimous_k=5)) == 5
    assert unanimity_k(AdaptivePolicy(n=4, k=2, unanimous_k=5)) == 4
    assert unanimity_k(AdaptivePolicy(n=8, k=3, unanimous_k=2)) == 3


# ---------------------------------------------------------------- fixed decision


def _all_completions(counts: list[int], r: int, new: int) -> np.ndarray:
    """Every count vector reachable by assigning each of ``r`` draws, one by one, to one of
    the observed classes or ``new`` new ones (a naive loop over all assignments)."""
    out = set()
    width = len(counts) + new
    for assignment in itertools.product(range(width), repeat=r):
        v = list(counts) + [0] * new
        for c in assignment:
            v[c] += 1
        out.add(tuple(v))
    return np.array(sorted(out), dtype=float)


def _brute_range(a: list[int], b: list[int], n: int, metric: str = "jsd") -> tuple[float, float]:
    """(min, max) of Δ over every completion of both sides to n answers, by enumeration."""
    # Up to 2 new classes per side, and they may be shared: a pool of 4 new classes, each
    # usable by either side, covers "exclusive to one side" and "shared" alike.
    ta, tb = _all_completions(a, max(0, n - sum(a)), 4), _all_completions(b, max(0, n - sum(b)), 4)
    p = ta / max(n, sum(a))
    q = tb / max(n, sum(b))
    d = divergence(p[:, None, :], q[None, :, :], metric)
    return float(d.min()), float(d.max())


def _jsd2(p: float, q: float) -> float:
    """JSD (bits) of (p, 1-p) vs (q, 1-q), by the definition."""

    def kl(x, m):
        return sum(a * math.log2(a / b) for a, b in zip(x, m) if a > 0)

    pp, qq = (p, 1 - p), (q, 1 - q)
    m = [(a + b) / 2 for a, b in zip(pp, qq)]
    return 0.5 * kl(pp, m) + 0.5 * kl(qq, m)


def test_fixed_decision_one_stray_teacher_against_unanimous_student() -> None:
    # Student holds 8 x "B"; the teacher's first draw is "A". The closest completion gives
    # the teacher 7 more "B": 1A7B vs 8B, JSD = 0.0655 (hand-computed) >= 0.05; any other
    # completion is further away. Non-zero-delta whatever comes: decided after one draw.
    assert _jsd2(1 / 8, 0.0) == pytest.approx(0.06550784, abs=1e-8)
    lo, hi = _brute_range([1, 0], [0, 8], 8)
    assert lo == pytest.approx(_jsd2(1 / 8, 0.0)) and hi == pytest.approx(1.0)
    assert fixed_decision_counts([1, 0], [0, 8], 8) is False
    assert fixed_decision(["A"], ["B"] * 8, AdaptivePolicy()) is False
    # At threshold 0.07 the same prompt is still open (1A7B vs 8B would be zero-delta).
    assert fixed_decision_counts([1, 0], [0, 8], 8, threshold=0.07) is None


def test_fixed_decision_three_against_three_is_open() -> None:
    # 3A vs 3B with 5 draws left each: 3A5B vs 5A3B gives JSD 0.0456 < 0.05 (and 4A4B vs
    # 4A4B gives 0), so zero-delta is still possible; 3A5X vs 3B5Y is far apart.
    # m = (1/2, 1/2), so JSD = 1 - H(3/8) bits.
    h = -(3 / 8) * math.log2(3 / 8) - (5 / 8) * math.log2(5 / 8)
    assert _jsd2(3 / 8, 5 / 8) == pytest.approx(1 - h) == pytest.approx(0.045566, abs=1e-6)
    assert delta(["A"] * 3 + ["B"] * 5, ["A"] * 5 + ["B"] * 3) == pytest.approx(_jsd2(3 / 8, 5 / 8))
    assert _brute_range([3, 0], [0, 3], 8)[0] == pytest.approx(0.0, abs=1e-12)
    assert fixed_decision_counts([3, 0], [0, 3], 8) is None
    # 6A vs 6B with 2 left each: the closest is 6A2B vs 2A6B, JSD 0.189 -> decided.
    assert _brute_range([6, 0], [0, 6], 8)[0] == pytest.approx(_jsd2(6 / 8, 2 / 8))
    assert fixed_decision_counts([6, 0], [0, 6], 8) is False
    assert fixed_decision_counts([5, 0], [0, 5], 8) is None  # 5A3B vs 3A5B: 0.0456


def test_fixed_decision_certainly_zero_delta() -> None:
    # Teacher 8 x "A", student 7 x "A" with one draw left: the worst completion is one
    # stray, JSD 0.0655: certainly zero-delta at threshold 0.1, open at 0.05.
    assert _brute_range([8], [7], 8)[1] == pytest.approx(_jsd2(1.0, 7 / 8))
    assert fixed_decision_counts([8], [7], 8, threshold=0.1) is True
    assert fixed_decision_counts([8], [7], 8, threshold=0.05) is None
    # TV: 8A vs 7A + 1 left: at most 1/8.
    assert _brute_range([8], [7], 8, "tv") == pytest.approx((0.0, 0.125))
    assert fixed_decision_counts([8], [7], 8, 0.2, "tv") is True


def test_fixed_decision_edge_cases() -> None:
    # Nothing held: anything can happen.
    assert fixed_decision_counts([], [], 8) is None
    assert _brute_range([], [], 3) == pytest.approx((0.0, 1.0))
    # Both full: the decision is the plug-in one.
    assert fixed_decision_counts([8, 0], [0, 8], 8) is False
    assert fixed_decision_counts([4, 4], [4, 4], 8) is True
    # A side holding more than n keeps its counts: 10 x "A" vs 8 x "A" + 2 x "B".
    assert _brute_range([10, 0], [8, 2], 8)[0] == pytest.approx(delta(["A"] * 10, ["A"] * 8 + ["B"] * 2))
    # Class order and unobserved (0, 0) classes do not matter.
    assert fixed_decision_counts([0, 1, 0], [8, 0, 0], 8) is False
    with pytest.raises(ValueError, match="aligned"):
        fixed_decision_counts([1], [1, 2], 8)
    with pytest.raises(ValueError, match="unknown"):
        fixed_decision_counts([1], [1], 8, metric="kl")  # type: ignore[arg-type]


@pytest.mark.parametrize("metric", METRICS)
def test_fixed_decision_matches_brute_force(metric) -> None:
    rng = np.random.default_rng({"jsd": 0, "tv": 1, "hellinger": 2}[metric])
    cases = 0
    while cases < 40:
        n = int(rng.integers(1, 5))
        k = int(rng.integers(1, 4))
        a = [int(x) for x in rng.integers(0, 3, size=k)]
        b = [int(x) for x in rng.integers(0, 3, size=k)]
        if sum(a) > n + 1 or sum(b) > n + 1 or (n - sum(a)) + (n - sum(b)) > 6:
            continue
        cases += 1
        blo, bhi = _brute_range(a, b, n, metric)
        for thr in (0.05, 0.1, 0.3):
            want = True if bhi < thr else False if blo >= thr else None
            got = fixed_decision_counts(a, b, n, thr, metric)
            # The fixed-decision test keeps a 1e-9 margin; no brute-force value is that close.
            assert got == want, (a, b, n, thr)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from("ABC"), min_size=0, max_size=8),
    st.lists(st.sampled_from("ABC"), min_size=0, max_size=8),
    st.sampled_from(METRICS),
    st.sampled_from([0.05, 0.1, 0.2]),
    st.randoms(use_true_random=False),
)
def test_decided_prompts_keep_their_decision_under_random_completions(t, s, metric, thr, rnd) -> None:
    cfg = AdaptivePolicy(n=8, metric=metric, threshold=thr)
    verdict = fixed_decision(t, s, cfg)
    if verdict is None:
        return
    pool = ["A", "B", "C", "D", "E", None]  # observed classes, new ones, "no answer"
    for _ in range(30):
        tt = t + [rnd.choice(pool) for _ in range(8 - len(t))]
        ss = s + [rnd.choice(pool) for _ in range(8 - len(s))]
        assert is_zero_delta(delta(tt, ss, metric), thr) == verdict, (t, s, tt, ss)


def test_stop_reason() -> None:
    cfg = AdaptivePolicy(n=8, k=1, unanimous_k=3, step=2)
    assert stop_reason(["1"] * 3, ["1"] * 3, cfg) == "unanimous"
    assert stop_reason(["1"] * 2, ["1"] * 2, cfg) is None  # short of unanimous_k
    assert stop_reason(["A"], ["B"] * 8, cfg) == "decided"
    assert stop_reason(["A"], ["B"] * 8, AdaptivePolicy(adaptive=False)) is None
    assert stop_reason(["1", "2"] * 4, ["1", "2"] * 4, cfg) is None  # full: not early


class _Sampler:
    """A draw callback over fixed answer streams (no model: the policy is the unit here)."""

    def __init__(self, teacher: list, student: list) -> None:
        self.streams = {"teacher": list(teacher), "student": list(student)}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, model: str, m: int) -> list:
        self.calls.append((model, m))
        out, self.streams[model] = self.streams[model][:m], self.streams[model][m:]
        return out


# The next three tests pin unanimous_k=k and a step >= n-k: the previous two-round policy
# (the defaults are now k=1, unanimous_k=5, step=2); none of their prompts is decided early.


def test_adaptive_stops_early_when_both_unanimous() -> None:
    draw = _Sampler(["7"] * 8, ["7"] * 8)
    rep = adaptive_delta(draw, AdaptivePolicy(n=8, k=3, unanimous_k=3, step=5))
    assert rep["stopped_early"] and rep["zero_delta"] and rep["delta"] == 0.0
    assert rep["stop_reason"] == "unanimous"
    assert draw.calls == [("teacher", 3), ("student", 3)]
    assert rep["n_teacher"] == 3 and rep["n_student"] == 3


def test_adaptive_continues_to_n_on_disagreement() -> None:
    draw = _Sampler(["7"] * 8, ["7", "7", "8"] + ["7"] * 5)
    rep = adaptive_delta(draw, AdaptivePolicy(n=8, k=3, unanimous_k=3, step=5))
    assert not rep["stopped_early"] and rep["stop_reason"] is None
    assert draw.calls == [("teacher", 3), ("student", 3), ("teacher", 5), ("student", 5)]
    assert rep["n_teacher"] == 8 and rep["n_student"] == 8
    assert rep["delta"] == pytest.approx(delta(["7"] * 8, ["7"] * 7 + ["8"]))


def test_adaptive_reuses_student_answers_and_never_redraws_them() -> None:
    cfg = AdaptivePolicy(n=8, k=2, unanimous_k=2, step=6)
    draw = _Sampler(["7"] * 8, [])
    rep = adaptive_delta(draw, cfg, student_answers=["7"] * 8)
    assert draw.calls == [("teacher", 2)]
    assert rep["stopped_early"] and rep["n_student"] == 8

    draw = _Sampler(["7"] * 8, [])
    rep = adaptive_delta(draw, cfg, student_answers=["7"] * 7 + ["9"])
    assert draw.calls == [("teacher", 2), ("teacher", 6)]
    assert not rep["stopped_early"] and rep["n_teacher"] == 8


def test_adaptive_stops_on_a_fixed_decision_after_one_teacher_draw() -> None:
    draw = _Sampler(["A"] * 8, [])
    rep = adaptive_delta(draw, AdaptivePolicy(n=8, k=1), student_answers=["B"] * 8)
    assert draw.calls == [("teacher", 1)]
    assert rep["stopped_early"] and rep["stop_reason"] == "decided"
    assert not rep["zero_delta"] and rep["n_teacher"] == 1 and rep["delta"] == 1.0


def test_adaptive_multi_round_schedule() -> None:
    # Default policy (k=1, unanimous_k=5, step=2). Agreeing models: 1 each, then up to 5.
    draw = _Sampler(["7"] * 8, ["7"] * 8)
    rep = adaptive_delta(draw, AdaptivePolicy())
    assert draw.calls == [("teacher", 1), ("student", 1), ("teacher", 4), ("student", 4)]
    assert rep["stop_reason"] == "unanimous" and rep["zero_delta"]
    # Teacher "A" vs student "B" throughout: open while the two could still meet
    # (1 v 1, 3 v 3, 5 v 5: 5A3B vs 3A5B is 0.0456), decided at 7 v 7 (7A1B vs 1A7B).
    draw = _Sampler(["A"] * 8, ["B"] * 8)
    rep = adaptive_delta(draw, AdaptivePolicy())
    assert [m for model, m in draw.calls if model == "teacher"] == [1, 2, 2, 2]
    assert rep["stop_reason"] == "decided" and not rep["zero_delta"]
    assert rep["n_teacher"] == rep["n_student"] == 7
    # A stray in the catch-up round: no unanimity, on in steps of 2 to n, never decided
    # (the teacher can still add the stray class until both sides are full).
    draw = _Sampler(["7"] * 8, ["7", "7", "8"] + ["7"] * 5)
    rep = adaptive_delta(draw, AdaptivePolicy())
    assert [m for model, m in draw.calls if model == "student"] == [1, 4, 2, 1]
    assert not rep["stopped_early"] and rep["n_teacher"] == rep["n_student"] == 8


def test_non_adaptive_draws_n_at_once() -> None:
    draw = _Sampler(["7"] * 8, ["7"] * 8)
    rep = adaptive_delta(draw, AdaptivePolicy(n=8, k=3, adaptive=False))
    assert draw.calls == [("teacher", 8), ("student", 8)]
    assert not rep["stopped_early"]


def test_draw_returning_the_wrong_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="returned 1 answers, expected 3"):
        adaptive_delta(lambda model, m: ["1"], AdaptivePolicy(n=8, k=3))


# ------------------------------------------------------------------ student_solved


def test_student_solved_needs_gold_n_answers_and_the_accuracy_bound() -> None:
    on = AdaptivePolicy(n=8, skip_solved=1.0)
    assert student_solved(["45"] * 8, ["45"], on)
    assert student_solved(["45", "45%", "45.0", "45", "45", "45", "45", "45"], ["45"], on)  # graded, not spelled
    assert not student_solved(["45"] * 7 + ["50"], ["45"], on)  # one wrong: not unanimous
    assert not student_solved(["45"] * 7 + [None], ["45"], on)  # no answer counts as wrong
    assert not student_solved(["45"] * 8, [], on) and not student_solved(["45"] * 8, None, on)  # no gold
    assert not student_solved(["45"] * 4, ["45"], on)  # fewer than n: not mine's full draw
    assert not student_solved(["45"] * 8, ["45"], AdaptivePolicy(n=8))  # off unless configured
    # A lower bound counts answers: 7 of 8 meets 0.875 exactly, 6 of 8 does not.
    seven = AdaptivePolicy(n=8, skip_solved=0.875)
    assert student_solved(["45"] * 7 + ["9"], ["45"], seven)
    assert not student_solved(["45"] * 6 + ["9"] * 2, ["45"], seven)
    # Letters against options; the grading mode is the policy's (mine.grading).
    assert student_solved(["B"] * 8, ["red"], on, choices=["blue", "red"])
    assert student_solved(["3.9"] * 8, ["4"], on)  # relaxed: within 5%
    assert not student_solved(["3.9"] * 8, ["4"], AdaptivePolicy(n=8, skip_solved=1.0, grading="exact"))


def test_the_policy_takes_skip_solved_and_grading_from_config() -> None:
    p = AdaptivePolicy.of(SamplingConfig(n=4), DeltaConfig(), "anls")
    assert (p.n, p.skip_solved, p.grading) == (4, 1.0, "anls")  # on by default in the config
    assert AdaptivePolicy.of(SamplingConfig(), DeltaConfig(skip_solved=None)).skip_solved is None
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="skip_solved"):
            DeltaConfig(skip_solved=bad)
