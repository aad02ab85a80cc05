"""The OPD-step benchmark runs the real trainer and writes consistent figures (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_opd import VARIANTS, main


@pytest.mark.slow
def test_bench_opd_writes_one_row_per_variant_from_the_trainers_metrics(tmp_path):
    out = tmp_path / "opd_step"
    assert main(["--steps", "2", "--prompts-per-step", "2", "--rollouts", "2", "--max-new-tokens", "8",
                 "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    assert [(r["mode"], r["loss"]) for r in rows] == [(m, loss) for m, loss, _ in VARIANTS]
    for r in rows:
        assert r["steps_measured"] == 1  # step 1 is warm-up and left out
        assert 0 < r["tokens"] <= 2 * 2 * 8 and 0 < r["gen_s"] < r["step_s"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"], rel=1e-6)
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| opd |") == 2 and md.count("\n| va_opd |") == 2
    assert result["meta"]["prompts"] == 4
    with pytest.raises(SystemExit):
        main(["--steps", "1", "--out", str(out)])
