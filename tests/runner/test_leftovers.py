"""After a crash: the next run of the folder kills the processes and unlinks the /dev/shm
segments the dead run recorded, says so, and touches nothing it did not record."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest
import yaml

import tests.fixtures_datasets as fx
from pipeline.core.config import config_from_dict
from pipeline.runner.leftovers import RECORD, start_time
from pipeline.runner.run import run_stages
from pipeline.runner.stage import StageRegistry
from tests.stages_for_tests import CountingStage, LeakingStage
from tools.compare_runs import stage_table

REPO = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")

pytestmark = pytest.mark.skipif(not SHM.is_dir() or not Path("/proc").is_dir(),
                                reason="Linux /proc and /dev/shm")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


@pytest.mark.timeout(180)
def test_rerun_after_sigkill_cleans_what_the_dead_run_started(tmp_path, caplog):
    driver = subprocess.Popen([sys.executable, "-m", "tests.stages_for_tests", "detach",
                               str(tmp_path), "r"], cwd=REPO, start_new_session=True,
                              stdout=subprocess.PIPE, text=True)
    _, pid, name = driver.stdout.readline().split()
    pid = int(pid)
    record = tmp_path / "r" / RECORD
    t0 = time.monotonic()
    while True:  # the recorder looks every two seconds
        assert time.monotonic() - t0 < 60, "the run never recorded its engine-like process"
        try:
            seen = json.loads(record.read_text())
        except (OSError, ValueError):
            seen = {}
        if str(pid) in seen.get("processes", {}) and name in seen.get("shm", []):
            break
        time.sleep(0.1)
    # Not ours: a segment and a process of someone else, both alive on the machine.
    decoy = shared_memory.SharedMemory(create=True, size=4096)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 start_new_session=True)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        time.sleep(0.5)
        assert _alive(pid), "the engine-like process must outlive the kill (own session)"
        assert (SHM / name).exists()

        cfg = config_from_dict({"run": {"name": "r", "root": str(tmp_path)},
                                "execution": {"backend": "local"}})
        st = CountingStage(n_shards=1)
        with caplog.at_level(logging.WARNING, logger="pipeline.runner.leftovers"):
            run_stages(cfg, [1], StageRegistry([st]), progress=False)
        said = caplog.text
        assert f"killed process {pid}" in said and f"removed shared memory /dev/shm/{name}" in said
        assert not _alive(pid) and not (SHM / name).exists()
        assert not record.exists(), "a run that ends cleanly leaves no record"
        # What the dead run did not record is untouched.
        assert (SHM / decoy.name).exists() and bystander.poll() is None
    finally:
        decoy.close()
        decoy.unlink()
        bystander.kill()
        bystander.wait()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        (SHM / name).unlink(missing_ok=True)


def test_a_run_that_ends_removes_segments_its_engines_left(tmp_path, caplog):
    # Someone else's segment, unmapped and unlinked: not recorded, so never touched.
    decoy = shared_memory.SharedMemory(create=True, size=4096)
    decoy.close()
    cfg = config_from_dict({"run": {"name": "r", "root": str(tmp_path)},
                            "execution": {"backend": "local"}})
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.runner.leftovers"):
            run_stages(cfg, [1], StageRegistry([LeakingStage]), progress=False)
        (name,) = stage_table(cfg.run_dir / "01-detach").column("question").to_pylist()
        assert not (SHM / name).exists()
        assert f"/dev/shm/{name} (1 MiB)" in caplog.text
        assert (SHM / decoy.name).exists()
    finally:
        shared_memory.SharedMemory(name=decoy.name).unlink()


def _wait_for_record(record: Path, proc, done, timeout_s: float) -> dict:
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() - t0 < timeout_s, "the run never recorded what it waited for"
        try:
            seen = json.loads(record.read_text())
        except (OSError, ValueError):
            seen = {}
        if seen and done(seen):
            return seen
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_ray_or_vllm_process_of_a_killed_run_survives_the_next_run(tiny_models, tmp_path):
    """The real thing: stage 2 on Ray with a vLLM engine, SIGKILL of the run's process
    group once the engine core is up; the next run (stage 1 only, no engine) cleans."""
    src = fx.write_jsonl(fx.chartqa_lmms_records(4), tmp_path / "seeds")
    teacher, student = tiny_models
    engine = {"engine": "vllm", "max_model_len": 512, "enforce_eager": True}
    cfg = {
        "run": {"name": "r", "root": str(tmp_path / "runs"), "shard_size": 4},
        "execution": {"backend": "ray", "num_cpus": 2},
        "models": {"teacher": {**engine, "model": str(teacher)},
                   "student": {**engine, "model": str(student)}},
        "ingest": {"sources": [{"format": "chartqa_lmms", "path": str(src), "split": "train"}]},
        # Long answers keep the engine busy while the test looks at it.
        "sampling": {"n": 8, "max_tokens": 500, "instruction": ""},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    record = tmp_path / "runs" / "r" / RECORD
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(path),
                             "--stages", "1-2"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = _wait_for_record(
            record, proc, lambda r: any("EngineCore" in p["cmd"] for p in r["processes"].values())
            and any(not n.startswith("plasma") for n in r["shm"]), timeout_s=400)
        time.sleep(2)  # let the recorder see the engine's segments too
        seen = json.loads(record.read_text())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(1)
        ours = {int(p): i for p, i in seen["processes"].items()}
        survivors = {p: i["cmd"][:40] for p, i in ours.items()
                     if _alive(p) and start_time(p) == i["start"]}
        left_shm = [n for n in seen["shm"] if (SHM / n).exists()]
        print("\nsurvived the SIGKILL of the process group:", survivors)
        print("shared memory left:", left_shm)

        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(path),
                              "--stages", "1", "execution.backend=local"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert all(not _alive(p) or start_time(p) != i["start"] for p, i in ours.items()), \
            "a process of the killed run survived the next run"
        assert not [n for n in seen["shm"] if (SHM / n).exists()]
        if survivors or left_shm:
            assert "cleaned up after the crashed run" in out.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
