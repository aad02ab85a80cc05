"""Training prompts: the rows to train on, and each row decoded for a trainer.

Data is read by the one loader (pipeline/data/loader.py: a dataset folder, Parquet glob or
folder, or a Hub id ``user/name@REV``); ``select_prompts`` then applies equality filters
and draws a fixed-size seeded sample, which is what an experiment needs to compare
training sets of *equal* size: (a) a filtered high-Δ set, (b) a random sample of the
seeds, (c) zero-delta prompts.

A row that cannot be used (no image, undecodable image, empty question) is never fatal:
``decode_prompt`` raises ``BadPrompt`` with a reason and the trainer counts the skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.images import ImageError, decode_image
from pipeline.data.loader import read_dataset

REQUIRED_COLUMNS = ("image", "question")


class BadPrompt(ValueError):
    """A row that cannot be trained on; ``reason`` is a short stable tag for the skip count."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class TrainPrompt:
    id: str
    image: Any  # PIL.Image.Image, RGB
    question: str
    answers: list[str] = field(default_factory=list)
    skill: str | None = None
    source: str | None = None
    choices: list[str] = field(default_factory=list)  # options of a multiple-choice prompt


def load_prompts(source: str, split: str = "train"):
    """The rows at ``source`` as a ``datasets.Dataset`` with at least an image and a question."""
    ds = read_dataset(source, split)
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; columns are {ds.column_names}")
    return ds


def select_prompts(
    ds, where: dict[str, Any] | None = None, num_prompts: int | None = None, seed: int = 0
) -> list[int]:
    """Row indices to train on: rows matching every ``where`` filter, then a seeded sample.

    ``where`` maps a column to a value or a list of allowed values (``{"skill": ["max",
    "diff"], "zero_delta": True}``). ``num_prompts`` draws that many rows without
    replacement (sorted back into dataset order); asking for more rows than match is an
    error, because silently training on fewer would break an equal-size comparison.
    """
    where = where or {}
    unknown = [c for c in where if c not in ds.column_names]
    if unknown:
        raise ValueError(f"where: unknown column(s) {unknown}; columns are {ds.column_names}")
    keep = np.ones(len(ds), dtype=bool)
    if where:
        # Only the filter columns are read: images are never decoded for filtering.
        columns = ds.select_columns(list(where)).to_dict()
        for col, wanted in where.items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            keep &= np.array([v in allowed for v in columns[col]], dtype=bool)
    indices = np.flatnonzero(keep)
    if num_prompts is not None:
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        if num_prompts > len(indices):
            raise ValueError(
                f"num_prompts={num_prompts} but only {len(indices)} row(s) match where={where}"
            )
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(indices, size=num_prompts, replace=False))
    if len(indices) == 0:
        raise ValueError(f"no rows to train on (where={where})")
    return [int(i) for i in indices]


def to_pil(image: Any):
    """An image field (HF ``{bytes, path}``, bytes, a path, PIL) -> decoded RGB, or BadPrompt."""
    if isinstance(image, dict) and image.get("bytes") is None and not image.get("path"):
        image = None
    try:
        return decode_image(image)
    except ImageError as e:
        raise BadPrompt(e.kind, "" if e.kind == "missing_image" else e.reason) from e


def decode_prompt(row: dict[str, Any]) -> TrainPrompt:
    """A dataset row -> ``TrainPrompt`` with a decoded RGB image, or ``BadPrompt``."""
    question = (row.get("question") or "").strip()
    if not question:
        raise BadPrompt("empty_question")
    answers = row.get("answers")
    if isinstance(answers, str):  # tolerate a JSON-encoded list
        try:
            answers = json.loads(answers)
        except ValueError:
            answers = [answers]
    return TrainPrompt(
        id=str(row.get("id") or ""),
        image=to_pil(row.get("image")),
        question=question,
        answers=[str(a) for a in (answers or [])],
        skill=row.get("skill"),
        source=row.get("source"),
        choices=[str(c) for c in (row.get("choices") or [])],
    )
