"""`make demo`'s job, at small size: the demo config, the committed chart-world toy models,
vLLM on the CPU, every stage, the printed summary, the report, and a quiet terminal.

The demo runs as `make demo` runs it, in its own process, so what a person would see on
the terminal (stdout and stderr) is exactly what is captured here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
MAX_LINES = 40  # a bar and a line per stage, the summary, where the logs and report are


def test_demo_config_runs_end_to_end_quietly_with_the_engines_output_in_its_log(tmp_path):
    overrides = [f"run.root={tmp_path / 'runs'}", f"ingest.sources.0.path={tmp_path / 'seeds'}",
                 "ingest.sources.0.limit=12", "run.shard_size=6", "sampling.n=2", "delta.k=1",
                 "filter.threshold=0.0"]
    # cwd: the config's model paths are relative to the repo root
    # bytes, not text=True: universal newlines would turn a progress bar's \r into lines
    proc = subprocess.run([sys.executable, "-m", "pipeline.demo", "--config", "configs/demo.yaml",
                           *overrides], cwd=REPO, capture_output=True, timeout=1200)
    stdout, terminal = proc.stdout.decode(), (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, terminal
    assert "== demo summary ==" in stdout and "zero-delta fraction" in stdout
    # lines as a terminal (or `wc -l`) counts them: a progress bar redraws itself with \r
    lines = terminal.rstrip("\n").split("\n")
    assert len(lines) < MAX_LINES, terminal
    assert not [ln for ln in lines if "INFO" in ln or "EngineCore" in ln or "ShardWorker" in ln]
    for stage in ("01-ingest", "02-mine", "04-delta", "05-filter", "06-assemble"):
        assert re.search(rf"{stage}: \d+ rows, \d+ skipped", stdout), stage
    assert "03-rewrite: disabled in config" in stdout

    run_dir = tmp_path / "runs" / "demo"
    log = Path(re.search(r"^logs: (\S+)", stdout, re.M).group(1))
    assert log.parent == run_dir / "logs"
    logged = log.read_text()
    # the engines' start-up (vLLM, in the Ray workers and their engine processes) and Ray's own
    assert "EngineCore" in logged and "vllm" in logged.lower() and "Ray" in logged

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["01-ingest"]["rows"] == 12
    assert summary["stages"]["04-delta"]["rows"] == 12
    assert Path(summary["dataset"], "README.md").is_file()
    assert Path(summary["delta_histogram"]).stat().st_size > 0
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
