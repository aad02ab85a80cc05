"""The errors a user can cause, as one family: the CLI prints them as one line, exit 2.

Anything else that escapes a command is a bug of ours and keeps its traceback. A class
here says *what kind* of mistake it is; its message says what, where and how to fix it.
``-v`` shows the traceback of a user error too.

    raise UsageError("--stages 9: no stage 9; stages are 1-6 (e.g. --stages 1-3)")
    print(f"error: {one_line(e)}", file=sys.stderr)

A user error raised inside a stage task (on a Ray worker) comes back as a shard failure
marked ``user_error`` (pipeline/runner/execution.py), so it is still one line.
"""

from __future__ import annotations

import argparse


class UserError(Exception):
    """A user's mistake (a config, a path, an input): reported in one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names every bad key path."""


class DataError(UserError, ValueError):
    """Data that cannot be read at all: a missing path, no rows, a missing column."""


class SourceError(DataError):
    """A seed source that cannot be read (bad config, missing columns, load failure)."""


class RunError(UserError, RuntimeError):
    """A clear, user-facing reason why a stage cannot run."""


class ManifestError(RunError):
    """A stage's manifest.json that cannot be read and could not be rebuilt from its shards."""


class UsageError(UserError, ValueError):
    """A command-line argument that cannot be used (``--stages 9``, an unknown option)."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: a heading that ends in ':' keeps its colon,
    the lines under it (e.g. every bad key of a config) are joined with '; '."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises :class:`UsageError` (one line, exit 2 in the
    CLI) instead of printing the whole usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")
