"""Stage 5, filter: keep prompts that expose a gap; dedup; balance.

Drops, each counted under its reason: `zero_delta` (Δ below the threshold, and every
prompt stage 4 decided without the teacher: stop_reason `student_solved`),
`teacher_disagrees` (teacher agreement below `filter.min_teacher_agreement`: the teacher
is unsure, so its answer is a poor target), `teacher_wrong` (with
`filter.wrong_teacher_agreement` set: the teacher's majority misses the gold answer with
at least that agreement, so distilling it would teach a wrong answer), `near_duplicate` (same image, same question
up to case/punctuation/articles: pipeline/core/schema.question_key), `over_skill_cap` /
`over_source_cap` (balance). Within a cap, higher-Δ prompts are kept first (ties broken
by a seeded shuffle), so a cap removes the least informative prompts. Dedup and caps need
the whole set: one task, one shard.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from pipeline.core import shards
from pipeline.core.config import FilterConfig
from pipeline.core.reports import write_json
from pipeline.core.schema import keep_rows, question_key
from pipeline.core.skills import UNKNOWN
from pipeline.runner.stage import ShardOutput, ShardTask, Stage
from pipeline.sampling.policy import STUDENT_SOLVED


def drop_reasons(rows: list[dict[str, Any]], f: FilterConfig, threshold: float) -> list[str | None]:
    """Why each row is dropped (None: kept), in the order the filter decides.

    Rows need ``id``, ``image``, ``question``, ``source``, ``skill``, ``delta`` and
    ``teacher_agreement``; ``stop_reason`` and ``teacher_correct`` are read when present
    (absent: no prompt was student_solved, teacher correctness unknown). Thresholds first; the survivors are ranked by Δ (highest
    first, a seeded shuffle among equals), then deduplicated and capped in that order,
    so a duplicate or a capped prompt is always the less informative one.
    """
    reason: list[str | None] = [None] * len(rows)
    wrong_at = f.wrong_teacher_agreement
    for i, r in enumerate(rows):
        # A student_solved prompt is zero-delta by definition, whatever the threshold.
        if r.get("stop_reason") == STUDENT_SOLVED or r["delta"] < threshold:
            reason[i] = "zero_delta"
        elif r["teacher_agreement"] < f.min_teacher_agreement:
            reason[i] = "teacher_disagrees"
        elif (wrong_at is not None and r.get("teacher_correct") is False
              and r["teacher_agreement"] >= wrong_at):
            reason[i] = "teacher_wrong"
    rng = random.Random(f.seed)
    tiebreak = {r["id"]: rng.random() for r in rows}
    order = sorted((i for i in range(len(rows)) if reason[i] is None),
                   key=lambda i: (-rows[i]["delta"], tiebreak[rows[i]["id"]]))
    seen: set[tuple[str, str]] = set()
    per_skill: Counter = Counter()
    per_source: Counter = Counter()
    for i in order:
        r = rows[i]
        if f.dedup:
            key = question_key(r["image"], r["question"])
            if key in seen:
                reason[i] = "near_duplicate"
                continue
            seen.add(key)
        skill, source = r["skill"] or UNKNOWN, r["source"]
        if f.max_per_skill is not None and per_skill[skill] >= f.max_per_skill:
            reason[i] = "over_skill_cap"
            continue
        if f.max_per_source is not None and per_source[source] >= f.max_per_source:
            reason[i] = "over_source_cap"
            continue
        per_skill[skill] += 1
        per_source[source] += 1
    return reason


def _why(reason: str, row: dict[str, Any], f: FilterConfig, threshold: float) -> str:
    """The detail of one drop, for skipped.jsonl."""
    if reason == "zero_delta":
        return f"delta {row['delta']:.4f} < threshold {threshold}"
    if reason == "teacher_disagrees":
        return f"teacher agreement {row['teacher_agreement']:.3f} < {f.min_teacher_agreement}"
    if reason == "over_skill_cap":
        return f"skill {row['skill']!r} already has max_per_skill={f.max_per_skill} higher-delta prompts"
    if reason == "over_source_cap":
        return f"source {row['source']!r} already has max_per_source={f.max_per_source} higher-delta prompts"
    return "same image and a near-identical question as a higher-delta prompt"


class FilterStage(Stage):
    number = 5
    name = "filter"
    input_stage = "delta"
    config_keys = ["filter", "delta.threshold"]
    outputs = ("filter_report.json",)

    def plan(self, cfg, input_indices):
        return [ShardTask(index=0, input_shards=list(input_indices))]

    def process(self, cfg, state, task, table):
        f = cfg.filter
        threshold = f.threshold if f.threshold is not None else cfg.delta.threshold
        cols = ["id", "image", "question", "source", "skill", "delta", "teacher_agreement",
                "stop_reason", "teacher_correct"]
        rows = table.select([c for c in cols if c in table.column_names]).to_pylist()
        reason = drop_reasons(rows, f, threshold)
        kept = [r for r, x in zip(rows, reason) if x is None]
        return ShardOutput(
            keep_rows(table, [x is None for x in reason]),
            skipped=dict(Counter(x for x in reason if x)),
            skipped_rows=[{"id": r["id"], "reason": x, "detail": _why(x, r, f, threshold)}
                          for r, x in zip(rows, reason) if x],
            stats={"kept_per_skill": dict(Counter(r["skill"] or UNKNOWN for r in kept)),
                   "kept_per_source": dict(Counter(r["source"] for r in kept))},
        )

    def finalize(self, cfg, stage_dir, tables):
        marker = shards.read_marker(stage_dir, 0)
        report = {"input_rows": marker.rows + sum(marker.skipped.values()), "kept": marker.rows,
                  "dropped": marker.skipped, **marker.stats}
        write_json(stage_dir / "filter_report.json", report)
        return report
