"""Training prompts from the assembled dataset or from any run's shards.

``load_prompts(source)`` accepts, in this order of precedence:

* a glob of Parquet files (``runs/demo/05-filter/*.parquet``) or one ``.parquet`` file;
* a local folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` too:
  ``split`` picks the split);
* a local folder of Parquet shards, read recursively: in the Hub layout
  (``data/<split>-00000-of-00002.parquet``, what assemble writes) only ``split``'s files,
  otherwise (a stage folder of ``shard-*.parquet``) every file;
* otherwise a Hugging Face Hub dataset id, loaded with ``datasets.load_dataset``;
  ``user/name@REV`` pins a branch, tag or commit (a run that names the commit it trained
  on can be repeated after the dataset moves on).

Rows follow the canonical prompt schema (pipeline/schema.py); only ``image`` and
``question`` are required. ``select_prompts`` then applies equality filters and draws a
fixed-size seeded sample, which is what the micro-reproduction needs to compare training
sets of *equal* size: (a) a filtered high-Δ set, (b) a random sample of the seeds,
(c) zero-delta prompts.

A row that cannot be used (no image, undecodable image, empty question) is never fatal:
``decode_prompt`` raises ``BadPrompt`` with a reason and the trainer counts the skip.
"""

from __future__ import annotations

import glob
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def _is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def _parquet_dataset(files: list[str]):
    import datasets

    # The shards carry the `huggingface` schema metadata, so `image` decodes as Image.
    return datasets.Dataset.from_parquet(files)


# A Hub-layout shard name: <split>-<index>-of-<count>.parquet (datasets' own convention).
_HUB_SHARD = re.compile(r"^(?P<split>\w+)-\d{5}-of-\d{5}\.parquet$")


def _split_files(source: str, files: list[str], split: str) -> list[str]:
    """The files of ``split`` when the folder is in the Hub layout, else all of them.

    Reading every file of an assembled dataset would train on its validation rows too.
    """
    by_split: dict[str, list[str]] = {}
    for f in files:
        if m := _HUB_SHARD.match(Path(f).name):
            by_split.setdefault(m["split"], []).append(f)
    if not by_split:
        return files
    if split not in by_split:
        raise ValueError(f"{source}: no split {split!r}; splits are {sorted(by_split)}")
    return by_split[split]


def load_prompts(source: str, split: str = "train"):
    """The rows at ``source`` as a ``datasets.Dataset`` (see the module docstring)."""
    import datasets

    if not source:
        raise ValueError("no training data given (a dataset folder, a Parquet glob or a Hub id)")
    if _is_glob(source) or source.endswith(".parquet"):
        files = sorted(glob.glob(source, recursive=True))
        if not files:
            raise FileNotFoundError(f"no Parquet files match {source!r}")
        ds = _parquet_dataset(files)
    elif Path(source).is_dir():
        root = Path(source)
        if (root / "dataset_dict.json").is_file() or (root / "dataset_info.json").is_file() \
                or (root / "state.json").is_file():
            ds = datasets.load_from_disk(str(root))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{source}: no split {split!r}; splits are {sorted(ds)}")
                ds = ds[split]
        else:
            files = sorted(str(p) for p in root.rglob("*.parquet") if not p.name.startswith("."))
            if not files:
                raise FileNotFoundError(
                    f"{source} is neither a saved dataset (save_to_disk) nor a folder of Parquet shards"
                )
            ds = _parquet_dataset(_split_files(source, files, split))
    elif Path(source).exists():
        raise ValueError(f"{source} is a file but not Parquet; give a Parquet file, glob or dataset folder")
    else:
        repo_id, _, revision = source.partition("@")
        try:
            ds = datasets.load_dataset(repo_id, split=split, revision=revision or None)
        except FileNotFoundError as e:  # datasets' DatasetNotFoundError and DataFilesNotFoundError
            raise FileNotFoundError(
                f"{source!r} is not a local path and could not be loaded from the Hub "
                f"({type(e).__name__}: {e})"
            ) from e
        except ValueError as e:  # e.g. an unknown split: datasets names the ones there are
            raise ValueError(f"{source}: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns are {ds.column_names}")
    if isinstance(ds.features.get("image"), datasets.Image):
        # Rows hand out the raw {bytes, path}: `datasets` would raise on a corrupt image while
        # indexing, before decode_prompt can count it as a skip.
        ds = ds.cast_column("image", datasets.Image(decode=False))
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
    from PIL import Image, UnidentifiedImageError

    if image is None:
        raise BadPrompt("missing_image")
    if isinstance(image, dict):  # the raw HF Image struct {bytes, path}
        data, path = image.get("bytes"), image.get("path")
        if data is None and not path:
            raise BadPrompt("missing_image")
        image = data if data is not None else path
    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(image)))
        elif isinstance(image, str):
            image = Image.open(image)
        elif not isinstance(image, Image.Image):
            raise BadPrompt("corrupt_image", f"unsupported image type {type(image).__name__}")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, BadPrompt):
            raise
        raise BadPrompt("corrupt_image", f"{type(e).__name__}: {e}") from e
    if image.width < 1 or image.height < 1:
        raise BadPrompt("corrupt_image", f"empty size {image.size}")
    return image if image.mode == "RGB" else image.convert("RGB")


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
