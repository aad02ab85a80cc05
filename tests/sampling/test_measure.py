"""Δ of a table: batched adaptive sampling, the Δ columns, the one summary, the histogram.

The tests drive the measurement with the shared FAKE engine (tests/fakes.py): the policy
and the bookkeeping need controlled answers, which real models with random weights cannot
give. The real engines run the same code in tests/entry/test_audit.py and the stage tests.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.config import DeltaConfig, SamplingConfig
from pipeline.core.divergence import NO_ANSWER
from pipeline.core.reports import save_png
from pipeline.core.schema import add_columns, keep_rows, make_prompt_row, rows_to_table
from pipeline.sampling.draw import PromptSamples
from pipeline.sampling.measure import (
    DELTA_COLUMNS,
    delta_columns,
    delta_histogram,
    measure,
    summarize_table,
    summary_text,
)
from tests.engine_fixtures import image_bytes, make_image
from tests.fakes import ScriptedEngine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table(specs: list[dict]) -> pa.Table:
    return rows_to_table([
        make_prompt_row(
            source=s.get("source", "chartqa"),
            question=s.get("question", f"What is the value of bar {i}?"),
            image_bytes=s.get("image", image_bytes(make_image(i, (64, 48)))),
            answers=s.get("answers"),
            choices=s.get("choices"),
            skill=s.get("skill"),
        )
        for i, s in enumerate(specs)
    ])


def _engines(table: pa.Table, teacher_outputs: list, student_outputs: list):
    ids = table.column("id").to_pylist()
    return (ScriptedEngine.from_script(dict(zip(ids, teacher_outputs))),
            ScriptedEngine.from_script(dict(zip(ids, student_outputs))))


def _summary(table, m, sampling, delta, **kw):
    scored = add_columns(keep_rows(table, m.scored), delta_columns(m))
    return scored, summarize_table(scored, sampling, delta, m.sample_counts(**kw),
                                   m.errors(table.column("id").to_pylist()))


def test_two_rounds_stop_early_on_unanimity_and_summarise() -> None:
    table = _table([
        {"source": "chartqa", "skill": "read", "answers": ["45"]},
        {"source": "chartqa", "skill": "compare", "answers": ["12"]},
        {"source": "docvqa", "skill": "read", "answers": ["Paris"]},
    ])
    teacher, student = _engines(
        table,
        [["<think>bar</think>Answer: 45"], ["Answer: 12"], ["Answer: Paris"]],
        [["The answer is 45%."], ["Answer: 12", "Answer: 13"], ["Answer: Rome"]],
    )
    # unanimous_k=k and step >= n-k: the two-round schedule (the defaults differ).
    sampling = SamplingConfig(n=8)
    delta = DeltaConfig(k=2, unanimous_k=2, step=6, bootstrap=50)
    m = measure(table, teacher, student, sampling, delta)

    # Round 1: one call per model with k samples for everyone; round 2: n-k for the open two.
    ids = table.column("id").to_pylist()
    assert [(c.ids, c.params.n) for c in teacher.calls] == [(ids, 2), (ids[1:], 6)]
    assert [(c.ids, c.params.n) for c in student.calls] == [(ids, 2), (ids[1:], 6)]
    assert teacher.calls[0].params.seed != teacher.calls[1].params.seed  # no replay of round 1
    assert teacher.calls[0].params.temperature == 0.7

    s, r = m.samples, m.reports
    assert s[0].stop_reason == "unanimous" and r[0]["zero_delta"] and len(s[0].teacher) == 2
    assert [p.stop_reason for p in s[1:]] == [None, None]  # 2 v 2 can still meet
    assert r[0]["teacher_majority"] == "45"
    assert not r[1]["zero_delta"] and len(s[1].student) == 8 and r[1]["student_agreement"] == 0.5
    assert r[2]["delta"] == pytest.approx(1.0) and r[2]["student_majority"] == "rome"

    scored, summary = _summary(table, m, sampling, delta)
    assert scored.column_names[-len(DELTA_COLUMNS):] == list(DELTA_COLUMNS)
    o = summary["overall"]
    assert o["prompts"] == 3 and summary["errors"]["count"] == 0
    assert o["zero_delta"] == 1 and o["zero_delta_fraction"] == pytest.approx(0.3333)
    assert summary["by_source"]["chartqa"]["zero_delta_fraction"] == 0.5
    assert summary["by_source"]["docvqa"]["zero_delta_fraction"] == 0.0
    assert summary["by_skill"]["read"]["prompts"] == 2 and summary["by_skill"]["compare"]["zero_delta"] == 0
    assert o["delta_quantiles"]["p100"] == pytest.approx(1.0)
    assert summary["majority_accuracy"] == {"n_with_gold": 3, "teacher": 1.0,
                                            "student": pytest.approx(0.6667)}
    samples = summary["samples"]
    assert samples["teacher_drawn"] == 2 + 8 + 8 and samples["student_drawn"] == 18
    assert samples["full_budget"] == 48 and samples["saved_fraction"] == pytest.approx(12 / 48)
    assert samples["stopped_early"] == {"unanimous": 1, "decided": 0}
    assert "zero-delta: 33.3%" in summary_text(summary)


def test_held_student_answers_are_not_redrawn() -> None:
    table = _table([{}, {}])
    teacher, _ = _engines(table, [["Answer: 7"], ["Answer: 7", "Answer: 8"]], [[], []])
    held = [PromptSamples(student=["7"] * 4, student_texts=["Answer: 7"] * 4)] * 2
    sampling, delta = SamplingConfig(n=4), DeltaConfig(k=2, unanimous_k=2, bootstrap=0)
    m = measure(table, teacher, None, sampling, delta, held=held)
    ids = table.column("id").to_pylist()
    # The second prompt's teacher answers 7, 8 against the student's four 7s are
    # non-zero-delta whatever the teacher's last two draws are (closest: 7 8 7 7 vs
    # 7 7 7 7, JSD 0.138), so it stops after round 1 too.
    assert [(c.ids, c.params.n) for c in teacher.calls] == [(ids, 2)]
    assert m.drawn["student"] == 0
    assert m.samples[0].stop_reason == "unanimous" and m.reports[0]["zero_delta"]
    assert not m.reports[1]["zero_delta"] and len(m.samples[1].teacher) == 2
    assert m.samples[1].stop_reason == "decided"
    _, summary = _summary(table, m, sampling, delta, student_reused=8)
    assert summary["samples"]["student_reused"] == 8
    assert summary["samples"]["stopped_early"] == {"unanimous": 1, "decided": 1}


def test_missing_student_engine_is_a_clear_error() -> None:
    table = _table([{}])
    teacher, _ = _engines(table, [["Answer: 1"]], [[]])
    with pytest.raises(ValueError, match="student engine is needed"):
        measure(table, teacher, None, SamplingConfig(n=4), DeltaConfig(k=2))


def test_a_failing_request_is_counted_not_fatal() -> None:
    table = _table([{}, {"source": "docvqa"}])
    teacher, student = _engines(table, [["Answer: 1"], "ERROR"], [["Answer: 1"], ["Answer: 1"]])
    sampling, delta = SamplingConfig(n=4), DeltaConfig(k=2, unanimous_k=2, bootstrap=0)
    m = measure(table, teacher, student, sampling, delta)
    assert m.scored == [True, False]
    assert m.samples[1].error.startswith("teacher:") and "scripted failure" in m.samples[1].error
    # The failed prompt is not sampled again in round 2 (the other one settled in round 1).
    assert len(student.calls) == 1
    scored, summary = _summary(table, m, sampling, delta)
    assert scored.num_rows == 1 and summary["errors"]["count"] == 1
    assert summary["errors"]["examples"][0]["id"] == table.column("id")[1].as_py()
    assert "docvqa" not in summary["by_source"]  # fractions count scored prompts only
    assert summary["samples"]["full_budget"] == 2 * 4 * 2


def test_truncated_reasoning_counts_as_no_answer() -> None:
    table = _table([{}])
    teacher, student = _engines(
        table, [["CUT:<think>Let me compare the bars one by one"]], [["CUT:<think>The first bar"]])
    sampling, delta = SamplingConfig(n=4), DeltaConfig(k=2, unanimous_k=2, bootstrap=0)
    m = measure(table, teacher, student, sampling, delta)
    assert m.samples[0].teacher == [None, None] and m.reports[0]["teacher_majority"] == NO_ANSWER
    assert m.samples[0].teacher_truncated == 2 and m.samples[0].student_truncated == 2
    _, summary = _summary(table, m, sampling, delta)
    assert summary["no_answer_fraction"] == {"teacher": 1.0, "student": 1.0}
    assert summary["samples"]["teacher_truncated"] == 2


def test_multiple_choice_answers_use_the_row_choices() -> None:
    table = _table([{"choices": ["Increasing", "Decreasing"], "answers": ["B"]}])
    teacher, student = _engines(table, [["Answer: (B)"]], [["Answer: decreasing"]])
    sampling, delta = SamplingConfig(n=4), DeltaConfig(k=2, bootstrap=0)
    m = measure(table, teacher, student, sampling, delta)
    assert m.reports[0]["teacher_majority"] == m.reports[0]["student_majority"] == "B"
    assert m.reports[0]["zero_delta"]
    _, summary = _summary(table, m, sampling, delta)
    assert summary["majority_accuracy"] == {"n_with_gold": 1, "teacher": 1.0, "student": 1.0}


def test_more_rounds_with_exact_bookkeeping() -> None:
    # Default schedule (k=1, unanimous_k=5, step=2): agreeing prompts are brought to 5 in
    # round 2, open ones take 2 more per round, each round one call per distinct count.
    table = _table([{}, {}, {}, {}])
    teacher, student = _engines(
        table,
        [["Answer: 7"], ["Answer: A"], ["CUT:Answer: 3", "Answer: 3"], ["Answer: 1"]],
        [["Answer: 7"], ["Answer: B"], ["Answer: 3", "Answer: 4"], "ERROR"],
    )
    sampling, delta = SamplingConfig(), DeltaConfig(bootstrap=0)
    assert (delta.k, delta.unanimous_k, delta.step, sampling.n) == (1, 5, 2, 8)
    m = measure(table, teacher, student, sampling, delta)
    ids = table.column("id").to_pylist()
    # Round 1: 1 each. Round 2: prompts 0 (7 v 7) and 2 (3 v 3) are still one class: to 5;
    # prompt 1 (A v B) is open: +2. Round 3: prompt 2's student has drawn 4s: +2 for it
    # and prompt 1. Round 4: prompt 1 alone. Prompt 3 failed on the student side in round
    # 1 and is never sampled again.
    expected = [(ids, 1), ([ids[1]], 2), ([ids[0], ids[2]], 4), ([ids[1], ids[2]], 2), ([ids[1]], 2)]
    assert [(c.ids, c.params.n) for c in teacher.calls] == expected
    assert [(c.ids, c.params.n) for c in student.calls] == expected
    assert len({c.params.seed for c in teacher.calls}) == len(teacher.calls)  # no replays
    s, r = m.samples, m.reports
    assert s[0].stop_reason == "unanimous" and len(s[0].teacher) == 5 and r[0]["zero_delta"]
    # A v B: 1 v 1, 3 v 3, 5 v 5 could still meet; 7 v 7 cannot (7A1B vs 1A7B).
    assert s[1].stop_reason == "decided" and len(s[1].teacher) == len(s[1].student) == 7
    assert not r[1]["zero_delta"]
    # Seven 3s against 3 4 3 4 3 4 3: non-zero-delta whatever the last draws are.
    assert s[2].stop_reason == "decided" and not r[2]["zero_delta"]
    assert s[2].teacher == ["3"] * 7 and s[2].student == ["3", "4"] * 3 + ["3"]
    assert s[2].teacher_truncated == 4  # the scripted teacher alternates cut / not cut
    assert s[3].error.startswith("student:") and len(s[3].teacher) == 1 and r[3] is None
    assert m.drawn["teacher"] == sum(len(p.teacher) for p in s)
    assert m.drawn["student"] == sum(len(p.student) for p in s)


def test_histogram_names_the_metric(tmp_path: Path) -> None:
    for metric, label in (("jsd", "Jensen-Shannon"), ("tv", "total variation")):
        fig = delta_histogram([0.0, 0.5, 1.0], 0.05, metric)
        assert label in fig.axes[0].get_xlabel()
        assert save_png(fig, tmp_path / f"{metric}.png").read_bytes().startswith(PNG_MAGIC)


def test_student_solved_prompts_never_reach_the_teacher() -> None:
    table = _table([{"answers": ["7"]}, {}, {"answers": ["7"]}, {"answers": ["7"]}])
    # An LLM rewrite's answer is the teacher's pseudo-label, not gold: never skipped.
    table = add_columns(table, {"origin": (pa.string(), ["seed", "seed", "seed_guided", "seed"])})
    ids = table.column("id").to_pylist()
    teacher, _ = _engines(table, [["Answer: 7"]] * 3 + [["Answer: 3"]], [[]] * 4)
    held = [PromptSamples(student=["7"] * 4, student_texts=["Answer: 7"] * 4)] * 3 + [
        PromptSamples(student=["7", "7", "3", "7"], student_texts=["Answer: 7"] * 4)]
    sampling, delta = SamplingConfig(n=4), DeltaConfig(bootstrap=0)  # skip_solved: 1.0
    m = measure(table, teacher, None, sampling, delta, held=held)

    assert ids[0] not in {i for c in teacher.calls for i in c.ids}  # decided without the teacher
    assert all(set(c.ids) == set(ids[1:]) for c in teacher.calls[:1])  # no gold / not gold / 3 of 4
    s, r = m.samples, m.reports
    assert s[0].stop_reason == "student_solved" and s[0].teacher == [] and s[0].student == ["7"] * 4
    assert r[0]["delta"] == 0.0 and r[0]["zero_delta"] and r[0]["teacher_agreement"] is None
    assert m.scored == [True] * 4 and m.drawn["teacher"] == sum(teacher.drawn.values())

    scored, summary = _summary(table, m, sampling, delta, student_reused=16)
    cols = scored.to_pydict()
    assert cols["teacher_correct"] == [None, None, None, False]  # no gold, not gold, wrong majority
    assert cols["teacher_samples"][0] == [] and cols["stop_reason"][0] == "student_solved"
    assert summary["samples"]["student_solved"] == {"prompts": 1, "teacher_not_drawn": 4}
    assert summary["majority_accuracy"]["n_with_gold"] == 2  # the teacher judged where it answered


def test_with_every_prompt_solved_no_teacher_is_needed() -> None:
    table = _table([{"answers": ["B"], "choices": ["x", "y"]}, {"answers": ["12"]}])
    held = [PromptSamples(student=["B"] * 2, student_texts=["Answer: B"] * 2),
            PromptSamples(student=["12"] * 2, student_texts=["Answer: 12"] * 2)]
    m = measure(table, None, None, SamplingConfig(n=2), DeltaConfig(bootstrap=0), held=held)
    assert [p.stop_reason for p in m.samples] == ["student_solved"] * 2 and m.drawn["teacher"] == 0
    # Off: the same prompts need the teacher.
    with pytest.raises(ValueError, match="teacher engine is needed"):
        measure(table, None, None, SamplingConfig(n=2), DeltaConfig(skip_solved=None), held=held)
    # A held failure is not a solved prompt: it stays an error, unscored.
    failed = [PromptSamples(student=["12"] * 2, error="student: boom")] * 2
    m = measure(table, None, None, SamplingConfig(n=2), DeltaConfig(), held=failed)
    assert m.scored == [False, False] and m.samples[0].stop_reason is None
