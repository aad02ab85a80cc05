"""Stage 4 for a second student beside the same teacher: the teacher's samples come from the
sample store, none is drawn, and the teacher is never loaded (real transformers engines on
the committed chart-world models; the second student is a perturbed copy of the first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import config_from_dict
from pipeline.engines import build_engine
from pipeline.runner.run import run_stage
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from stages import REGISTRY
from tools.compare_runs import stage_table
from tools.perturb_model import perturb

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[2] / "models" / "chartworld"


def _cfg(root: Path, name: str, student: Path, store: Path):
    engine = {"engine": "transformers", "device": "cpu", "batch_size": 16}
    return config_from_dict({
        "run": {"name": name, "root": str(root / "runs"), "shard_size": 8, "cache_dir": str(store)},
        "execution": {"backend": "local"},
        "models": {"teacher": {**engine, "model": str(MODELS / "teacher")},
                   "student": {**engine, "model": str(student)}},
        "ingest": {"sources": [{"name": "chartworld", "format": "chartworld",
                                "path": str(root / "seeds"), "split": "test"}]},
        "sampling": {"n": 4, "max_tokens": 40, "temperature": 1.0},
        # every prompt gets all n teacher samples, whichever student: the store can hold
        # all a second student's measurement needs
        "delta": {"adaptive": False, "bootstrap": 0, "skip_solved": None},
    })


def _measure(cfg) -> dict:
    for name in ("ingest", "mine", "delta"):
        man = run_stage(cfg, REGISTRY.by_name(name), REGISTRY, progress=False)
    return man.report


def test_a_second_student_draws_no_teacher_samples(tmp_path, monkeypatch):
    write_seed_set(tmp_path / "seeds", WorldConfig(), 12, seed=5, split="test")
    store = tmp_path / "store"
    first = _measure(_cfg(tmp_path, "a", MODELS / "student", store))
    assert first["samples"]["teacher_drawn"] == 12 * 4 and first["samples"]["teacher_served"] == 0

    # the second student: new weights, so its own samples are drawn, and its config hash differs
    student_b = perturb(MODELS / "student", tmp_path / "student_b", scale=0.05)
    built = []  # the models stage 2 and 4 load
    monkeypatch.setattr("stages.common.build_engine",
                        lambda cfg: built.append(Path(cfg.model).name) or build_engine(cfg))
    cfg_b = _cfg(tmp_path, "b", student_b, store)
    second = _measure(cfg_b)
    assert second["samples"]["teacher_drawn"] == 0
    assert second["samples"]["teacher_served"] == 12 * 4
    assert "teacher" not in built and "student_b" in built  # the teacher was never loaded

    rows_a = {r["id"]: r for r in stage_table(tmp_path / "runs" / "a" / "04-delta").to_pylist()}
    rows_b = {r["id"]: r for r in stage_table(tmp_path / "runs" / "b" / "04-delta").to_pylist()}
    assert rows_a.keys() == rows_b.keys()
    for pid, row in rows_b.items():  # the same teacher samples, a different student's
        assert row["teacher_samples"] == rows_a[pid]["teacher_samples"]
    assert any(rows_b[p]["student_samples"] != rows_a[p]["student_samples"] for p in rows_b)
    mine_b = run_stage(cfg_b, REGISTRY.by_name("mine"), REGISTRY, progress=False).report
    assert mine_b["samples"]["student_drawn"] == 12 * 4  # resumed: complete, nothing redrawn
