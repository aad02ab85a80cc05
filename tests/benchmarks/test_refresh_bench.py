"""benchmarks/refresh.py: the paired comparison and the results file, on made-up records
shaped like refresh.json rounds and static results (the runs themselves are tested in
tests/entry/test_refresh.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.refresh import paired, stats, write_results


def _held(overall: float, skill: float) -> dict:
    return {"overall": overall, "by_skill": {"arithmetic": skill, "counting": 0.8}, "n": 10,
            "seconds": 1.0}


def _records(gains: list[float]) -> tuple[dict, dict]:
    refresh, static = {}, {}
    for seed, g in enumerate(gains):
        rounds = [{"round": r, "steps": 2 * r, "pool": 100, "kept": 60 - 5 * r,
                   "zero_delta_fraction": 0.4 + 0.05 * r,
                   "zero_delta_by_skill": {"arithmetic": 0.1 * r, "counting": 0.9},
                   "samples": {"teacher_drawn": 0 if r else 300, "teacher_served": 800 if r else 500,
                               "student_drawn": 800 if r else 0, "student_served": 0 if r else 800},
                   "train_s": 1.0, "measure_s": 2.0, "heldout": _held(0.5 + 0.1 * r + g * r, 0.2 + g)}
                  for r in range(3)]
        refresh[seed] = {"rounds": rounds, "wall_s": 9.0}
        static[seed] = {"heldout": {str(r): _held(0.5 + 0.1 * r, 0.2) for r in (1, 2)}, "wall_s": 4.0}
    return refresh, static


def test_stats_pair_refresh_round_r_with_static_at_the_same_steps():
    refresh, static = _records([0.02, 0.021, 0.022])
    out = stats(refresh, static, 2)
    assert out["2"]["refresh"] == pytest.approx(0.7 + 0.042)
    assert out["2"]["static"] == pytest.approx(0.7)
    assert out["2"]["test"]["diff"] == pytest.approx(0.042) and out["2"]["test"]["df"] == 2
    assert out["2"]["test"]["p"] < 0.05
    assert out["1"]["by_skill"]["arithmetic"]["test"]["diff"] == pytest.approx(0.021)
    assert out["1"]["by_skill"]["counting"]["test"]["diff"] == 0.0
    one = paired([0.7], [0.6])  # a one-seed smoke run: the difference, no test
    assert one["diff"] == pytest.approx(0.1) and one["df"] == 0


@pytest.mark.parametrize("gains, word", [([0.02, 0.021, 0.022], "beats"), ([-0.01, 0.0, 0.01], "does not beat")])
def test_the_results_say_the_verdict_first(tmp_path, gains, word):
    refresh, static = _records(gains)
    a = argparse.Namespace(rounds=2, steps=2, seeds=50, heldout="held", heldout_n=10, config="c.yaml",
                           seed_data="d",
                           run_name="b", train_config="o.yaml", threads=2, results=str(tmp_path / "r"))
    meta = {"command": "python -m benchmarks.refresh", "base_command": "python -m pipeline.demo",
            "machine": "test", "seconds": 1.0}
    write_results(a, meta, refresh[0]["rounds"][0], refresh, static, stats(refresh, static, 2))
    md = (tmp_path / "r.md").read_text().splitlines()
    assert md[2].startswith(f"**Refresh {word} static")
    assert "| 2 | 0.500 | 0.500, 0.500, 0.500 | 50 |" in md  # the pool's zero-delta, round 2
    assert any(line.startswith("| 1 | 0 | 800 | 800 | 0 |") for line in md)  # drawn vs served
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["comparison"]["2"]["test"]["df"] == 2
    assert (tmp_path / "r.png").stat().st_size > 0
