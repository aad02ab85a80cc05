"""The programmatic rewriter: new chart-world prompts aimed at a skill the student fails.

An LLM rewriter writes new *questions*; tiny toy models cannot write prose, so for the
chart world we also rewrite with code. Given a failing seed (its chart data and skill),
each *strategy* draws a new chart that is harder in one controlled way and asks a question
of the same skill on it, with an exact answer derived from the data:

==================  ====================================================================
same_chart          the seed's own chart (image reused): another question of the skill
more_items          as many items as the world allows (more to read, more to compare)
closer_values       values packed in a narrow band (extremum / comparison by small gaps)
harder_arithmetic   operands from the upper half of the value range (two-digit results)
==================  ====================================================================

Everything stays inside the ``WorldConfig`` the seeds were drawn from (item count, value
range, label set, image size): the toy models were trained on that world, so a variant is
harder for the reason the strategy names, not because it is out of distribution.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from seeds.chartworld.questions import FAMILIES, QA
from seeds.chartworld.render import render_png
from seeds.chartworld.spec import LABEL_SETS, TITLES, Chart, WorldConfig

MAX_TRIES = 50  # charts drawn per variant before the strategy gives up
CLOSE_SPREAD = 2  # closer_values: max - min of the values is at most this


@dataclass
class Variant:
    chart: Chart
    qa: QA
    image: bytes  # PNG: freshly rendered, or the parent's bytes for same_chart
    strategy: str
    style_seed: int | None  # None when the parent's image is reused


def _labels(world: WorldConfig, rng: random.Random, n: int) -> list[str]:
    pool = LABEL_SETS[world.label_set]
    if world.ordered_labels:
        start = rng.randint(0, len(pool) - n)
        return pool[start : start + n]
    return rng.sample(pool, n)


def _kind(world: WorldConfig, parent: Chart | None, rng: random.Random) -> str:
    # Keep the parent's chart type when the world has it: the failure may be tied to it.
    return (
        parent.kind
        if parent is not None and parent.kind in world.kinds
        else rng.choice(world.kinds)
    )


def _chart(world: WorldConfig, rng: random.Random, kind: str, n: int, lo: int, hi: int) -> Chart:
    return Chart(
        kind=kind,
        title=rng.choice(TITLES),
        labels=_labels(world, rng, n),
        values=[rng.randint(lo, hi) for _ in range(n)],
    )


def _more_items(world: WorldConfig, parent: Chart | None, rng: random.Random) -> Chart:
    return _chart(
        world, rng, _kind(world, parent, rng), world.max_items, world.min_value, world.max_value
    )


def _closer_values(world: WorldConfig, parent: Chart | None, rng: random.Random) -> Chart:
    spread = min(CLOSE_SPREAD, world.max_value - world.min_value)
    base = rng.randint(world.min_value, world.max_value - spread)
    n = rng.randint(world.min_items, world.max_items)
    return _chart(world, rng, _kind(world, parent, rng), n, base, base + spread)


def _harder_arithmetic(world: WorldConfig, parent: Chart | None, rng: random.Random) -> Chart:
    mid = (world.min_value + world.max_value + 1) // 2
    return _chart(world, rng, _kind(world, parent, rng), world.max_items, mid, world.max_value)


ChartSampler = Callable[[WorldConfig, Chart | None, random.Random], Chart]


@dataclass(frozen=True)
class Strategy:
    sampler: ChartSampler | None  # None: the parent's own chart (and image)
    skills: tuple[str, ...] | None = None  # skills it can make harder; None: every skill
    # Question families it must not ask: those whose answer the strategy itself fixes
    # (more_items always draws max_items items, so "how many bars?" would be a constant).
    avoid_families: tuple[str, ...] = ()


# Order matters only as the default cycling order.
STRATEGIES: dict[str, Strategy] = {
    "same_chart": Strategy(None),
    "more_items": Strategy(_more_items, avoid_families=("count_items",)),
    "closer_values": Strategy(
        _closer_values,
        ("retrieval", "extremum", "comparison", "counting", "arithmetic", "multihop"),
    ),
    "harder_arithmetic": Strategy(
        _harder_arithmetic, ("arithmetic", "multihop"), avoid_families=("count_items",)
    ),
}


def strategies_for(skill: str, allowed: list[str] | None = None) -> list[str]:
    """The strategies that can target ``skill`` (restricted to ``allowed`` if given)."""
    unknown = sorted(set(allowed or []) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown programmatic strategies {unknown}; known: {sorted(STRATEGIES)}")
    names = [s for s in STRATEGIES if not allowed or s in allowed]
    return [s for s in names if STRATEGIES[s].skills is None or skill in STRATEGIES[s].skills]


def _ask(chart: Chart, skill: str, rng: random.Random, avoid: tuple[str, ...]) -> QA | None:
    """questions.ask without the families in ``avoid``."""
    families = [f for f in FAMILIES[skill] if f.__name__ not in avoid]
    rng.shuffle(families)
    for fam in families:
        qa = fam(chart, rng)
        if qa is not None:
            return qa
    return None


def make_variant(
    strategy: str,
    skill: str,
    world: WorldConfig,
    rng: random.Random,
    *,
    parent: Chart | None = None,
    parent_image: bytes | None = None,
    avoid_questions: set[str] | frozenset[str] = frozenset(),
) -> Variant | None:
    """One variant of ``strategy`` asking a ``skill`` question, or None if none was found
    in ``MAX_TRIES`` draws (e.g. same_chart on a chart with one possible question)."""
    strat = STRATEGIES[strategy]
    sampler = strat.sampler
    if sampler is None and (parent is None or parent_image is None):
        return None  # same_chart needs the parent's data and pixels
    for _ in range(MAX_TRIES):
        chart = parent if sampler is None else sampler(world, parent, rng)
        qa = _ask(chart, skill, rng, strat.avoid_families)
        if qa is None or qa.question in avoid_questions:
            continue
        if sampler is None:
            return Variant(chart, qa, parent_image, strategy, None)
        style_seed = rng.getrandbits(32)
        return Variant(chart, qa, render_png(chart, world, style_seed), strategy, style_seed)
    return None


def rewrite_variants(
    skill: str,
    k: int,
    world: WorldConfig,
    rng: random.Random,
    *,
    parent: Chart | None = None,
    parent_image: bytes | None = None,
    parent_question: str | None = None,
    strategies: list[str] | None = None,
) -> list[Variant]:
    """Up to ``k`` variants targeting ``skill``, cycling through the applicable strategies
    in a seeded order; a same_chart variant never repeats the parent's question."""
    world.validate()
    names = strategies_for(skill, strategies)
    if not names or k <= 0:
        return []
    rng.shuffle(names)
    out: list[Variant] = []
    asked = {parent_question} if parent_question else set()
    for i in range(k):
        v = make_variant(
            names[i % len(names)],
            skill,
            world,
            rng,
            parent=parent,
            parent_image=parent_image,
            avoid_questions=asked,
        )
        if v is not None:
            out.append(v)
            if v.style_seed is None:
                asked.add(v.qa.question)  # same chart, same image: no repeated question
    return out
