"""Stage 6, assemble: the filtered prompts as a Hugging Face dataset with a card.

Writes, under `06-assemble/`:
  dataset/            the Hub layout: README.md (card), data/<split>-00000-of-00001.parquet,
                      delta_hist.png — `datasets.load_dataset(<folder>)` reads it and
                      `deltaprompts push` uploads exactly this folder;
  saved/              the same DatasetDict via `save_to_disk` (`datasets.load_from_disk`).
The train/validation split is a seeded hash of the prompt id, so it is stable when rows
are added or the stage is rerun. The card's counts, column docs and config come from the
manifests of the stages that made the rows. Both folders are built beside and renamed
into place, and the dataset's files are hashed into the manifest for `push` to check.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import shards
from pipeline.core.config import SourceConfig
from pipeline.core.configschema import to_dict
from pipeline.core.errors import RunError
from pipeline.core.lazy import lazy
from pipeline.core.safe_delete import DeleteGuard
from pipeline.core.schema import add_columns, hf_features, with_hf_metadata
from pipeline.data.card import CardInfo, SourceInfo, StageCount, render_card
from pipeline.runner.run import Manifest, producing_chain, versions
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
    outputs = ("dataset", "saved")

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
    """Build `dataset/` and `saved/` in temp folders beside them, then rename each into
    place: a crash leaves the previous complete folder or none, never half of one. The
    files of `dataset/` are hashed into the report (the manifest), and `push` sends only
    files that still match."""
    guard = DeleteGuard(cfg.run.root, cfg.run_dir, AssembleStage.outputs)
    out = stage_dir / "dataset"
    built = shards.temp_dir_beside(out)
    try:
        split_rows, split_bytes = _write_splits(built, table)
        (built / "README.md").write_text(_card(cfg, stage_dir, built, table, split_rows,
                                               split_bytes), encoding="utf-8")
        files = {p.relative_to(built).as_posix(): shards.file_sha256(p)
                 for p in sorted(built.rglob("*")) if p.is_file()}
        shards.replace_dir(built, out, guard)
    except BaseException:
        guard.remove(built)
        raise

    saved = stage_dir / "saved"
    ds = datasets.load_dataset("parquet", data_files={s: str(out / "data" / f"{s}-*.parquet")
                                                      for s in split_rows})
    built = shards.temp_dir_beside(saved)
    try:
        ds.save_to_disk(str(built))
        shards.replace_dir(built, saved, guard)
    except BaseException:
        guard.remove(built)
        raise
    return {"dataset": str(out), "saved": str(saved), "splits": split_rows, "files": files}


def _write_splits(folder: Path, table: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    (folder / "data").mkdir(parents=True)
    split_rows, split_bytes = {}, {}
    for split in ("train", "validation"):
        part = table.filter(pc.equal(table.column(SPLIT_COLUMN), split)).drop_columns([SPLIT_COLUMN])
        part = part.replace_schema_metadata(with_hf_metadata(part.schema).metadata)
        if part.num_rows == 0:
            continue
        pq.write_table(part, folder / "data" / f"{split}-00000-of-00001.parquet", compression="zstd")
        split_rows[split] = part.num_rows
        split_bytes[split] = part.nbytes
    if not split_rows:
        raise RunError("assemble: the filter stage kept no prompts; lower filter.threshold or add seeds")
    return split_rows, split_bytes


def _card(cfg, stage_dir: Path, folder: Path, table: pa.Table, split_rows: dict[str, int],
          split_bytes: dict[str, int]) -> str:
    """The card, from the manifests of the stages that made the rows: their counts, their
    column docs and the config parts each one hashed (not today's config: stage 6 rerun
    alone with another `sampling.n` must not describe data drawn with the old one)."""
    # (This stage's own manifest, written before its shards ran, names its upstream.)
    chain = producing_chain(cfg.run_dir, stage_dir.name)
    counts, column_docs, delta_info = [], {}, {}
    for man in chain[:-1]:
        column_docs.update(man.columns)
        counts.append(StageCount(stage=man.stage, rows_in=man.rows + sum(man.skipped.values()),
                                 rows_out=man.rows, skipped=man.skipped))
        hist = cfg.run_dir / man.stage / "delta_hist.png"
        if hist.is_file():
            delta_info = man.report
            shutil.copy(hist, folder / "delta_hist.png")
    sources = table.column("source").to_pylist()
    source_cfgs = [SourceConfig(**s) for s in made_with(chain, "ingest.sources",
                                                        [to_dict(s) for s in cfg.ingest.sources])]
    info = CardInfo(
        teacher=made_with(chain, "models.teacher.model", cfg.models.teacher.model),
        student=made_with(chain, "models.student.model", cfg.models.student.model),
        split_rows=split_rows,
        split_bytes=split_bytes,
        features=hf_features(table.drop_columns([SPLIT_COLUMN]).schema),
        stage_counts=counts,
        sources=[SourceInfo(name=s.label, license=s.license or "unknown",
                            origin=s.hub_id or s.path or "", rows=sources.count(s.label))
                 for s in source_cfgs],
        column_docs=column_docs,
        config={man.stage: man.config or "not recorded" for man in chain},
        pretty_name=cfg.assemble.pretty_name,
        license=cfg.assemble.license,
        delta_metric=made_with(chain, "delta.metric", cfg.delta.metric),
        delta_threshold=made_with(chain, "delta.threshold", cfg.delta.threshold),
        measured_prompts=delta_info.get("prompts"),
        zero_delta_prompts=delta_info.get("zero_delta"),
        delta_histogram="delta_hist.png" if (folder / "delta_hist.png").is_file() else None,
        versions=chain[-1].versions or versions(),
    )
    return render_card(info)


_MISSING = object()


def made_with(chain: list[Manifest], dotted: str, default: Any) -> Any:
    """The value of config key ``dotted`` as the latest stage of ``chain`` that hashed it
    recorded it in its manifest; ``default`` when none did (manifests of older runs)."""
    for man in reversed(chain):
        for part, value in man.config.items():
            if dotted == part:
                return value
            if dotted.startswith(part + "."):
                found = value
                for key in dotted[len(part) + 1:].split("."):
                    found = found.get(key, _MISSING) if isinstance(found, dict) else _MISSING
                if found is not _MISSING:
                    return found
    return default
