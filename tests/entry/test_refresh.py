"""`deltaprompts refresh` end to end on tiny real models (transformers engine, in process).

A base run (stages 1-5) on a few chart-world seeds, then refresh rounds: OPD on the kept
set, the checkpoint as the new student, the pool re-mined and re-measured, the teacher
served from the sample store. Random-weight models: plumbing and contracts, not quality.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main as cli
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory):
    """A completed base run (stages 1-5) and the files a refresh of it needs."""
    root = tmp_path_factory.mktemp("refresh")
    write_seed_set(root / "seeds", WorldConfig(), 6, seed=3, split="test")
    teacher, student = tiny_models
    engine = {"engine": "transformers", "batch_size": 8}
    cfg = {
        # One store for the whole module: its own, so the teacher samples the base run drew
        # are what the refresh rounds are served.
        "run": {"name": "base", "root": str(root / "runs"), "shard_size": 3,
                "cache_dir": str(root / "store")},
        "execution": {"backend": "local"},
        "models": {"teacher": {**engine, "model": str(teacher)},
                   "student": {**engine, "model": str(student)}},
        "ingest": {"sources": [{"name": "chartworld", "format": "chartworld",
                                "path": str(root / "seeds"), "split": "test"}]},
        "sampling": {"n": 4, "max_tokens": 6, "instruction": ""},
        "delta": {"k": 2, "bootstrap": 0},
        "filter": {"threshold": 0.0},  # random models: keep every prompt, so rounds train
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    opd = root / "opd.yaml"
    opd.write_text(yaml.safe_dump({"opd": {"prompts_per_step": 2, "rollouts_per_prompt": 2,
                                           "max_new_tokens": 6, "lr": 1e-3, "num_threads": 2}}))
    assert cli(["run", "--config", str(path), "--stages", "1-5"]) == 0
    return {"root": root, "config": path, "opd": opd, "heldout": root / "seeds"}


def _refresh(base, name: str, rounds: int, *extra: str) -> int:
    return cli(["refresh", "--config", str(base["config"]), "--rounds", str(rounds), "--steps", "1",
                "--train-config", str(base["opd"]), "--name", name, *extra])


def _state(base, name: str) -> dict:
    return json.loads((base["root"] / "runs" / name / "refresh.json").read_text())


def _kept(base, name: str, r: int) -> list[tuple[str, float]]:
    folder = base["root"] / "runs" / name / f"round-{r:02d}" / "05-filter"
    rows = pq.read_table(sorted(folder.glob("shard-*.parquet")), columns=["id", "delta"]).to_pylist()
    return sorted((x["id"], round(x["delta"], 9)) for x in rows)


@pytest.fixture(scope="module")
def two_rounds(base):
    assert _refresh(base, "full", 2, "--heldout", str(base["heldout"]), "--heldout-n", "4") == 0
    return _state(base, "full")


def test_two_rounds_train_remeasure_and_serve_the_teacher_from_the_store(base, two_rounds):
    rounds = two_rounds["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and all(r["complete"] for r in rounds)
    top = base["root"] / "runs" / "full"
    # Each round's student is the previous round's checkpoint: a new model identity.
    ids = [r["student_id"] for r in rounds]
    assert len(set(ids)) == 3
    assert rounds[1]["student"] == str(top / "round-01" / "opd" / "final")
    assert rounds[2]["student"] == str(top / "round-02" / "opd" / "final")
    # Round 2 continues round 1's optimizer: its metrics start at step 2.
    steps = [json.loads(x)["step"] for x in (top / "round-02" / "opd" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2] and rounds[2]["steps"] == 2
    # Rounds after 0: every teacher sample is served by the store, none drawn; the new
    # student's are drawn (mine), then reused by delta.
    for r in rounds[1:]:
        s = r["samples"]
        assert s["teacher_drawn"] == 0 and s["teacher_served"] == 4 * r["pool"], s
        assert s["student_drawn"] == 4 * r["pool"], s
    pool = rounds[0]["pool"]
    assert pool == 6 and all(r["pool"] == pool for r in rounds)
    # Full n in every round: the mined student samples and n teacher samples per prompt.
    delta = pq.read_table(sorted((top / "round-02" / "04-delta").glob("shard-*.parquet"))).to_pylist()
    assert all(len(x["teacher_answers"]) == 4 and len(x["student_answers"]) == 4 for x in delta)
    for r in rounds:
        assert 0.0 <= r["zero_delta_fraction"] <= 1.0 and r["zero_delta_by_skill"]
        assert r["heldout"]["n"] == 4 and 0.0 <= r["heldout"]["overall"] <= 1.0
    assert (top / "refresh.png").stat().st_size > 0
    md = (top / "refresh.md").read_text()
    assert "| 2 | 2 |" in md and "Held-out accuracy per skill" in md
    # A round is a run folder: its stages have complete manifests, and logs went to the
    # refresh folder.
    for stage in ("01-pool", "02-mine", "04-delta", "05-filter"):
        man = json.loads((top / "round-01" / stage / "manifest.json").read_text())
        assert man["status"] == "complete"
    assert list((top / "logs").glob("*-refresh.log"))


def test_a_refresh_resumed_round_by_round_gives_the_same_rows(base, two_rounds):
    assert _refresh(base, "stepwise", 1) == 0
    assert [r["round"] for r in _state(base, "stepwise")["rounds"]] == [0, 1]
    assert _refresh(base, "stepwise", 2) == 0
    assert _kept(base, "stepwise", 2) == _kept(base, "full", 2)
    assert [r["student_id"] for r in _state(base, "stepwise")["rounds"]] == \
        [r["student_id"] for r in two_rounds["rounds"]]


def test_a_refresh_killed_after_round_1_resumes_to_the_same_rows(base, two_rounds, capsys):
    """A real SIGKILL of the whole process (group) once round 1's record is written."""
    argv = [sys.executable, "-m", "pipeline.cli", "refresh", "--config", str(base["config"]),
            "--rounds", "2", "--steps", "1", "--train-config", str(base["opd"]), "--name", "killed"]
    state = base["root"] / "runs" / "killed" / "refresh.json"
    proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                rounds = json.loads(state.read_text())["rounds"]
            except (OSError, ValueError, KeyError):
                rounds = []
            if len(rounds) > 1 and rounds[1].get("complete"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the refresh ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (base["root"] / "runs" / "killed" / "round-02" / "05-filter" / "manifest.json").is_file()
    assert _refresh(base, "killed", 2) == 0
    assert _kept(base, "killed", 2) == _kept(base, "full", 2)
    assert [r["student_id"] for r in _state(base, "killed")["rounds"]] == \
        [r["student_id"] for r in two_rounds["rounds"]]
    # A changed setting is refused in one line, unless --recompute.
    capsys.readouterr()
    assert _refresh(base, "killed", 2, "refresh.seed=5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (refresh.seed" in err[0] and "--recompute" in err[0]
    # --recompute redoes it with the new seed: the round folders are made again.
    assert _refresh(base, "killed", 1, "refresh.seed=5", "--recompute") == 0
    redone = _state(base, "killed")["rounds"]
    assert [r["round"] for r in redone] == [0, 1] and redone[0]["student_id"] == two_rounds["rounds"][0]["student_id"]
    assert redone[1]["student_id"] != two_rounds["rounds"][1]["student_id"]
    assert not (base["root"] / "runs" / "killed" / "round-02").exists()


def test_full_n_measures_every_round_at_full_n_without_the_skip(tmp_path):
    """refresh.full_n (default): the round runs ask the teacher for all n samples of every
    prompt, so the store serves every later round; off: the run's own delta policy."""
    from pipeline.core.config import config_from_dict
    from pipeline.refresh import round_config

    raw = {"run": {"name": "b", "root": str(tmp_path)},
           "models": {"teacher": {"model": str(REPO / "models/chartworld/teacher")},
                      "student": {"model": str(REPO / "models/chartworld/student")}},
           "rewrite": {"enabled": True}, "delta": {"adaptive": True, "skip_solved": 1.0}}
    cfg = config_from_dict(raw)
    r1 = round_config(cfg, tmp_path / "b-refresh", 1, str(REPO / "models/chartworld/teacher"))
    assert (r1.delta.adaptive, r1.delta.skip_solved, r1.rewrite.enabled) == (False, None, False)
    assert r1.run_dir == tmp_path / "b-refresh" / "round-01"
    assert r1.models.student.model == str(REPO / "models/chartworld/teacher")
    own = round_config(config_from_dict(raw, ["refresh.full_n=false"]), tmp_path / "x", 2, cfg.models.student.model)
    assert (own.delta.adaptive, own.delta.skip_solved) == (True, 1.0)


def test_status_of_a_refresh_folder_lists_its_rounds(base, two_rounds, tmp_path, capsys):
    top = base["root"] / "runs" / "full"
    assert cli(["status", "--run", str(top)]) == 0
    out = capsys.readouterr().out
    assert "3 round(s) measured, 1 OPD steps per round" in out
    assert [line.split(":")[0].strip() for line in out.splitlines()[1:]] == \
        ["round 0", "round 1", "round 2"]
    assert "round 2: zero-delta" in out and "teacher drawn 0 served 24" in out
    # A round trained but not yet measured: its stages, from the round's run folder.
    copy = tmp_path / "copy"
    shutil.copytree(top, copy)
    state = json.loads((copy / "refresh.json").read_text())
    state["rounds"][2].update(complete=False)
    (copy / "refresh.json").write_text(json.dumps(state))
    assert cli(["status", "--run", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "round 2: trained, not measured yet" in out
    assert "02-mine      complete  shards 2/2, rows 6" in out
