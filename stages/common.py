"""What the model-using stages share: engine placement, sampling a table, new columns."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Sampled:
    texts: list[str]
    answers: list[str | None]
    error: str | None = None


def sample_table(engine, table: pa.Table, cfg, n: int, seed_offset: int = 0) -> list[Sampled]:
    """Sample `n` answers per row with the run's sampling settings; extract final answers."""
    from pipeline.answers import extract_answer
    from pipeline.audit import requests_from_table

    if n <= 0 or table.num_rows == 0:
        return [Sampled([], []) for _ in range(table.num_rows)]
    d = cfg.delta
    requests = requests_from_table(table, instruction=d.instruction)
    results = engine.sample(requests, n=n, temperature=d.temperature, top_p=d.top_p,
                            max_tokens=d.max_tokens, seed=d.seed + seed_offset)
    choices = table.column("choices").to_pylist()
    out = []
    for res, ch in zip(results, choices):
        if res.error:
            out.append(Sampled([], [], res.error))
            continue
        texts = [c.text for c in res.completions]
        out.append(Sampled(texts, [extract_answer(t, ch or None) for t in texts]))
    return out


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
