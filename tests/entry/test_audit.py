"""`deltaprompts audit` end to end on the tiny Qwen3-VL pair with the real vLLM engine."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.audit import run_audit
from pipeline.core.config import DeltaConfig, EngineConfig, SamplingConfig
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.sampling.measure import DELTA_COLUMNS
from tests.engine_fixtures import image_bytes, make_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_run_audit_end_to_end_on_tiny_models_with_vllm(tiny_models, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    teacher_dir, student_dir = tiny_models
    rows = [make_prompt_row(source=["chartqa", "docvqa"][i % 2], question=f"What is bar {i}?",
                            image_bytes=image_bytes(make_image(i, (64, 48))), answers=[str(i)],
                            skill=["read", "compare"][i % 2]) for i in range(5)]
    rows.append(make_prompt_row(source="chartqa", question="Broken?", image_bytes=PNG_MAGIC + b"broken"))
    table = rows_to_table(rows)
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    engine = {"engine": "vllm", "enforce_eager": True, "max_model_len": 512}
    sampling, delta = SamplingConfig(n=4, max_tokens=12), DeltaConfig(k=2, bootstrap=20)

    summary = run_audit(tmp_path / "data", EngineConfig(**engine, model=str(teacher_dir)),
                        EngineConfig(**engine, model=str(student_dir)), sampling, delta,
                        tmp_path / "out")

    out = tmp_path / "out"
    assert (out / "delta_hist.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "audit.json").read_text()) == json.loads(json.dumps(summary, default=str))
    per = pq.read_table(out / "audit.parquet")
    assert "image" not in per.column_names and set(DELTA_COLUMNS) <= set(per.column_names)
    scored = per.to_pylist()
    assert [r["id"] for r in scored] == table.column("id").to_pylist()[:5]  # the broken one left out
    assert summary["overall"]["prompts"] == 5 and summary["errors"]["count"] == 1
    assert summary["errors"]["examples"][0]["error"].startswith("student:")
    for r in scored:
        assert len(r["student_answers"]) == 4  # the student drew its full n first
        # k=2, then unanimity (clamped to n=4) or a fixed decision, or the full n.
        assert (len(r["teacher_answers"]) < 4) == (r["stop_reason"] is not None)
        assert len(r["teacher_answers"]) >= 2
        assert 0.0 <= r["delta"] <= 1.0 and r["delta_low"] <= r["delta_high"]
    zero = sum(r["zero_delta"] for r in scored)
    assert summary["overall"]["zero_delta"] == zero
    assert sum(g["prompts"] for g in summary["by_source"].values()) == 5
    assert summary["samples"]["teacher_drawn"] == sum(len(r["teacher_answers"]) for r in scored)
    assert summary["samples"]["student_drawn"] == 5 * 4  # the broken image fails before sampling
    assert summary["samples"]["full_budget"] == 2 * 4 * 6
