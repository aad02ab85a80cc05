"""The small base class every stage implements (shard = task, as in datatrove).

A stage says what it needs (config parts, resources), what it adds to the rows (its
columns, typed and documented), splits its work into shard tasks, and turns one task's
input table into one output table. Everything else — run folder, resume, manifests,
locking, Ray placement — is the runner's job (pipeline/runner/run.py), so a stage module
stays a page or two of domain logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.core.config import RunConfig


@dataclass
class Resources:
    """What one worker of this stage needs; the executor asks Ray for exactly this."""

    cpus: float = 1.0
    gpus: float = 0.0
    # True: the GPUs are wanted where the cluster has them (an engine on ``device: auto``);
    # on a cluster without GPUs the worker runs on CPUs instead.
    gpus_if_available: bool = False


@dataclass
class ShardTask:
    index: int  # output shard index
    input_shards: list[int] = field(default_factory=list)  # upstream shard indices to read
    payload: dict[str, Any] = field(default_factory=dict)  # stage-specific (e.g. a source range)


@dataclass
class ShardOutput:
    table: pa.Table | None
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    stats: dict[str, Any] = field(default_factory=dict)
    # The skipped rows themselves, {"id", "reason", "detail"} each (which file was missing,
    # what the engine said): the runner writes them beside the shard and merges them into
    # the stage's skipped.jsonl.
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    # Set by the executor when the worker wrote the shard file itself (shared storage,
    # ``execution.worker_io``): its sha256 and rows; ``table`` is then None.
    written: dict[str, Any] | None = None


class Stage:
    number: ClassVar[int]
    name: ClassVar[str]
    # Columns this stage adds to each row: name -> (Arrow type, what it holds). The
    # dataset card documents every column from these declarations.
    columns: ClassVar[dict[str, tuple[pa.DataType, str]]] = {}
    # Config parts this stage's output depends on: their hash decides "changed config".
    config_keys: ClassVar[list[str]] = []
    # Which earlier stage's shards are the input (None: the stage reads sources itself).
    input_stage: ClassVar[str | None] = None
    # A model-using stage loads engines once per worker in setup(); usually one per GPU.
    uses_models: ClassVar[bool] = False
    # Files and folders (globs) finalize writes in the stage folder besides the runner's own
    # (shards, markers, manifest, skipped.jsonl): the only other names the runner may delete.
    outputs: ClassVar[tuple[str, ...]] = ()

    def hash_keys(self, cfg: RunConfig) -> list[str]:
        """Config parts hashed into the manifest (default: `config_keys`)."""
        return list(self.config_keys)

    def enabled(self, cfg: RunConfig) -> bool:
        """Optional stages (rewrite) can be switched off in the config."""
        return True

    def check(self, cfg: RunConfig) -> None:
        """Config checks this stage needs beyond the schema; raise ConfigError. Runs for
        every stage about to run, before any of them starts (fail early, and once)."""

    def upstream(self, cfg: RunConfig) -> str | None:
        """Name of the stage whose shards feed this one (config may skip optional stages)."""
        return self.input_stage

    def resources(self, cfg: RunConfig) -> Resources:
        return Resources()

    def plan(self, cfg: RunConfig, input_indices: list[int]) -> list[ShardTask]:
        """Default: one output shard per input shard (order and ids preserved)."""
        return [ShardTask(index=i, input_shards=[i]) for i in input_indices]

    def setup(self, cfg: RunConfig) -> Any:
        """Per-worker state (engines, ...); runs inside the Ray worker, once."""
        return None

    def process(self, cfg: RunConfig, state: Any, task: ShardTask, table: pa.Table | None) -> ShardOutput:
        raise NotImplementedError

    def finalize(self, cfg: RunConfig, stage_dir: Path, tables: list[pa.Table]) -> dict[str, Any]:
        """After every shard is complete: reports (JSON/PNG). Returns manifest extras."""
        return {}

    @property
    def dirname(self) -> str:
        return f"{self.number:02d}-{self.name}"


class StageRegistry:
    """The pipeline's stages, built from their classes: numbers, names and folders come
    from the classes themselves (no folder name is spelled anywhere else)."""

    def __init__(self, stages: list[type[Stage] | Stage]):
        made = [s() if isinstance(s, type) else s for s in stages]
        self.stages = sorted(made, key=lambda s: s.number)
        numbers = [s.number for s in self.stages]
        names = [s.name for s in self.stages]
        if len(set(numbers)) != len(numbers) or len(set(names)) != len(names):
            raise ValueError(f"stage numbers and names must be unique: {numbers} {names}")

    def __iter__(self):
        return iter(self.stages)

    @property
    def numbers(self) -> list[int]:
        return [s.number for s in self.stages]

    def by_number(self, number: int) -> Stage:
        for s in self.stages:
            if s.number == number:
                return s
        raise KeyError(f"no stage {number}; stages are {self.numbers}")

    def by_name(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def last(self) -> Stage:
        return self.stages[-1]

    def column_docs(self) -> dict[str, str]:
        """Every stage's column docs, by column name."""
        return {name: doc for s in self.stages for name, (_, doc) in s.columns.items()}
