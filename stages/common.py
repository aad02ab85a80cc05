"""What the model-using stages share: engine placement, sampling a table, new columns."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.stage import Resources

# The delta-config fields that decide how answers are sampled. Stages hash exactly these,
# so moving the Δ threshold never invalidates (expensive) samples.
SAMPLING_KEYS = ["delta.n", "delta.temperature", "delta.top_p", "delta.max_tokens",
                 "delta.seed", "delta.instruction"]


def engine_resources(*engine_cfgs) -> Resources:
    """One GPU per worker when a local-model engine runs on CUDA; CPU otherwise.

    An OpenAI-compatible engine needs no local accelerator, so it never reserves one.
    """
    local = [c for c in engine_cfgs if c is not None and c.engine != "openai"]
    wants_gpu = any(c.device not in ("cpu",) for c in local) and _cuda_available()
    return Resources(cpus=1.0, gpus=1.0 if wants_gpu else 0.0)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def draw(engine, table: pa.Table, cfg, counts: list[int], model: str, round_: int):
    """Sample `counts[i]` answers for row i with the run's sampling settings.

    Returns `pipeline.audit.Drawn` (texts, extracted answers, truncation, errors per row).
    """
    from pipeline.audit import draw_answers, requests_from_table

    requests = requests_from_table(table, instruction=cfg.delta.instruction)
    choices = [c or None for c in table.column("choices").to_pylist()]
    return draw_answers(engine, requests, counts, cfg.delta, choices, model=model, round_=round_)


def add_columns(table: pa.Table, columns: dict[str, tuple[pa.DataType, list[Any]]]) -> pa.Table:
    """Append (or replace) typed columns, keeping the HF metadata of the schema."""
    from pipeline.schema import with_hf_metadata

    for name, (dtype, values) in columns.items():
        arr = pa.array(values, type=dtype)
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, name, arr) if idx >= 0 else table.append_column(name, arr)
    return table.replace_schema_metadata(with_hf_metadata(table.schema).metadata)


def keep_rows(table: pa.Table, keep: list[bool]) -> pa.Table:
    return table.filter(pa.array(keep, type=pa.bool_()))
