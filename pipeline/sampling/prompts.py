"""The one prompt builder: what every model is asked, in mine, delta, skill tagging,
rewriting, OPD, off-policy fine-tuning and evaluation alike.

    text = format_question(row["question"], row["choices"], sampling.instruction)
    request = build_request(text, image_bytes, id=row["id"])
    requests = requests_from_table(table, sampling.instruction)

A prompt is measured (Δ), trained on (OPD, SFT) and evaluated on as the same text: the
question, its lettered options when it has choices, then the answer-format instruction.
Building it anywhere else is how evaluation once dropped the options of multiple-choice
rows that every other stage sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipeline.core.config import DEFAULT_INSTRUCTION
from pipeline.core.images import image_bytes
from pipeline.core.schema import column_or
from pipeline.engines.base import Request


def format_question(question: str, choices: Sequence[str] | None, instruction: str | None) -> str:
    """The text sent to the models: question, lettered options (if any), instruction."""
    parts = [question.strip()]
    # Options are listed unless the question already spells every one of them out.
    if choices and not all(str(c).strip() and str(c).strip() in question for c in choices):
        listed = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
        parts.append("Options:\n" + listed)
    if instruction:
        parts.append(instruction.strip())
    return "\n".join(parts)


def user_message(text: str, n_images: int = 1) -> list[dict]:
    """The single-turn chat every model gets: ``n_images`` image parts, then the text."""
    content: list[dict] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def build_request(text: str, image: Any = None, id: str | None = None) -> Request:
    """One chat request: ``text`` after the image (encoded bytes or a PIL image), if any."""
    images = [] if image is None else [image]
    return Request(messages=user_message(text, n_images=len(images)), images=images, id=id)


def prompt_text(row: dict[str, Any], instruction: str | None) -> str:
    """:func:`format_question` of a canonical prompt row (its question and choices)."""
    return format_question(row["question"], row.get("choices") or None, instruction)


def requests_from_table(
    table: pa.Table, instruction: str | None = DEFAULT_INSTRUCTION
) -> list[Request]:
    """One chat Request per canonical prompt row: the row's image (struct bytes, else a
    readable ``path``) and its question with options and the answer-format instruction.

    A row without any image becomes a text-only request. Image bytes are passed encoded:
    the engine decodes them (and reports a corrupt one as that request's error).
    """
    if "question" not in table.column_names:
        raise ValueError(f"table lacks required column(s) ['question']; has {table.column_names}")
    questions = table.column("question").to_pylist()
    images = column_or(table, "image")
    choices = column_or(table, "choices")
    ids = column_or(table, "id")
    out = []
    for i, q in enumerate(questions):
        if q is None:
            raise ValueError(f"row {i} ({ids[i]!r}) has no question")
        text = format_question(q, choices[i] or None, instruction)
        out.append(build_request(text, image_bytes(images[i]),
                                 id=ids[i] if ids[i] is not None else f"row-{i}"))
    return out


def choices_of(table: pa.Table) -> list[list[str] | None]:
    """Each row's choices, None where it has none (what answer extraction expects)."""
    return [c or None for c in column_or(table, "choices")]
