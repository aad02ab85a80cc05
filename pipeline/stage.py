"""The small base class every stage implements (shard = task, as in datatrove).

A stage says what it needs (config parts, resources), splits its work into shard tasks,
and turns one task's input table into one output table. Everything else — run folder,
resume, manifests, locking, Ray placement — is the runner's job (pipeline/run.py), so a
stage module stays a page or two of domain logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.config import RunConfig


@dataclass
class Resources:
    """What one worker of this stage needs; the executor asks Ray for exactly this."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class ShardTask:
    index: int  # output shard index
    input_shards: list[int] = field(default_factory=list)  # upstream shard indices to read
    payload: dict[str, Any] = field(default_factory=dict)  # stage-specific (e.g. a source range)


@dataclass
class ShardOutput:
    table: pa.Table
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    stats: dict[str, Any] = field(default_factory=dict)


class Stage:
    number: ClassVar[int]
    name: ClassVar[str]
    # Config parts this stage's output depends on: their hash decides "changed config".
    config_keys: ClassVar[list[str]] = []
    # Which earlier stage's shards are the input (None: the stage reads sources itself).
    input_stage: ClassVar[str | None] = None
    # A model-using stage loads engines once per worker in setup(); usually one per GPU.
    uses_models: ClassVar[bool] = False

    def hash_keys(self, cfg: RunConfig) -> list[str]:
        """Config parts hashed into the manifest (default: `config_keys`)."""
        return list(self.config_keys)

    def enabled(self, cfg: RunConfig) -> bool:
        """Optional stages (rewrite) can be switched off in the config."""
        return True

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

    def finalize(self, cfg: RunConfig, stage_dir, tables: list[pa.Table]) -> dict[str, Any]:
        """After every shard is complete: reports (JSON/PNG). Returns manifest extras."""
        return {}

    @property
    def dirname(self) -> str:
        return f"{self.number:02d}-{self.name}"
