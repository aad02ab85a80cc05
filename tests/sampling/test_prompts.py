"""The one prompt builder: question, lettered options, instruction; images; text-only rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.config import DEFAULT_INSTRUCTION
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.engines.base import count_image_parts
from pipeline.sampling.prompts import format_question, requests_from_table
from tests.engine_fixtures import image_bytes, make_image


def _table(specs: list[dict]) -> pa.Table:
    return rows_to_table([
        make_prompt_row(source="chartqa", question=s.get("question", f"Q{i}?"),
                        image_bytes=s.get("image", image_bytes(make_image(i, (32, 32)))),
                        choices=s.get("choices"))
        for i, s in enumerate(specs)
    ])


def test_requests_carry_image_question_options_and_instruction() -> None:
    img = image_bytes(make_image(3, (32, 32)))
    table = _table([
        {"question": "Which trend?", "choices": ["Up", "Down"], "image": img},
        {"question": "Plain question", "image": None},
    ])
    reqs = requests_from_table(table)
    assert [r.id for r in reqs] == table.column("id").to_pylist()
    assert reqs[0].images == [img] and count_image_parts(reqs[0].messages) == 1
    text = reqs[0].messages[0]["content"][-1]["text"]
    assert text.startswith("Which trend?") and "A. Up\nB. Down" in text
    assert text.endswith(DEFAULT_INSTRUCTION)
    assert "Answer: <value>" in DEFAULT_INSTRUCTION
    # A row without an image becomes a text-only request.
    assert reqs[1].images == [] and count_image_parts(reqs[1].messages) == 0


def test_instruction_is_a_parameter() -> None:
    table = _table([{"question": "Q?"}])
    text = requests_from_table(table, instruction="Reply briefly.")[0].messages[0]["content"][-1]["text"]
    assert text == "Q?\nReply briefly."
    assert requests_from_table(table, instruction=None)[0].messages[0]["content"][-1]["text"] == "Q?"


def test_options_already_in_the_question_are_not_repeated() -> None:
    q = "Which? (A) red (B) blue"
    assert "Options:" not in format_question(q, ["red", "blue"], None)
    assert "Options:" in format_question("Which colour?", ["red", "blue"], None)


def test_image_from_path_when_bytes_are_absent(tmp_path: Path) -> None:
    data = image_bytes(make_image(1, (16, 16)))
    (tmp_path / "a.png").write_bytes(data)
    table = _table([{"question": "Q?"}])
    table = table.set_column(
        table.schema.get_field_index("image"), "image",
        pa.array([{"bytes": None, "path": str(tmp_path / "a.png")}], table.schema.field("image").type),
    )
    assert requests_from_table(table)[0].images == [data]


def test_missing_question_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="question"):
        requests_from_table(pa.table({"id": ["x"]}))
