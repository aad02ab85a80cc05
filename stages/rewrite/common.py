"""What the rewrite passes share: the candidate row, the engines, the context they run in."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from pipeline.core.config import EngineConfig, RewriteConfig, RunConfig
from pipeline.engines import Engine
from stages.common import LazyEngine, sample_stores

# The lineage columns stage 3 adds: name -> (type, doc).
LINEAGE_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "origin": (pa.string(), "where the prompt comes from: seed | seed_guided | skill_guided | programmatic"),
    "template": (pa.string(), "LLM template or chart-world strategy that made the prompt; null for seeds"),
    "rewriter": (pa.string(), "the rewriter's model (path or id) or chartworld-programmatic; null for seeds"),
    "attempts": (pa.int32(), "rewriter calls until a valid reply (1 = first try); null for seeds"),
    "pseudo_label_agreement": (pa.float64(), "share of teacher answers in its majority class; null for seeds"),
}


@dataclass
class Candidate:
    row: dict[str, Any]  # canonical prompt row (make_prompt_row) + lineage columns
    expected: str | None  # answer the teacher's majority must match (None: none proposed)
    exact: bool = False  # programmatic: the answer is known, not proposed


class RewriteEngines:
    """Teacher (pseudo-labels) and rewriter, loaded on first use; one engine when the
    rewriter is the teacher (or none is configured)."""

    def __init__(self, cfg: RunConfig, teacher: Engine | None = None, rewriter: Engine | None = None):
        # Engines may be handed in (tests, a caller that already holds them); else built.
        rcfg: EngineConfig | None = cfg.models.rewriter
        self._teacher = teacher or LazyEngine(cfg.models.teacher)
        same = rcfg is None or rcfg == cfg.models.teacher
        self._rewriter = rewriter or (self._teacher if same else LazyEngine(rcfg))
        self.rewriter_name = (rcfg or cfg.models.teacher).model
        # Pseudo-labels are the teacher's samples 0..n-1: the same ones delta draws first, so
        # the store serves them there (and here, on a rerun). A teacher handed in may not
        # be the model cfg names: its samples are not stored under that model's identity.
        self.stores = sample_stores(cfg, "teacher") if teacher is None else {}

    def teacher_lazy(self):
        """The teacher as handed in or built on first use (a draw the store serves whole
        never loads it)."""
        return self._teacher

    def teacher(self) -> Engine:
        return self._teacher.get() if isinstance(self._teacher, LazyEngine) else self._teacher

    def rewriter(self) -> Engine:
        return self._rewriter.get() if isinstance(self._rewriter, LazyEngine) else self._rewriter

    def close(self) -> None:
        for e in {id(e): e for e in (self._teacher, self._rewriter)}.values():
            e.close()


class PassContext(Protocol):
    """What a pass reads and updates: one shard's state (stages/rewrite/shard.py)."""

    cfg: RunConfig
    rc: RewriteConfig
    engines: RewriteEngines
    rows: list[dict[str, Any]]  # the shard's seed rows
    rng: random.Random  # seeded per shard: selection, templates, charts
    skipped: Counter  # reason -> count
    skipped_rows: list[dict[str, Any]]  # {"id", "reason", "detail"}: what was rejected, why
    stats: Counter
    engine_seed: int

    def image_for(self, row: dict) -> bytes | None: ...

    def view_for(self, row: dict) -> Any: ...

    def image_hash(self, row: dict) -> bytes: ...

    def dedup(self, c: Candidate) -> list[Candidate]: ...
