"""Skill tagging for prompts that arrive without one."""

from __future__ import annotations

import pytest

from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.core.skills import SKILLS
from pipeline.sampling.skill_tags import parse_skill, render_skill_prompt, tag_skills
from tests.engine_fixtures import image_bytes, make_image
from tests.fakes import ScriptedEngine, text_of


def test_template_lists_every_skill_and_the_question():
    text = render_skill_prompt("Which bar is tallest?", ["A", "B"])
    assert all(f"- {name}:" in text for name in SKILLS)
    assert "Which bar is tallest?" in text and "Options: A, B" in text


@pytest.mark.parametrize("reply, skill", [
    ("arithmetic", "arithmetic"),
    ("The skill is Multihop.", "multihop"),
    ("counting, then comparison", "counting"),
    ("I think it is about colours", "other"),
    ("", "other"),
    (None, "other"),
])
def test_parse_skill_never_leaves_the_taxonomy(reply, skill):
    assert parse_skill(reply) == skill


def _table(questions):
    img = image_bytes(make_image(0, (64, 64)))
    return rows_to_table([make_prompt_row(source="t", question=q, image_bytes=img) for q in questions])


def test_tag_skills_asks_the_engine_with_the_template():
    eng = ScriptedEngine(lambda r, k: "arithmetic" if "Question: What is the sum" in text_of(r)
                         else "Skill: counting")
    assert tag_skills(eng, _table(["What is the sum of A and B?", "How many bars?"])) == [
        "arithmetic", "counting"]
    (call,) = eng.calls
    assert call.params.temperature == 0.0 and call.params.n == 1
    assert all("Reply with the skill name only." in text_of(r) for r in call.requests)
    assert all(len(r.images) == 1 for r in call.requests)
