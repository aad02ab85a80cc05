"""Stage 4, delta, through the real runner: the student_solved rule never asks the teacher,
its counts reach the manifest, and resume / the config hash treat it like any Δ setting.

The stages run in-process (execution.backend local) on real ingest / mine / delta /
filter code; only the models are the shared FAKE engine (tests/fakes.py), because the
rule is about which prompts reach the teacher at all, which needs chosen answers.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import config_from_dict
from pipeline.core.errors import RunError
from pipeline.runner.run import Manifest, run_stage
from pipeline.runner.stage import StageRegistry
from stages.delta import DeltaStage
from stages.filter import FilterStage
from stages.ingest import IngestStage
from stages.mine import MineStage
from tests.engine_fixtures import image_bytes, make_image
from tests.fakes import ScriptedEngine, text_of
from tools.compare_runs import stage_table

# question -> (gold, the student's answers cycled, the teacher's answer)
PROMPTS = {
    "What is A?": ("4", ["4"], "4"),  # solved: all four student answers right
    "What is C?": ("7", ["6"], "7"),  # the student is wrong, the teacher right
    "What is D?": ("9", ["9", "8"], "1"),  # half right; the teacher confidently wrong
}
NO_GOLD = {"What is B?": (None, ["5"], "5")}  # solved-looking, but no gold to tell


def _engine(table: dict, side: int) -> ScriptedEngine:
    def reply(request, k):
        answers = table[text_of(request).strip()][side]
        answers = [answers] if isinstance(answers, str) else answers
        return f"Answer: {answers[k % len(answers)]}"

    return ScriptedEngine(reply)


class _Mine(MineStage):
    def __init__(self, student):
        self.student = student

    def setup(self, cfg):
        return SimpleNamespace(student=self.student, tagger=None, stores={}, close=lambda: None)


class _Delta(DeltaStage):
    def __init__(self, teacher, student):
        self.teacher, self.student = teacher, student

    def setup(self, cfg):
        return SimpleNamespace(teacher=self.teacher, student=self.student, stores={}, close=lambda: None)


@pytest.fixture
def run(tmp_path):
    img = image_bytes(make_image(1, (32, 32)))
    pq.write_table(pa.table({"q": list(PROMPTS), "a": [g for g, _, _ in PROMPTS.values()],
                             "img": [img] * len(PROMPTS)}), tmp_path / "gold.parquet")
    pq.write_table(pa.table({"q": list(NO_GOLD), "img": [img]}), tmp_path / "nogold.parquet")
    everything = {**PROMPTS, **NO_GOLD}
    teacher, student = _engine(everything, 2), _engine(everything, 1)
    stages = StageRegistry([IngestStage, _Mine(student), _Delta(teacher, student), FilterStage])

    def cfg(**over):
        raw = {
            "run": {"name": "skip", "root": str(tmp_path / "runs")},
            "execution": {"backend": "local"},
            "models": {side: {"engine": "transformers", "model": f"scripted/{side}", "device": "cpu"}
                       for side in ("teacher", "student")},
            "ingest": {"sources": [
                {"name": "gold", "format": "generic", "path": str(tmp_path / "gold.parquet"),
                 "split": "test", "columns": {"image": "img", "question": "q", "answers": "a"}},
                {"name": "nogold", "format": "generic", "path": str(tmp_path / "nogold.parquet"),
                 "split": "test", "columns": {"image": "img", "question": "q"}},
            ]},
            "sampling": {"n": 4, "instruction": ""},
            "delta": {"bootstrap": 0},
            "filter": {"wrong_teacher_agreement": 0.8},
        }
        return config_from_dict(raw, [f"{k}={json.dumps(v)}" for k, v in over.items()])

    c = cfg()
    for name in ("ingest", "mine"):
        run_stage(c, stages.by_name(name), stages, progress=False)
    ids = {r["question"]: r["id"] for r in stage_table(c.run_dir / "02-mine").to_pylist()}
    return SimpleNamespace(cfg=cfg, stages=stages, teacher=teacher, student=student, ids=ids)


def _rows(cfg) -> dict[str, dict]:
    return {r["question"]: r for r in stage_table(cfg.run_dir / "04-delta").to_pylist()}


def _asked(engine: ScriptedEngine) -> set[str]:
    return {i for call in engine.calls for i in call.ids}


def test_a_solved_prompt_with_gold_never_reaches_the_teacher(run):
    c = run.cfg()
    delta = run.stages.by_name("delta")
    mined = len(run.student.calls)
    man = run_stage(c, delta, run.stages, progress=False)

    asked = _asked(run.teacher)
    assert run.ids["What is A?"] not in asked  # student_solved: decided without the teacher
    assert run.ids["What is B?"] in asked  # no gold: sampled like any prompt
    assert {run.ids["What is C?"], run.ids["What is D?"]} <= asked
    assert len(run.student.calls) == mined  # mine's samples reused, none drawn here

    rows = _rows(c)
    a = rows["What is A?"]
    assert a["stop_reason"] == "student_solved" and a["teacher_samples"] == [] and a["teacher_answers"] == []
    assert (a["delta"], a["delta_low"], a["delta_high"], a["zero_delta"]) == (0.0, 0.0, 0.0, True)
    assert a["teacher_majority"] is None and a["teacher_agreement"] is None and a["teacher_correct"] is None
    assert a["student_answers"] == ["4"] * 4 and a["student_majority"] == "4" and a["student_agreement"] == 1.0
    b = rows["What is B?"]  # n=4 is the unanimity count: the teacher draws all four
    assert b["stop_reason"] is None and b["teacher_answers"] == ["5"] * 4 and b["zero_delta"]
    # teacher_correct: the majority against gold; null without gold
    assert [rows[q]["teacher_correct"] for q in ("What is B?", "What is C?", "What is D?")] == [None, True, False]

    # The counts reach delta_summary.json and the manifest's report, in one format.
    summary = json.loads((c.run_dir / "04-delta" / "delta_summary.json").read_text())
    assert summary["samples"]["student_solved"] == {"prompts": 1, "teacher_not_drawn": 4}
    assert summary["samples"]["teacher_drawn"] == sum(run.teacher.drawn.values()) and man.report["samples"] == summary["samples"]
    assert Manifest.read(c.run_dir / "04-delta").report["samples"]["student_solved"]["prompts"] == 1
    assert summary["overall"]["zero_delta"] == 2  # A by definition, B measured

    # The filter drops A as zero-delta and D's confidently wrong teacher under its own reason.
    report = run_stage(c, run.stages.by_name("filter"), run.stages, progress=False).report
    assert report["dropped"] == {"zero_delta": 2, "teacher_wrong": 1} and report["kept"] == 1
    kept = stage_table(c.run_dir / "05-filter").column("question").to_pylist()
    assert kept == ["What is C?"]


def test_resume_and_the_config_hash_treat_the_rule_like_any_delta_setting(run):
    delta = run.stages.by_name("delta")
    run_stage(run.cfg(), delta, run.stages, progress=False)
    calls = len(run.teacher.calls)
    # The same settings: complete shards are kept, the teacher is not asked again.
    run_stage(run.cfg(), delta, run.stages, progress=False)
    assert len(run.teacher.calls) == calls

    off = run.cfg(**{"delta.skip_solved": None})
    for changed in (off, run.cfg(**{"delta.skip_solved": 0.75}), run.cfg(**{"mine.grading": "exact"})):
        assert changed.hash_of(delta.hash_keys(changed)) != run.cfg().hash_of(delta.hash_keys(run.cfg()))
    with pytest.raises(RunError, match="config changed"):
        run_stage(off, delta, run.stages, progress=False)
    run_stage(off, delta, run.stages, recompute=True, progress=False)
    assert run.ids["What is A?"] in _asked(run.teacher)  # rule off: the teacher is asked
    a = _rows(off)["What is A?"]
    assert a["stop_reason"] is None and a["teacher_correct"] is True and a["teacher_answers"] == ["4"] * 4
    summary = json.loads((off.run_dir / "04-delta" / "delta_summary.json").read_text())
    assert summary["samples"]["student_solved"] == {"prompts": 0, "teacher_not_drawn": 0}
