"""Seed adapters: raw records of known dataset layouts -> canonical prompt rows.

One adapter per layout, with the column names as published on the Hub:

==================  ==================================================================
format              layout
==================  ==================================================================
chartqa_m4          HuggingFaceM4/ChartQA: image, query, label (list), human_or_machine
chartqa_lmms        lmms-lab/ChartQA: image, question, answer, type
chartworld          our generated charts: the lmms-lab/ChartQA layout + ``skill``
docvqa              lmms-lab/DocVQA config DocVQA: image, question, answers (list),
                    questionId, question_types, docId, ucsf_document_*, data_split
infographicvqa      lmms-lab/DocVQA config InfographicVQA: image, question, answers,
                    questionId, answer_type, operation/reasoning, image_url, data_split
cauldron            HuggingFaceM4/the_cauldron subsets: images (list), texts (list of
                    {user, assistant, source})
mathvista           AI4Math/MathVista: pid, question, decoded_image (or image path),
                    choices, answer, precision, question_type, answer_type, unit, metadata
ai2d                lmms-lab/ai2d: image, question, options (list), answer (index string)
generic             any layout, through ``SourceConfig.columns`` (image, question,
                    answers, choices, skill, id -> column names)
==================  ==================================================================

Contract: every *candidate prompt* ends as exactly one row or one :class:`Skip` (a
candidate is a record, or for the_cauldron a record's user turn), so
``rows + skips == candidates`` and nothing is dropped without a count. A source that lacks a
required column fails as a whole with :class:`SourceError` before any row is read.

Type policy (bad values are per-row skips, never silent coercions of meaning):
question must be a non-empty string (``bad_type`` / ``empty_question``); an answer may be
a string, a number or a list of them (a lone string where a list is expected is read as a
one-element list: its meaning is unambiguous); empty answers are ``empty_answer``.
Raw answers are kept verbatim (the_cauldron's "Answer: B" included); extraction and
matching belong to ``pipeline.core.answers``. Multiple-choice gold (MathVista, AI2D) is the
option *text*; ``choices`` holds the options and ``meta`` the index/letter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.core.config import SourceConfig
from pipeline.core.errors import SourceError
from pipeline.core.images import ImageError, normalize_image
from pipeline.core.schema import make_prompt_row
from seeds.sources import RecordTable, Skip, load_source, select_indices

__all__ = ["Skip", "count_source_rows", "iter_source_rows", "layout_for"]

Item = dict | Skip


@dataclass(frozen=True)
class RecordContext:
    """What an adapter needs besides the record itself."""

    src: SourceConfig
    table: RecordTable
    index: int  # the record's index in the source


@dataclass(frozen=True)
class Layout:
    """Columns a format needs and the function that maps one record to rows/skips."""

    required: tuple[str, ...]
    adapt: Callable[[dict, RecordContext], Iterator[Item]]
    optional: tuple[str, ...] = ()  # read when present: meta extras, skill
    one_of: tuple[str, ...] = ()  # at least one of these must exist (MathVista's images)
    keep_other_columns: bool = False  # copy every other column into meta (chartworld)

    def columns_to_read(self, present: list[str], src: SourceConfig) -> list[str]:
        wanted = list(self.required) + list(self.one_of) + list(self.optional)
        wanted += list(src.meta_columns)
        if self.keep_other_columns:
            wanted += present
        return [c for c in dict.fromkeys(wanted) if c in present]


# ---------------------------------------------------------------------------------------
# Field readers: each returns the clean value or a Skip.


def _question(value: Any, ctx: RecordContext, column: str) -> str | Skip:
    if value is None:
        return Skip("empty_question", f"{column} is null", ctx.index)
    if not isinstance(value, str):
        return Skip("bad_type", f"{column} is {type(value).__name__}, not str", ctx.index)
    if not value.strip():
        return Skip("empty_question", f"{column} is blank", ctx.index)
    return value.strip()


def _scalar_text(value: Any) -> str | None:
    """A gold answer as text; None when the value is not a scalar we can read as one."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return str(value)
    return None


def _answers(value: Any, ctx: RecordContext, column: str) -> list[str] | Skip:
    values = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for v in values:
        if v is None:
            continue
        text = _scalar_text(v)
        if text is None:
            return Skip("bad_type", f"{column} holds a {type(v).__name__}", ctx.index)
        if text:
            out.append(text)
    if not out:
        return Skip("empty_answer", f"{column} is empty", ctx.index)
    return out


def _choices(value: Any, ctx: RecordContext, column: str) -> list[str] | None | Skip:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        return Skip("bad_type", f"{column} is {type(value).__name__}, not a list", ctx.index)
    out = []
    for v in value:
        text = _scalar_text(v)
        if text is None:
            return Skip("bad_type", f"{column} holds a {type(v).__name__}", ctx.index)
        out.append(text)
    return out or None


def _absent_image(value: Any) -> bool:
    """No image at all (null, or a struct with neither bytes nor path). Zero bytes are
    not absent: they are a broken file, reported as corrupt."""
    if value is None:
        return True
    if isinstance(value, dict):
        return value.get("bytes") is None and not value.get("path")
    return isinstance(value, str) and not value.strip()


def _image(value: Any, ctx: RecordContext) -> bytes | Skip:
    if _absent_image(value):
        return Skip("missing_image", "no image", ctx.index)
    try:
        return normalize_image(
            value,
            ctx.src.max_pixels,
            max_decode_pixels=ctx.src.max_decode_pixels,
            base_dir=ctx.table.base_dir,
            allow_outside=ctx.src.allow_outside,
        )
    except ImageError as e:
        return Skip(e.kind, e.reason, ctx.index)


def _meta_value(ctx: RecordContext, column: str, value: Any) -> Any:
    """Meta copies values verbatim, except ClassLabel ints, stored as their names."""
    feature = (ctx.table.features or {}).get(column)
    names = getattr(feature, "names", None)
    if names and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, bytes):  # never copy binary blobs into the JSON meta
        return f"<{len(value)} bytes>"
    return value


def _meta(record: dict, ctx: RecordContext, columns: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {"source_index": ctx.index}
    for c in list(columns) + list(ctx.src.meta_columns):
        if c in record:
            meta[c] = _meta_value(ctx, c, record[c])
    return meta


def _skill(record: dict, ctx: RecordContext, column: str = "skill") -> str | None:
    value = record.get(column)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return ctx.src.skill


def _row(ctx: RecordContext, *, image: bytes, question: str, answers: list[str],
         choices: list[str] | None = None, skill: str | None = None,
         meta: dict[str, Any]) -> dict:
    return make_prompt_row(
        source=ctx.src.label,
        split=ctx.src.split,
        question=question,
        image_bytes=image,
        answers=answers,
        choices=choices,
        skill=skill if skill is not None else ctx.src.skill,
        meta=meta,
    )


def _first_skip(*values: Any) -> Skip | None:
    return next((v for v in values if isinstance(v, Skip)), None)


# ---------------------------------------------------------------------------------------
# Adapters. Cheap text checks run before the image is decoded.


def _single_qa(question_col: str, answer_col: str, meta_cols: tuple[str, ...],
               skill_col: str | None = None, keep_other: bool = False):
    """Adapter for layouts with one image, one question and a gold answer (or list)."""
    consumed = {"image", question_col, answer_col} | ({skill_col} if skill_col else set())

    def adapt(record: dict, ctx: RecordContext) -> Iterator[Item]:
        question = _question(record.get(question_col), ctx, question_col)
        answers = _answers(record.get(answer_col), ctx, answer_col)
        skip = _first_skip(question, answers)
        if skip:
            yield skip
            return
        image = _image(record.get("image"), ctx)
        if isinstance(image, Skip):
            yield image
            return
        meta = _meta(record, ctx, meta_cols)
        if keep_other:
            for c, v in record.items():
                if c not in consumed and c not in meta:
                    meta[c] = _meta_value(ctx, c, v)
        skill = _skill(record, ctx, skill_col) if skill_col else None
        yield _row(ctx, image=image, question=question, answers=answers, skill=skill,
                   meta=meta)

    return adapt


def _adapt_cauldron(record: dict, ctx: RecordContext) -> Iterator[Item]:
    texts = record.get("texts")
    if not isinstance(texts, list):
        yield Skip("bad_type", f"texts is {type(texts).__name__}, not a list", ctx.index)
        return
    if not texts:
        yield Skip("empty_question", "texts has no turns", ctx.index)
        return
    images = record.get("images")
    if images is not None and not isinstance(images, list):
        images = [images]  # a single Image column instead of a list: same meaning
    images = [im for im in (images or []) if im is not None]

    # One decode per record, on the first turn that needs it; its outcome (bytes or a
    # Skip) applies to every turn, since each turn is a prompt of its own.
    image: bytes | Skip | None = None
    if not images:
        image = Skip("missing_image", "images is empty", ctx.index)
    elif len(images) > 1 and ctx.src.multi_image == "skip":
        image = Skip("multi_image", f"{len(images)} images; multi_image='skip'", ctx.index)

    for turn_no, turn in enumerate(texts):
        if not isinstance(turn, dict):
            yield Skip("bad_type", f"texts[{turn_no}] is {type(turn).__name__}", ctx.index)
            continue
        question = _question(turn.get("user"), ctx, f"texts[{turn_no}].user")
        answers = _answers(turn.get("assistant"), ctx, f"texts[{turn_no}].assistant")
        skip = _first_skip(question, answers)
        if skip:
            yield skip
            continue
        if image is None:
            image = _image(images[0], ctx)
        if isinstance(image, Skip):
            yield image
            continue
        meta = _meta(record, ctx, ())
        meta.update(turn=turn_no, turns=len(texts), images=len(images),
                    cauldron_source=turn.get("source"))
        yield _row(ctx, image=image, question=question, answers=answers, meta=meta)


_MATHVISTA_META = ("pid", "question_type", "answer_type", "precision", "unit", "metadata")


def _adapt_mathvista(record: dict, ctx: RecordContext) -> Iterator[Item]:
    question = _question(record.get("question"), ctx, "question")
    answers = _answers(record.get("answer"), ctx, "answer")
    choices = _choices(record.get("choices"), ctx, "choices")
    skip = _first_skip(question, answers, choices)
    if skip:
        yield skip
        return
    # decoded_image holds the bytes; `image` is the path inside the repo's images.zip,
    # used only when a local copy has no decoded_image (resolved against the source root).
    value = record.get("decoded_image")
    if _absent_image(value):
        value = record.get("image")
    image = _image(value, ctx)
    if isinstance(image, Skip):
        yield image
        return
    meta = _meta(record, ctx, _MATHVISTA_META)
    if isinstance(meta.get("precision"), float) and math.isnan(meta["precision"]):
        meta["precision"] = None
    yield _row(ctx, image=image, question=question, answers=answers, choices=choices,
               meta=meta)


def _adapt_ai2d(record: dict, ctx: RecordContext) -> Iterator[Item]:
    question = _question(record.get("question"), ctx, "question")
    options = _choices(record.get("options"), ctx, "options")
    skip = _first_skip(question, options)
    if skip:
        yield skip
        return
    if not options:
        yield Skip("empty_answer", "options is empty", ctx.index)
        return
    raw = record.get("answer")
    try:
        index = int(str(raw).strip())
    except ValueError:
        yield Skip("bad_answer", f"answer {raw!r} is not an option index", ctx.index)
        return
    if not 0 <= index < len(options):
        yield Skip("bad_answer", f"answer index {index} outside {len(options)} options",
                   ctx.index)
        return
    image = _image(record.get("image"), ctx)
    if isinstance(image, Skip):
        yield image
        return
    meta = _meta(record, ctx, ())
    meta.update(answer_index=index, answer_letter=chr(ord("A") + index))
    yield _row(ctx, image=image, question=question, answers=[options[index]],
               choices=options, meta=meta)


def _generic_columns(src: SourceConfig, present: list[str]) -> dict[str, str]:
    """The generic mapping with defaults: same-name columns for image/question/answers."""
    cols = dict(src.columns)
    cols.setdefault("image", "image")
    cols.setdefault("question", "question")
    if "answers" not in cols:
        for candidate in ("answers", "answer"):
            if candidate in present:
                cols["answers"] = candidate
                break
    return cols


def _generic_layout(src: SourceConfig, present: list[str]) -> Layout:
    cols = _generic_columns(src, present)
    # Image, question and every explicitly mapped column must exist; an answers column
    # found by its default name is optional by construction.
    required = tuple(dict.fromkeys([cols["image"], cols["question"], *src.columns.values()]))
    optional = tuple(v for v in cols.values() if v not in required)

    def adapt(record: dict, ctx: RecordContext) -> Iterator[Item]:
        question = _question(record.get(cols["question"]), ctx, cols["question"])
        answers: list[str] | Skip = []
        if "answers" in cols:
            answers = _answers(record.get(cols["answers"]), ctx, cols["answers"])
        choices = (_choices(record.get(cols["choices"]), ctx, cols["choices"])
                   if "choices" in cols else None)
        skip = _first_skip(question, answers, choices)
        if skip:
            yield skip
            return
        image = _image(record.get(cols["image"]), ctx)
        if isinstance(image, Skip):
            yield image
            return
        meta = _meta(record, ctx, ())
        if "id" in cols and record.get(cols["id"]) is not None:
            meta["source_id"] = record[cols["id"]]
        skill = _skill(record, ctx, cols["skill"]) if "skill" in cols else None
        yield _row(ctx, image=image, question=question, answers=answers, choices=choices,
                   skill=skill, meta=meta)

    return Layout(required=required, optional=optional, adapt=adapt)


_DOCVQA_META = ("questionId", "question_types", "docId", "ucsf_document_id",
                "ucsf_document_page_no", "data_split")
# `ocr` (a large JSON string) is left out on purpose: it would bloat every row's meta.
_INFOVQA_META = ("questionId", "answer_type", "operation/reasoning", "image_url",
                 "data_split")

_LAYOUTS: dict[str, Layout] = {
    "chartqa_m4": Layout(
        required=("image", "query", "label"),
        optional=("human_or_machine",),
        adapt=_single_qa("query", "label", ("human_or_machine",)),
    ),
    "chartqa_lmms": Layout(
        required=("image", "question", "answer"),
        optional=("type",),
        adapt=_single_qa("question", "answer", ("type",)),
    ),
    "chartworld": Layout(
        required=("image", "question", "answer"),
        optional=("type", "skill"),
        adapt=_single_qa("question", "answer", ("type",), skill_col="skill", keep_other=True),
        keep_other_columns=True,
    ),
    "docvqa": Layout(
        required=("image", "question", "answers"),
        optional=_DOCVQA_META,
        adapt=_single_qa("question", "answers", _DOCVQA_META),
    ),
    "infographicvqa": Layout(
        required=("image", "question", "answers"),
        optional=_INFOVQA_META,
        adapt=_single_qa("question", "answers", _INFOVQA_META),
    ),
    "cauldron": Layout(required=("images", "texts"), adapt=_adapt_cauldron),
    "mathvista": Layout(
        required=("question", "answer"),
        one_of=("decoded_image", "image"),
        optional=("choices",) + _MATHVISTA_META,
        adapt=_adapt_mathvista,
    ),
    "ai2d": Layout(required=("image", "question", "options", "answer"), adapt=_adapt_ai2d),
}


def layout_for(src: SourceConfig, present: list[str]) -> Layout:
    """The layout of ``src``, checked against the columns ``present`` in the data."""
    layout = (_generic_layout(src, present) if src.format == "generic"
              else _LAYOUTS[src.format])
    missing = [c for c in layout.required if c not in present]
    if layout.one_of and not any(c in present for c in layout.one_of):
        missing.append(" or ".join(layout.one_of))
    missing += [c for c in src.meta_columns if c not in present]
    if missing:
        raise SourceError(
            f"source {src.label!r} (format {src.format!r}): missing column(s) {missing}; "
            f"columns present: {present}"
        )
    return layout


def _open_checked(src: SourceConfig) -> tuple[RecordTable, Layout]:
    table = load_source(src)
    return table, layout_for(src, table.columns)


def count_source_rows(src: SourceConfig) -> int:
    """Number of *records* ``src`` contributes (after sampling and limit).

    This is the index space of :func:`iter_source_rows`; shard it by ranges. A cauldron
    record can yield several rows (one per user turn). Also validates the columns, so a
    broken source fails here, before any shard starts.
    """
    table, _ = _open_checked(src)
    return len(select_indices(len(table), src))


def iter_source_rows(src: SourceConfig, start: int = 0,
                     stop: int | None = None) -> Iterator[Item]:
    """Rows (canonical prompt dicts) and :class:`Skip` s for selected records [start, stop).

    ``start``/``stop`` are positions in the selection counted by
    :func:`count_source_rows`, so disjoint ranges give disjoint, complete output.
    Duplicate ids (one prompt twice in a source, or in two sources) are *not* dropped
    here: that needs a view across shards.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad record range [{start}, {stop})")
    table, layout = _open_checked(src)
    indices = select_indices(len(table), src)[start:stop]
    columns = layout.columns_to_read(table.columns, src)
    for index, record in table.read(indices, columns):
        if isinstance(record, Skip):
            yield record
            continue
        yield from layout.adapt(record, RecordContext(src=src, table=table, index=index))
