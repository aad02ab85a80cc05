"""Nothing half-written or private leaves the machine: a real run (tiny real models, the
transformers engine, in-process execution) through the CLI, then stage 6 killed while it
writes, `push` refusing, the rerun, and the push proceeding to the Hub stand-in.

Also here, on the same run: the card is built from the manifests of the stages that made
the data (stage 6 rerun alone with another `sampling.n` does not change it), and neither
a credential in a config value nor a local absolute path reaches the card.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import tests.fixtures_datasets as fx
from pipeline.cli import main as cli
from pipeline.runner.run import Manifest
from tests.hub_standin import HubStandIn, real_client_for_standin  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECRET = "tok3nS3cr3tValue"
API_KEY = "sk-inline0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def built_run(tiny_models, tmp_path_factory):
    """A run whose stages 1-6 completed: (config path, run folder)."""
    root = tmp_path_factory.mktemp("push_safety")
    src = fx.write_jsonl(fx.chartqa_lmms_records(12), root / "seeds")
    teacher, student = tiny_models
    engine = {"engine": "transformers", "device": "cpu", "max_model_len": 512}
    cfg = {
        "run": {"name": "safe", "root": str(root / "runs"), "shard_size": 6},
        "execution": {"backend": "local"},
        "models": {
            # A credential in a URL and an API key written inline, where a careless config
            # might put them; the transformers engine ignores both, the card must too.
            "teacher": {**engine, "model": str(teacher),
                        "base_url": f"http://alice:{SECRET}@10.0.0.5:8000/v1",
                        "extra_body": {"api_key": API_KEY}},
            "student": {**engine, "model": str(student)},
        },
        "ingest": {"sources": [{"name": "charts", "format": "chartqa_lmms", "path": str(src),
                                "split": "train", "license": "cc-by-4.0"}]},
        "sampling": {"n": 3, "max_tokens": 4, "instruction": ""},
        "delta": {"k": 3, "bootstrap": 10},
        "filter": {"threshold": 0.0},
        "assemble": {"validation_fraction": 0.25},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for n in (1, 2, 4, 5, 6):
        assert cli(["stage", str(n), "--config", str(path)]) == 0, f"stage {n} failed"
    return path, root / "runs" / "safe"


def _card(run_dir: Path) -> str:
    return (run_dir / "06-assemble" / "dataset" / "README.md").read_text()


def _config_block(card: str) -> dict:
    return yaml.safe_load(card.split("```yaml\n", 1)[1].split("```", 1)[0])


def test_card_holds_no_credentials_or_local_paths(built_run, tiny_models):
    _, run_dir = built_run
    card = _card(run_dir)
    assert SECRET not in card and API_KEY not in card and "alice" not in card
    assert "http://<redacted>@10.0.0.5:8000/v1" in card
    # Local absolute paths (the tmp models, the seed file) appear by their last part only.
    for local in (str(tiny_models[0]), str(tiny_models[1]), str(run_dir.parent.parent)):
        assert local not in card
    config = _config_block(card)
    assert config["04-delta"]["models.teacher"]["model"] == Path(tiny_models[0]).name
    assert config["01-ingest"]["ingest"]["sources"][0]["path"] == "data.jsonl"


def test_card_describes_the_data_not_todays_config(built_run):
    path, run_dir = built_run
    before = _config_block(_card(run_dir))
    assert before["02-mine"]["sampling"]["n"] == before["04-delta"]["sampling"]["n"] == 3
    # Stage 6 does not hash sampling, so it reruns (finalize rewrites the card) without
    # refusing; the data was still drawn with n=3.
    assert cli(["stage", "6", "--config", str(path), "sampling.n=2", "delta.k=1",
                "delta.metric=tv"]) == 0
    card = _card(run_dir)
    after = _config_block(card)
    assert after == before
    assert "Δ (jsd)" in card and "Δ (tv)" not in card
    man = Manifest.read(run_dir / "06-assemble")
    assert man.status == "complete" and set(man.config) == {
        "assemble", "models.teacher.model", "models.student.model"}


def _kill_while_stage_6_writes(path: Path, run_dir: Path, moment: str) -> bool:
    """Rerun stage 6 in a process group of its own and SIGKILL it at ``moment``: "start"
    (its manifest says "running" again), "dataset" or "saved" (that folder is being built
    in its temp folder). False when the stage ended before the moment was seen."""
    stage_dir = run_dir / "06-assemble"
    manifest = stage_dir / "manifest.json"
    before = manifest.stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "stage", "6", "--config",
                             str(path)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while proc.poll() is None:
        assert time.monotonic() - t0 < 120, "stage 6 never got there"
        try:
            if moment == "start":
                hit = (manifest.stat().st_mtime_ns != before
                       and json.loads(manifest.read_text())["status"] == "running")
            else:
                hit = any(n.startswith(f".{moment}.") for n in os.listdir(stage_dir))
        except (OSError, ValueError):
            hit = False
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.001)
    return False


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("real_client_for_standin")
def test_killed_stage_6_cannot_be_pushed_and_the_rerun_can(built_run, capsys, monkeypatch):
    path, run_dir = built_run
    stage_dir = run_dir / "06-assemble"
    dataset = stage_dir / "dataset"
    push = ["push", "--run", str(run_dir), "--repo-id", "me/safe", "--dry-run"]
    previous = {p.relative_to(dataset).as_posix(): p.read_bytes()
                for p in dataset.rglob("*") if p.is_file()}

    # A file changed after stage 6 wrote it (the 652 unreadable bytes of the report).
    train = dataset / "data" / "train-00000-of-00001.parquet"
    good = train.read_bytes()
    train.write_bytes(good[:652])
    capsys.readouterr()
    assert cli(push) == 2
    err = capsys.readouterr().err
    assert "refusing to push" in err and "train-00000-of-00001.parquet differs" in err
    assert len(err.strip().splitlines()) == 1
    train.write_bytes(good)

    for moment in ("start", "dataset", "saved"):
        # The temp folders live for tens of ms; should a busy machine miss one, try again.
        assert any(_kill_while_stage_6_writes(path, run_dir, moment) for _ in range(3))
        assert Manifest.read(stage_dir).status == "running"
        capsys.readouterr()
        assert cli(["status", "--run", str(run_dir)]) == 0
        out = capsys.readouterr().out
        assert "06-assemble  crashed" in out and "rerun" in out
        assert cli(push) == 2
        err = capsys.readouterr().err
        assert "refusing to push" in err and "06-assemble is crashed" in err
        # What the crash left: the previous complete dataset (byte for byte: same rows,
        # same card) or, between the two renames, none; never a half-written one.
        if dataset.exists():
            now = {p.relative_to(dataset).as_posix(): p.read_bytes()
                   for p in dataset.rglob("*") if p.is_file()}
            assert now == previous
        assert not [p for p in stage_dir.rglob("*.parquet")
                    if "dataset" in p.parts and pq.ParquetFile(p).metadata.num_rows == 0]

    assert cli(["stage", "6", "--config", str(path)]) == 0
    assert not list(stage_dir.glob(".*.tmp")), "the rerun clears what the kill left"
    assert cli(["status", "--run", str(run_dir)]) == 0
    assert "06-assemble  complete" in capsys.readouterr().out
    assert cli(push) == 0
    assert "DRY RUN" in capsys.readouterr().out

    token = "hf_standinSECRETtoken0123456789abcdef"
    with HubStandIn(expected_token=token, hold_timeout_s=20) as standin:
        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.setenv("HF_ENDPOINT", standin.endpoint)
        assert cli(push[:-1]) == 0
        sent = standin.files("me/safe")
    local = {p.relative_to(dataset).as_posix(): p.read_bytes()
             for p in dataset.rglob("*") if p.is_file()}
    assert {k: v for k, v in sent.items() if k != ".gitattributes"} == local
