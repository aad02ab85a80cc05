"""Evaluation: per-row scoring in each source's match mode, skips, and the CLI on real models."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.core.errors import UsageError
from pipeline.core.schema import make_prompt_row, prompt_schema
from pipeline.sampling.prompts import format_question, requests_from_table
from seeds.chartworld.spec import WorldConfig
from tests.engine_fixtures import image_bytes, make_image
from tests.fakes import ScriptedEngine, text_of
from tools.train_toys import heldout_rows
from trainer.eval import EvalConfig, EvalReport, engine_generator, evaluate, format_table, main

PNG = image_bytes(make_image(0, (32, 32)))


def _row(source, question, answers, skill, image=PNG):
    r = make_prompt_row(source=source, question=question, image_bytes=image, answers=answers, skill=skill)
    if image is None:
        r["image"] = None
    return r


def _scripted(replies: dict[str, str | None], seen: list[str]):
    """A generator answering each question from a table (the scoring path is what is tested)."""

    def gen(questions, images):
        seen.extend(questions)
        assert all(im is None or im.mode == "RGB" for im in images)
        return [(replies[q], False) for q in questions]

    return gen


def test_rows_are_scored_in_their_sources_mode_and_unaskable_rows_are_counted():
    rows = [
        _row("charts", "c1", ["10"], "arithmetic"),
        _row("charts", "bad image", ["1"], "retrieval", image=b"not an image"),
        _row("charts", "c2", ["5"], "retrieval"),
        _row("docs", "d1", ["hello world"], "text"),
        _row("docs", "no gold", [], "text"),
        _row("docs", "d2", ["Invoice"], "text"),
    ]
    replies = {"c1": "<think>7+3</think>Answer: 10.3", "c2": "Answer: 7",
               "d1": "Answer: hello wrld", "d2": None}  # d2: the engine failed
    seen: list[str] = []
    cfg = EvalConfig(batch_size=2, match_by_source={"docs": "anls"}, instruction=None)
    report = evaluate(_scripted(replies, seen), rows, cfg)

    assert seen == ["c1", "c2", "d1", "d2"]  # skipped rows are never asked
    assert report.skipped == {"corrupt_image": 1, "no_gold": 1}
    assert report.errors == 1 and report.no_answer == 0
    anls_d1 = 1 - 1 / 11  # one edit in "hello world"
    assert report.overall[1] == 4
    assert report.overall[0] == pytest.approx(1.0 + 0.0 + anls_d1 + 0.0)
    assert EvalReport.acc(report.by_source["charts"]) == 0.5  # 10.3 is within 5% of 10
    assert EvalReport.acc(report.by_source["docs"]) == pytest.approx(anls_d1 / 2)
    assert report.by_skill["text"][1] == 2 and report.by_skill["arithmetic"] == (1.0, 1)
    assert report.match_modes == {"charts": "relaxed", "docs": "anls"}
    assert [p["score"] for p in report.predictions] == [1.0, 0.0, round(anls_d1, 4), 0.0]
    assert [p["correct"] for p in report.predictions] == [True, False, True, False]

    # The same rows scored relaxed everywhere: a near-miss on a document is simply wrong.
    relaxed = evaluate(_scripted(replies, []), rows, EvalConfig(batch_size=2, instruction=None))
    assert relaxed.by_source["docs"] == (0.0, 2)
    summary = relaxed.summary()
    assert summary["overall"] == 0.25 and summary["n"] == 4 and summary["errors"] == 1


def test_a_multiple_choice_row_is_asked_exactly_as_mine_delta_and_opd_ask_it():
    """Regression: eval once built ``question + "\\n" + instruction`` and dropped the
    options every other consumer sends; now all of them use the one prompt builder."""
    row = make_prompt_row(source="ai2d", question="Which stage comes after the larva?",
                          image_bytes=PNG, answers=["C"], choices=["egg", "adult", "pupa"])
    table = pa.Table.from_pylist([row], schema=prompt_schema())
    instruction = "Answer with the option's letter."
    engine = ScriptedEngine(lambda request, k: "Answer: C")
    cfg = EvalConfig(instruction=instruction, batch_size=4)
    report = evaluate(engine_generator(engine, cfg), table.to_pylist(), cfg)
    (asked,) = engine.calls[0].requests
    (measured,) = requests_from_table(table, instruction)  # what mine and delta send
    assert asked.messages == measured.messages
    text = text_of(asked)
    assert "Options:\nA. egg\nB. adult\nC. pupa" in text and text.endswith(instruction)
    # OPD and off-policy fine-tuning encode the same text
    assert format_question(row["question"], row["choices"], instruction) == text
    assert report.overall == (1.0, 1)


def test_limit_text_only_rows_and_generator_contract():
    rows = [_row("t", f"q{i}", [str(i)], "retrieval", image=None) for i in range(5)]
    seen: list[str] = []
    replies = {f"q{i}\nAnswer briefly.": f"Answer: {i}" for i in range(5)}
    report = evaluate(_scripted(replies, seen), rows,
                      EvalConfig(limit=3, instruction="Answer briefly."))
    assert seen == [f"q{i}\nAnswer briefly." for i in range(3)]
    assert report.overall == (3.0, 3)

    with pytest.raises(RuntimeError, match="2 completions for 3 prompts"):
        evaluate(lambda qs, ims: [("Answer: 0", False)] * 2, rows[:3])


def test_unknown_match_modes_are_refused():
    with pytest.raises(ValueError, match="match_mode: unknown match mode 'fuzzy'"):
        EvalConfig(match_mode="fuzzy")
    with pytest.raises(ValueError, match=r"match_by_source\['docs'\]"):
        EvalConfig(match_by_source={"docs": "ansl"})
    with pytest.raises(UsageError, match="SOURCE=MODE"):
        main(["--model", "me/m", "--data", "d", "--match", "docs=ansl"])
    with pytest.raises(UsageError, match="two models are named"):
        main(["--model", "a=x", "--model", "a=y", "--data", "d"])
    with pytest.raises(UsageError, match="no such model folder './nowhere'"):
        main(["--model", "./nowhere", "--data", "d"])


def test_tables_show_each_model_per_skill_and_per_source():
    a = EvalReport(overall=(3.0, 4), by_skill={"x": (1.0, 2), "y": (2.0, 2)}, by_source={"s": (3.0, 4)})
    b = EvalReport(overall=(1.0, 4), by_skill={"x": (1.0, 2)}, by_source={"s": (1.0, 4)})
    table = format_table({"before": a, "after": b})
    assert "| skill | n | before | after |" in table
    assert "| x | 2 | 50.0% | 50.0% |" in table and "| y | 2 | 100.0% | - |" in table
    assert "| **overall** | 4 | **75.0%** | **25.0%** |" in table
    assert "| s | 4 | 75.0% | 25.0% |" in format_table({"before": a, "after": b}, by="source")


@pytest.mark.slow
def test_cli_compares_the_chartworld_teacher_and_student(tmp_path):
    """Before/after comparison on real models: the toy teacher does arithmetic, the student
    does not (benchmarks/results/chartworld_models.md: 100% vs 0.7%)."""

    rows = [r for r in heldout_rows(WorldConfig(), 60, seed=2) if r["skill"] in ("arithmetic", "retrieval")][:16]
    table = pa.Table.from_pylist(
        [make_prompt_row(source=r["type"], question=r["question"], image_bytes=r["image"],
                         answers=[r["answer"]], skill=r["skill"]) for r in rows], schema=prompt_schema())
    (tmp_path / "heldout").mkdir()
    pq.write_table(table, tmp_path / "heldout" / "test-00000.parquet")
    out = tmp_path / "eval"
    # Through the `deltaprompts` CLI, a leading option first (argparse once dropped it).
    assert cli.main(["eval", "--model", "student=models/chartworld/student",
                     "--model", "teacher=models/chartworld/teacher",
                     "--data", str(tmp_path / "heldout"), "--batch-size", "8", "--out", str(out),
                     "--config", "configs/demo.yaml"]) == 0  # its sampling.instruction: bare

    summary = json.loads((out / "summary.json").read_text())
    n_arith = sum(r["skill"] == "arithmetic" for r in rows)
    assert n_arith >= 4 and summary["student"]["n"] == summary["teacher"]["n"] == len(rows)
    assert summary["teacher"]["by_skill"]["arithmetic"] >= 0.75
    assert summary["student"]["by_skill"]["arithmetic"] <= 0.25
    assert set(summary["teacher"]["by_source"]) == {r["type"] for r in rows}
    md = (out / "accuracy.md").read_text()
    assert "| skill | n | student | teacher |" in md and "| source | n | student | teacher |" in md
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for i in (0, 1):
        preds = [json.loads(line) for line in (out / f"predictions-{i}.jsonl").read_text().splitlines()]
        assert [p["question"] for p in preds] == [r["question"] for r in rows]


def test_cli_hands_eval_and_train_their_words_unchanged(capsys):
    for argv, expected in ((["eval", "--help"], "SOURCE=MODE"),
                           (["-v", "train", "opd", "--help"], "--set KEY=VALUE")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0 and expected in capsys.readouterr().out
    # options reach eval in order: the second model's name is the one refused
    assert cli.main(["eval", "--model", "a=x", "--data", "d", "--model", "a=y"]) == 2
    assert "two models are named 'a'" in capsys.readouterr().err
