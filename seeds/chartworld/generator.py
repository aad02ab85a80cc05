"""Deterministic chart-world examples: (seed, index) -> chart, question, answer, PNG.

Each example draws from its own ``random.Random`` keyed on ``(seed, index)`` (string seeds
are hashed with SHA-512 by ``random``, stable across runs and machines), so example ``i``
is the same whatever ``n`` is, and a shard of a big set can be made alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from seeds.chartworld.questions import QA, ask
from seeds.chartworld.render import render_png
from seeds.chartworld.spec import SKILLS, Chart, WorldConfig, sample_chart

MAX_TRIES = 100  # charts drawn before giving up on a skill (only a degenerate world gets there)


@dataclass
class Example:
    index: int
    chart: Chart
    qa: QA
    image: bytes  # PNG
    style_seed: int


def _skill_table(cfg: WorldConfig) -> tuple[list[str], list[float]]:
    weights = cfg.skill_weights or {s: 1.0 for s in SKILLS}
    skills = [s for s in SKILLS if weights.get(s, 0.0) > 0]
    return skills, [float(weights[s]) for s in skills]


def make_example(cfg: WorldConfig, seed: int, index: int) -> Example:
    rng = random.Random(f"chartworld:{seed}:{index}")
    skills, weights = _skill_table(cfg)
    skill = rng.choices(skills, weights)[0]
    for _ in range(MAX_TRIES):
        chart = sample_chart(cfg, rng)
        qa = ask(chart, skill, rng)
        if qa is not None:
            style_seed = rng.getrandbits(32)
            return Example(index, chart, qa, render_png(chart, cfg, style_seed), style_seed)
    raise ValueError(f"world {cfg} cannot pose a {skill!r} question in {MAX_TRIES} charts")


def generate(cfg: WorldConfig, n: int, seed: int = 0, start: int = 0) -> Iterator[Example]:
    """Examples ``start .. start+n-1`` of the world ``(cfg, seed)``."""
    cfg.validate()
    for i in range(start, start + n):
        yield make_example(cfg, seed, i)


# --- supervised targets for the toy models ---------------------------------------------
def answer_line(answer: str) -> str:
    return f"Answer: {answer}"


def reasoning_target(qa: QA) -> str:
    """The teacher's completion: a short worked <think> block, then the answer line."""
    return f"<think>{qa.reasoning}</think>\n{answer_line(qa.answer)}"


def direct_target(qa: QA) -> str:
    """The student's completion: the answer line alone."""
    return answer_line(qa.answer)
