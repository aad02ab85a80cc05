"""The OPD-vs-TRL benchmark feeds TRL exactly the prompts our trainer takes, in its order."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.bench_trl import medians, opd_config, ordered_prompts
from pipeline.sampling.prompts import format_question
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from trainer.opd import OPDTrainer


def test_medians_leave_out_the_warm_up_step():
    steps = [{"step_s": 9.0, "tokens": 10, "gen_s": 8.0}, {"step_s": 1.0, "tokens": 100, "gen_s": 0.5},
             {"step_s": 2.0, "tokens": 100, "gen_s": 0.5}, {"step_s": 4.0, "tokens": 100, "gen_s": 1.0}]
    m = medians(steps)
    assert m == {"steps_measured": 3, "step_s": 2.0, "tokens": 100, "tokens_per_s": 50.0, "rollout_share": 0.25}
    with pytest.raises(ValueError):
        medians(steps[:1])


@pytest.mark.slow
def test_trl_gets_our_trainers_prompts_in_its_order(tmp_path):
    data = write_seed_set(tmp_path / "data", WorldConfig(), 12, seed=0, split="train")
    a = argparse.Namespace(models="models/chartworld", beta=1.0, steps=2, prompts_per_step=3, rollouts=2,
                           max_new_tokens=4, lr=3e-4, threads=1, device="cpu")
    cfg = opd_config(a, data, tmp_path / "out")
    rows = ordered_prompts(cfg, 6)
    ours = OPDTrainer(cfg)._next_prompts(6)
    texts = [format_question(it.prompt.question, it.prompt.choices or None, cfg.instruction) for it in ours]
    assert [r["prompt"][0]["content"][-1]["text"] for r in rows] == texts
    assert all(r["prompt"][0]["content"][0] == {"type": "image"} for r in rows)
    assert [r["image"].size for r in rows] == [it.prompt.image.size for it in ours]
