"""The prepared GPU check's dry run: every step of benchmarks/gpu_check.sh at tiny sizes on
the CPU, through the same script (its dependency check, time limits and result files)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_writes_its_results(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, timeout=1500,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["dry_run"] and r["engine"] == "transformers" and r["model"]["params"] > 0
    assert [(s["step"], s["status"]) for s in r["steps"]] == [("engines", "ok"), ("delta", "ok"), ("opd", "ok")]
    assert "(dry run, CPU, tiny sizes)" in (out / "summary.md").read_text()

    engines = json.loads((out / "engines_2b.json").read_text())
    assert engines["workload"]["prompts"] == 4 and engines["results"][0]["output_tokens"] == 4 * 2 * 4

    delta = json.loads((out / "delta_overhead_2b.json").read_text())
    assert delta["engine"] == "transformers" and delta["bare"]["teacher"]["engine"] == "transformers"
    bare, off, on = delta["summary"]["rows"]
    assert bare["samples"] == 2 * 4 * 2  # teacher and student, 4 prompts, n=2
    assert off["samples"] == bare["samples"] and 0 < on["samples"] <= off["samples"]
    assert off["with_startup_s"] is None  # no CLI (Ray) side on the GPU machine
    assert {p["part"] for p in delta["local"]["profile_adaptive_false"]["parts"]} >= {"answer extraction"}

    opd = json.loads((out / "opd_step_2b.json").read_text())
    assert opd["ours"]["median"]["steps_measured"] == 1 and opd["ours"]["median"]["tokens"] > 0
    if r["trl"]:  # TRL's trainer ran the same step on our Qwen3-VL with images
        assert opd["trl"]["median"]["tokens"] > 0 and opd["ratio_tokens_per_s"] > 0
