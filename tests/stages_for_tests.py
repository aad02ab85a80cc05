"""Small real stages for testing the runner (resume, locking, Ray failures).

They go through exactly the same runner, executor and shard IO as the real stages; only
their `process` is trivial, so a test can predict every row.
"""

from __future__ import annotations

import os
import sys
import time

import pyarrow as pa

from pipeline.core.config import config_from_dict
from pipeline.core.errors import DataError
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.runner.run import run_lock, run_stage
from pipeline.runner.stage import ShardOutput, ShardTask, Stage, StageRegistry

EXTRA = [pa.field("value", pa.int64())]


class CountingStage(Stage):
    """Source stage: shard i holds rows i*10 .. i*10+9 (shard 0 skips one row, counted).
    Shards in ``fail`` raise a bug (ValueError); in ``fail_user``, a user's error."""

    number = 1
    name = "count"
    config_keys = ["run.shard_size"]

    def __init__(self, n_shards: int = 12, fail: tuple[int, ...] = (), sleep: float = 0.0,
                 fail_user: tuple[int, ...] = ()):
        self.n_shards, self.fail, self.sleep = n_shards, set(fail), sleep
        self.fail_user = set(fail_user)

    def plan(self, cfg, input_indices):
        return [ShardTask(index=i, payload={"start": i * 10}) for i in range(self.n_shards)]

    def process(self, cfg, state, task, table):
        time.sleep(self.sleep)
        if task.index in self.fail:
            raise ValueError(f"boom in shard {task.index}")
        if task.index in self.fail_user:
            raise DataError("the counting source data/count.txt is unreadable; restore it")
        rows, skipped = [], {}
        for v in range(task.payload["start"], task.payload["start"] + 10):
            if v == 3:
                skipped["unlucky"] = skipped.get("unlucky", 0) + 1
                continue
            row = make_prompt_row(source="count", question=f"what is {v}?", image_bytes=None,
                                  answers=[str(v)])
            row["value"] = v
            rows.append(row)
        return ShardOutput(rows_to_table(rows, EXTRA), skipped=skipped, stats={"pid": os.getpid()})


class DoublingStage(Stage):
    """Downstream stage: doubles `value`, one output shard per input shard."""

    number = 2
    name = "double"
    input_stage = "count"
    config_keys = ["sampling.n"]

    def process(self, cfg, state, task, table):
        vals = [v * cfg.sampling.n for v in table.column("value").to_pylist()]
        return ShardOutput(table.set_column(table.schema.get_field_index("value"), "value",
                                            pa.array(vals, pa.int64())))


class OptionalStage(DoublingStage):
    """An optional stage (like rewrite): on only when ``rewrite.enabled``."""

    number = 2
    name = "optional"

    def enabled(self, cfg):
        return cfg.rewrite.enabled


class AfterOptionalStage(DoublingStage):
    """Reads the optional stage when it is on, else the source stage (like delta)."""

    number = 3
    name = "after"

    def upstream(self, cfg):
        return "optional" if cfg.rewrite.enabled else "count"


def run_counting(root: str, name: str, backend: str, sleep: float) -> None:
    """Entry point for subprocess tests: run CountingStage under the run lock."""
    cfg = config_from_dict({"run": {"name": name, "root": root}, "execution": {"backend": backend}})
    stage = CountingStage(sleep=sleep)
    with run_lock(cfg.run_dir):
        run_stage(cfg, stage, StageRegistry([stage]), progress=False)


if __name__ == "__main__":
    run_counting(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
