"""Every delete the pipeline makes goes through here, confined by construction.

    guard = DeleteGuard(cfg.run.root, cfg.run_dir, outputs=("failures.json", "dataset"))
    guard.remove(stage_dir / "shard-00003.parquet")   # one file the project wrote
    left = guard.clear(stage_dir)                      # a stage folder: ours go, the rest stays

Two rules, both checked on the real (symlink-resolved) paths at the moment of deleting:

* **Inside the run folder.** The run folder must lie strictly inside the run root (its
  path normalised: an absolute or ``..`` run name does not), and every path's parent must
  resolve (symlinks followed) inside the run folder's real location. Such a run name, or
  a stage folder that is a symlink to somewhere else, gets nothing deleted at all,
  whatever the name validation upstream lets through.
* **Only what the project writes.** A name must be one the runner writes (shards, their
  markers and skipped-row files, manifests, ``skipped.jsonl``, temp files of atomic
  writes, the run's process record) or one the stage declares among its outputs (its
  reports, its dataset folders). Inside a declared output folder only regular files with
  the suffixes the pipeline writes go. Symlinks are never followed nor removed, and
  anything else is left where it is and reported, never deleted.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from pipeline.core.errors import RunError

log = logging.getLogger(__name__)

# Names the runner itself writes in a stage folder or the run folder.
RUNNER_NAMES = re.compile(
    r"^(shard-\d{5}\.(parquet|done|skipped\.jsonl)"  # a shard, its marker, its skipped rows
    r"|manifest\.json|skipped\.jsonl"                 # the stage's manifest and skipped rows
    r"|\.owned\.json"                                 # the run's record of its processes
    r"|\..+\.tmp)$"                                   # an interrupted atomic write (file or folder)
)
# Inside a declared output folder (a dataset, a save_to_disk folder): what `datasets`,
# Parquet and our card writer produce.
OUTPUT_SUFFIXES = (".parquet", ".arrow", ".json", ".md", ".png", ".jsonl")


class DeleteRefusedError(RunError):
    """A delete outside the run folder, or of something the project did not write."""


class DeleteGuard:
    """Deletes confined to the run folder ``run_dir`` under ``run_root``.

    ``outputs`` are the extra names (globs) a stage declares it writes: report files and
    output folders (``Stage.outputs``).
    """

    def __init__(self, run_root: str | os.PathLike, run_dir: str | os.PathLike,
                 outputs: Iterable[str] = ()):
        # The run folder's *name* must stay inside the root (an absolute name, `..` or "."
        # do not); the folder itself may be a symlink (runs on a bigger disk), and then
        # everything deleted must resolve inside its target.
        root, named = Path(os.path.abspath(run_root)), Path(os.path.abspath(run_dir))
        self.run_dir = Path(os.path.realpath(run_dir))
        self.outputs = tuple(outputs)
        if not named.is_relative_to(root) or named == root:
            self.run_dir_error = (
                f"refusing to delete anything: the run folder {run_dir} is not inside the "
                f"run root {root}"
            )
        else:
            self.run_dir_error = ""

    # ------------------------------------------------------------------ checks

    def _confined(self, path: Path) -> Path:
        """``path`` with its parent resolved; refused unless inside the run folder."""
        if self.run_dir_error:
            raise DeleteRefusedError(self.run_dir_error)
        path = Path(path)
        parent = Path(os.path.realpath(path.parent))
        if not parent.is_relative_to(self.run_dir):
            raise DeleteRefusedError(
                f"refusing to delete {path}: its folder resolves to {parent}, outside the "
                f"run folder {self.run_dir}"
            )
        if path.name in ("", ".", ".."):
            raise DeleteRefusedError(f"refusing to delete {path}: not a file name")
        return parent / path.name

    def _confined_dir(self, folder: str | os.PathLike) -> Path:
        """A folder, resolved (symlinks followed); refused unless inside the run folder."""
        if self.run_dir_error:
            raise DeleteRefusedError(self.run_dir_error)
        real = Path(os.path.realpath(folder))
        if not real.is_relative_to(self.run_dir):
            raise DeleteRefusedError(f"refusing to delete in {folder}: it resolves to {real}, "
                                     f"outside the run folder {self.run_dir}")
        return real

    def is_project_name(self, name: str) -> bool:
        return bool(RUNNER_NAMES.match(name)) or any(fnmatch.fnmatchcase(name, g)
                                                     for g in self.outputs)

    # ---------------------------------------------------------------- deletes

    def remove(self, path: str | os.PathLike) -> bool:
        """Delete one file (or output folder) the project wrote; False if it was absent.

        A name the project does not write, or a symlink, raises DeleteRefusedError.
        """
        real = self._confined(Path(path))
        if not self.is_project_name(real.name):
            raise DeleteRefusedError(f"refusing to delete {path}: deltaprompts does not write "
                                     "files of that name")
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise DeleteRefusedError(f"refusing to delete {path}: it is a symlink, not a file "
                                     "deltaprompts wrote")
        if stat.S_ISDIR(st.st_mode):
            left = self._remove_output_tree(real)
            if left:
                log.warning("%s: kept %d entr%s deltaprompts did not write: %s", path, len(left),
                            "y" if len(left) == 1 else "ies", ", ".join(left[:10]))
            return True
        real.unlink(missing_ok=True)
        return True

    def clear(self, folder: str | os.PathLike) -> list[str]:
        """Delete every entry of ``folder`` the project wrote, then the folder if empty.

        Returns what was left (paths relative to ``folder``): foreign files, symlinks.
        """
        real = self._confined_dir(folder)
        if real == self.run_dir:
            raise DeleteRefusedError(f"refusing to clear {folder}: it is the run folder itself")
        if not real.is_dir():
            return []
        left: list[str] = []
        for entry in sorted(os.scandir(real), key=lambda e: e.name):
            if entry.is_symlink() or not self.is_project_name(entry.name):
                left.append(entry.name)
            elif entry.is_dir():
                left += [f"{entry.name}/{x}" for x in self._remove_output_tree(Path(entry.path))]
            else:
                os.unlink(entry.path)
        if left:
            log.warning("%s: kept %d entr%s deltaprompts did not write: %s", folder, len(left),
                        "y" if len(left) == 1 else "ies", ", ".join(left[:10]))
        else:
            real.rmdir()
        return left

    def remove_temp_files(self, folder: str | os.PathLike) -> int:
        """Delete what interrupted atomic writes left (``.<name>.<random>.tmp``, files or
        folders) directly in ``folder``; returns the count."""
        real = self._confined_dir(folder)
        if not real.is_dir():
            return 0
        n = 0
        for entry in os.scandir(real):
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and not entry.is_symlink():
                try:
                    self.remove(Path(folder) / entry.name)
                    n += 1
                except DeleteRefusedError as e:
                    log.warning("%s", e)
        return n

    def _remove_output_tree(self, top: Path) -> list[str]:
        """Delete a project output folder bottom-up without following symlinks; only
        regular files with an output suffix go. Returns what was kept (relative paths)."""
        left: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top, topdown=False, followlinks=False):
            here = Path(dirpath)
            for name in filenames + [d for d in dirnames if os.path.islink(here / d)]:
                p = here / name
                if not os.path.islink(p) and p.suffix in OUTPUT_SUFFIXES:
                    p.unlink()
                else:
                    left.append(p.relative_to(top).as_posix())
            for d in dirnames:
                p = here / d
                if not os.path.islink(p) and p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
        if not any(top.iterdir()):
            top.rmdir()
        return left
