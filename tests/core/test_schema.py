"""The canonical prompt row: content ids, the near-duplicate key, table helpers."""

from __future__ import annotations

import pyarrow as pa

from pipeline.core.schema import add_columns, keep_rows, prompt_id, question_key, rows_to_table


def test_question_key_normalises_text_per_image():
    img = {"bytes": b"png1", "path": None}
    # case, punctuation, spacing and articles do not make a question new
    assert question_key(img, "What is A's value?") == question_key(img, "  what is a s VALUE ")
    assert question_key(img, "What is the value of A?") == question_key(img, "what is value of a")
    assert question_key(img, "What is A?") != question_key({"bytes": b"png2"}, "What is A?")
    assert question_key(img, "What is A?") != question_key(img, "What is B?")
    assert question_key(None, "Q") == question_key({"bytes": None}, "q")


def test_prompt_id_is_a_content_hash():
    assert prompt_id(b"img", "Q?") == prompt_id(b"img", " Q? ")  # the question is stripped
    assert prompt_id(b"img", "Q?") != prompt_id(b"im", "gQ?")  # no collision by concatenation
    assert len(prompt_id(None, "Q?")) == 16


def test_add_columns_appends_or_replaces_and_keeps_hf_metadata():
    t = rows_to_table([])
    t = add_columns(t, {"delta": (pa.float64(), [])})
    assert t.schema.field("delta").type == pa.float64() and b"huggingface" in t.schema.metadata
    t2 = add_columns(rows_to_table([{"id": "a", "source": "s", "question": "q"}]),
                     {"x": (pa.int32(), [1])})
    t2 = add_columns(t2, {"x": (pa.int32(), [2])})
    assert t2.column("x").to_pylist() == [2] and t2.column_names.count("x") == 1
    assert keep_rows(t2, [False]).num_rows == 0
