"""Stage 5, filter: the order of its decisions, dedup, balance caps (fast, no models)."""

from __future__ import annotations

import pyarrow as pa

from pipeline.core.config import FilterConfig, config_from_dict
from pipeline.core.schema import add_columns, make_prompt_row, rows_to_table
from pipeline.runner.stage import ShardTask
from stages.filter import FilterStage, drop_reasons


def _row(i, delta, *, q=None, img=b"img", skill="s", source="src", agreement=1.0):
    return {"id": f"p{i}", "image": {"bytes": img, "path": None}, "question": q or f"Question {i}?",
            "skill": skill, "source": source, "delta": delta, "teacher_agreement": agreement}


def test_thresholds_come_first_and_name_their_reason():
    rows = [_row(0, 0.01), _row(1, 0.5, agreement=0.3), _row(2, 0.5)]
    f = FilterConfig(min_teacher_agreement=0.5)
    assert drop_reasons(rows, f, threshold=0.05) == ["zero_delta", "teacher_disagrees", None]
    # exactly at the threshold is kept: zero-delta means Δ < threshold
    assert drop_reasons([_row(0, 0.05)], FilterConfig(), threshold=0.05) == [None]


def test_dedup_keeps_the_highest_delta_copy_of_a_question_on_the_same_image():
    rows = [_row(0, 0.3, q="What is the value of A?"), _row(1, 0.9, q="what is value of a"),
            _row(2, 0.6, q="What is the value of A?", img=b"other image")]
    assert drop_reasons(rows, FilterConfig(), 0.05) == ["near_duplicate", None, None]
    assert drop_reasons(rows, FilterConfig(dedup=False), 0.05) == [None, None, None]


def test_caps_keep_the_most_informative_prompts_per_skill_and_source():
    rows = [_row(0, 0.2, skill="a"), _row(1, 0.8, skill="a"), _row(2, 0.5, skill="a"),
            _row(3, 0.4, skill="b", source="other"), _row(4, 0.7, skill=None)]
    got = drop_reasons(rows, FilterConfig(max_per_skill=2), 0.05)
    assert got == ["over_skill_cap", None, None, None, None]  # a prompt without skill: "unknown"
    got = drop_reasons(rows, FilterConfig(max_per_source=2), 0.05)
    # src: 0.8 and 0.7 kept first; 0.5, 0.2 capped; "other" has its own quota
    assert got == ["over_source_cap", None, "over_source_cap", None, None]
    # a duplicate is dropped before it could take a cap's place
    dup = rows + [_row(5, 0.9, q="Question 1?", skill="a")]
    got = drop_reasons(dup, FilterConfig(max_per_skill=2), 0.05)
    assert got[1] == "near_duplicate" and got[5] is None and got[2] is None and got[0] == "over_skill_cap"


def test_ties_are_broken_by_a_seeded_shuffle_not_by_input_order():
    rows = [_row(i, 0.5, skill="a") for i in range(20)]
    kept = {seed: [i for i, r in enumerate(drop_reasons(rows, FilterConfig(max_per_skill=5, seed=seed), 0.05))
                   if r is None] for seed in (0, 1)}
    assert kept[0] == [i for i, r in enumerate(drop_reasons(rows, FilterConfig(max_per_skill=5, seed=0), 0.05))
                       if r is None]  # deterministic
    assert kept[0] != kept[1] and kept[0] != list(range(5))


def test_the_stage_counts_every_drop_and_reports_what_it_kept():
    rows = [make_prompt_row(source="src", question=f"Q{i}?", image_bytes=b"x%d" % i, skill="s") for i in range(4)]
    table = add_columns(rows_to_table(rows), {"delta": (pa.float64(), [0.0, 0.3, 0.6, 0.9]),
                                              "teacher_agreement": (pa.float64(), [1.0] * 4)})
    cfg = config_from_dict({"run": {"name": "t"}, "filter": {"max_per_skill": 2}})
    out = FilterStage().process(cfg, None, ShardTask(0, [0]), table)
    assert out.table.column("delta").to_pylist() == [0.6, 0.9]  # input order kept
    assert out.skipped == {"zero_delta": 1, "over_skill_cap": 1}
    assert out.stats == {"kept_per_skill": {"s": 2}, "kept_per_source": {"src": 2}}
    # filter.threshold overrides delta.threshold
    cfg = config_from_dict({"run": {"name": "t"}, "filter": {"threshold": 0.5}})
    assert FilterStage().process(cfg, None, ShardTask(0, [0]), table).table.num_rows == 2


def test_student_solved_is_zero_delta_and_a_confidently_wrong_teacher_can_be_dropped():
    solved = {**_row(0, 0.0, agreement=None), "stop_reason": "student_solved", "teacher_correct": None}
    wrong = {**_row(1, 0.6, agreement=0.9), "teacher_correct": False}
    unsure_wrong = {**_row(2, 0.6, agreement=0.5), "teacher_correct": False}
    right = {**_row(3, 0.6, agreement=1.0), "teacher_correct": True}
    no_gold = {**_row(4, 0.6, agreement=1.0), "teacher_correct": None}
    rows = [solved, wrong, unsure_wrong, right, no_gold]
    # Off by default: only the solved prompt goes, even with a zero threshold (Δ=0 is not < 0).
    assert drop_reasons(rows, FilterConfig(), threshold=0.0) == ["zero_delta"] + [None] * 4
    got = drop_reasons(rows, FilterConfig(wrong_teacher_agreement=0.8), threshold=0.05)
    assert got == ["zero_delta", "teacher_wrong", None, None, None]
    # min_teacher_agreement is checked first and names its own reason
    got = drop_reasons(rows, FilterConfig(wrong_teacher_agreement=0.5, min_teacher_agreement=0.6), 0.05)
    assert got == ["zero_delta", "teacher_wrong", "teacher_disagrees", None, None]
