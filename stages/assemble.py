"""Stage 6, assemble: the filtered prompts as a Hugging Face dataset with a card.

Writes, under `06-assemble/`:
  dataset/            the Hub layout: README.md (card), data/<split>-00000-of-00001.parquet,
                      delta_hist.png — `datasets.load_dataset(<folder>)` reads it and
                      `deltaprompts push` uploads exactly this folder;
  saved/              the same DatasetDict via `save_to_disk` (`datasets.load_from_disk`).
The train/validation split is a seeded hash of the prompt id, so it is stable when rows
are added or the stage is rerun. The card's counts and column docs come from the
manifests of the stages that made the rows.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.errors import RunError
from pipeline.core.lazy import lazy
from pipeline.core.reports import write_text
from pipeline.core.schema import add_columns, hf_features, with_hf_metadata
from pipeline.data.card import CardInfo, SourceInfo, StageCount, render_card
from pipeline.runner.run import producing_chain, versions
from pipeline.runner.stage import ShardOutput, ShardTask, Stage

datasets = lazy("datasets")

SPLIT_COLUMN = "subset"


def assign_split(prompt_id: str, validation_fraction: float, seed: int) -> str:
    h = int(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if h < validation_fraction else "train"


class AssembleStage(Stage):
    number = 6
    name = "assemble"
    input_stage = "filter"
    config_keys = ["assemble", "models.teacher.model", "models.student.model"]

    def plan(self, cfg, input_indices):
        return [ShardTask(index=0, input_shards=list(input_indices))]

    def process(self, cfg, state, task, table):
        a = cfg.assemble
        subset = [assign_split(i, a.validation_fraction, a.seed) for i in table.column("id").to_pylist()]
        return ShardOutput(add_columns(table, {SPLIT_COLUMN: (pa.string(), subset)}))

    def finalize(self, cfg, stage_dir, tables):
        table = pa.concat_tables(tables, promote_options="default")
        return write_dataset(cfg, stage_dir, table)


def write_dataset(cfg, stage_dir: Path, table: pa.Table) -> dict:
    out = stage_dir / "dataset"
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    split_rows, split_bytes = {}, {}
    for split in ("train", "validation"):
        part = table.filter(pc.equal(table.column(SPLIT_COLUMN), split)).drop_columns([SPLIT_COLUMN])
        part = part.replace_schema_metadata(with_hf_metadata(part.schema).metadata)
        if part.num_rows == 0:
            continue
        pq.write_table(part, out / "data" / f"{split}-00000-of-00001.parquet", compression="zstd")
        split_rows[split] = part.num_rows
        split_bytes[split] = part.nbytes
    if not split_rows:
        raise RunError("assemble: the filter stage kept no prompts; lower filter.threshold or add seeds")

    # Counts per stage and column docs, from the manifests of the stages that made the rows.
    # (This stage's own manifest, written before its shards ran, names its upstream.)
    chain = producing_chain(cfg.run_dir, stage_dir.name)[:-1]
    counts, column_docs, delta_info = [], {}, {}
    for man in chain:
        column_docs.update(man.columns)
        counts.append(StageCount(stage=man.stage, rows_in=man.rows + sum(man.skipped.values()),
                                 rows_out=man.rows, skipped=man.skipped))
        hist = cfg.run_dir / man.stage / "delta_hist.png"
        if hist.is_file():
            delta_info = man.report
            shutil.copy(hist, out / "delta_hist.png")
    sources = table.column("source").to_pylist()
    info = CardInfo(
        teacher=cfg.models.teacher.model,
        student=cfg.models.student.model,
        split_rows=split_rows,
        split_bytes=split_bytes,
        features=hf_features(table.drop_columns([SPLIT_COLUMN]).schema),
        stage_counts=counts,
        sources=[SourceInfo(name=s.label, license=s.license or "unknown",
                            origin=s.hub_id or s.path or "", rows=sources.count(s.label))
                 for s in cfg.ingest.sources],
        column_docs=column_docs,
        config=cfg.to_dict(),
        pretty_name=cfg.assemble.pretty_name,
        license=cfg.assemble.license,
        delta_metric=cfg.delta.metric,
        delta_threshold=cfg.delta.threshold,
        measured_prompts=delta_info.get("prompts"),
        zero_delta_prompts=delta_info.get("zero_delta"),
        delta_histogram="delta_hist.png" if (out / "delta_hist.png").is_file() else None,
        versions=versions(),
    )
    write_text(out / "README.md", render_card(info))

    saved = stage_dir / "saved"
    if saved.exists():
        shutil.rmtree(saved)
    ds = datasets.load_dataset("parquet", data_files={s: str(out / "data" / f"{s}-*.parquet")
                                                      for s in split_rows})
    ds.save_to_disk(str(saved))
    return {"dataset": str(out), "saved": str(saved), "splits": split_rows}
