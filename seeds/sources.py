"""Seed sources: what to read (``SourceConfig``) and random access to its raw records.

A source is either a Hub dataset id (read with ``datasets.load_dataset``, which uses the
local cache and honours ``HF_HUB_OFFLINE``) or a local path:

- a folder of Parquet files, e.g. a downloaded Hub repo (``data/train-00000-of-00003.parquet``,
  ``DocVQA/validation-*.parquet``, ``ai2d/train-*.parquet``), or a single ``.parquet`` file;
- a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder;
- a JSONL file (or a folder holding ``<split>.jsonl``), with image paths relative to the
  JSONL file's folder (or to ``image_dir``).

Records are read *raw*: image columns come back as ``{"bytes", "path"}`` dicts (or bytes /
path strings), never decoded by ``datasets``, so each image is decoded exactly once, by
:func:`pipeline.images.normalize_image`, with our own error handling. Local Parquet is read
with pyarrow row group by row group (no Arrow cache copy of a multi-GB download), so a Ray
task that owns records [start, stop) only reads the row groups it needs.

Records are addressed by position in the *selection* (``select_indices``): all records,
or a seeded random ``sample`` of them, then cut at ``limit``.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pipeline.images import DEFAULT_MAX_DECODE_PIXELS, DEFAULT_MAX_PIXELS

SourceFormat = Literal[
    "chartqa_m4",
    "chartqa_lmms",
    "docvqa",
    "infographicvqa",
    "cauldron",
    "mathvista",
    "ai2d",
    "chartworld",
    "generic",
]
SOURCE_FORMATS: tuple[str, ...] = SourceFormat.__args__  # type: ignore[attr-defined]

# Keys a `generic` source may map to its own column names.
GENERIC_COLUMN_KEYS = ("image", "question", "answers", "choices", "skill", "id")

# Stems that mark a Parquet/JSONL file as belonging to a split (Hub naming:
# `train-00000-of-00003.parquet`, `testmini-...`); used to tell a split-less folder of
# files from one where the asked-for split is simply absent.
_SPLIT_STEM = re.compile(r"^(train|test|testmini|val|valid|validation|dev)([-_.]|$)")


class SourceError(ValueError):
    """A source that cannot be read at all (bad config, missing columns, load failure)."""


@dataclass(frozen=True)
class Skip:
    """A record (or one prompt of it) that did not become a row, and why.

    ``reason`` is a short stable key (``missing_image``, ``corrupt_image``,
    ``image_too_large``, ``empty_question``, ``empty_answer``, ``bad_type``,
    ``bad_answer``, ``multi_image``, ``bad_record``); ``detail`` says what exactly;
    ``index`` is the record's index in the source (not in the selection).
    """

    reason: str
    detail: str = ""
    index: int | None = None


@dataclass
class SourceConfig:
    """One seed source. Exactly one of ``hub_id`` / ``path`` must be set."""

    name: str = ""  # label written to each row's `source`; default: hub id or folder name
    format: SourceFormat = "generic"
    hub_id: str | None = None
    path: str | None = None
    config_name: str | None = None  # Hub config / subset (DocVQA, InfographicVQA, ai2d...)
    split: str = "train"
    revision: str | None = None  # Hub revision (branch, tag or commit)
    image_dir: str | None = None  # relative image paths resolve here (default: source folder)
    limit: int | None = None  # at most this many records (after sampling)
    sample: int | None = None  # random subset of this many records, drawn with `seed`
    seed: int = 0
    columns: dict[str, str] = field(default_factory=dict)  # generic: key -> column name
    meta_columns: list[str] = field(default_factory=list)  # extra columns copied into meta
    skill: str | None = None  # skill for rows whose record has none
    license: str | None = None  # recorded on the dataset card
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS
    # the_cauldron records with several images: "skip" them (the question may refer to
    # any of the images, and a prompt carries one) or keep the "first" image.
    multi_image: Literal["skip", "first"] = "skip"

    def __post_init__(self) -> None:
        where = f"source {self.name or self.hub_id or self.path!r}"
        if (self.hub_id is None) == (self.path is None):
            raise SourceError(f"{where}: set exactly one of hub_id and path")
        if self.format not in SOURCE_FORMATS:
            raise SourceError(f"{where}: unknown format {self.format!r}; one of {SOURCE_FORMATS}")
        for key in ("limit", "sample"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise SourceError(f"{where}: {key} must be >= 0, got {value}")
        if self.max_pixels < 1 or self.max_decode_pixels < 1:
            raise SourceError(f"{where}: max_pixels and max_decode_pixels must be >= 1")
        if self.multi_image not in ("skip", "first"):
            raise SourceError(f"{where}: multi_image must be 'skip' or 'first'")
        unknown = sorted(set(self.columns) - set(GENERIC_COLUMN_KEYS))
        if unknown:
            raise SourceError(
                f"{where}: unknown keys in columns: {unknown}; allowed: {GENERIC_COLUMN_KEYS}"
            )
        if self.columns and self.format != "generic":
            raise SourceError(f"{where}: columns mapping is only used by format 'generic'")

    @property
    def label(self) -> str:
        """The `source` value of this source's rows."""
        if self.name:
            return self.name
        base = self.hub_id if self.hub_id else Path(self.path or "").name
        return f"{base}:{self.config_name}" if self.config_name else base


def select_indices(n: int, src: SourceConfig) -> list[int]:
    """Record indices the source contributes, ascending: a seeded sample, then the limit.

    Ascending order keeps reads sequential; the same (n, sample, seed) always gives the
    same subset, so every shard of a run sees the same selection.
    """
    if src.sample is not None and src.sample < n:
        chosen = sorted(random.Random(src.seed).sample(range(n), src.sample))
    else:
        chosen = list(range(n))
    if src.limit is not None:
        chosen = chosen[: src.limit]
    return chosen


class RecordTable(Protocol):
    """Random access to a source's raw records."""

    description: str
    columns: list[str]
    features: Any  # datasets.Features when known (ClassLabel names...), else None
    base_dir: Path | None  # where relative image paths resolve

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int], columns: Sequence[str]) -> Iterator[tuple[int, Any]]:
        """Yield (index, record dict) for ascending ``indices``; a record that cannot be
        parsed at all comes back as a :class:`Skip` instead of a dict."""
        ...


_BATCH = 64  # records per Arrow read: amortises the per-call overhead, bounds memory


class ArrowDatasetTable:
    """A ``datasets.Dataset`` (Hub cache or save_to_disk), read as raw Arrow rows."""

    def __init__(self, ds: Any, description: str, base_dir: Path | None):
        self._ds = ds
        self.description = description
        self.columns = list(ds.column_names)
        self.features = ds.features
        self.base_dir = base_dir

    def __len__(self) -> int:
        return len(self._ds)

    def read(self, indices: Sequence[int], columns: Sequence[str]) -> Iterator[tuple[int, Any]]:
        # Arrow format bypasses feature decoding: images stay {"bytes", "path"} structs.
        arrow = self._ds.select_columns(list(columns)).with_format("arrow")
        for i in range(0, len(indices), _BATCH):
            batch = list(indices[i : i + _BATCH])
            yield from zip(batch, arrow[batch].to_pylist())


class ParquetTable:
    """Parquet files read with pyarrow, row group by row group (no cache copy)."""

    def __init__(self, files: list[Path], description: str, base_dir: Path | None):
        import pyarrow.parquet as pq

        self.description = description
        self.base_dir = base_dir
        self._files = files
        self._groups: list[tuple[int, int]] = []  # (file number, row group) in order
        self._starts: list[int] = []  # first global index of each row group
        total = 0
        schema = None
        for fno, path in enumerate(files):
            meta = pq.ParquetFile(path).metadata
            if schema is None:
                schema = pq.read_schema(path)
            for rg in range(meta.num_row_groups):
                self._groups.append((fno, rg))
                self._starts.append(total)
                total += meta.row_group(rg).num_rows
        self._n = total
        self.columns = list(schema.names) if schema is not None else []
        self.features = _features_from_schema(schema)

    def __len__(self) -> int:
        return self._n

    def read(self, indices: Sequence[int], columns: Sequence[str]) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        handles: dict[int, Any] = {}
        pos = 0
        while pos < len(indices):
            g = bisect.bisect_right(self._starts, indices[pos]) - 1
            start = self._starts[g]
            end = self._starts[g + 1] if g + 1 < len(self._starts) else self._n
            stop = bisect.bisect_left(indices, end, lo=pos)
            fno, rg = self._groups[g]
            if fno not in handles:
                handles.clear()  # one open file at a time; indices are ascending
                handles[fno] = pq.ParquetFile(self._files[fno])
            table = handles[fno].read_row_group(rg, columns=list(columns))
            group = [indices[k] for k in range(pos, stop)]
            rows = table.take([ix - start for ix in group]).to_pylist()
            yield from zip(group, rows)
            pos = stop


class JsonlTable:
    """A JSONL file: one record per non-blank line; a line that is not a JSON object
    becomes a ``bad_record`` skip at its index rather than failing the source."""

    def __init__(self, path: Path, description: str, base_dir: Path):
        self.description = description
        self.base_dir = base_dir
        self.features = None
        self._records: list[Any] = []
        columns: dict[str, None] = {}
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    rec = f"line {lineno}: invalid JSON ({e.msg})"
                else:
                    if not isinstance(rec, dict):
                        rec = f"line {lineno}: a JSON {type(rec).__name__}, not an object"
                    else:
                        columns.update(dict.fromkeys(rec))
                self._records.append(rec)
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self._records)

    def read(self, indices: Sequence[int], columns: Sequence[str]) -> Iterator[tuple[int, Any]]:
        for ix in indices:
            rec = self._records[ix]
            if isinstance(rec, str):
                yield ix, Skip("bad_record", rec, ix)
            else:
                # A key absent from one line reads as null, like a sparse column.
                yield ix, {c: rec.get(c) for c in columns}


def _features_from_schema(schema: Any) -> Any:
    """`datasets.Features` from a Parquet schema's `huggingface` metadata, if any."""
    if schema is None or not (schema.metadata or {}).get(b"huggingface"):
        return None
    try:
        from datasets import Features

        return Features.from_arrow_schema(schema)
    except Exception:  # noqa: BLE001 - foreign/newer metadata: plain Arrow types do
        return None


def load_source(src: SourceConfig) -> RecordTable:
    """Open a source for reading raw records. Raises :class:`SourceError` when it cannot."""
    if src.hub_id is not None:
        return _load_hub(src)
    return _load_local(src)


def _load_hub(src: SourceConfig) -> RecordTable:
    import datasets

    what = f"hub dataset {src.hub_id!r} (config {src.config_name!r}, split {src.split!r})"
    try:
        ds = datasets.load_dataset(
            src.hub_id, src.config_name, split=src.split, revision=src.revision
        )
    except Exception as e:  # datasets raises many types; all mean "cannot read it"
        raise SourceError(
            f"source {src.label!r}: cannot load {what}: {type(e).__name__}: {e}. "
            f"Without network (HF_HUB_OFFLINE=1) only datasets already in the local cache "
            f"({datasets.config.HF_DATASETS_CACHE}) load; a downloaded copy can be given "
            f"as `path` instead."
        ) from e
    base = Path(src.image_dir) if src.image_dir else None
    return ArrowDatasetTable(ds, what, base)


def _load_local(src: SourceConfig) -> RecordTable:
    root = Path(src.path or "").expanduser()
    where = f"source {src.label!r}"
    if not root.exists():
        raise SourceError(f"{where}: path {str(root)!r} does not exist")
    image_dir = Path(src.image_dir) if src.image_dir else None
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".parquet":
            return ParquetTable([root], str(root), image_dir or root.parent)
        if suffix in (".jsonl", ".ndjson"):
            return JsonlTable(root, str(root), image_dir or root.parent)
        raise SourceError(f"{where}: {str(root)!r} is not a .parquet or .jsonl file")
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return _load_saved(src, root, image_dir or root)
    if src.config_name and src.config_name != "default":
        sub = root / src.config_name
        if not sub.is_dir():
            folders = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise SourceError(
                f"{where}: config {src.config_name!r} has no folder under {str(root)!r}; "
                f"folders: {folders}"
            )
        data_root = sub
    else:
        data_root = root
    parquet = sorted(data_root.rglob("*.parquet"))
    if parquet:
        files = _split_files(parquet, data_root, src, where)
        return ParquetTable(files, f"{len(files)} parquet file(s) under {data_root}",
                            image_dir or root)
    jsonl = sorted(data_root.rglob("*.jsonl"))
    if jsonl:
        files = _split_files(jsonl, data_root, src, where)
        if len(files) != 1:
            raise SourceError(f"{where}: expected one JSONL file for split {src.split!r}, "
                              f"found {[str(f) for f in files]}")
        return JsonlTable(files[0], str(files[0]), image_dir or files[0].parent)
    raise SourceError(
        f"{where}: {str(root)!r} holds no Parquet files, JSONL file or save_to_disk dataset"
    )


def _split_files(files: list[Path], root: Path, src: SourceConfig, where: str) -> list[Path]:
    """Files of the configured split: `<split>-*`/`<split>.*` names or a `<split>/` folder.

    A folder whose files carry no split names at all is one split: all its files.
    """

    def rel_parts(f: Path) -> tuple[str, ...]:
        return f.relative_to(root).parts

    def is_split(f: Path, split: str) -> bool:
        stem = f.stem
        return (
            stem == split
            or stem.startswith((split + "-", split + "_"))
            or split in rel_parts(f)[:-1]
        )

    chosen = [f for f in files if is_split(f, src.split)]
    if chosen:
        return chosen
    split_named = [
        f for f in files
        if _SPLIT_STEM.match(f.stem) or any(_SPLIT_STEM.fullmatch(p) for p in rel_parts(f)[:-1])
    ]
    if not split_named:
        return files
    raise SourceError(
        f"{where}: no file for split {src.split!r} under {str(root)!r}; files: "
        f"{[str(f.relative_to(root)) for f in files][:20]}"
    )


def _load_saved(src: SourceConfig, root: Path, base_dir: Path) -> RecordTable:
    import datasets

    where = f"source {src.label!r}"
    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as e:
        raise SourceError(f"{where}: cannot load save_to_disk folder {str(root)!r}: "
                          f"{type(e).__name__}: {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
        if src.split not in loaded:
            raise SourceError(
                f"{where}: split {src.split!r} not in {str(root)!r}; splits: {list(loaded)}"
            )
        loaded = loaded[src.split]
    return ArrowDatasetTable(loaded, f"save_to_disk folder {root}", base_dir)
