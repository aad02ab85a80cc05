"""Off-policy fine-tuning on the teacher's sampled answers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import make_prompt_row, prompt_schema
from pipeline.sampling.prompts import format_question
from tests.engine_fixtures import image_bytes, make_image
from trainer.data import load_prompts
from trainer.offpolicy import main, teacher_rows, teacher_target


def test_target_is_the_first_sample_in_the_majority_class():
    samples = ["<think>3+4</think>Answer: 8", "<think>3+4=7</think>\nAnswer: 7", "Answer: 7.0"]
    assert teacher_target(samples, "7") == "<think>3+4=7</think>\nAnswer: 7"
    assert teacher_target(samples, "9") is None
    assert teacher_target([], "7") is None and teacher_target(samples, None) is None
    assert teacher_target(["(B) it is", "Answer: A"], "A", ["cat", "dog"]) == "Answer: A"


def _dataset(path, n=4):
    rows = []
    for i in range(n):
        r = make_prompt_row(source="t", question=f"What is the value of bar {i}?",
                            image_bytes=image_bytes(make_image(i, (64, 64))), answers=[str(i)])
        r["teacher_samples"] = [f"Answer: {i + 1}", f"Answer: {i}", f"Answer: {i}"]
        r["teacher_majority"] = str(i) if i else None  # row 0: no majority -> skipped
        rows.append(r)
    extra = [pa.field("teacher_samples", pa.list_(pa.string())), pa.field("teacher_majority", pa.string())]
    schema = prompt_schema(extra)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_rows_come_from_the_dataset_and_unusable_ones_are_counted(tmp_path):
    _dataset(tmp_path / "d.parquet")
    rows, skipped = teacher_rows(load_prompts(str(tmp_path / "d.parquet")), "Be brief.")
    assert skipped == 1
    assert [r["target"] for r in rows] == ["Answer: 1", "Answer: 2", "Answer: 3"]
    assert all(r["image"] is not None for r in rows)
    # the prompt is the one the teacher answered: the builder's text, instruction included
    assert rows[0]["question"] == "What is the value of bar 1?\nBe brief."


def test_multiple_choice_rows_keep_their_options(tmp_path):
    r = make_prompt_row(source="t", question="Which?", image_bytes=image_bytes(make_image(0, (32, 32))),
                        answers=["B"], choices=["up", "down"])
    r["teacher_samples"], r["teacher_majority"] = ["Answer: B"], "B"
    extra = [pa.field("teacher_samples", pa.list_(pa.string())), pa.field("teacher_majority", pa.string())]
    pq.write_table(pa.Table.from_pylist([r], schema=prompt_schema(extra)), tmp_path / "mc.parquet")
    (row,), _ = teacher_rows(load_prompts(str(tmp_path / "mc.parquet")), None)
    assert row["question"] == format_question("Which?", ["up", "down"], None) == "Which?\nOptions:\nA. up\nB. down"


def test_a_dataset_without_teacher_samples_is_refused(tmp_path):
    pq.write_table(pa.Table.from_pylist([make_prompt_row(source="t", question="q?", image_bytes=b"x")],
                                        schema=prompt_schema()), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="teacher_samples"):
        teacher_rows(load_prompts(str(tmp_path / "d.parquet")), None)


@pytest.mark.slow
def test_offpolicy_trains_the_student_on_teacher_targets(tiny_models, tmp_path, capsys):
    _, student = tiny_models
    _dataset(tmp_path / "d.parquet")
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "d.parquet"), "--set", f"model={student}",
                 "--set", f"output_dir={out}", "--set", "steps=2", "--set", "batch_size=2",
                 "--set", "progress=false"]) == 0
    assert "3 prompts with a teacher target, 1 skipped" in capsys.readouterr().out
    assert (out / "final" / "config.json").is_file()
