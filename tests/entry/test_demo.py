"""`make demo`'s job, at small size: the demo config, the committed chart-world toy models,
vLLM on the CPU, every stage, and the printed summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.demo import main as demo

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_demo_config_runs_end_to_end_at_small_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the config's model paths are relative to the repo root
    overrides = [f"run.root={tmp_path / 'runs'}", f"ingest.sources.0.path={tmp_path / 'seeds'}",
                 "ingest.sources.0.limit=12", "run.shard_size=6", "sampling.n=2", "delta.k=1",
                 "filter.threshold=0.0"]
    assert demo(["--config", "configs/demo.yaml", *overrides]) == 0
    out = capsys.readouterr().out
    assert "== demo summary ==" in out and "zero-delta fraction" in out
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert summary["stages"]["01-ingest"]["rows"] == 12
    assert summary["stages"]["04-delta"]["rows"] == 12
    assert Path(summary["dataset"], "README.md").is_file()
    assert Path(summary["delta_histogram"]).stat().st_size > 0
