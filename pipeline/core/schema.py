"""The canonical prompt row: one Arrow schema shared by every stage.

One row = one prompt. Its ``id`` is a hash of the image bytes and the question, so a
prompt keeps its identity from ingest to the Hub (and the same prompt ingested twice, from
two sources, collapses to one id). Stages append typed columns of their own; the prompt
columns below are never renamed or dropped downstream.

The ``image`` column is the Hugging Face ``Image`` struct ``{bytes, path}`` and every
Parquet file carries the ``huggingface`` schema metadata, so
``datasets.load_dataset("parquet", ...)`` decodes it as ``Image`` without being told.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pyarrow as pa

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# Prompt columns, in order. `answers` holds every gold answer (ChartQA has one, DocVQA
# several); an empty list means "no gold" (synthesised prompts before pseudo-labelling).
PROMPT_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("split", pa.string()),
    pa.field("image", IMAGE_TYPE),
    pa.field("question", pa.string(), nullable=False),
    pa.field("answers", pa.list_(pa.string())),
    pa.field("choices", pa.list_(pa.string())),
    pa.field("skill", pa.string()),
    pa.field("parent_id", pa.string()),
    pa.field("meta", pa.string()),  # JSON object: source-specific extras (kept verbatim)
]
PROMPT_COLUMNS = [f.name for f in PROMPT_FIELDS]


def prompt_id(image_bytes: bytes | None, question: str) -> str:
    """Content id of a prompt: sha256 over image bytes + question, 16 hex chars.

    The length prefix keeps (image, question) pairs from colliding by concatenation.
    """
    h = hashlib.sha256()
    img = image_bytes or b""
    h.update(len(img).to_bytes(8, "little"))
    h.update(img)
    h.update(question.strip().encode("utf-8"))
    return h.hexdigest()[:16]


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """`datasets` feature JSON for a schema: Image for `image`, Value/Sequence otherwise."""

    def feat(t: pa.DataType) -> Any:
        if t.equals(IMAGE_TYPE):
            return {"_type": "Image"}
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return {"_type": "List", "feature": feat(t.value_type)}
        if pa.types.is_struct(t):
            return {t.field(i).name: feat(t.field(i).type) for i in range(t.num_fields)}
        return {"_type": "Value", "dtype": _value_dtype(t)}

    return {f.name: feat(f.type) for f in schema}


def _value_dtype(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)  # int64, float32, float64, ... match datasets' dtype names


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    """Attach the `huggingface` metadata that makes `datasets` decode images."""
    meta = dict(schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": hf_features(schema)}}).encode()
    return schema.with_metadata(meta)


def prompt_schema(extra: list[pa.Field] | None = None) -> pa.Schema:
    """The canonical prompt schema plus a stage's own typed columns."""
    return with_hf_metadata(pa.schema(PROMPT_FIELDS + list(extra or [])))


def make_prompt_row(
    *,
    source: str,
    question: str,
    image_bytes: bytes | None,
    answers: list[str] | None = None,
    choices: list[str] | None = None,
    split: str | None = None,
    skill: str | None = None,
    parent_id: str | None = None,
    meta: dict[str, Any] | None = None,
    image_path: str | None = None,
) -> dict[str, Any]:
    """Build a row dict in canonical form (id computed here, never by callers)."""
    return {
        "id": prompt_id(image_bytes, question),
        "source": source,
        "split": split,
        "image": None if image_bytes is None else {"bytes": image_bytes, "path": image_path},
        "question": question.strip(),
        "answers": [str(a) for a in (answers or [])],
        "choices": [str(c) for c in (choices or [])],
        "skill": skill,
        "parent_id": parent_id,
        "meta": json.dumps(meta or {}, sort_keys=True, default=str),
    }


def rows_to_table(rows: list[dict[str, Any]], extra: list[pa.Field] | None = None) -> pa.Table:
    """Rows (dicts) -> Arrow table in the canonical schema; missing extra columns -> null."""
    schema = prompt_schema(extra)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def add_columns(table: pa.Table, columns: dict[str, tuple[pa.DataType, list[Any]]]) -> pa.Table:
    """Append (or replace) typed columns, keeping the HF metadata of the schema."""
    for name, (dtype, values) in columns.items():
        arr = pa.array(values, type=dtype)
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, name, arr) if idx >= 0 else table.append_column(name, arr)
    return table.replace_schema_metadata(with_hf_metadata(table.schema).metadata)


def keep_rows(table: pa.Table, keep: list[bool]) -> pa.Table:
    return table.filter(pa.array(keep, type=pa.bool_()))


def column_or(table: pa.Table, name: str, default: Any = None) -> list[Any]:
    """A column as a Python list, or ``default`` for every row when the table lacks it."""
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [default] * table.num_rows


# ----------------------------------------------------------------------- duplicate keys

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[^\w]+")


def normalized_question(question: str) -> str:
    """A question up to case, punctuation, spacing and articles ("What is the A's value?"
    == "what is a s value"): two questions with the same key ask the same thing."""
    q = _ARTICLES.sub(" ", question.lower())
    return " ".join(_NON_WORD.sub(" ", q).split())


def question_key(image: dict | None, question: str) -> tuple[str, str]:
    """The near-duplicate key of a prompt: its image's sha256 and its normalised question.

    One key for every dedup in the pipeline (rewrite's new prompts, the filter stage), so
    a prompt the rewriter kept as new is never dropped later as a duplicate, nor the other
    way round.
    """
    data = (image or {}).get("bytes") or b""
    return hashlib.sha256(data).hexdigest(), normalized_question(question)
