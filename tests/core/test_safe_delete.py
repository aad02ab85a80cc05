"""The delete guard: only inside the run folder, only names the project writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.safe_delete import DeleteGuard, DeleteRefusedError


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, or the target of a symlink."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


@pytest.fixture
def layout(tmp_path):
    """runs/r/01-x with project files, a foreign file and an output folder; and a victim
    folder outside the run root that must never lose anything."""
    victim = tmp_path / "victim"
    (victim / "01-x").mkdir(parents=True)
    for name in ("shard-00000.parquet", "manifest.json", "notes.txt"):
        (victim / "01-x" / name).write_text("victim " + name)
    stage = tmp_path / "runs" / "r" / "01-x"
    (stage / "dataset" / "data").mkdir(parents=True)
    (stage / "shard-00000.parquet").write_text("ours")
    (stage / "shard-00000.done").write_text("ours")
    (stage / "manifest.json").write_text("ours")
    (stage / ".manifest.json.abc.tmp").write_text("ours")
    (stage / "report.json").write_text("ours")
    (stage / "notes.txt").write_text("the user's")
    (stage / "dataset" / "README.md").write_text("ours")
    (stage / "dataset" / "data" / "train-00000-of-00001.parquet").write_text("ours")
    (stage / "dataset" / "keep.sh").write_text("the user's")
    return tmp_path, victim, stage


def test_clear_removes_project_files_only(layout):
    tmp_path, victim, stage = layout
    before = _tree(victim)
    guard = DeleteGuard(tmp_path / "runs", tmp_path / "runs" / "r", outputs=("report.json", "dataset"))
    left = guard.clear(stage)
    assert sorted(left) == ["dataset/keep.sh", "notes.txt"]
    assert sorted(_tree(stage)) == ["dataset/keep.sh", "notes.txt"]
    assert (stage / "notes.txt").read_text() == "the user's"
    assert not (stage / "dataset" / "data").exists()
    assert _tree(victim) == before


def test_a_name_the_project_does_not_write_is_refused(layout):
    tmp_path, _, stage = layout
    guard = DeleteGuard(tmp_path / "runs", tmp_path / "runs" / "r")
    with pytest.raises(DeleteRefusedError, match="does not write"):
        guard.remove(stage / "notes.txt")
    with pytest.raises(DeleteRefusedError, match="does not write"):
        guard.remove(stage / "report.json")  # not declared by this guard's stage
    assert guard.remove(stage / "shard-00000.parquet") is True
    assert guard.remove(stage / "shard-00000.parquet") is False  # already gone
    assert (stage / "notes.txt").exists() and (stage / "report.json").exists()


@pytest.mark.parametrize("name", ["victim", "../victim", "{abs}", "runs/../../victim", ".", ""])
def test_a_run_folder_outside_the_root_gets_nothing_deleted(layout, name):
    tmp_path, victim, _ = layout
    before = _tree(victim)
    run_dir = (tmp_path / "runs" / name.format(abs=victim)) if name != "victim" else victim
    guard = DeleteGuard(tmp_path / "runs", run_dir, outputs=("*",))
    for attempt in (lambda: guard.clear(victim / "01-x"),
                    lambda: guard.remove(victim / "01-x" / "shard-00000.parquet"),
                    lambda: guard.remove_temp_files(victim / "01-x")):
        with pytest.raises(DeleteRefusedError):
            attempt()
    assert _tree(victim) == before


def test_symlinks_are_never_followed(layout):
    tmp_path, victim, stage = layout
    before = _tree(victim)
    run_dir = tmp_path / "runs" / "r"
    # A stage folder that is a symlink to another run's stage folder...
    (run_dir / "02-y").symlink_to(victim / "01-x", target_is_directory=True)
    # ...a project-named file that is a symlink to someone's file...
    (stage / "shard-00001.parquet").symlink_to(victim / "01-x" / "notes.txt")
    # ...and an output folder holding a symlink to a folder outside.
    (stage / "dataset" / "images").symlink_to(victim, target_is_directory=True)
    guard = DeleteGuard(tmp_path / "runs", run_dir, outputs=("dataset",))
    with pytest.raises(DeleteRefusedError, match="outside the run folder"):
        guard.clear(run_dir / "02-y")
    with pytest.raises(DeleteRefusedError, match="outside the run folder"):
        guard.remove(run_dir / "02-y" / "shard-00000.parquet")
    with pytest.raises(DeleteRefusedError, match="symlink"):
        guard.remove(stage / "shard-00001.parquet")
    left = guard.clear(stage)
    assert "shard-00001.parquet" in left and "dataset/images" in left
    assert (stage / "shard-00001.parquet").is_symlink()
    assert _tree(victim) == before


def test_a_symlinked_run_folder_is_its_target(tmp_path):
    """Runs kept on a bigger disk: runs/r -> /elsewhere/r works, confined to the target."""
    target = tmp_path / "disk" / "r"
    (target / "01-x").mkdir(parents=True)
    (target / "01-x" / "shard-00000.parquet").write_text("ours")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r").symlink_to(target, target_is_directory=True)
    guard = DeleteGuard(tmp_path / "runs", tmp_path / "runs" / "r")
    assert guard.clear(tmp_path / "runs" / "r" / "01-x") == []
    assert not (target / "01-x").exists() and target.is_dir()
