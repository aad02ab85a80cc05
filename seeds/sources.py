"""Seed sources: what to read (``SourceConfig``) and random access to its raw records.

A source is either a Hub dataset id (read with ``datasets.load_dataset``, which uses the
local cache and honours ``HF_HUB_OFFLINE``) or a local path:

- a folder of Parquet files, e.g. a downloaded Hub repo (``data/train-00000-of-00003.parquet``,
  ``DocVQA/validation-*.parquet``, ``ai2d/train-*.parquet``), or a single ``.parquet`` file;
- a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder;
- a JSONL file (or a folder holding ``<split>.jsonl``), with image paths relative to the
  JSONL file's folder (or to ``image_dir``).

Image paths are confined to that folder (``image_dir``, else the source's folder): a path
with ``..``, an absolute path or a symlink that leads out of it is a counted
``image_outside_source`` skip, never opened, unless the source sets ``allow_outside: true``.
A Hub source has no folder: its image paths are read only with ``allow_outside``.

Records are read *raw*: image columns come back as ``{"bytes", "path"}`` dicts (or bytes /
path strings), never decoded by ``datasets``, so each image is decoded exactly once, by
:func:`pipeline.core.images.normalize_image`, with our own error handling. Local Parquet is read
with pyarrow row group by row group (no Arrow cache copy of a multi-GB download), so a Ray
task that owns records [start, stop) only reads the row groups it needs.

Records are addressed by position in the *selection* (``select_indices``): all records,
or a seeded random ``sample`` of them, then cut at ``limit``.
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import SourceConfig
from pipeline.core.errors import DataError, SourceError
from pipeline.core.lazy import lazy
from pipeline.data.loader import Location, locate, open_hub, open_saved

datasets = lazy("datasets")


@dataclass(frozen=True)
class Skip:
    """A record (or one prompt of it) that did not become a row, and why.

    ``reason`` is a short stable key (``missing_image``, ``corrupt_image``,
    ``image_too_large``, ``image_outside_source``, ``empty_question``, ``empty_answer``, ``bad_type``,
    ``bad_answer``, ``multi_image``, ``bad_record``); ``detail`` says what exactly;
    ``index`` is the record's index in the source (not in the selection).
    """

    reason: str
    detail: str = ""
    index: int | None = None


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
        return datasets.Features.from_arrow_schema(schema)
    except Exception:  # noqa: BLE001 - foreign/newer metadata: plain Arrow types do
        return None


def load_source(src: SourceConfig) -> RecordTable:
    """Open a source for reading raw records. Raises :class:`SourceError` when it cannot."""
    where = f"source {src.label!r}"
    image_dir = Path(src.image_dir) if src.image_dir else None
    if src.hub_id is not None:
        what = f"hub dataset {src.hub_id!r} (config {src.config_name!r}, split {src.split!r})"
        hub = Location("hub", what, repo_id=src.hub_id, revision=src.revision)
        try:
            ds = open_hub(hub, src.split, src.config_name)
        except DataError as e:
            raise SourceError(f"{where}: cannot load {what}: {e}") from e
        return ArrowDatasetTable(ds, what, image_dir)
    root = Path(src.path or "").expanduser()
    if not root.exists():
        raise SourceError(f"{where}: path {str(root)!r} does not exist")
    try:
        loc = locate(root, src.split, src.config_name)
        if loc.kind == "saved":
            return ArrowDatasetTable(open_saved(loc.path, src.split), loc.description,
                                     image_dir or root)
    except DataError as e:
        raise SourceError(f"{where}: {e}") from e
    # Relative image paths resolve against the source folder (or the JSONL file's folder).
    base = image_dir or (root if root.is_dir() else root.parent)
    if loc.kind == "parquet":
        try:
            return ParquetTable(list(loc.files), loc.description, base)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{where}: {_unreadable_parquet(loc.files, e)}; check the "
                              "file (re-download or re-export it) or point path at another "
                              "source") from e
    if len(loc.files) != 1:
        raise SourceError(f"{where}: expected one JSONL file for split {src.split!r}, "
                          f"found {[str(f) for f in loc.files]}")
    jsonl = loc.files[0]
    try:
        return JsonlTable(jsonl, str(jsonl), image_dir or jsonl.parent)
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{where}: cannot read {jsonl} as UTF-8 JSONL "
                          f"({type(e).__name__}: {e})") from e


def _unreadable_parquet(files: Sequence[Path], error: Exception) -> str:
    """Which Parquet file could not be opened, and why, in one phrase."""
    for f in files:
        try:
            size = f.stat().st_size
        except OSError:
            return f"{f} cannot be opened ({error})"
        if size == 0:
            return f"{f} is empty (0 bytes), not a Parquet file"
        try:
            pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            return f"{f} is not a readable Parquet file ({str(e).splitlines()[0]})"
    return f"the Parquet files cannot be read ({error})"
