"""Quiet runs: what a person sees, and the log file that takes everything else.

    with captured_output(run_dir / "logs" / "20261206-101500-run.log") as console:
        console.say("01-ingest: 300 rows ...")     # the terminal
        run_the_stages(progress=console.err)        # progress bars: the terminal
        # anything else printed or logged, by us, Ray, vLLM or `datasets`: the log file

Engines and Ray are chatty (engine start-up, KV cache sizes, shutdown notes, a progress
bar for every `datasets` split). During a run the process's own stdout and stderr (file
descriptors 1 and 2, so C code and subprocesses too) point at the log file; the terminal
keeps a duplicate of each for the lines meant for a person, and first-party warnings.
Ray workers redirect themselves the same way (:func:`redirect_process_output`), before
their engines start, so the engines' subprocesses inherit the log file.

``captured_output(None)`` (``-v``) captures nothing: everything reaches the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

FIRST_PARTY = ("pipeline", "stages", "seeds", "trainer", "tools")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class Console:
    """Where the lines meant for a person go (``log_path`` None: nothing is captured)."""

    out: TextIO
    err: TextIO
    log_path: Path | None = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


def log_file(run_dir: Path, command: str) -> Path:
    """A new log file for one command on one run: ``<run>/logs/<time>-<command>.log``."""
    return Path(run_dir) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}.log"


def _terminal(stream: TextIO, saved_fd: int) -> tuple[TextIO, bool]:
    """A stream to the terminal: a duplicate of the saved descriptor when ``stream`` writes
    to fd 1 or 2 (about to be redirected), else ``stream`` itself (e.g. pytest's capture).
    Returns (stream, whether we opened it)."""
    try:
        on_fd = stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        on_fd = False
    if not on_fd:
        return stream, False
    return os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=getattr(stream, "encoding", None)
                     or "utf-8", errors="replace"), True


class _FirstParty(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in FIRST_PARTY


class _TerminalFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@contextmanager
def captured_output(log_path: Path | None, header: str = "") -> Iterator[Console]:
    """Send this process's output to ``log_path`` for the duration; yield the terminal.

    The root logger writes everything from INFO up to the file; first-party warnings and
    errors also reach the terminal as ``warning: ...`` lines. On exit the descriptors,
    handlers and levels are restored, whatever happened inside.
    """
    if log_path is None:
        yield Console(sys.stdout, sys.stderr, None)
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    out, own_out = _terminal(sys.stdout, saved[0])
    err, own_err = _terminal(sys.stderr, saved[1])
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if header:
        os.write(log_fd, f"== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {header}\n".encode())
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)

    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    to_terminal = logging.StreamHandler(err)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.addFilter(_FirstParty())
    to_terminal.setFormatter(_TerminalFormat())
    root.handlers = [to_file, to_terminal]
    root.setLevel(logging.INFO)
    try:
        yield Console(out, err, log_path)
    finally:
        for stream in (sys.stdout, sys.stderr, out, err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        root.handlers, root.level = old_handlers, old_level
        to_file.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream, own in ((out, own_out), (err, own_err)):
            if own:
                stream.close()


def redirect_process_output(log_path: str | os.PathLike) -> bool:
    """Point this process's stdout and stderr (fds 1 and 2, inherited by the processes it
    starts) at ``log_path``, for good: a Ray worker's output goes to the run's log file.

    Only where the log folder already exists (the driver made it): a cluster node without
    the driver's filesystem keeps Ray's own worker logs. Returns whether it redirected.
    """
    path = Path(log_path)
    if not path.parent.is_dir():
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return False
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True
