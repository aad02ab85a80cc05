"""Runs a stage's shard tasks: on Ray (local or RAY_ADDRESS) or in-process.

Workers are Ray actors so a model-using stage loads its engines once per worker, not once
per shard. The driver reads input shards and writes outputs; workers only compute. That
keeps every file write in one process (atomic, ordered, resumable) and lets the same code
run on a cluster without a shared filesystem.

Failure model: an exception inside a task is caught in the worker and comes back as a
`TaskFailure` with its traceback; a dead worker (OOM kill, segfault in an engine) comes
back the same way and the worker is replaced. Either way the other shards keep going and
the runner reports every failed shard at the end. Nothing waits without a bound on a dead
process: Ray surfaces actor death as an error on the pending call. A failure caused by the
user (a ``UserError``: a source that cannot be read, a bad config value found late) is
marked as such, so the command line reports it as one line rather than as a bug.

Quiet runs: given a ``log_path``, each worker sends its own and its children's output (the
engines': vLLM's start-up, KV cache sizes, shutdown chatter) to that file instead of the
driver's terminal (pipeline/core/console.py).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.core.console import redirect_process_output
from pipeline.core.errors import UserError
from pipeline.core.lazy import lazy
from pipeline.runner.stage import Resources, ShardOutput, ShardTask, Stage

ray = lazy("ray")
ray_exceptions = lazy("ray.exceptions")

log = logging.getLogger(__name__)


@dataclass
class TaskFailure:
    index: int
    error: str  # one line
    traceback: str
    user_error: bool = False  # a UserError (the input or config), not a bug of ours


def _failure(index: int, e: BaseException, prefix: str = "") -> TaskFailure:
    if isinstance(e, UserError):  # its message is the whole story: no class name
        return TaskFailure(index, f"{prefix}{e}", traceback.format_exc(), user_error=True)
    return TaskFailure(index, f"{prefix}{type(e).__name__}: {e}", traceback.format_exc())


TaskResult = tuple[ShardTask, ShardOutput | TaskFailure, float]
InputLoader = Callable[[ShardTask], pa.Table | None]


def _run_one(stage: Stage, cfg, state, task: ShardTask, table: pa.Table | None) -> tuple[Any, float]:
    t0 = time.perf_counter()
    try:
        out = stage.process(cfg, state, task, table)
        if not isinstance(out, ShardOutput):
            raise TypeError(f"{stage.name}.process returned {type(out).__name__}, not ShardOutput")
    except Exception as e:  # noqa: BLE001 - reported per shard, the run goes on
        out = _failure(task.index, e)
    return out, time.perf_counter() - t0


def run_local(stage: Stage, cfg, tasks: list[ShardTask], load: InputLoader) -> Iterator[TaskResult]:
    """In-process execution (backend: local). Same semantics, no parallelism."""
    try:
        state = stage.setup(cfg)
    except Exception as e:  # noqa: BLE001
        failure = _failure(-1, e, "setup failed: ")
        for t in tasks:
            yield t, TaskFailure(t.index, failure.error, failure.traceback, failure.user_error), 0.0
        return
    try:
        for task in tasks:
            out, secs = _run_one(stage, cfg, state, task, load(task))
            yield task, out, secs
    finally:
        close = getattr(state, "close", None)
        if callable(close):
            close()


def default_num_workers(stage: Stage, res: Resources, cfg) -> int:
    explicit = cfg.execution.num_workers
    if explicit:
        return explicit
    total = ray.cluster_resources()
    if stage.uses_models and res.gpus == 0:
        # A CPU engine already uses every core; a second copy would only thrash memory.
        return 1
    if res.gpus > 0:
        return max(1, int(total.get("GPU", 0) // res.gpus))
    return max(1, int(total.get("CPU", 1) // max(res.cpus, 1e-3)))


def init_ray(cfg, log_to_driver: bool = True) -> None:
    """Start (or join) Ray once per process. ``log_to_driver=False`` (quiet runs) keeps
    the workers' output off the terminal; they write it to the run's log file."""
    if ray.is_initialized():
        return
    address = cfg.execution.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    ray.init(
        num_cpus=cfg.execution.num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=log_to_driver,
        # Keep the object store modest: shards are small and laptops are not servers.
        object_store_memory=512 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_import_paths())}},
    )


def _import_paths() -> list[str]:
    """Make the project importable in workers even when it is not pip-installed."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extra = os.environ.get("PYTHONPATH", "")
    return [here] + ([extra] if extra else [])


def run_ray(stage: Stage, cfg, tasks: list[ShardTask], load: InputLoader,
            log_path: str | None = None) -> Iterator[TaskResult]:
    """Dispatch tasks to a pool of actors; yield results as they complete."""
    init_ray(cfg, log_to_driver=log_path is None)
    res = stage.resources(cfg)
    n_workers = min(default_num_workers(stage, res, cfg), max(1, len(tasks)))

    @ray.remote
    class ShardWorker:
        def __init__(self, stage_obj, config, log_file):
            if log_file:  # before setup: the engines' subprocesses inherit it
                redirect_process_output(log_file)
            self.stage, self.cfg = stage_obj, config
            self.state = None
            self.setup_error: TaskFailure | None = None
            try:
                self.state = stage_obj.setup(config)
            except Exception as e:  # noqa: BLE001 - reported on every task it receives
                self.setup_error = _failure(-1, e, "setup failed: ")

        def run(self, task, table):
            if self.setup_error:
                f = self.setup_error
                return TaskFailure(task.index, f.error, f.traceback, f.user_error), 0.0
            return _run_one(self.stage, self.cfg, self.state, task, table)

        def close(self):
            close = getattr(self.state, "close", None)
            if callable(close):
                close()

    opts = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_restarts": 0}

    def new_worker():
        return ShardWorker.options(**opts).remote(stage, cfg, log_path)

    workers = [new_worker() for _ in range(n_workers)]
    pending = list(reversed(tasks))
    in_flight: dict[Any, tuple[ShardTask, int]] = {}

    def submit(slot: int) -> None:
        task = pending.pop()
        ref = workers[slot].run.remote(task, load(task))
        in_flight[ref] = (task, slot)

    for slot in range(n_workers):
        if pending:
            submit(slot)
    try:
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            task, slot = in_flight.pop(ref)
            try:
                out, secs = ray.get(ref)
            except ray_exceptions.RayActorError as e:
                # The worker died (OOM kill, engine crash): report this shard, replace it.
                out, secs = TaskFailure(task.index, f"worker died: {e}", str(e)), 0.0
                workers[slot] = new_worker()
            except ray_exceptions.RayError as e:
                out, secs = TaskFailure(task.index, f"{type(e).__name__}: {e}", str(e)), 0.0
            yield task, out, secs
            if pending:
                submit(slot)
    finally:
        # Let engines shut down their own subprocesses before the actor goes away.
        try:
            ray.get([w.close.remote() for w in workers], timeout=60)
        except Exception:  # noqa: BLE001 - best effort; the kill below still runs
            log.warning("a worker did not close cleanly", exc_info=True)
        for w in workers:
            ray.kill(w)


def execute(stage: Stage, cfg, tasks: list[ShardTask], load: InputLoader,
            log_path: str | None = None) -> Iterator[TaskResult]:
    """Run ``tasks``; ``log_path``: where Ray workers write their output (quiet runs; the
    local backend's output is the driver's own, captured by the caller)."""
    if not tasks:
        return iter(())
    if cfg.execution.backend == "local":
        return run_local(stage, cfg, tasks, load)
    return run_ray(stage, cfg, tasks, load, log_path)
