"""Stage 2, mine: the student's samples, accuracy and failures; skill tagging."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import config_from_dict
from pipeline.core.skills import SKILLS
from pipeline.runner.run import run_stage
from pipeline.runner.stage import StageRegistry
from stages.ingest import IngestStage
from stages.mine import MineStage
from tests.engine_fixtures import image_bytes, make_image
from tools.compare_runs import stage_table


@pytest.mark.slow
def test_mine_tags_only_rows_without_a_skill(tiny_models, tmp_path):
    teacher, student = tiny_models
    src = tmp_path / "seeds.parquet"
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
        "sampling": {"n": 2, "max_tokens": 4},
        "mine": {"tag_skills": True},
    })
    stages = StageRegistry([IngestStage, MineStage])
    run_stage(cfg, stages.by_name("ingest"), stages, progress=False)
    run_stage(cfg, stages.by_name("mine"), stages, progress=False)
    out = {r["question"]: r["skill"] for r in stage_table(cfg.run_dir / "02-mine").to_pylist()}
    assert out["How many bars?"] == "counting"  # kept, not re-tagged
    assert out["What is A?"] in SKILLS and out["Sum of A and B?"] in SKILLS
