"""Runs a stage's shard tasks: on Ray (local or RAY_ADDRESS) or in-process.

Workers are Ray actors so a model-using stage loads its engines once per worker, not once
per shard. The driver reads input shards and writes outputs; workers only compute. That
keeps every file write in one process (atomic, ordered, resumable) and lets the same code
run on a cluster without a shared filesystem.

Failure model: an exception inside a task is caught in the worker and comes back as a
`TaskFailure` with its traceback; the other shards keep going and the runner reports every
failed shard at the end. A worker that is lost (its node died, an OOM kill, a segfault in an
engine) is not the shard's fault: Ray surfaces it as an actor error on the pending call,
the shard runs again on a live worker (``execution.max_shard_retries``) and the worker is
replaced where the cluster can still place one. Nothing waits without a bound: a worker
that no node can host is given up after ``execution.placement_timeout_s``, and a stage
whose workers fit no node of the cluster fails before it starts, in one line. Every
result records where it ran (node id, pid, the GPUs Ray gave the worker). A failure
caused by the user (a ``UserError``: a source that cannot be read, a bad config value
found late) is marked as such, so the command line reports it as one line rather than as
a bug.

Quiet runs: given a ``log_path``, each worker sends its own and its children's output (the
engines': vLLM's start-up, KV cache sizes, shutdown chatter) to that file instead of the
driver's terminal (pipeline/core/console.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import shards
from pipeline.core.console import redirect_process_output
from pipeline.core.errors import RunError, UserError, one_line
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
    node: str = ""  # the Ray node it ran on ("" unknown)


def _failure(index: int, e: BaseException, prefix: str = "") -> TaskFailure:
    if isinstance(e, UserError):  # its message is the whole story: no class name
        return TaskFailure(index, f"{prefix}{e}", traceback.format_exc(), user_error=True)
    return TaskFailure(index, f"{prefix}{type(e).__name__}: {e}", traceback.format_exc())


# (task, its output or failure, seconds, where it ran: node id, pid, gpus, attempts)
@dataclass
class WorkerIO:
    """Shared storage (``execution.worker_io``): a worker reads its input shards and writes
    its output shard file itself, at paths every node sees; the driver then writes only the
    marker. Shard bytes never pass through the driver or Ray's object store."""

    upstream_dir: str | None
    stage_dir: str

    def read(self, task: ShardTask) -> pa.Table | None:
        if self.upstream_dir is None or not task.input_shards:
            return None
        up = Path(self.upstream_dir)
        return pa.concat_tables([shards.read_shard(up, i) for i in task.input_shards],
                                promote_options="default")

    def write(self, out: ShardOutput, index: int) -> None:
        out.written = shards.write_shard_file(Path(self.stage_dir), index, out.table)
        out.table = None


TaskResult = tuple[ShardTask, ShardOutput | TaskFailure, float, dict[str, Any]]
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
            yield t, TaskFailure(t.index, failure.error, failure.traceback, failure.user_error), 0.0, {}
        return
    try:
        for task in tasks:
            out, secs = _run_one(stage, cfg, state, task, load(task))
            yield task, out, secs, {"node": "local", "pid": os.getpid()}
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


def placed_resources(res: Resources) -> Resources:
    """What a worker asks Ray for on this cluster: an engine that uses a GPU only where
    there is one (``device: auto``) asks for none on a cluster without GPUs."""
    if res.gpus > 0 and res.gpus_if_available and not ray.cluster_resources().get("GPU", 0):
        return Resources(cpus=res.cpus, gpus=0.0)
    return Resources(cpus=res.cpus, gpus=res.gpus)


def _asks(res: Resources) -> dict[str, float]:
    return {k: v for k, v in (("CPU", res.cpus), ("GPU", res.gpus)) if v > 0}


def check_placeable(stage: Stage, res: Resources) -> None:
    """Fail now, in one line, when no live node of the cluster could ever host one worker
    of this stage (rather than waiting for a node that will not come)."""
    need = _asks(res)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if any(all(n["Resources"].get(k, 0) >= v for k, v in need.items()) for n in nodes):
        return
    offers = "; ".join(
        ", ".join(f"{k} {n['Resources'].get(k, 0):g}" for k in ("CPU", "GPU")) for n in nodes)
    raise RunError(
        f"stage {stage.dirname}: no node of the Ray cluster can host one of its workers, "
        f"which needs {', '.join(f'{k} {v:g}' for k, v in need.items())}; the live nodes offer: "
        f"{offers or 'none'}. Add such a node, or ask for less (models.*.device=cpu, "
        "models.*.tensor_parallel_size)")


def init_ray(cfg, log_to_driver: bool = True) -> None:
    """Start (or join) Ray once per process. ``log_to_driver=False`` (quiet runs) keeps
    the workers' output off the terminal; they write it to the run's log file."""
    address = cfg.execution.ray_address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        if not address or _connected_to(address):
            return
        # Connected elsewhere (an earlier run in this process started a local Ray): the
        # config names a cluster, so leave that one rather than run on the wrong Ray.
        log.info("leaving Ray at %s to join %s", ray.get_runtime_context().gcs_address, address)
        ray.shutdown()
    if address:
        check_reachable(address)
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


def _connected_to(address: str) -> bool:
    """Whether this process's Ray is the cluster at ``address`` (host:port). An address we
    cannot compare ("auto", ray://...) counts as the one we are on."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return True
    gcs_host, _, gcs_port = ray.get_runtime_context().gcs_address.rpartition(":")
    return gcs_port == port and _same_host(host, gcs_host)


def _same_host(a: str, b: str) -> bool:
    try:
        ips = [socket.gethostbyname(h) for h in (a, b)]
        local = {"127.0.0.1", socket.gethostbyname(socket.gethostname())}
    except OSError:  # a name that does not resolve here: compare the text
        return a == b
    return ips[0] == ips[1] or (ips[0] in local and ips[1] in local)


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A cluster address (host:port) that nothing answers on is one line now: Ray itself
    would retry connecting for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray://...: Ray's own lookup
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RunError(f"no Ray cluster answers at {address} (execution.ray_address or "
                       f"RAY_ADDRESS): {e.strerror or e}; start it (`make cluster-up`, "
                       "`ray start --head`) or unset RAY_ADDRESS to run on this machine") from None


def _import_paths() -> list[str]:
    """Make the project importable in workers even when it is not pip-installed."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extra = os.environ.get("PYTHONPATH", "")
    return [here] + ([extra] if extra else [])


def _placement() -> dict[str, Any]:
    """Where this Ray worker runs: its node, process and the accelerators Ray gave it."""
    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id(), "pid": os.getpid(),
            "gpus": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


# Errors that mean the worker (or its whole node) is gone, not that the shard is bad: the
# shard runs again on a live worker.
def _worker_lost(e: BaseException) -> bool:
    lost = (ray_exceptions.RayActorError, ray_exceptions.ActorUnavailableError,
            ray_exceptions.NodeDiedError, ray_exceptions.ObjectLostError)
    return isinstance(e, lost)


@dataclass
class _Slot:
    actor: Any
    deadline: float  # placement: given up after this (monotonic)
    where: dict[str, Any] | None = None  # set once the worker is placed
    busy: bool = False


def run_ray(stage: Stage, cfg, tasks: list[ShardTask], load: InputLoader,
            log_path: str | None = None, io: WorkerIO | None = None) -> Iterator[TaskResult]:
    """Dispatch tasks to a pool of actors; yield results as they complete.

    Every wait is bounded: a worker that finds no node within
    ``execution.placement_timeout_s`` is given up; a worker lost with its node (surfaced by
    Ray as an actor error once the cluster notices, in seconds) has its shard run again on
    a live worker, at most ``execution.max_shard_retries`` times, and is replaced if the
    cluster can still place it. Shards left with no worker fail, by index, with the reason.
    Each result is yielded once, by the driver, so a retried shard can never be written twice.
    With ``io`` the workers read and write the shard files themselves (shared storage).
    """
    init_ray(cfg, log_to_driver=log_path is None)
    res = placed_resources(stage.resources(cfg))
    check_placeable(stage, res)
    n_workers = min(default_num_workers(stage, res, cfg), max(1, len(tasks)))
    timeout_s, max_retries = cfg.execution.placement_timeout_s, cfg.execution.max_shard_retries

    @ray.remote
    class ShardWorker:
        def __init__(self, stage_obj, config, log_file):
            if log_file:  # before setup: the engines' subprocesses inherit it
                redirect_process_output(log_file)
            self.stage, self.cfg = stage_obj, config
            self.state = None
            self.set_up = False
            self.setup_error: TaskFailure | None = None

        def where(self):
            return _placement()

        def run(self, task, table, io=None):
            if io is not None:
                table = io.read(task)
            if not self.set_up:  # on the first shard: where() answers before engines load
                self.set_up = True
                try:
                    self.state = self.stage.setup(self.cfg)
                except Exception as e:  # noqa: BLE001 - reported on every task it receives
                    self.setup_error = _failure(-1, e, "setup failed: ")
            if self.setup_error:
                f = self.setup_error
                return TaskFailure(task.index, f.error, f.traceback, f.user_error), 0.0
            out, secs = _run_one(self.stage, self.cfg, self.state, task, table)
            if io is not None and isinstance(out, ShardOutput):
                try:
                    io.write(out, task.index)
                except Exception as e:  # noqa: BLE001 - the shard failed, the run goes on
                    out = _failure(task.index, e, "writing the shard: ")
            return out, secs

        def close(self):
            close = getattr(self.state, "close", None)
            if callable(close):
                close()

    # SPREAD: a pool's workers go to different nodes where they can (a lost node then
    # takes one worker, not all).
    opts = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_restarts": 0,
            "scheduling_strategy": "SPREAD"}
    slots: list[_Slot] = []
    in_flight: dict[Any, tuple[str, int, ShardTask | None]] = {}  # ref -> (kind, slot, task)
    pending = list(reversed(tasks))  # popped from the end: the plan's order
    attempts: dict[int, int] = {}
    lost_on: dict[int, str] = {}  # shard -> node it was last lost on
    last_loss = ""  # the last worker error, for the shards no worker is left to run
    sent: dict[int, int] = {}  # shard -> Arrow bytes of the input table the driver sent

    def new_slot(i: int | None = None) -> None:
        actor = ShardWorker.options(**opts).remote(stage, cfg, log_path)
        slot = _Slot(actor, time.monotonic() + timeout_s)
        if i is None:
            slots.append(slot)
            i = len(slots) - 1
        else:
            slots[i] = slot
        in_flight[actor.where.remote()] = ("where", i, None)

    def drop(i: int) -> None:
        for ref in [r for r, (_, j, _t) in in_flight.items() if j == i]:
            del in_flight[ref]
        ray.kill(slots[i].actor)
        slots[i] = None  # type: ignore[call-overload]

    def dispatch() -> None:
        for i, slot in enumerate(slots):
            if pending and slot is not None and slot.where is not None and not slot.busy:
                task = pending.pop()
                table = None if io is not None else load(task)
                sent[task.index] = table.nbytes if table is not None else 0
                in_flight[slot.actor.run.remote(task, table, io)] = ("run", i, task)
                slot.busy = True

    for _ in range(n_workers):
        new_slot()
    replacements = n_workers * (max_retries + 1)  # a bound: no endless replacing
    try:
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            if not done:
                now = time.monotonic()
                for i, slot in enumerate(slots):
                    if slot is not None and slot.where is None and now > slot.deadline:
                        log.warning("%s: a worker found no node with %s within %.0f s; "
                                    "going on without it", stage.dirname, _asks(res), timeout_s)
                        drop(i)
                continue
            kind, i, task = in_flight.pop(done[0])
            slot = slots[i]
            try:
                result = ray.get(done[0])
            except ray_exceptions.RayError as e:
                if task is None or _worker_lost(e):
                    node = (slot.where or {}).get("node", "?")
                    last_loss = f"{type(e).__name__}: {one_line(e)}"
                    drop(i)
                    if task is not None:
                        attempts[task.index] = attempts.get(task.index, 0) + 1
                        lost_on[task.index] = node
                        if attempts[task.index] <= max_retries:
                            log.warning("%s shard %d: its worker on node %s was lost (%s); "
                                        "running it again", stage.dirname, task.index, node,
                                        type(e).__name__)
                            pending.append(task)
                        else:
                            yield task, TaskFailure(
                                task.index, f"lost with its worker on node {node} "
                                f"{attempts[task.index]} time(s): {type(e).__name__}",
                                str(e)), 0.0, {"node": node}
                    if replacements > 0 and (pending or any(s and s.busy for s in slots)):
                        replacements -= 1
                        new_slot(i)
                    dispatch()
                    continue
                slot.busy = False
                yield task, TaskFailure(task.index, f"{type(e).__name__}: {e}", str(e)), 0.0, \
                    dict(slot.where or {})
                dispatch()
                continue
            if kind == "where":
                slot.where = result
            else:
                out, secs = result
                slot.busy = False
                got = out.table.nbytes if isinstance(out, ShardOutput) and out.table is not None else 0
                yield task, out, secs, {**(slot.where or {}),
                                        "attempts": attempts.get(task.index, 0) + 1,
                                        "driver_bytes": {"sent": sent.get(task.index, 0),
                                                         "received": got}}
            dispatch()
        # No live worker is left for these (nodes lost, none could be placed in time).
        for task in reversed(pending):
            where = f" (last lost on node {lost_on[task.index]})" if task.index in lost_on else ""
            yield task, TaskFailure(
                task.index, f"no worker left to run it{where}: no live node could host a "
                f"worker needing {_asks(res)} within {timeout_s:.0f} s; rerun to redo it",
                last_loss), 0.0, {}
        pending.clear()
    finally:
        live = [s.actor for s in slots if s is not None]
        # Let engines shut down their own subprocesses before the actor goes away.
        try:
            ray.get([a.close.remote() for a in live], timeout=60)
        except Exception:  # noqa: BLE001 - best effort; the kill below still runs
            log.warning("a worker did not close cleanly", exc_info=True)
        for a in live:
            ray.kill(a)


def execute(stage: Stage, cfg, tasks: list[ShardTask], load: InputLoader,
            log_path: str | None = None, io: WorkerIO | None = None) -> Iterator[TaskResult]:
    """Run ``tasks``; ``log_path``: where Ray workers write their output (quiet runs; the
    local backend's output is the driver's own, captured by the caller); ``io``: workers
    read and write shard files themselves (Ray only; in-process, the driver does)."""
    if not tasks:
        return iter(())
    if cfg.execution.backend == "local":
        return run_local(stage, cfg, tasks, load)
    return run_ray(stage, cfg, tasks, load, log_path, io)
