"""The errors a user can cause, as one family: the CLI prints them as one line, exit 2.

Anything else that escapes a command is a bug of ours and keeps its traceback. A class
here says *what kind* of mistake it is; its message says what, where and how to fix it.
"""

from __future__ import annotations


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
