"""seeds/text_view.py: what a text-only rewriter is told of an image, per adapter."""

from __future__ import annotations

import json

from seeds.chartworld.spec import Chart
from seeds.text_view import MAX_FIELD_CHARS, text_view


def row(meta) -> dict:
    return {"meta": json.dumps(meta)}


def test_chartworld_rows_show_their_data_table():
    chart = Chart(kind="bar", title="Sales", labels=["A", "B", "C"], values=[12, 30, 7])
    view = text_view(row({"chart": chart.to_json(), "family": "value"}))
    assert view is not None and "data table" in view.kind
    lines = view.text.splitlines()
    assert "bar" in lines[0] and "Sales" in lines[0]
    assert lines[2:] == ["A | 12", "B | 30", "C | 7"]  # every item, in order


def test_generic_fields_are_named_and_joined():
    view = text_view(row({"caption": "A map of rainfall.", "ocr_tokens": ["North", "12mm"],
                          "ocr": "ignored: same kind as ocr_tokens"}))
    assert view is not None
    assert "caption" in view.kind and "OCR" in view.kind
    assert "North 12mm" in view.text and "A map of rainfall." in view.text
    assert "ignored" not in view.text


def test_long_fields_are_cut_and_rows_without_text_have_no_view():
    view = text_view(row({"context": "x" * (3 * MAX_FIELD_CHARS)}))
    assert view is not None and len(view.text) < 2 * MAX_FIELD_CHARS
    assert text_view(row({"questionId": 3, "docId": 9})) is None  # docvqa: no OCR kept
    assert text_view({"meta": "not json"}) is None
    assert text_view(row({"chart": "{broken"})) is None
