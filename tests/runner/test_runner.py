"""The run folder: resume after SIGKILL, refuse-on-change, locking, Ray failures."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from pipeline.core import shards
from pipeline.core.config import config_from_dict
from pipeline.core.errors import ManifestError, UserError
from pipeline.core.safe_delete import DeleteGuard
from pipeline.runner.run import (
    Manifest,
    RunError,
    RunLockedError,
    StageFailedError,
    StageInputError,
    lock_holder,
    run_lock,
    run_stage,
    run_stages,
    stage_status,
)
from pipeline.runner.stage import StageRegistry
from tests.stages_for_tests import AfterOptionalStage, CountingStage, DoublingStage, OptionalStage
from tools.compare_runs import stage_table

REPO = Path(__file__).resolve().parents[2]


def _cfg(root, name="r", backend="local", **extra):
    raw = {"run": {"name": name, "root": str(root)}, "execution": {"backend": backend}}
    raw.update(extra)
    return config_from_dict(raw)


def _rows(stage_dir: Path) -> list[tuple]:
    t = stage_table(stage_dir)
    return sorted(zip(t.column("id").to_pylist(), t.column("value").to_pylist(),
                      t.column("question").to_pylist()))


def _spawn(root, name, sleep):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stages_for_tests", str(root), name, "local", str(sleep)],
        cwd=REPO, start_new_session=True,
    )


def _wait_for_markers(stage_dir: Path, n: int, proc, timeout=60.0) -> None:
    t0 = time.monotonic()
    while len(list(stage_dir.glob("shard-*.done"))) < n:
        assert proc.poll() is None, "runner exited before it could be interrupted"
        assert time.monotonic() - t0 < timeout, "runner made no progress"
        time.sleep(0.05)


def test_sigkill_mid_run_then_rerun_gives_exactly_the_uninterrupted_rows(tmp_path):
    ref_cfg = _cfg(tmp_path, "reference")
    st = CountingStage()
    run_stage(ref_cfg, st, StageRegistry([st]), progress=False)
    reference = _rows(ref_cfg.run_dir / st.dirname)

    proc = _spawn(tmp_path, "killed", sleep=0.3)
    stage_dir = tmp_path / "killed" / st.dirname
    _wait_for_markers(stage_dir, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = shards.complete_shards(stage_dir)
    assert 3 <= len(done_before) < 12, "the kill must land mid-run"
    assert Manifest.read(stage_dir).status == "running"
    # Its lock holder is dead: `status` says crashed, not running forever.
    assert lock_holder(tmp_path / "killed") is None
    assert stage_status(tmp_path / "killed", st)["status"] == "crashed"

    cfg = _cfg(tmp_path, "killed")
    with run_lock(cfg.run_dir):  # the dead process's lock is gone with it
        # A live holder now, but not the process that wrote the manifest: still crashed.
        assert lock_holder(cfg.run_dir) == os.getpid()
        assert stage_status(cfg.run_dir, st)["status"] == "crashed"
        man = run_stage(cfg, st, StageRegistry([st]), progress=False)
    assert man.status == "complete"
    got = _rows(stage_dir)
    assert got == reference  # none lost, none duplicated, same contents
    assert len({r[0] for r in got}) == len(got) == 12 * 10 - 1
    assert man.skipped == {"unlucky": 1}
    assert not list(stage_dir.glob(".*.tmp"))
    # The skipped row itself, with its reason and detail, written with its shard.
    lines = (stage_dir / "skipped.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"id": "value-3", "reason": "unlucky", "detail": "3 is unlucky", "shard": 0}]
    assert stage_status(cfg.run_dir, st)["skipped_rows_file"] == str(stage_dir / "skipped.jsonl")


def test_rerun_skips_complete_shards(tmp_path):
    cfg = _cfg(tmp_path)
    st = CountingStage()
    run_stage(cfg, st, StageRegistry([st]), progress=False)
    stage_dir = cfg.run_dir / st.dirname
    mtimes = {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*.parquet")}
    shards.remove_shard(stage_dir, 5, DeleteGuard(tmp_path, cfg.run_dir))
    (stage_dir / "shard-00007.parquet").write_bytes(b"truncated")  # a corrupt leftover
    # What a SIGKILL between mkstemp and rename leaves, for any atomically written file.
    leftovers = [".shard-00005.parquet.a1b2.tmp", ".manifest.json.c3d4.tmp", ".report.json.e5f6.tmp"]
    for name in leftovers:
        (stage_dir / name).write_bytes(b"partial")
    run_stage(cfg, st, StageRegistry([st]), progress=False)
    assert not [n for n in leftovers if (stage_dir / n).exists()]
    after = {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*.parquet")}
    redone = {k for k in after if after[k] != mtimes.get(k)}
    assert redone == {"shard-00005.parquet", "shard-00007.parquet"}
    assert pq.read_table(stage_dir / "shard-00007.parquet").num_rows == 10


def test_changed_config_or_input_is_refused_unless_recompute(tmp_path):
    st1, st2 = CountingStage(n_shards=3), DoublingStage()
    by_name = StageRegistry([st1, st2])
    cfg = _cfg(tmp_path, sampling={"n": 4})
    run_stage(cfg, st1, by_name, progress=False)
    run_stage(cfg, st2, by_name, progress=False)
    assert sorted(r[1] for r in _rows(cfg.run_dir / st2.dirname))[:3] == [0, 4, 8]

    cfg3 = _cfg(tmp_path, sampling={"n": 5})
    with pytest.raises(RunError, match="config changed"):
        run_stage(cfg3, st2, by_name, progress=False)
    run_stage(cfg3, st2, by_name, recompute=True, progress=False)
    assert sorted(r[1] for r in _rows(cfg.run_dir / st2.dirname))[:3] == [0, 5, 10]

    # Upstream recomputed with a different shard size -> downstream input hash changes.
    cfg_b = _cfg(tmp_path, run={"name": "r", "root": str(tmp_path), "shard_size": 7}, sampling={"n": 5})
    run_stage(cfg_b, CountingStage(n_shards=2), by_name, recompute=True, progress=False)
    with pytest.raises(RunError, match="input shards changed"):
        run_stage(cfg_b, st2, by_name, progress=False)


def test_downstream_refuses_incomplete_upstream(tmp_path):
    st1, st2 = CountingStage(n_shards=2), DoublingStage()
    with pytest.raises(RunError, match="not complete"):
        run_stage(_cfg(tmp_path), st2, StageRegistry([st1, st2]), progress=False)


def test_second_concurrent_run_fails_clearly_and_first_is_unharmed(tmp_path):
    proc = _spawn(tmp_path, "busy", sleep=0.15)
    stage_dir = tmp_path / "busy" / "01-count"
    _wait_for_markers(stage_dir, 1, proc)
    with pytest.raises(RunLockedError, match=r"in use by pid \d+"):
        with run_lock(tmp_path / "busy"):
            pass
    assert lock_holder(tmp_path / "busy") == proc.pid
    assert stage_status(tmp_path / "busy", CountingStage())["status"] == "running"
    assert proc.wait(timeout=120) == 0
    assert Manifest.read(stage_dir).status == "complete"
    assert len(_rows(stage_dir)) == 119


@pytest.mark.slow
def test_ray_two_workers_process_every_shard_and_report_the_failing_one(tmp_path):
    cfg = _cfg(tmp_path, backend="ray", execution={"backend": "ray", "num_workers": 2, "num_cpus": 2})
    st = CountingStage(n_shards=8, fail=(2,))
    try:
        with pytest.raises(StageFailedError) as err:
            run_stage(cfg, st, StageRegistry([st]), progress=False)
        assert "shard 2: ValueError: boom in shard 2" in str(err.value)
        stage_dir = cfg.run_dir / st.dirname
        assert shards.complete_shards(stage_dir) == [0, 1, 3, 4, 5, 6, 7]
        man = Manifest.read(stage_dir)
        assert man.status == "failed" and "Traceback" in man.failures[0]["traceback"]
        pids = {m["stats"]["pid"] for m in man.shards.values()}
        assert len(pids) == 2 and os.getpid() not in pids  # two Ray workers did the work

        fixed = CountingStage(n_shards=8)
        man = run_stage(cfg, fixed, StageRegistry([fixed]), progress=False)
        assert man.status == "complete" and man.rows == 79
        redone = [m for m in man.shards.values() if m["stats"]["pid"] not in pids]
        assert [m["index"] for m in redone] == [2]  # only the failed shard was run again

        # A user's error raised inside a Ray worker still comes back as one line.
        user = CountingStage(n_shards=4, fail_user=(3,))
        with pytest.raises(StageInputError, match=r"^stage 01-count: the counting source .*1 shard\(s\) stopped"):
            run_stage(_cfg(tmp_path, "user", backend="ray", execution={"backend": "ray", "num_cpus": 2}),
                      user, StageRegistry([user]), progress=False)
    finally:
        ray.shutdown()


# ------------------------------------------------------- unreadable manifests, user errors


def test_an_unreadable_manifest_is_rebuilt_from_the_markers_and_said(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    st = CountingStage(n_shards=4)
    run_stage(cfg, st, StageRegistry([st]), progress=False)
    stage_dir = cfg.run_dir / st.dirname
    mtimes = {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*.parquet")}
    (stage_dir / "manifest.json").write_text('{"stage": "01-count", "rows": ')  # cut short

    with pytest.raises(ManifestError, match="manifest.json is unreadable"):
        Manifest.read(stage_dir)
    status = stage_status(cfg.run_dir, st)  # `status` shows the markers, does not die
    assert status["status"] == "rebuilt" and status["shards_done"] == 4 and status["rows"] == 39
    assert "unreadable" in status["note"]

    with caplog.at_level(logging.WARNING):
        man = run_stage(cfg, st, StageRegistry([st]), progress=False)
    assert "rebuilt it from 4 shard marker(s)" in caplog.text
    assert man.status == "complete" and man.rows == 39 and man.skipped == {"unlucky": 1}
    assert {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*.parquet")} == mtimes
    assert Manifest.read(stage_dir).status == "complete"


def test_a_rebuilt_manifest_still_refuses_a_changed_config(tmp_path):
    st = CountingStage(n_shards=2)
    run_stage(_cfg(tmp_path), st, StageRegistry([st]), progress=False)
    manifest = tmp_path / "r" / st.dirname / "manifest.json"
    manifest.write_bytes(b"\x00\xff binary junk")
    changed = _cfg(tmp_path, run={"name": "r", "root": str(tmp_path), "shard_size": 7})
    with pytest.raises(RunError, match="config changed"):
        run_stage(changed, st, StageRegistry([st]), progress=False)
    # markers from before they recorded hashes: nothing to compare, so refuse clearly
    for done in manifest.parent.glob("*.done"):
        marker = json.loads(done.read_text())
        marker.pop("config_hash"), marker.pop("input_hash")
        done.write_text(json.dumps(marker))
    with pytest.raises(RunError, match="rerun with --recompute"):
        run_stage(_cfg(tmp_path), st, StageRegistry([st]), progress=False)
    man = run_stage(_cfg(tmp_path), st, StageRegistry([st]), progress=False, recompute=True)
    assert man.status == "complete" and man.rows == 19


def test_an_unreadable_input_manifest_is_rebuilt_before_the_next_stage_reads_it(tmp_path, caplog):
    st1, st2 = CountingStage(n_shards=3), DoublingStage()
    reg = StageRegistry([st1, st2])
    cfg = _cfg(tmp_path)
    run_stage(cfg, st1, reg, progress=False)
    (cfg.run_dir / st1.dirname / "manifest.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        man = run_stage(cfg, st2, reg, progress=False)
    assert man.status == "complete" and man.rows == 29
    assert "01-count/manifest.json was unreadable; rebuilt it" in caplog.text
    assert Manifest.read(cfg.run_dir / st1.dirname).status == "complete"
    # a missing input shard is never recomputed behind the user's back: refused instead
    (cfg.run_dir / st1.dirname / "manifest.json").write_text("garbage")
    shards.remove_shard(cfg.run_dir / st1.dirname, 1, DeleteGuard(tmp_path, cfg.run_dir))
    with pytest.raises(ManifestError, match="1 of its 3 shards are missing"):
        run_stage(cfg, st2, reg, progress=False, recompute=True)


def test_user_errors_in_shard_tasks_are_one_line_and_bugs_keep_their_tracebacks(tmp_path):
    cfg = _cfg(tmp_path)
    st = CountingStage(n_shards=4, fail_user=(1, 3))
    with pytest.raises(StageInputError) as err:
        run_stage(cfg, st, StageRegistry([st]), progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith("stage 01-count: the counting source")
    assert "2 shard(s) stopped" in message
    man = Manifest.read(cfg.run_dir / st.dirname)
    assert [f["user_error"] for f in man.failures] == [True, True]

    mixed = CountingStage(n_shards=4, fail=(0,), fail_user=(1,))
    with pytest.raises(StageFailedError) as err:
        run_stage(_cfg(tmp_path, "mixed"), mixed, StageRegistry([mixed]), progress=False)
    assert not isinstance(err.value, UserError)  # a bug among them: the CLI shows tracebacks
    assert "shard 0: ValueError: boom in shard 0" in str(err.value)
    assert all("Traceback" in f.traceback for f in err.value.failures)


def test_status_says_disabled_for_a_stage_switched_off(tmp_path):
    reg = StageRegistry([CountingStage(n_shards=2), OptionalStage(), AfterOptionalStage()])
    cfg = _cfg(tmp_path)
    done = []
    run_stages(cfg, [1, 2, 3], reg, progress=False, on_done=lambda st, man: done.append((st.name, man)))
    assert [(n, m is None) for n, m in done] == [("count", False), ("optional", True), ("after", False)]
    statuses = {s["stage"]: s["status"] for s in (stage_status(cfg.run_dir, st) for st in reg)}
    assert statuses == {"01-count": "complete", "02-optional": "disabled", "03-after": "complete"}
    # a run folder without the record (older runs): read off the next stage's input
    (cfg.run_dir / "stages.json").unlink()
    assert stage_status(cfg.run_dir, reg.by_name("optional"))["status"] == "disabled"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("hostile", ["absolute name", "dotdot name", "symlinked stage folder"])
def test_recompute_deletes_nothing_outside_the_run_folder(tmp_path, hostile):
    st = CountingStage(n_shards=2)
    reg = StageRegistry([st])
    victim_cfg = _cfg(tmp_path / "other", "victim")
    run_stage(victim_cfg, st, reg, progress=False)
    victim = victim_cfg.run_dir
    (victim / st.dirname / "notes.txt").write_text("someone's notes")
    before = _snapshot(tmp_path / "other")

    cfg = _cfg(tmp_path / "runs", "r")
    # Names that get past whatever validation the config has: the guard must hold anyway.
    if hostile == "absolute name":
        cfg.run.name = str(victim)
    elif hostile == "dotdot name":
        cfg.run.name = "../other/victim"
    else:
        (tmp_path / "runs" / "r").mkdir(parents=True)
        (tmp_path / "runs" / "r" / st.dirname).symlink_to(victim / st.dirname)
    with pytest.raises(RunError, match="refusing to delete"):
        run_stage(cfg, st, reg, recompute=True, progress=False)
    assert _snapshot(tmp_path / "other") == before


def test_recompute_keeps_a_foreign_file_and_redoes_the_rest(tmp_path):
    st = CountingStage(n_shards=2)
    reg = StageRegistry([st])
    cfg = _cfg(tmp_path)
    run_stage(cfg, st, reg, progress=False)
    stage_dir = cfg.run_dir / st.dirname
    (stage_dir / "notes.txt").write_text("the user's")
    (cfg.run_dir / "README").write_text("the user's too")
    old = {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*")}
    man = run_stage(cfg, st, reg, recompute=True, progress=False)
    assert man.status == "complete" and man.rows == 19
    assert (stage_dir / "notes.txt").read_text() == "the user's"
    assert (cfg.run_dir / "README").read_text() == "the user's too"
    assert all(p.stat().st_mtime_ns != old[p.name] for p in stage_dir.glob("shard-*.parquet"))
