"""Tagging prompts that arrive without a skill, with the taxonomy's names only.

Seeds from the chart world (and some real datasets) carry a skill; others do not. For
those, `mine` can ask an LLM (the rewriter engine) through `prompts_templates/skill_tag.j2`.
The reply is free text: the first taxonomy name (pipeline/core/skills.py) it mentions
wins, anything else is "other" — a tag is never invented outside the taxonomy, so failure
reports stay grouped.
"""

from __future__ import annotations

import re

import jinja2
import pyarrow as pa

from pipeline.core.images import image_bytes
from pipeline.core.schema import column_or
from pipeline.core.skills import SKILLS
from pipeline.engines.base import Engine
from pipeline.sampling.prompts import build_request
from prompts_templates import TEMPLATE_ROOT

TEMPLATE = TEMPLATE_ROOT / "skill_tag.j2"
# Longest names first so "multihop" is not read as a shorter name it contains.
_NAMES = re.compile(r"\b(" + "|".join(sorted(SKILLS, key=len, reverse=True)) + r")\b", re.I)


def render_skill_prompt(question: str, choices: list[str] | None = None) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    return env.from_string(TEMPLATE.read_text()).render(skills=SKILLS, question=question,
                                                        choices=choices or [])


def parse_skill(reply: str | None) -> str:
    m = _NAMES.search(reply or "")
    return m.group(1).lower() if m else "other"


def tag_skills(engine: Engine, table: pa.Table, max_tokens: int = 16) -> list[str]:
    """One skill per row of a canonical prompt table, asked of `engine` (greedy)."""
    ids = column_or(table, "id")
    requests = [
        build_request(render_skill_prompt(q, ch), image_bytes(im), id=ids[i])
        for i, (q, ch, im) in enumerate(zip(table.column("question").to_pylist(),
                                            column_or(table, "choices"), column_or(table, "image")))
    ]
    results = engine.sample(requests, n=1, temperature=0.0, max_tokens=max_tokens)
    return [parse_skill(r.completions[0].text if r.completions else None) for r in results]
