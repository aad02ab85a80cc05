"""The chart-world programmatic rewriter (seeds/chartworld/variants.py): new charts aimed
at a skill, with exact answers, inside the seeds' world."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from seeds.chartworld.questions import recompute_answer
from seeds.chartworld.render import render_png
from seeds.chartworld.spec import SKILLS, Chart, WorldConfig
from seeds.chartworld.variants import STRATEGIES, rewrite_variants, strategies_for

WORLD = WorldConfig()


@pytest.mark.parametrize("skill", SKILLS)
def test_programmatic_variants_target_the_skill_with_exact_answers(skill):
    parent = Chart("bar", "Sales", ["A", "C", "E", "G"], [2, 7, 4, 9])
    parent_png = render_png(parent, WORLD, 5)
    parent_q = "What is the title?"
    for seed in range(6):
        variants = rewrite_variants(
            skill,
            4,
            WORLD,
            random.Random(seed),
            parent=parent,
            parent_image=parent_png,
            parent_question=parent_q,
        )
        assert variants, f"no variant for {skill}"
        for v in variants:
            assert v.qa.skill == skill
            assert recompute_answer(v.chart, v.qa) == v.qa.answer  # answer re-derived from data
            assert skill in (STRATEGIES[v.strategy].skills or SKILLS)
            assert v.qa.family not in STRATEGIES[v.strategy].avoid_families
            vals = v.chart.values
            assert WORLD.min_items <= len(vals) <= WORLD.max_items
            assert all(WORLD.min_value <= x <= WORLD.max_value for x in vals)
            if v.strategy == "same_chart":
                assert v.chart == parent and v.image == parent_png and v.qa.question != parent_q
            else:
                img = Image.open(io.BytesIO(v.image))
                assert img.size == (WORLD.width, WORLD.height)
                assert v.image == render_png(v.chart, WORLD, v.style_seed)  # reproducible
            if v.strategy == "more_items":
                assert len(vals) == WORLD.max_items
            if v.strategy == "closer_values":
                assert max(vals) - min(vals) <= 2
            if v.strategy == "harder_arithmetic":
                assert min(vals) >= (WORLD.min_value + WORLD.max_value + 1) // 2
                assert len(vals) == WORLD.max_items
        same = [v.qa.question for v in variants if v.strategy == "same_chart"]
        assert len(same) == len(set(same))  # one image never gets a question twice


def test_programmatic_variants_are_seeded_and_respect_the_strategy_list():
    a = rewrite_variants("arithmetic", 3, WORLD, random.Random(7))
    b = rewrite_variants("arithmetic", 3, WORLD, random.Random(7))
    assert [(v.chart, v.qa) for v in a] == [(v.chart, v.qa) for v in b]
    only = rewrite_variants(
        "arithmetic", 3, WORLD, random.Random(7), strategies=["harder_arithmetic"]
    )
    assert {v.strategy for v in only} == {"harder_arithmetic"}
    assert strategies_for("text") == ["same_chart", "more_items"]
    with pytest.raises(ValueError, match="unknown programmatic strategies"):
        strategies_for("text", ["bigger"])
    # same_chart without a parent chart is impossible, not an error
    assert rewrite_variants("text", 2, WORLD, random.Random(0), strategies=["same_chart"]) == []


def test_programmatic_rewriter_stays_inside_a_different_world():
    world = WorldConfig(
        kinds=["table"], min_items=4, max_items=7, max_value=20, label_set="days", width=224
    )
    for v in rewrite_variants("multihop", 6, world, random.Random(1)):
        assert v.chart.kind == "table" and 4 <= len(v.chart.values) <= 7
        assert max(v.chart.values) <= 20 and set(v.chart.labels) <= {
            "Mon",
            "Tue",
            "Wed",
            "Thu",
            "Fri",
            "Sat",
            "Sun",
        }
        assert recompute_answer(v.chart, v.qa) == v.qa.answer
