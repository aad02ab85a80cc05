"""Stage 5, filter: keep prompts that expose a gap; dedup; balance.

Drops, each counted under its reason: `zero_delta` (Δ below the threshold),
`teacher_disagrees` (teacher agreement below `filter.min_teacher_agreement`: the teacher
is unsure, so its answer is a poor target), `near_duplicate` (same image, same question
up to case/punctuation/articles), `over_skill_cap` / `over_source_cap` (balance). Within a
cap, higher-Δ prompts are kept first (ties broken by a seeded shuffle), so a cap removes
the least informative prompts. Dedup and caps need the whole set: one task, one shard.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from pipeline.stage import ShardOutput, ShardTask, Stage
from stages.common import keep_rows

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[^\w]+")


def question_key(question: str) -> str:
    q = _ARTICLES.sub(" ", question.lower())
    return " ".join(_NON_WORD.sub(" ", q).split())


def image_key(image: dict | None) -> str:
    data = (image or {}).get("bytes") or b""
    return hashlib.sha256(data).hexdigest()


class FilterStage(Stage):
    number = 5
    name = "filter"
    input_stage = "delta"
    config_keys = ["filter", "delta.threshold"]

    def plan(self, cfg, input_indices):
        return [ShardTask(index=0, input_shards=list(input_indices))]

    def process(self, cfg, state, task, table):
        f = cfg.filter
        threshold = f.threshold if f.threshold is not None else cfg.delta.threshold
        rows = table.select(["id", "image", "question", "source", "skill", "delta",
                             "teacher_agreement"]).to_pylist()
        reason: list[str | None] = [None] * len(rows)
        for i, r in enumerate(rows):
            if r["delta"] < threshold:
                reason[i] = "zero_delta"
            elif r["teacher_agreement"] < f.min_teacher_agreement:
                reason[i] = "teacher_disagrees"

        # Rank survivors: high Δ first, seeded shuffle among equals; dedup keeps the best.
        rng = random.Random(f.seed)
        tiebreak = {r["id"]: rng.random() for r in rows}
        order = sorted((i for i in range(len(rows)) if reason[i] is None),
                       key=lambda i: (-rows[i]["delta"], tiebreak[rows[i]["id"]]))
        seen, per_skill, per_source = set(), {}, {}
        for i in order:
            r = rows[i]
            if f.dedup:
                key = (image_key(r["image"]), question_key(r["question"]))
                if key in seen:
                    reason[i] = "near_duplicate"
                    continue
                seen.add(key)
            skill, source = r["skill"] or "unknown", r["source"]
            if f.max_per_skill is not None and per_skill.get(skill, 0) >= f.max_per_skill:
                reason[i] = "over_skill_cap"
                continue
            if f.max_per_source is not None and per_source.get(source, 0) >= f.max_per_source:
                reason[i] = "over_source_cap"
                continue
            per_skill[skill] = per_skill.get(skill, 0) + 1
            per_source[source] = per_source.get(source, 0) + 1

        skipped: dict[str, int] = {}
        for x in reason:
            if x:
                skipped[x] = skipped.get(x, 0) + 1
        kept = keep_rows(table, [x is None for x in reason])
        return ShardOutput(kept, skipped=skipped,
                           stats={"kept_per_skill": per_skill, "kept_per_source": per_source})

    def finalize(self, cfg, stage_dir, tables):
        from pipeline import shards

        marker = shards.read_marker(stage_dir, 0)
        report = {"input_rows": marker.rows + sum(marker.skipped.values()), "kept": marker.rows,
                  "dropped": marker.skipped, **marker.stats}
        (stage_dir / "filter_report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
