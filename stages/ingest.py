"""Stage 1, ingest: seed sources -> canonical prompt shards.

Each source is split into record ranges of `run.shard_size`; a range is one Ray task.
Adapters (seeds/adapters.py) map records to canonical rows and report skips with a
reason; images are normalised once here (RGB, capped pixels, PNG). Duplicate ids — the
same image+question twice, within or across sources — keep their first occurrence in
shard order, so the result does not depend on which task finished first.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import shards
from pipeline.core.errors import RunError
from pipeline.core.schema import rows_to_table
from pipeline.runner.stage import ShardOutput, ShardTask, Stage
from seeds.adapters import count_source_rows, iter_source_rows
from seeds.sources import Skip


class IngestStage(Stage):
    number = 1
    name = "ingest"
    config_keys = ["ingest", "run.shard_size"]

    def plan(self, cfg, input_indices):
        if not cfg.ingest.sources:
            raise RunError("ingest.sources is empty: name at least one seed source in the config")
        tasks, size = [], cfg.run.shard_size
        for s, src in enumerate(cfg.ingest.sources):
            n = count_source_rows(src)  # also checks columns: a broken source fails here
            if n == 0:
                raise RunError(
                    f"source {src.label!r} ({src.hub_id or src.path}) has no records"
                    + (f" after sample={src.sample}/limit={src.limit}"
                       if src.sample is not None or src.limit is not None else "")
                    + f" in split {src.split!r}: check its path, split and limit")
            for start in range(0, n, size):
                tasks.append(ShardTask(index=len(tasks),
                                       payload={"source": s, "start": start, "stop": min(n, start + size)}))
        return tasks

    def process(self, cfg, state, task, table):
        src = cfg.ingest.sources[task.payload["source"]]
        rows, seen, skipped, skipped_rows = [], set(), {}, []
        for item in iter_source_rows(src, task.payload["start"], task.payload["stop"]):
            if isinstance(item, Skip):
                skipped[item.reason] = skipped.get(item.reason, 0) + 1
                # No row, so no content id: the record is named by its source and index.
                skipped_rows.append({"id": f"{src.label}#{item.index}", "reason": item.reason,
                                     "detail": item.detail})
                continue
            if item["id"] in seen:
                skipped["duplicate_id"] = skipped.get("duplicate_id", 0) + 1
                skipped_rows.append(_duplicate(item["id"], src.label))
                continue
            seen.add(item["id"])
            rows.append(item)
        return ShardOutput(rows_to_table(rows), skipped=skipped, skipped_rows=skipped_rows,
                           stats={"source": src.label, "records": task.payload["stop"] - task.payload["start"]})

    def finalize(self, cfg, stage_dir, tables):
        """Drop ids already seen in an earlier shard (rewrites only the shards affected)."""
        seen: set[str] = set()
        dropped = 0
        for index, table in enumerate(tables):
            ids = table.column("id").to_pylist()
            keep = [i not in seen for i in ids]
            seen.update(ids)
            if all(keep):
                continue
            marker = shards.read_marker(stage_dir, index)
            n_dup = keep.count(False)
            dropped += n_dup
            marker.skipped["duplicate_id"] = marker.skipped.get("duplicate_id", 0) + n_dup
            sources = table.column("source").to_pylist()
            skipped_rows = shards.read_skipped_rows(stage_dir, index) + [
                _duplicate(i, src, "an earlier shard") for i, src, k in zip(ids, sources, keep) if not k]
            shards.write_shard(stage_dir, marker, table.filter(pa.array(keep)), skipped_rows)
        return {"rows": len(seen), "cross_shard_duplicates": dropped}


def _duplicate(prompt_id: str, source: str, where: str = "this shard") -> dict:
    return {"id": prompt_id, "reason": "duplicate_id",
            "detail": f"same image and question as a row already kept from {where} (source {source})"}
