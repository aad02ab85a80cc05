"""The programmatic pass of stage 3: new chart-world charts aimed at a failing skill, with
exact answers (seeds/chartworld/variants.py draws them)."""

from __future__ import annotations

import json

from pipeline.core.errors import ConfigError
from pipeline.core.images import normalize_image
from pipeline.core.schema import make_prompt_row
from seeds.chartworld.spec import Chart, WorldConfig
from seeds.chartworld.variants import rewrite_variants
from stages.rewrite.common import Candidate, PassContext

PROGRAMMATIC = "chartworld-programmatic"


def world_config(world: dict) -> WorldConfig:
    """The ``rewrite.world`` block as a WorldConfig; ConfigError naming the bad field."""
    try:
        cfg = WorldConfig(**world)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rewrite.world: {e}") from None
    return cfg


def chart_of(row: dict) -> Chart | None:
    """The chart-world data behind a seed (its meta "chart"), or None for other sources."""
    try:
        meta = json.loads(row.get("meta") or "{}")
        text = meta.get("chart")
        return Chart.from_json(text) if isinstance(text, str) else None
    except (ValueError, TypeError):
        return None


def variants(ctx: PassContext, selected: list[int]) -> list[Candidate]:
    """``variants_per_seed`` new charts per selected chart-world seed, for its skill."""
    rc = ctx.rc
    world = world_config(rc.world)
    out = []
    for i in selected:
        seed = ctx.rows[i]
        chart = chart_of(seed)
        if chart is None:
            ctx.skipped["programmatic_not_chartworld"] += 1
            continue
        if not seed.get("skill"):
            ctx.skipped["programmatic_no_skill"] += 1
            continue
        img = (seed["image"] or {}).get("bytes")
        drawn = rewrite_variants(seed["skill"], rc.variants_per_seed, world, ctx.rng, parent=chart,
                                 parent_image=img, parent_question=seed["question"],
                                 strategies=rc.strategies or None)
        ctx.skipped["programmatic_unaskable"] += rc.variants_per_seed - len(drawn)
        for v in drawn:
            image = img if v.style_seed is None else normalize_image(v.image)
            row = make_prompt_row(
                source=seed["source"],
                question=v.qa.question,
                image_bytes=image,
                answers=[v.qa.answer],
                split=seed["split"],
                skill=v.qa.skill,
                parent_id=seed["id"],
                meta={
                    "chart": v.chart.to_json(),
                    "family": v.qa.family,
                    "reasoning": v.qa.reasoning,
                    "strategy": v.strategy,
                    "style_seed": v.style_seed,
                    "pass": "programmatic",
                },
                image_path=(seed["image"] or {}).get("path") if v.style_seed is None else None,
            )
            if v.style_seed is not None:  # a new picture gets a name of its own
                row["image"]["path"] = f"chartworld-rewrite-{row['id']}.png"
            row.update(origin="programmatic", template=v.strategy, rewriter=PROGRAMMATIC, attempts=1)
            out.extend(ctx.dedup(Candidate(row, v.qa.answer, exact=True)))
    return out
