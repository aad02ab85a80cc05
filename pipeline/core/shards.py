"""Parquet shard IO: atomic writes, completion markers, content hashes.

A shard is complete only when its `.done` marker exists and names the sha256 of the
Parquet file next to it. The Parquet file itself is written to a temp name and renamed,
so a reader never sees half a file, and a process killed between the rename and the
marker leaves a shard that is simply redone (same rows, same name: nothing duplicated).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to ``path``, named ``.<name>.<random>.tmp`` (see remove_temp_files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def remove_temp_files(folder: Path) -> int:
    """Delete what interrupted atomic writes left in ``folder`` (a SIGKILL between mkstemp
    and rename runs no cleanup). Only safe while holding the run lock; returns the count."""
    leftovers = list(folder.glob(".*.tmp"))
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    return len(leftovers)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_table(path: Path, table: pa.Table) -> None:
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ShardMarker:
    """Content of `shard-NNNNN.done`: proof the shard is complete, and its summary."""

    index: int
    rows: int
    sha256: str
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    # What the shard was made from (the stage manifest's hashes): a lost or corrupt
    # manifest can be rebuilt from its markers without trusting the current config.
    config_hash: str = ""
    input_hash: str = ""


def write_shard(stage_dir: Path, marker: ShardMarker, table: pa.Table) -> ShardMarker:
    """Write table then marker; returns the marker with the file's real hash and row count."""
    path = stage_dir / f"{shard_name(marker.index)}.parquet"
    atomic_write_table(path, table)
    marker.sha256 = file_sha256(path)
    marker.rows = table.num_rows
    atomic_write_json(stage_dir / f"{shard_name(marker.index)}.done", asdict(marker))
    return marker


def read_marker(stage_dir: Path, index: int) -> ShardMarker | None:
    """The marker of a complete shard, or None if the shard is missing/partial/corrupt."""
    done = stage_dir / f"{shard_name(index)}.done"
    data = stage_dir / f"{shard_name(index)}.parquet"
    if not done.is_file() or not data.is_file():
        return None
    try:
        marker = ShardMarker(**json.loads(done.read_text()))
    except (ValueError, TypeError):
        return None
    # A marker is only trusted for the exact bytes it was written for.
    return marker if file_sha256(data) == marker.sha256 else None


def remove_shard(stage_dir: Path, index: int) -> None:
    for suffix in (".done", ".parquet"):
        (stage_dir / f"{shard_name(index)}{suffix}").unlink(missing_ok=True)


def read_shard(stage_dir: Path, index: int, columns: list[str] | None = None) -> pa.Table:
    """A shard's rows (only ``columns`` when given)."""
    return pq.read_table(stage_dir / f"{shard_name(index)}.parquet", columns=columns)


def complete_shards(stage_dir: Path) -> list[int]:
    """Indices of shards with a valid marker, sorted."""
    out = []
    for done in sorted(stage_dir.glob("shard-*.done")):
        idx = int(done.stem.split("-")[1])
        if read_marker(stage_dir, idx) is not None:
            out.append(idx)
    return out
