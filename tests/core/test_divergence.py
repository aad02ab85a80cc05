"""Δ: answer classes, divergences (properties), the bootstrap interval, the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.config import DeltaConfig, SamplingConfig
from pipeline.core.divergence import (
    NO_ANSWER,
    answer_class,
    answer_distribution,
    delta,
    delta_ci,
    delta_report,
    distribution_delta,
    divergence,
    is_zero_delta,
)

# ------------------------------------------------------------------------ answer classes


def test_equivalent_answers_share_a_class() -> None:
    dist = answer_distribution(["45%", "45", "45.0", " 45 percent"])
    assert dist == {"45": 1.0}


def test_none_is_its_own_class() -> None:
    dist = answer_distribution(["12", None, None, "12"])
    assert dist == {"12": 0.5, NO_ANSWER: 0.5}
    assert answer_class(None) == NO_ANSWER


def test_no_answer_sentinel_cannot_be_produced_by_a_real_answer() -> None:
    for text in ["[no answer]", "no answer", "[No Answer]", "(no answer)"]:
        assert answer_class(text) != NO_ANSWER


def test_choices_merge_letter_and_option_text() -> None:
    choices = ["Increasing", "Decreasing"]
    assert delta(["B", "(b)", "Decreasing"], ["decreasing."] * 3, choices=choices) == 0.0


def test_empty_answers_are_an_error() -> None:
    with pytest.raises(ValueError, match="at least one answer"):
        delta([], ["1"])


# ----------------------------------------------------------------- known values


def test_jsd_known_values() -> None:
    assert delta(["a"] * 8, ["b"] * 8) == pytest.approx(1.0)
    assert delta(["a"] * 8, ["a"] * 8) == 0.0
    # A unanimous teacher vs one stray student answer out of 8 (hand-computed, bits).
    m = [15 / 16, 1 / 16]
    expected = 0.5 * (
        (7 / 8) * math.log2((7 / 8) / m[0]) + (1 / 8) * math.log2((1 / 8) / m[1])
    ) + 0.5 * math.log2(1 / m[0])
    assert delta(["a"] * 8, ["a"] * 7 + ["b"]) == pytest.approx(expected)
    assert not is_zero_delta(expected)


def test_tv_and_hellinger_known_values() -> None:
    t, s = ["a"] * 4, ["a", "a", "b", "b"]
    assert delta(t, s, "tv") == pytest.approx(0.5)
    h = math.sqrt(0.5 * ((1 - math.sqrt(0.5)) ** 2 + 0.5))
    assert delta(t, s, "hellinger") == pytest.approx(h)
    assert delta(["a"], ["b"], "hellinger") == pytest.approx(1.0)
    assert delta(["a"], ["b"], "tv") == pytest.approx(1.0)


def test_unknown_metric() -> None:
    with pytest.raises(ValueError, match="unknown"):
        delta(["a"], ["a"], "kl")  # type: ignore[arg-type]


def test_zero_delta_threshold() -> None:
    assert is_zero_delta(0.049)
    assert not is_zero_delta(0.05)
    assert is_zero_delta(0.09, threshold=0.1)


# ------------------------------------------------------------- properties (hypothesis)

LABELS = st.sampled_from(["1", "2", "3", "yes", "no", None])
ANSWERS = st.lists(LABELS, min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(ANSWERS, ANSWERS)
def test_jsd_is_symmetric_bounded_and_below_tv(t, s) -> None:
    d_ts, d_st = delta(t, s), delta(s, t)
    assert d_ts == pytest.approx(d_st, abs=1e-12)
    assert 0.0 <= d_ts <= 1.0
    assert d_ts <= delta(t, s, "tv") + 1e-12


@settings(max_examples=200, deadline=None)
@given(ANSWERS, ANSWERS)
def test_zero_iff_distributions_equal(t, s) -> None:
    p, q = answer_distribution(t), answer_distribution(s)
    keys = set(p) | set(q)
    equal = all(math.isclose(p.get(k, 0.0), q.get(k, 0.0), abs_tol=1e-12) for k in keys)
    for metric in ("jsd", "tv", "hellinger"):
        d = delta(t, s, metric)
        assert (d < 1e-12) == equal, (metric, t, s, d)


@settings(max_examples=100, deadline=None)
@given(ANSWERS, ANSWERS)
def test_tv_and_hellinger_are_symmetric_and_bounded(t, s) -> None:
    for metric in ("tv", "hellinger"):
        d = delta(t, s, metric)
        assert 0.0 <= d <= 1.0 + 1e-12
        assert d == pytest.approx(delta(s, t, metric), abs=1e-12)
    # Hellinger² <= TV <= sqrt(2)·Hellinger (standard bounds).
    h, tv = delta(t, s, "hellinger"), delta(t, s, "tv")
    assert h**2 <= tv + 1e-12
    assert tv <= math.sqrt(2) * h + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
)
def test_batched_divergence_matches_dict_form(a, b) -> None:
    n = max(len(a), len(b))
    a, b = np.array(a + [0.0] * (n - len(a))), np.array(b + [0.0] * (n - len(b)))
    if a.sum() == 0 or b.sum() == 0:
        return
    a, b = a / a.sum(), b / b.sum()
    batch = divergence(np.stack([a, b]), np.stack([b, a]), "jsd")
    single = distribution_delta(
        {str(i): x for i, x in enumerate(a)}, {str(i): x for i, x in enumerate(b)}
    )
    assert batch[0] == pytest.approx(single, abs=1e-12)
    assert batch[1] == pytest.approx(single, abs=1e-12)


# ---------------------------------------------------------------------- uncertainty


def test_bootstrap_interval_is_deterministic_under_a_seed() -> None:
    t, s = ["1"] * 6 + ["2"] * 2, ["1"] * 3 + ["3"] * 5
    a = delta_ci(t, s, seed=7)
    b = delta_ci(t, s, seed=7)
    c = delta_ci(t, s, seed=8)
    assert a == b
    assert a != c


def test_bootstrap_interval_brackets_plausible_values() -> None:
    t, s = ["1"] * 6 + ["2"] * 2, ["1"] * 3 + ["3"] * 5
    lo, hi = delta_ci(t, s, bootstrap=500, ci_level=0.9)
    d = delta(t, s)
    assert 0.0 <= lo < hi <= 1.0
    assert lo <= d <= hi


def test_bootstrap_of_unanimous_agreement_is_a_point() -> None:
    # Resampling a one-class sample can only give that class: no uncertainty left.
    assert delta_ci(["x"] * 8, ["x"] * 8) == (0.0, 0.0)


def test_wider_level_gives_a_wider_interval() -> None:
    t, s = ["1", "2", "1", "3", "1", "2", "1", "1"], ["2", "2", "1", "3", "2", "2", "1", "2"]
    lo90, hi90 = delta_ci(t, s, bootstrap=400, ci_level=0.5, seed=1)
    lo99, hi99 = delta_ci(t, s, bootstrap=400, ci_level=0.99, seed=1)
    assert lo99 <= lo90 and hi99 >= hi90 and (hi99 - lo99) > (hi90 - lo90)


def test_no_bootstrap_gives_the_point_estimate() -> None:
    d = delta(["1", "2"], ["1", "1"])
    assert delta_ci(["1", "2"], ["1", "1"], bootstrap=0) == (d, d)


# ---------------------------------------------------------------------------- report


def test_delta_report_fields() -> None:
    rep = delta_report(["45"] * 6 + ["46"] * 2, ["45%"] * 5 + [None] * 3, DeltaConfig(bootstrap=50))
    assert rep["teacher_majority"] == "45" and rep["teacher_agreement"] == 0.75
    assert rep["student_majority"] == "45" and rep["student_agreement"] == 0.625
    assert rep["distributions"]["student"] == {"45": 0.625, NO_ANSWER: 0.375}
    assert rep["ci_low"] <= rep["delta"] <= rep["ci_high"]
    assert rep["zero_delta"] is False
    assert rep["n_teacher"] == 8 and rep["n_student"] == 8
    assert rep["metric"] == "jsd" and rep["ci_method"] == "percentile-bootstrap"


def test_majority_tie_breaks_by_first_seen() -> None:
    rep = delta_report(["b", "a", "a", "b"], ["a"], DeltaConfig(bootstrap=0))
    assert rep["teacher_majority"] == "b"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"metric": "kl"}, "metric"),
        ({"k": 0}, "k must"),
        ({"ci_level": 1.0}, "ci_level"),
        ({"bootstrap": -1}, "bootstrap"),
        ({"step": 0}, "step"),
        ({"unanimous_k": 0}, "unanimous_k"),
    ],
)
def test_config_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DeltaConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [({"n": 0}, "n must"), ({"temperature": -1}, "temperature"),
                                          ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens")])
def test_sampling_config_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)
