"""A text view of a prompt's image, for a rewriter that cannot see images.

A text-only LLM asked to write a question "about this image" writes about nothing; what it
can do is write about a description of the image, when the seed row carries one. Which
fields a row carries depends on the adapter that made it (seeds/adapters.py):

| adapter | field (in the row's ``meta``) | shown as |
|---------|-------------------------------|----------|
| ``chartworld`` | ``chart`` (the data the chart was drawn from) | its data table |
| ``generic`` | ``table``, ``ocr_tokens`` / ``ocr``, ``caption``, ``context`` when copied in with ``meta_columns`` | each, named |
| ``docvqa`` / ``infographicvqa`` | none: their OCR is left out of ``meta`` (too large per row) | — |
| ``chartqa_*``, ``ai2d``, ``cauldron``, ``mathvista`` | none: the records carry no text of the image | — |

A row with no view gives ``None``; the rewrite stage then skips it for a text-only
rewriter (counted as ``rewriter_no_text_view``) rather than let the model invent an image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from seeds.chartworld.spec import Chart

# A field's text is cut here: a page of OCR would crowd out the instruction in a small
# model's context.
MAX_FIELD_CHARS = 1500

# Generic meta fields, in the order they are shown, with the words that name them.
GENERIC_FIELDS: tuple[tuple[str, str], ...] = (
    ("table", "a table of the data in the image"),
    ("ocr_tokens", "the words read from the image (OCR)"),
    ("ocr", "the words read from the image (OCR)"),
    ("caption", "a caption of the image"),
    ("context", "the text that comes with the image"),
)


@dataclass(frozen=True)
class TextView:
    kind: str  # what the text is, in words the template puts before it
    text: str


def _text(value: Any) -> str | None:
    """A meta value as text: strings as they are, lists one item per space, else JSON."""
    if value is None:
        return None
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    elif not isinstance(value, str):
        value = json.dumps(value, sort_keys=True)
    value = value.strip()
    if not value:
        return None
    return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + " …"


def text_view(row: dict[str, Any]) -> TextView | None:
    """The text view of ``row``'s image (see the module doc), or None when it has none."""
    try:
        meta = json.loads(row.get("meta") or "{}")
    except (TypeError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    chart = meta.get("chart")
    if isinstance(chart, str):
        try:
            return TextView("the chart's data table", Chart.from_json(chart).as_table())
        except (TypeError, ValueError):
            pass
    parts, kinds = [], []
    for key, kind in GENERIC_FIELDS:
        text = _text(meta.get(key))
        if text is not None and kind not in kinds:
            kinds.append(kind)
            parts.append(f"{kind[0].upper()}{kind[1:]}:\n{text}")
    if not parts:
        return None
    return TextView(" and ".join(kinds), "\n\n".join(parts))
