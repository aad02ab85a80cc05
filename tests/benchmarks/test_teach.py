"""The teach experiment: arm selection (pools, equal counts, held-out disjointness, replay mix),
the statistics on hand-computed cases, the report's verdicts, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from benchmarks.teach import main as teach_main
from benchmarks.teach_arms import (
    ARMS,
    heldout_overlap,
    measured_prompts,
    pool_problems,
    select_pools,
)
from benchmarks.teach_report import analyse, scale_shortfalls, targets
from benchmarks.teach_stats import (
    auc_log,
    betainc,
    bootstrap_steps_to_reach,
    paired_t,
    steps_to_reach,
    t_two_sided_p,
)
from pipeline.core import shards
from pipeline.core.images import normalize_image
from pipeline.core.schema import add_columns, make_prompt_row, rows_to_table
from seeds.chartworld import WorldConfig, generate
from seeds.chartworld.writer import write_seed_set

# ----------------------------------------------------------------------------- statistics


def test_auc_is_the_log_scale_mean_of_the_curve():
    # two doublings: (0.5+0.6)/2 and (0.6+0.7)/2, averaged
    assert auc_log([10, 20, 40], [0.5, 0.6, 0.7]) == pytest.approx(0.6)
    # unequal spacing on the log axis: 10->20 is one doubling, 20->80 two
    assert auc_log([10, 20, 80], [0.0, 1.0, 1.0]) == pytest.approx((0.5 * 1 + 1.0 * 2) / 3)
    with pytest.raises(ValueError, match="increase"):
        auc_log([20, 10], [0.1, 0.2])


def test_steps_to_reach_interpolates_on_the_log_axis():
    assert steps_to_reach([10, 20, 40], [0.5, 0.6, 0.7], 0.65) == pytest.approx(20 * 2 ** 0.5)
    assert steps_to_reach([10, 20, 40], [0.5, 0.6, 0.7], 0.6) == pytest.approx(20)
    assert steps_to_reach([10, 20, 40], [0.8, 0.6, 0.7], 0.6) == 10  # reached at the start
    assert steps_to_reach([10, 20, 40], [0.5, 0.6, 0.7], 0.9) == math.inf


def test_bootstrap_interval_over_seeds():
    same = [[0.5, 0.6, 0.7]] * 5
    r = bootstrap_steps_to_reach([10, 20, 40], same, 0.6, resamples=200)
    assert r == {"steps": pytest.approx(20), "low": pytest.approx(20), "high": pytest.approx(20),
                 "reached": 1.0}
    mixed = [[0.5, 0.6, 0.7], [0.5, 0.55, 0.58]]  # one seed never gets to 0.6
    r = bootstrap_steps_to_reach([10, 20, 40], mixed, 0.6, resamples=400, seed=1)
    assert r["low"] == pytest.approx(20) and r["high"] == math.inf and 0.5 < r["reached"] < 1.0


def test_t_distribution_against_table_values():
    assert t_two_sided_p(4.604094871, 4) == pytest.approx(0.01, abs=1e-8)  # t_0.995, df 4
    assert t_two_sided_p(2.776445105, 4) == pytest.approx(0.05, abs=1e-8)
    assert t_two_sided_p(12.70620474, 1) == pytest.approx(0.05, abs=1e-8)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| >= 1) = 1/2
    assert t_two_sided_p(0.0, 9) == pytest.approx(1.0)
    assert betainc(2, 3, 0.5) == pytest.approx(11 / 16)  # I_0.5(2, 3) by the binomial sum


def test_paired_t_by_hand():
    # differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), t = 2.5 / (sd / 2) = 3.873, df 3
    r = paired_t([1, 2, 3, 4], [0, 0, 0, 0])
    assert r["diff"] == 2.5 and r["df"] == 3
    assert r["t"] == pytest.approx(2.5 / (math.sqrt(5 / 3) / 2))
    assert r["p"] == pytest.approx(0.030466, abs=1e-5)
    assert paired_t([1, 1], [1, 1]) == {"diff": 0.0, "t": 0.0, "df": 1, "p": 1.0}


# ---------------------------------------------------------------------------- arm pools


def _measured(n_seeds=12, n_synth=8, zero_every=3) -> pa.Table:
    """A measured-prompt table as measured_prompts() returns it, without any files."""
    rows, origin, delta, zero, kept = [], [], [], [], []
    for i, ex in enumerate(generate(WorldConfig(), n_seeds + n_synth, seed=99)):
        r = make_prompt_row(source="chartworld", question=ex.qa.question, image_bytes=normalize_image(ex.image),
                            answers=[ex.qa.answer], skill=ex.qa.skill, meta={"chart": ex.chart.to_json()})
        rows.append(r)
        o = "seed" if i < n_seeds else "programmatic"
        z = i % zero_every == 0
        origin.append(o), zero.append(z), delta.append(0.0 if z else 0.5), kept.append(not z)
    t = rows_to_table(rows)
    return add_columns(t, {"origin": (pa.string(), origin), "delta": (pa.float64(), delta),
                           "zero_delta": (pa.bool_(), zero), "kept": (pa.bool_(), kept)})


def test_arm_pools_are_what_each_arm_claims():
    t = _measured()
    pools = select_pools(t, replay_share=0.25, seed=0)
    rows = t.to_pylist()
    sizes = pools.sizes()
    assert set(sizes) == set(ARMS)
    assert all(rows[i]["origin"] == "seed" for i in pools.rows["random"]) and sizes["random"] == 12
    assert all(rows[i]["origin"] == "seed" and rows[i]["kept"] for i in pools.rows["filtered"])
    assert all(rows[i]["origin"] != "seed" for i in pools.rows["synthesised"]) and sizes["synthesised"] == 8
    assert all(rows[i]["kept"] for i in pools.rows["deltaprompts"])
    assert sizes["deltaprompts"] == sizes["filtered"] + sum(not rows[i]["zero_delta"] for i in pools.rows["synthesised"])
    assert all(rows[i]["zero_delta"] for i in pools.rows["zero_delta"])
    skills = pools.skills()  # counted by hand from the rows each arm holds
    for arm, idx in pools.rows.items():
        assert sum(skills[arm].values()) == len(idx)
        for k, n in skills[arm].items():
            assert n == sum(rows[i]["skill"] == k for i in idx)


def test_the_replay_mix_has_its_share_and_all_of_deltaprompts():
    t = _measured(n_seeds=60, n_synth=40, zero_every=2)  # 50 kept, 50 zero-delta
    pools = select_pools(t, replay_share=0.25, seed=3)
    replay, dp = pools.rows["replay"], pools.rows["deltaprompts"]
    assert set(dp) <= set(replay) and len(set(replay)) == len(replay)
    extra = [i for i in replay if i not in set(dp)]
    assert all(t.column("zero_delta")[i].as_py() for i in extra)
    assert len(extra) == round(0.25 / 0.75 * len(dp)) == 17  # 17 of 67: a 25% share
    assert select_pools(t, 0.25, seed=3).rows["replay"] == replay  # seeded
    assert select_pools(t, 0.0).rows["replay"] == dp
    with pytest.raises(ValueError, match="replay_share"):
        select_pools(t, 1.0)


def test_small_pools_are_refused_for_long_budgets():
    pools = select_pools(_measured(), 0.25)
    assert pool_problems(pools, steps=2, prompts_per_step=2) == []
    problems = pool_problems(pools, steps=160, prompts_per_step=8)
    assert any(p.startswith("random: 12 prompts, 106.7 draws each") for p in problems)
    # Only the arms that train must last: the others are not checked.
    only = pool_problems(pools, steps=160, prompts_per_step=8, arms=["replay"])
    assert [p.split(":")[0] for p in only] == ["replay"]


def test_heldout_overlap_is_found_by_id_and_by_chart():
    t = _measured()
    pools = select_pools(t, 0.25)
    heldout = [{"question": ex.qa.question, "image": ex.image, "chart": ex.chart.to_json()}
               for ex in generate(WorldConfig(), 5, seed=2)]
    assert heldout_overlap(pools, heldout) == dict.fromkeys(ARMS, 0)
    leaked = pools.arm_table("random").to_pylist()[0]
    chart = json.loads(leaked["meta"])["chart"]
    same_chart = [{"question": leaked["question"], "image": b"\x89PNG other bytes", "chart": chart}]
    assert heldout_overlap(pools, same_chart)["random"] == 1


# ----------------------------------------------------------------------------- the report


def _run(arm, seed, finals, setting="opd"):
    steps = [10, 20, 40, 80, 160]
    return {"setting": setting, "arm": arm, "seed": seed, "rollout_tokens": 1000, "train_s": 10.0,
            "curve": [{"step": s, "overall": v, "by_skill": {"arithmetic": v - 0.2, "retrieval": 0.9}}
                      for s, v in zip(steps, finals)]}


def test_targets_follow_the_numbers():
    base = {"student": {"overall": 0.5, "by_skill": {"arithmetic": 0.0, "retrieval": 0.95}},
            "teacher": {"overall": 0.9, "by_skill": {"arithmetic": 1.0, "retrieval": 1.0}}}
    rnd = [[0.50, 0.52, 0.54, 0.56, 0.60 + s / 100] for s in range(5)]
    dp = [[0.58 + s / 200, 0.61 + s / 100, 0.64, 0.66, 0.68] for s in range(5)]
    runs = ([_run("random", s, c) for s, c in enumerate(rnd)]
            + [_run("deltaprompts", s, c) for s, c in enumerate(dp)])
    a = analyse(base, runs)
    assert a["skill_groups"] == {"gap": ["arithmetic"], "had": ["retrieval"]}
    t1, t2 = targets(base, a)
    assert t1["met"]  # random's final mean 0.62 is passed between 10 and 20 steps
    assert a["settings"]["opd"]["arms"]["deltaprompts"]["steps_to_random_final"]["steps"] < 20
    assert t2["met"] and "10: +" in t2["measured"]
    worse = runs[:5] + [_run("deltaprompts", s, [v - 0.02 for v in c]) for s, c in enumerate(rnd)]
    t1, t2 = targets(base, analyse(base, worse))
    assert not t1["met"] and not t2["met"]


def test_a_run_smaller_than_the_design_says_where():
    full = {"budgets": [10, 20, 40, 80, 160], "heldout_n": 2000}
    runs = [_run(arm, s, [0.5] * 5) for arm in ARMS for s in range(5)]
    runs += [{"setting": st, "arm": "random", "seed": 0} for st in ("sft", "transfer")]
    assert scale_shortfalls(full, runs) == []
    three = [r for r in runs if r["arm"] in ("random", "deltaprompts", "replay")]
    assert scale_shortfalls(full, three) == [
        "OPD arms not run: filtered, synthesised, zero_delta"]
    small = {"budgets": [4, 8, 16, 32], "heldout_n": 500}
    fewer = [r for r in runs if r["setting"] != "opd" or r["seed"] < 3 or r["arm"] == "random"]
    assert scale_shortfalls(small, [r for r in fewer if r["setting"] != "transfer"]) == [
        "3 seed(s) per OPD arm, not 5", "4 budgets, not 5", "longest budget 32 steps, not 160",
        "500 held-out questions, not 2,000",
        "not run: transfer"]


# ----------------------------------------------------------------------- end to end, tiny


def _write_stage(stage_dir, table):
    stage_dir.mkdir(parents=True)
    shards.write_shard(stage_dir, shards.ShardMarker(index=0, rows=0, sha256=""), table)


def _tiny_experiment(tmp_path) -> list[str]:
    """A (hand-written) pipeline run and held-out set; the argv of a 2-step experiment on them."""
    t = _measured(n_seeds=16, n_synth=8)
    n = t.num_rows
    t = add_columns(t, {"teacher_samples": (pa.list_(pa.string()), [[f"Answer: {a[0]}"] for a in t.column("answers").to_pylist()]),
                        "teacher_majority": (pa.string(), [a[0].lower() for a in t.column("answers").to_pylist()])})
    run = tmp_path / "run"
    _write_stage(run / "04-delta", t)
    _write_stage(run / "05-filter", t.filter(t.column("kept")))
    assert measured_prompts(run).num_rows == n
    write_seed_set(tmp_path / "heldout", WorldConfig(), 6, seed=2)
    return ["--run", str(run), "--heldout", str(tmp_path / "heldout"), "--heldout-n", "6",
            "--seeds", "0", "1", "--small-seeds", "0", "--budgets", "1", "2", "--prompts-per-step", "2",
            "--rollouts", "2", "--max-new-tokens", "8", "--student-b", "models/chartworld/student",
            "--out", str(tmp_path / "exp"), "--results", str(tmp_path / "results" / "teach"), "--threads", "1"]


@pytest.mark.slow
def test_a_tiny_experiment_runs_end_to_end_and_resumes(tmp_path):
    """Pools from a (hand-written) run, every setting on the toy pair for 2 steps, the
    results files; a second call reads every run back instead of training again."""
    argv = _tiny_experiment(tmp_path)
    results = tmp_path / "results" / "teach"
    assert teach_main(argv) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    runs = report["runs"]
    assert {(r["setting"], r["arm"]) for r in runs} == (
        {("opd", a) for a in ARMS} | {(s, a) for s in ("sft", "transfer") for a in ("random", "deltaprompts")})
    assert all([p["step"] for p in r["curve"]] == [1, 2] for r in runs)
    assert all(r["rollout_tokens"] > 0 and r["curve"][0]["n"] == 6 for r in runs)
    md = results.with_suffix(".md").read_text()
    assert md.splitlines()[2].startswith("- **") and "deltaprompts" in md
    assert "| zero_delta |" in md.split("What each arm's pool holds")[1].split("## ")[0]
    every_budget = md.split("Per skill at every budget")[1].split("</details>")[0]
    assert all(f"| {a} | {step} |" in every_budget for a in ARMS for step in (1, 2))
    assert results.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp").rglob("result.json")}
    assert teach_main(argv) == 0  # resumes: nothing trained again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "exp").rglob("result.json")} == before


@pytest.mark.slow
def test_jobs_train_every_run_once_in_worker_processes(tmp_path, capfd):
    """--jobs 2: two worker processes share the plan; each run is trained by exactly one of
    them (one metrics line per step), and the parent writes the results from all."""
    argv = _tiny_experiment(tmp_path) + ["--settings", "sft", "transfer", "--small-seeds", "0", "1",
                                         "--jobs", "2", "--threads", "2"]
    assert teach_main(argv) == 0
    out = capfd.readouterr().out
    plan = [(s, a, seed) for s in ("sft", "transfer") for seed in (0, 1) for a in ("random", "deltaprompts")]
    for s, a, seed in plan:
        folder = tmp_path / "exp" / s / a / f"seed{seed}"
        assert json.loads((folder / "result.json").read_text())["seed"] == seed
        steps = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()
                 if "eval" in json.loads(x)]
        assert steps == [1, 2]  # trained once: a second worker would have logged the steps again
        assert out.count(f"{s} {a} seed {seed}: final") == 1
    report = json.loads((tmp_path / "results" / "teach.json").read_text())
    assert len(report["runs"]) == len(plan) and "2 run(s) at a time with 1 torch thread" in report["meta"]["machine"]
    assert not list((tmp_path / "exp").glob("claims-*"))  # the claim files go with the workers
