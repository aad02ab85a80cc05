"""The skill taxonomy, and tagging prompts that arrive without a skill.

Seeds from the chart world (and some real datasets) carry a skill; others do not. For
those, `mine` can ask an LLM (the rewriter engine) through `prompts_templates/skill_tag.j2`.
The reply is free text: the first taxonomy name it mentions wins, anything else is
"other" — a tag is never invented outside the taxonomy, so failure reports stay grouped.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

SKILLS: dict[str, str] = {
    "retrieval": "read one value or label off the image",
    "extremum": "find the largest or smallest item",
    "comparison": "compare two items",
    "counting": "count items",
    "arithmetic": "compute a sum, difference or ratio of read values",
    "multihop": "chain several reads and steps",
    "text": "read text such as a title, heading or caption",
    "perception": "recognise objects, colours, shapes or positions",
    "other": "anything else",
}
TEMPLATE = Path(__file__).resolve().parent.parent / "prompts_templates" / "skill_tag.j2"
# Longest names first so "multihop" is not read as a shorter name it contains.
_NAMES = re.compile(r"\b(" + "|".join(sorted(SKILLS, key=len, reverse=True)) + r")\b", re.I)


def render_skill_prompt(question: str, choices: list[str] | None = None) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    return env.from_string(TEMPLATE.read_text()).render(skills=SKILLS, question=question,
                                                        choices=choices or [])


def parse_skill(reply: str | None) -> str:
    m = _NAMES.search(reply or "")
    return m.group(1).lower() if m else "other"


def tag_skills(engine, table, max_tokens: int = 16) -> list[str]:
    """One skill per row of a canonical prompt table, asked of `engine` (greedy)."""
    from pipeline.audit import requests_from_table

    requests = requests_from_table(table, instruction=None)
    for req, q, ch in zip(requests, table.column("question").to_pylist(),
                          table.column("choices").to_pylist()):
        req.messages[-1]["content"][-1]["text"] = render_skill_prompt(q, ch)
    results = engine.sample(requests, n=1, temperature=0.0, max_tokens=max_tokens)
    return [parse_skill(r.completions[0].text if r.completions else None) for r in results]
