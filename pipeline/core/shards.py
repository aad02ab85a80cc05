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

from pipeline.core.safe_delete import DeleteGuard


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to ``path``, named ``.<name>.<random>.tmp`` (a SIGKILL between
    mkstemp and rename leaves it: ``DeleteGuard.remove_temp_files`` clears such leftovers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def temp_dir_beside(path: Path) -> Path:
    """An empty temp folder next to ``path`` (``.<name>.<random>.tmp``): build a folder
    there, then ``replace_dir`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


def replace_dir(built: Path, path: Path, guard: DeleteGuard) -> None:
    """Put the finished folder ``built`` at ``path``: the old one is renamed aside first and
    deleted after, so a crash leaves the old complete folder, or none, never a half one."""
    built.chmod(0o755)  # mkdtemp made it private; the folder it stands in for was not
    aside = None
    if path.exists():
        aside = temp_dir_beside(path)
        os.replace(path, aside / path.name)
    os.replace(built, path)
    if aside is not None:
        guard.remove(aside)


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
    # Where it was made: the Ray node id, worker pid, the GPUs Ray gave the worker, tries.
    worker: dict[str, Any] = field(default_factory=dict)


def write_shard(stage_dir: Path, marker: ShardMarker, table: pa.Table,
                skipped_rows: list[dict[str, Any]] | None = None) -> ShardMarker:
    """Write the skipped rows, the table, then the marker; returns the marker with the
    file's real hash and row count. ``skipped_rows`` None keeps the shard's skipped file."""
    if skipped_rows is not None:
        atomic_write_bytes(skipped_path(stage_dir, marker.index), jsonl_bytes(skipped_rows))
    written = write_shard_file(stage_dir, marker.index, table)
    marker.sha256, marker.rows = written["sha256"], written["rows"]
    return mark_written(stage_dir, marker)


def write_shard_file(stage_dir: Path, index: int, table: pa.Table) -> dict[str, Any]:
    """Only the shard's Parquet file (atomic): its sha256 and rows. A worker on shared
    storage calls this itself; the driver then writes the marker (``mark_written``)."""
    path = stage_dir / f"{shard_name(index)}.parquet"
    atomic_write_table(path, table)
    return {"sha256": file_sha256(path), "rows": table.num_rows}


def mark_written(stage_dir: Path, marker: ShardMarker,
                 skipped_rows: list[dict[str, Any]] | None = None) -> ShardMarker:
    """The skipped rows, then the marker of a shard file already written (its hash and rows
    in ``marker``): the shard counts as complete from here on."""
    if skipped_rows is not None:
        atomic_write_bytes(skipped_path(stage_dir, marker.index), jsonl_bytes(skipped_rows))
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


def remove_shard(stage_dir: Path, index: int, guard: DeleteGuard) -> None:
    for suffix in (".done", ".parquet", ".skipped.jsonl"):
        guard.remove(stage_dir / f"{shard_name(index)}{suffix}")


def skipped_path(stage_dir: Path, index: int) -> Path:
    return stage_dir / f"{shard_name(index)}.skipped.jsonl"


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode()


def read_skipped_rows(stage_dir: Path, index: int) -> list[dict[str, Any]]:
    """The skipped rows written with shard ``index`` ([] for none, or an older shard)."""
    path = skipped_path(stage_dir, index)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
