"""Write a chart-world seed set in the lmms-lab/ChartQA Parquet layout.

Columns: ``question``, ``answer`` (str), ``type``, ``image`` (HF ``Image`` struct
``{bytes, path}``) as in ChartQA, plus ``skill`` and, for provenance and tests,
``family``, ``chart`` (the underlying data as JSON) and ``reasoning``. The file carries
the ``huggingface`` schema metadata, so ``datasets.load_dataset("parquet", ...)`` decodes
``image`` as an Image. File name follows the Hub convention
(``data/<split>-00000-of-00001.parquet``) so the split is inferred from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.schema import IMAGE_TYPE, with_hf_metadata
from seeds.chartworld.generator import generate
from seeds.chartworld.spec import WorldConfig

SCHEMA = with_hf_metadata(pa.schema([
    pa.field("question", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("type", pa.string()),
    pa.field("image", IMAGE_TYPE),
    pa.field("skill", pa.string()),
    pa.field("family", pa.string()),
    pa.field("chart", pa.string()),
    pa.field("reasoning", pa.string()),
]))


def build_table(cfg: WorldConfig, n: int, seed: int = 0, start: int = 0) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for ex in generate(cfg, n, seed, start):
        cols["question"].append(ex.qa.question)
        cols["answer"].append(ex.qa.answer)
        cols["type"].append(f"chartworld_{ex.chart.kind}")
        cols["image"].append({"bytes": ex.image, "path": f"chartworld_{seed}_{ex.index}.png"})
        cols["skill"].append(ex.qa.skill)
        cols["family"].append(ex.qa.family)
        cols["chart"].append(ex.chart.to_json())
        cols["reasoning"].append(ex.qa.reasoning)
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def write_seed_set(out_dir: str | Path, cfg: WorldConfig, n: int, seed: int = 0,
                   split: str = "test", start: int = 0) -> Path:
    """Write ``n`` examples; returns the Parquet path. Also writes ``chartworld.json``
    (world config, seed, range) beside it so the set can be regenerated exactly."""
    out = Path(out_dir)
    path = out / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = build_table(cfg, n, seed, start)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    (out / "chartworld.json").write_text(json.dumps(
        {"generator": "seeds.chartworld", "seed": seed, "start": start, "n": n, "split": split,
         "world": asdict(cfg)}, indent=2, sort_keys=True) + "\n")
    return path
