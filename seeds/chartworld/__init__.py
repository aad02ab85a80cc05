"""Chart world: synthetic chart/table/document images with exact answers per skill.

    from seeds.chartworld import WorldConfig, generate, write_seed_set
    for ex in generate(WorldConfig(), n=10, seed=0): ...
    python -m seeds.chartworld --out DIR --n 1000 --seed 0 --split test
"""

from seeds.chartworld.generator import (
    Example,
    direct_target,
    generate,
    make_example,
    reasoning_target,
)
from seeds.chartworld.questions import QA, recompute_answer
from seeds.chartworld.spec import CHART_KINDS, SKILLS, Chart, WorldConfig
from seeds.chartworld.writer import build_table, write_seed_set

__all__ = [
    "CHART_KINDS", "SKILLS", "QA", "Chart", "Example", "WorldConfig", "build_table",
    "direct_target", "generate", "make_example", "reasoning_target", "recompute_answer",
    "write_seed_set",
]
