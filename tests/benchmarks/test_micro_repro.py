"""The micro-reproduction's report: figures computed from the runs, never written by hand."""

from __future__ import annotations

from benchmarks.micro_repro import reading, write_results


def _summary(overall: float) -> dict:
    return {"overall": overall, "n": 10, "no_answer": 0,
            "by_skill": {"arithmetic": overall / 2, "retrieval": overall}, "by_source": {}}


def _results() -> dict:
    arms = {"high_delta": [0.40, 0.42, 0.44], "random": [0.30, 0.31, 0.32],
            "zero_delta": [0.30]}
    return {
        "baseline": {"student": _summary(0.30), "teacher": _summary(0.60)},
        "arms": {a: [{"seed": i, **_summary(v)} for i, v in enumerate(vals)]
                 for a, vals in arms.items()},
        "config": {"steps": 60, "prompts_per_step": 8, "rollouts": 4, "prompts": 64,
                   "loss": "gjsd", "beta": 1.0, "lr": 3e-4, "heldout_n": 10},
        "seconds": 1.0, "machine": "test",
    }


def test_reading_reports_gains_and_the_high_delta_comparison():
    lines = reading(_results())
    assert "- high_delta: +0.120 overall vs the untrained student (3 seeds)" in lines
    assert "- random: +0.010 overall vs the untrained student (3 seeds)" in lines
    comp = [x for x in lines if x.startswith("- high_delta - random")]
    assert comp and "+0.110" in comp[0]
    t = float(comp[0].split("t = ")[1].rstrip(")"))
    # diff 0.11; se = sqrt(0.0004 / 3 + 0.0001 / 3) = 0.0129 -> t = 8.52
    assert abs(t - 8.52) < 0.01
    # a single-seed arm has no variance: no t-test line for it
    assert not any(x.startswith("- high_delta - zero_delta") for x in lines)


def test_write_results_writes_table_settings_and_reading(tmp_path):
    write_results(_results(), tmp_path / "mr", "python -m benchmarks.micro_repro --x")
    md = (tmp_path / "mr.md").read_text()
    assert "| high_delta | 0.420 ± 0.020 |" in md
    assert "loss gjsd (beta 1.0), lr 0.0003" in md
    assert "## Reading" in md and (tmp_path / "mr.json").is_file()
