"""Stage 3, rewrite: new prompts aimed at the student's failures (optional: rewrite.enabled).

Seeds are the mine stage's rows. Those the student fails or barely passes are selected
(lowest accuracy first, per-skill quotas, seeded) and rewritten k times each:

1. *seed-guided* (LLM): a new question on the same image as a failed seed, one template
   (= failure mode / strategy, prompts_templates/rewrite/seed_guided/) per variant;
2. *skill-guided* (LLM): the skills named by pass 1's ACCEPTED rewrites, asked on OTHER
   seed images (prompts_templates/rewrite/skill_guided/);
3. *programmatic* (chart world): new charts rendered to target the failing skill
   (seeds/chartworld/variants.py), with exact answers.

Every new prompt is deduplicated against the seeds and the other new prompts (normalised
question text per image), then pseudo-labelled: the teacher answers it N times and the
prompt is kept only if the majority's share reaches rewrite.min_agreement and the majority
matches the rewriter's expected answer (when it gave one; for programmatic prompts, the
exact answer, if rewrite.filter_programmatic).

Why per shard: pass 2 needs the skills pass 1 accepted, i.e. a view wider than one row.
A single task over the whole run would give the global view but no parallelism and one
giant unit of resume, so each input shard is one task that runs both passes on its own
rows: pass 2 reads the skills accepted in that shard and asks them on that shard's other
images. The result is a deterministic function of (config, shard), which is what resume
and the config hash need; per-skill quotas are divided evenly over the shards (plan()
passes the shard count) so the run-wide quota still holds.

Output = the seed rows unchanged (origin "seed", lineage null, their student_* columns)
followed by the new rows (canonical prompt rows, parent_id = the seed's id, student_*
null so the delta stage samples the student for them).
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import pyarrow as pa

from pipeline.core.errors import ConfigError
from pipeline.core.reports import group_by, write_json
from pipeline.core.skills import UNKNOWN
from pipeline.runner.stage import ShardTask, Stage
from seeds.chartworld.variants import STRATEGIES
from stages.common import engine_resources
from stages.rewrite.common import LINEAGE_COLUMNS, RewriteEngines
from stages.rewrite.llm_passes import templates
from stages.rewrite.programmatic import world_config
from stages.rewrite.shard import ShardRewrite


class RewriteStage(Stage):
    number = 3
    name = "rewrite"
    input_stage = "mine"
    config_keys: ClassVar[list[str]] = [
        "models.teacher",
        "models.rewriter",
        "rewrite",
        "mine.grading",
        "sampling",
    ]
    columns = LINEAGE_COLUMNS
    uses_models = True
    outputs = ("rewrite_summary.json",)

    def enabled(self, cfg) -> bool:
        return cfg.rewrite.enabled

    def resources(self, cfg):
        return engine_resources(cfg.models.teacher, cfg.models.rewriter)

    def plan(self, cfg, input_indices):
        # The shard count sets each shard's share of the run-wide per-skill quota.
        return [
            ShardTask(index=i, input_shards=[i], payload={"n_shards": len(input_indices)})
            for i in input_indices
        ]

    def check(self, cfg):
        rc = cfg.rewrite
        if rc.method in ("programmatic", "both"):
            world_config(rc.world)
            unknown = sorted(set(rc.strategies) - set(STRATEGIES))
            if unknown:
                raise ConfigError(f"rewrite.strategies: unknown {unknown}; known: {sorted(STRATEGIES)}")
        if rc.method in ("llm", "both"):  # named templates must exist: fail now, not per shard
            templates("seed_guided", rc.seed_templates)
            if rc.skill_guided:
                templates("skill_guided", rc.skill_templates)

    def setup(self, cfg):
        return RewriteEngines(cfg)

    def process(self, cfg, state, task, table):
        return ShardRewrite(cfg, state, task, table).run()

    def finalize(self, cfg, stage_dir, tables):
        table = pa.concat_tables(tables, promote_options="default")
        summary = rewrite_summary(table)
        write_json(stage_dir / "rewrite_summary.json", summary)
        return {
            "seeds": summary["by_origin"].get("seed", {}).get("rows", 0),
            "synthesised": summary["synthesised"],
        }


def _origin_stats(rows: list[dict]) -> dict:
    agree = [r["pseudo_label_agreement"] for r in rows if r["pseudo_label_agreement"] is not None]
    return {
        "rows": len(rows),
        "mean_teacher_agreement": round(sum(agree) / len(agree), 4) if agree else None,
        "templates": dict(sorted(Counter(r["template"] for r in rows if r["template"]).items())),
        "skills": dict(sorted(Counter(r["skill"] or UNKNOWN for r in rows).items())),
    }


def rewrite_summary(table: pa.Table) -> dict:
    """Rows, mean teacher agreement and templates per origin."""
    rows = table.select(["origin", "template", "pseudo_label_agreement", "skill"]).to_pylist()
    out = {origin: _origin_stats(rs) for origin, rs in group_by(rows, "origin").items()}
    return {"synthesised": sum(v["rows"] for k, v in out.items() if k != "seed"), "by_origin": out}
