"""One shard's rewrite: the state every pass shares (seeds, seeded RNG, what is already
asked, counters), the dedup of new prompts, the teacher's pseudo-labels, the output table.

The passes themselves (llm_passes.py, programmatic.py) turn selected seeds into
:class:`~stages.rewrite.common.Candidate` rows through the :class:`PassContext` this
class provides; :class:`ShardRewrite` runs them in order (stage.py says why per shard).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.core.config import RunConfig
from pipeline.core.schema import add_columns, question_key, rows_to_table
from pipeline.runner.stage import ShardOutput, ShardTask
from pipeline.sampling.draw import draw_answers
from pipeline.sampling.prompts import choices_of, requests_from_table
from seeds.text_view import TextView, text_view
from stages.rewrite import llm_passes, programmatic
from stages.rewrite.common import LINEAGE_COLUMNS, Candidate, RewriteEngines
from stages.rewrite.select import pseudo_label, select_seeds


@dataclass
class ShardRewrite:
    """One shard's rewrite: select, rewrite (passes), dedup, pseudo-label, assemble."""

    cfg: RunConfig
    engines: RewriteEngines
    task: ShardTask
    table: pa.Table
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self):
        for col in ("student_accuracy", "student_failed"):
            if col not in self.table.column_names:
                have = self.table.column_names
                raise ValueError(f"rewrite needs the mine stage's {col!r} column; input has {have}")
        self.rc = self.cfg.rewrite
        self.rng = random.Random(f"rewrite:{self.rc.seed}:{self.task.index}")
        self.rows = self.table.to_pylist()
        self.seen = {question_key(r["image"], r["question"]) for r in self.rows}
        self.seen_ids = {r["id"] for r in self.rows}
        self.engine_seed = self.rc.seed * 1_000_003 + self.task.index * 101

    def run(self) -> ShardOutput:
        rc = self.rc
        n_shards = max(1, int(self.task.payload.get("n_shards", 1)))
        quota = None if rc.max_seeds_per_skill is None else math.ceil(rc.max_seeds_per_skill / n_shards)
        selected = select_seeds(self.rows, max_accuracy=rc.max_student_accuracy, per_skill=quota,
                                rng=self.rng)
        self.stats["seeds"] = len(self.rows)
        self.stats["seeds_selected"] = len(selected)
        kept: list[Candidate] = []
        first: list[Candidate] = []
        if rc.method in ("llm", "both"):
            first += llm_passes.seed_guided(self, selected)
        if rc.method in ("programmatic", "both"):
            first += programmatic.variants(self, selected)
        accepted_first = self.label(first, pass_no=1)
        kept += accepted_first
        if rc.method in ("llm", "both") and rc.skill_guided:
            pass1 = [c for c in accepted_first if c.row["origin"] == "seed_guided"]
            kept += self.label(llm_passes.skill_guided(self, pass1, selected), pass_no=2)
        for c in kept:
            self.stats[f"accepted_{c.row['origin']}"] += 1
        skipped = {k: v for k, v in self.skipped.items() if v}
        return ShardOutput(self.assemble(kept), skipped=skipped, stats=dict(self.stats),
                           skipped_rows=self.skipped_rows)

    # -- what the passes share ------------------------------------------------------------

    def image_for(self, row: dict) -> bytes | None:
        """The image the rewriter sees (none for a text-only rewriter)."""
        return (row["image"] or {}).get("bytes") if self.rc.send_image else None

    def view_for(self, row: dict) -> TextView | None:
        """What a text-only rewriter is told of the image (None for a VLM rewriter, or
        when the row carries no text of its image: seeds/text_view.py)."""
        return None if self.rc.send_image else text_view(row)

    @staticmethod
    def image_hash(row: dict) -> bytes:
        return hashlib.sha256((row["image"] or {}).get("bytes") or b"").digest()

    def dedup(self, c: Candidate) -> list[Candidate]:
        """``[c]`` when its question is new on its image (and its id new), else ``[]``."""
        key = question_key(c.row["image"], c.row["question"])
        if key in self.seen or c.row["id"] in self.seen_ids:
            self.skipped["duplicate"] += 1
            return []
        self.seen.add(key)
        self.seen_ids.add(c.row["id"])
        return [c]

    def label(self, cands: list[Candidate], pass_no: int) -> list[Candidate]:
        """Pseudo-label with the teacher (one batched call); the kept candidates."""
        if not cands:
            return []
        rc, sampling = self.rc, self.cfg.sampling
        n = rc.label_samples or sampling.n
        sub = rows_to_table([c.row for c in cands])
        got = draw_answers(self.engines.teacher_lazy(), requests_from_table(sub, sampling.instruction),
                           [n] * len(cands), sampling, choices_of(sub), model="teacher",
                           round_=100 + pass_no, store=self.engines.stores.get("teacher"))
        self.stats["teacher_label_samples"] += n * len(cands)
        self.stats["teacher_label_drawn"] += got.drawn  # the rest served by the sample store
        kept = []
        for c, answers, error in zip(cands, got.answers, got.errors):
            if error:
                self.skipped["teacher_engine_error"] += 1
                continue
            v = pseudo_label(answers, min_agreement=rc.min_agreement, expected=c.expected,
                             match_mode=self.cfg.mine.grading,
                             require=not c.exact or rc.filter_programmatic)
            if not v.keep:
                self.skipped[v.reason] += 1
                self.skipped_rows.append({
                    "id": c.row["id"], "reason": v.reason,
                    "detail": json.dumps({"question": c.row["question"], "expected": c.expected,
                                          "teacher_majority": v.majority,
                                          "agreement": v.agreement}, default=str)})
                continue
            c.row["pseudo_label_agreement"] = v.agreement
            meta = json.loads(c.row["meta"])
            meta["teacher_majority"] = v.majority
            c.row["meta"] = json.dumps(meta, sort_keys=True, default=str)
            if not c.row["answers"] and v.majority is not None:
                c.row["answers"] = [v.majority]  # no proposed answer: the majority is the label
            kept.append(c)
        return kept

    def assemble(self, kept: list[Candidate]) -> pa.Table:
        n = self.table.num_rows
        seeds = add_columns(self.table, {
            name: (dtype, ["seed"] * n if name == "origin" else [None] * n)
            for name, (dtype, _) in LINEAGE_COLUMNS.items()
        })
        if not kept:
            return seeds
        # New rows take the seeds' exact schema: columns they lack (student_*, anything
        # ingest added) are null, so the delta stage knows to sample the student.
        new = pa.Table.from_pylist([c.row for c in kept], schema=seeds.schema)
        return pa.concat_tables([seeds, new])
