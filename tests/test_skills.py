"""Skill tagging for prompts that arrive without one."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.engines.base import Completion, Engine, SampleResult
from pipeline.schema import make_prompt_row, rows_to_table
from pipeline.skills import SKILLS, parse_skill, render_skill_prompt, tag_skills
from tests.engine_fixtures import image_bytes, make_image


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


class ScriptedTagger(Engine):
    """A scripted stand-in engine (not a model): replies with a skill chosen from the prompt."""

    def __init__(self):
        self.prompts = []

    def sample(self, requests, *, n=1, **kw):
        out = []
        for r in requests:
            text = r.messages[-1]["content"][-1]["text"]
            self.prompts.append(text)
            reply = "arithmetic" if "Question: What is the sum" in text else "Skill: counting"
            out.append(SampleResult([Completion(reply, [1])] * n))
        return out

    def score(self, requests, completions):
        raise NotImplementedError

    def close(self):
        pass


def _table(questions):
    img = image_bytes(make_image(0, (64, 64)))
    return rows_to_table([make_prompt_row(source="t", question=q, image_bytes=img) for q in questions])


def test_tag_skills_asks_the_engine_with_the_template():
    eng = ScriptedTagger()
    assert tag_skills(eng, _table(["What is the sum of A and B?", "How many bars?"])) == [
        "arithmetic", "counting"]
    assert all("Reply with the skill name only." in p for p in eng.prompts)


@pytest.mark.slow
def test_mine_tags_only_rows_without_a_skill(tiny_models, tmp_path):
    from pipeline.config import config_from_dict
    from pipeline.run import run_stage
    from stages.ingest import IngestStage
    from stages.mine import MineStage

    teacher, student = tiny_models
    src = tmp_path / "seeds.parquet"
    import pyarrow.parquet as pq

    img = image_bytes(make_image(1, (64, 64)))
    pq.write_table(pa.table({"q": ["How many bars?", "What is A?", "Sum of A and B?"],
                             "a": ["3", "4", "7"], "s": ["counting", None, None],
                             "img": [img] * 3}), src)
    eng = {"engine": "transformers", "device": "cpu"}
    cfg = config_from_dict({
        "run": {"name": "tag", "root": str(tmp_path / "runs")},
        "execution": {"backend": "local"},
        "models": {"teacher": {**eng, "model": str(teacher)}, "student": {**eng, "model": str(student)}},
        "ingest": {"sources": [{"format": "generic", "path": str(src), "split": "train",
                                "columns": {"image": "img", "question": "q", "answers": "a",
                                            "skill": "s"}}]},
        "delta": {"n": 2, "k": 1, "max_tokens": 4},
        "mine": {"tag_skills": True},
    })
    stages = {s.name: s for s in (IngestStage(), MineStage())}
    run_stage(cfg, stages["ingest"], stages, progress=False)
    run_stage(cfg, stages["mine"], stages, progress=False)
    from pipeline.shards import read_stage_table

    out = {r["question"]: r["skill"] for r in read_stage_table(cfg.run_dir / "02-mine").to_pylist()}
    assert out["How many bars?"] == "counting"  # kept, not re-tagged
    assert out["What is A?"] in SKILLS and out["Sum of A and B?"] in SKILLS
