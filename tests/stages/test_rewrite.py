"""Stage 3, rewrite (stages/rewrite/).

The accept path of the LLM passes runs on the shared scripted FAKE engine (tests/fakes.py,
not a model) whose "teacher" answers chart-world questions exactly from the charts it
was shown; the real-engine path (tiny random models, which write no valid JSON) checks the
rejection accounting; the last test runs ingest -> mine -> rewrite -> delta through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.cli import main as cli
from pipeline.core.config import config_from_dict
from pipeline.core.errors import ConfigError
from pipeline.core.images import normalize_image
from pipeline.core.schema import add_columns, make_prompt_row, prompt_id, rows_to_table
from pipeline.runner.stage import ShardTask
from seeds.chartworld.generator import generate
from seeds.chartworld.questions import QA, recompute_answer
from seeds.chartworld.spec import Chart, WorldConfig
from seeds.chartworld.writer import write_seed_set
from stages.rewrite import RewriteStage
from stages.rewrite.common import LINEAGE_COLUMNS, RewriteEngines
from stages.rewrite.select import pseudo_label, select_seeds
from tests.fakes import ScriptedEngine, text_of

WORLD = WorldConfig()
# Questions the stand-in rewriter writes (worded unlike any seed question, so only the
# duplicates the test plants are duplicates) and how the stand-in teacher answers them.
ADD_Q = "Add the highest and the lowest value: what do you get?"
SUB_Q = "Subtract the lowest value from the highest value: what is left?"


def ADD(c: Chart) -> int:
    return max(c.values) + min(c.values)


def SUB(c: Chart) -> int:
    return max(c.values) - min(c.values)


CUSTOM = {ADD_Q: ADD, SUB_Q: SUB}


# ----------------------------------------------------------------------- pure helpers


def test_pseudo_label_decisions():
    v = pseudo_label(["7", "7.0", "8", "7"], min_agreement=0.5, expected="7")
    assert v.keep and v.agreement == 0.75 and v.majority == "7"
    assert (
        pseudo_label(["7", "8", "9", "7"], min_agreement=0.6, expected=None).reason
        == "pseudo_label_low_agreement"
    )
    assert (
        pseudo_label(["7", "7", "8"], min_agreement=0.5, expected="8").reason
        == "pseudo_label_disagrees"
    )
    assert (
        pseudo_label([None, None, "3"], min_agreement=0.3, expected=None).reason
        == "pseudo_label_no_answer"
    )
    no_filter = pseudo_label(["7", "7", "8"], min_agreement=0.5, expected="8", require=False)
    assert (
        no_filter.keep and no_filter.reason is None and no_filter.agreement == pytest.approx(2 / 3)
    )
    assert pseudo_label(["12"], min_agreement=0.5, expected="12.3").keep  # relaxed: within 5%
    assert not pseudo_label(["12"], min_agreement=0.5, expected="12.3", match_mode="exact").keep


def test_select_seeds_orders_by_accuracy_and_applies_quotas():
    rows = [
        {"skill": s, "student_accuracy": a, "student_failed": f}
        for s, a, f in [
            ("arithmetic", 0.0, True),
            ("arithmetic", 0.25, True),
            ("arithmetic", 0.5, False),
            ("retrieval", 1.0, False),
            ("retrieval", 0.7, False),
            (None, None, None),
            ("text", 0.9, True),
        ]
    ]
    got = select_seeds(rows, max_accuracy=0.75, per_skill=2, rng=random.Random(0))
    assert got[:2] == [0, 1] and 2 not in got  # quota 2 for arithmetic, lowest first
    assert set(got) == {0, 1, 4, 6}  # 6: failed (fail_below) although above max_accuracy
    assert select_seeds(rows, max_accuracy=0.75, per_skill=None, rng=random.Random(0)).count(2) == 1


# ---------------------------------------------------------------- stage on a stand-in


def mine_table(n: int, accuracy: list[float], seed: int = 11) -> pa.Table:
    """A mine-stage shard of chart-world prompts, built like ingest + mine build them:
    canonical rows (meta holds the chart), then the student_* columns."""
    rows = []
    for ex in generate(WORLD, n, seed=seed):
        rows.append(
            make_prompt_row(
                source="chartworld",
                split="test",
                question=ex.qa.question,
                image_bytes=normalize_image(ex.image),
                answers=[ex.qa.answer],
                skill=ex.qa.skill,
                meta={
                    "chart": ex.chart.to_json(),
                    "family": ex.qa.family,
                    "type": f"chartworld_{ex.chart.kind}",
                },
            )
        )
    t = rows_to_table(rows)
    samples = [[f"Answer: {x}"] * 4 for x in range(n)]
    return add_columns(
        t,
        {
            "student_samples": (pa.list_(pa.string()), samples),
            "student_answers": (pa.list_(pa.string()), [[str(x)] * 4 for x in range(n)]),
            "student_accuracy": (pa.float64(), accuracy),
            "student_failed": (pa.bool_(), [a < 0.5 for a in accuracy]),
        },
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def standin(charts: dict[str, Chart], rewriter=None, fallback: str = "3") -> ScriptedEngine:
    """The FAKE engine as both the rewriter and the teacher.

    Rewriter prompts (they carry the JSON instruction) are answered by ``rewriter(text,
    image_sha)``; anything else is a teacher question, answered exactly from the chart
    registered for the request's image (``recompute_answer`` parses the question), or
    ``fallback`` for images it was never shown. The prompts it got are kept on it.
    """

    def reply(request, k):
        text = text_of(request, turn=0)  # the first prompt (a retry appends feedback turns)
        img = sha(request.images[0]) if request.images else ""
        if '"expected_answer"' in text:
            engine.rewrite_prompts.append(text)
            return rewriter(text, img)
        q = text.split("\n")[0]
        engine.teacher_questions.append((img, q))
        chart = charts.get(img)
        if chart is None:
            ans = fallback
        elif q in CUSTOM:
            ans = CUSTOM[q](chart)
        else:
            ans = recompute_answer(chart, QA(q, "", "", "", ""))
        return f"Answer: {ans}"

    engine = ScriptedEngine(reply)
    engine.rewrite_prompts, engine.teacher_questions = [], []
    return engine


def run_cfg(**rewrite):
    base = {
        "enabled": True,
        "variants_per_seed": 2,
        "label_samples": 3,
        "images_per_skill": 2,
        "max_attempts": 2,
        **rewrite,
    }
    return config_from_dict(
        {
            "run": {"name": "t"},
            "models": {
                "teacher": {"model": "stand-in/teacher"},
                "student": {"model": "stand-in/student"},
            },
            "sampling": {"instruction": "", "n": 4},
            "rewrite": base,
        }
    )


def charts_of(table: pa.Table) -> dict[str, Chart]:
    return {
        sha(r["image"]["bytes"]): Chart.from_json(json.loads(r["meta"])["chart"])
        for r in table.select(["image", "meta"]).to_pylist()
    }


def process(cfg, engine, table, index=0, n_shards=1):
    task = ShardTask(index=index, input_shards=[index], payload={"n_shards": n_shards})
    return RewriteStage().process(cfg, RewriteEngines(cfg, teacher=engine), task, table)


def test_llm_passes_accept_dedup_label_and_keep_lineage():
    acc = [0.0, 0.25, 1.0, 0.0, 0.9, 1.0, 1.0, 1.0]
    table = mine_table(8, acc)
    seeds = table.to_pylist()
    charts = charts_of(table)
    seed_by_img = {sha(r["image"]["bytes"]): r for r in seeds}
    calls: dict[str, int] = {}

    def rewriter(text, img):
        chart = charts[img]
        k = calls[img] = calls.get(img, -1) + 1  # this image's k-th rewrite call
        if "A smaller model answered" in text:  # seed-guided
            seed = seed_by_img[img]
            if seed is seeds[0] and k == 0:
                # the seed's own question, re-cased: must be caught as a duplicate
                return json.dumps(
                    {
                        "question": seed["question"].upper(),
                        "expected_answer": "1",
                        "answer_type": "number",
                        "skill": "dup",
                        "rationale": "r",
                    }
                )
            if seed is seeds[1]:
                return "I think a good question would be about the bars."  # never JSON
            wrong = seed is seeds[3]  # proposes a wrong answer: the teacher must veto it
            # (seed 3's second variant repeats the first: a duplicate on the same image)
            return json.dumps(
                {
                    "question": ADD_Q,
                    "expected_answer": str(ADD(chart) + (5 if wrong else 0)),
                    "answer_type": "number",
                    "skill": "veto-skill" if wrong else " Multihop",
                    "rationale": "needs two reads",
                }
            )
        # skill-guided: a question of the asked skill on the new image
        assert "weak at this skill: multihop" in text
        return json.dumps(
            {
                "question": SUB_Q,
                "expected_answer": str(SUB(chart)),
                "answer_type": "number",
                "skill": "multihop",
                "rationale": "two reads",
            }
        )

    engine = standin(charts, rewriter)
    cfg = run_cfg(method="llm", max_seeds_per_skill=None)
    out = process(cfg, engine, table)
    rows = out.table.to_pylist()

    # Seeds pass through unchanged, first, with origin "seed" and null lineage.
    assert [r["id"] for r in rows[:8]] == [r["id"] for r in seeds]
    for r, s in zip(rows[:8], seeds):
        assert (
            r["origin"] == "seed" and r["template"] is None and r["pseudo_label_agreement"] is None
        )
        assert r["student_samples"] == s["student_samples"] and r["image"] == s["image"]
    new = rows[8:]
    sg = [r for r in new if r["origin"] == "seed_guided"]
    kg = [r for r in new if r["origin"] == "skill_guided"]
    assert len(sg) + len(kg) == len(new)

    # Selected: 0, 1, 3 (failed); 4 has 0.9 >= max_student_accuracy 0.75.
    assert out.stats["seeds_selected"] == 3
    # seed 0: a duplicate, then the max+min question; seed 1: not JSON (both variants);
    # seed 3: a wrong expected answer (vetoed), then the same question (a duplicate).
    assert out.skipped["duplicate"] == 2
    assert out.skipped["rewriter_invalid_json"] == 2
    assert out.skipped["pseudo_label_disagrees"] == 1
    assert [r["parent_id"] for r in sg] == [seeds[0]["id"]]
    r = sg[0]
    c = charts[sha(r["image"]["bytes"])]
    assert r["question"] == ADD_Q and r["answers"] == [str(ADD(c))] and r["skill"] == "multihop"
    assert r["image"] == seeds[0]["image"] and r["template"] in {
        "other_element",
        "extra_hop",
        "combine_arithmetic",
        "change_answer_type",
        "compare_or_trend",
    }
    assert (
        r["attempts"] == 1
        and r["rewriter"] == "stand-in/teacher"
        and r["pseudo_label_agreement"] == 1.0
    )

    # Pass 2 only asked the skill pass 1 ACCEPTED (multihop; never the vetoed one), on
    # images other than the one it came from, fresh (not rewritten) seeds first.
    assert not any("veto-skill" in p for p in engine.rewrite_prompts)
    assert len(kg) == 2
    for r in kg:
        assert r["parent_id"] == seeds[0]["id"] and r["image"] != seeds[0]["image"]
        assert r["image"]["bytes"] not in (seeds[1]["image"]["bytes"], seeds[3]["image"]["bytes"])
        c = charts[sha(r["image"]["bytes"])]
        assert r["question"] == SUB_Q and r["answers"] == [str(SUB(c))]
    assert {r["template"] for r in kg} == {"skill_probe", "skill_harder"}  # used in turn

    for r in new:
        assert r["id"] == prompt_id(r["image"]["bytes"], r["question"])
        assert r["student_samples"] is None and r["student_answers"] is None
        assert r["student_accuracy"] is None and r["student_failed"] is None
        meta = json.loads(r["meta"])
        assert meta["pass"] == r["origin"] and meta["teacher_majority"] == r["answers"][0]
    assert set(LINEAGE_COLUMNS) <= set(out.table.column_names)

    # The same shard and config give the same output (resume relies on it).
    calls.clear()
    again = process(cfg, standin(charts, rewriter), table)
    assert again.table.select(["id", "origin", "template"]).equals(
        out.table.select(["id", "origin", "template"])
    )


def test_a_text_only_rewriter_reads_the_data_table_instead_of_the_image():
    """send_image false: each rewriter prompt carries its seed's data table and no image;
    a seed without a text view is skipped (counted); rejected replies are recorded."""
    table = mine_table(4, [0.0, 0.0, 0.1, 0.2], seed=6)
    rows = table.to_pylist()
    meta = json.loads(rows[3]["meta"])
    del meta["chart"]  # a seed whose row carries no text of its image
    rows[3]["meta"] = json.dumps(meta)
    table = pa.Table.from_pylist(rows, schema=table.schema)
    charts = charts_of(table.slice(0, 3))
    tables = {Chart.from_json(json.loads(r["meta"])["chart"]).as_table(): r for r in rows[:3]}
    images_sent = []

    def rewriter(text, img):
        images_sent.append(img)
        seed = next(r for t, r in tables.items() if t in text)  # its own table, verbatim
        assert "cannot see the image" in text
        if seed is rows[2]:
            return "Sure! Here is a question: what is the biggest bar?"  # never JSON
        chart = Chart.from_json(json.loads(seed["meta"])["chart"])
        return json.dumps({"question": ADD_Q, "expected_answer": str(ADD(chart)),
                           "answer_type": "number", "skill": "multihop", "rationale": "r"})

    engine = standin(charts, rewriter)
    cfg = run_cfg(method="llm", max_seeds_per_skill=None, send_image=False, variants_per_seed=1,
                  skill_guided=False)
    out = process(cfg, engine, table)
    assert images_sent and set(images_sent) == {""}  # no request carried an image
    assert out.skipped["rewriter_no_text_view"] == 1
    assert out.skipped["rewriter_invalid_json"] == 1
    assert out.stats["rewriter_jobs"] == 3 and out.stats["rewriter_valid_first_try"] == 2
    assert out.stats["attempt_failed_rewriter_invalid_json"] == 2  # first try and the retry
    bad = [r for r in out.skipped_rows if r["reason"] == "rewriter_invalid_json"]
    assert [r["id"] for r in bad] == [f"{rows[2]['id']}:0"]
    assert "biggest bar" in json.loads(bad[0]["detail"])["reply"]
    new = out.table.to_pylist()[4:]
    assert sorted(r["parent_id"] for r in new) == sorted([rows[0]["id"], rows[1]["id"]])
    assert all(r["image"] == next(s for s in rows if s["id"] == r["parent_id"])["image"]
               for r in new)  # the teacher still labels the prompt on its image


def test_images_for_a_text_only_rewriter_are_refused_before_any_call():
    table = mine_table(2, [0.0, 0.0], seed=7)
    engine = standin(charts_of(table), lambda text, img: "{}")
    engine.takes_images = False  # what a text-only model's engine reports
    with pytest.raises(ConfigError, match="send_image"):
        process(run_cfg(method="llm"), engine, table)
    assert engine.rewrite_prompts == []


@pytest.mark.parametrize("filter_programmatic", [True, False])
def test_programmatic_pass_labels_and_filters(filter_programmatic):
    acc = [0.0, 0.0, 0.25, 0.0, 1.0, 0.0]
    table = mine_table(6, acc, seed=4)
    charts = charts_of(table)
    engine = standin(charts, fallback="3")  # new charts: the teacher says "3"
    cfg = run_cfg(
        method="programmatic", variants_per_seed=3, filter_programmatic=filter_programmatic
    )
    out = process(cfg, engine, table)
    new = [r for r in out.table.to_pylist() if r["origin"] != "seed"]
    parents = {r["id"]: r for r in table.to_pylist()}
    asked = 5 * 3
    accounted = len(new) + sum(
        out.skipped.get(k, 0)
        for k in ("pseudo_label_disagrees", "duplicate", "programmatic_unaskable")
    )
    assert accounted == asked
    for r in new:
        meta = json.loads(r["meta"])
        chart = Chart.from_json(meta["chart"])
        assert recompute_answer(chart, QA(r["question"], "", "", "", "")) == r["answers"][0]
        assert r["skill"] == parents[r["parent_id"]]["skill"]
        assert r["template"] == meta["strategy"] and r["rewriter"] == "chartworld-programmatic"
        known = sha(r["image"]["bytes"]) in charts  # same_chart: the teacher knows it exactly
        assert known == (r["template"] == "same_chart")
        if filter_programmatic:
            assert known or r["answers"][0] == "3"  # kept only where the teacher agrees
        assert r["pseudo_label_agreement"] == 1.0
    if filter_programmatic:
        assert out.skipped.get("pseudo_label_disagrees", 0) > 0
    else:
        assert "pseudo_label_disagrees" not in out.skipped
        assert any(r["answers"][0] != "3" and r["template"] != "same_chart" for r in new)


def test_quota_is_split_over_shards_and_non_chart_seeds_are_counted():
    table = mine_table(6, [0.0] * 6, seed=8)
    skills = table.column("skill").to_pylist()
    cfg = run_cfg(method="programmatic", max_seeds_per_skill=2, variants_per_seed=1)
    out = process(cfg, standin(charts_of(table)), table, n_shards=2)
    per_skill = {s: min(skills.count(s), 1) for s in set(skills)}  # ceil(2 / 2) = 1 per skill
    assert out.stats["seeds_selected"] == sum(per_skill.values())
    # Seeds without chart data cannot be rewritten programmatically: counted, not fatal.
    plain = add_columns(table, {"meta": (pa.string(), ["{}"] * 6)})
    out = process(cfg, standin({}), plain)
    assert out.skipped["programmatic_not_chartworld"] == 6 and out.table.num_rows == 6


def test_config_defaults_validation_and_stage_wiring():
    cfg = run_cfg()
    assert cfg.rewrite.min_agreement == 0.5 and cfg.rewrite.method == "llm"
    assert RewriteStage().enabled(cfg) and not RewriteStage().enabled(
        replace(cfg, rewrite=replace(cfg.rewrite, enabled=False))
    )
    tasks = RewriteStage().plan(cfg, [0, 1, 2])
    assert [t.input_shards for t in tasks] == [[0], [1], [2]] and tasks[0].payload == {
        "n_shards": 3
    }
    with pytest.raises(ConfigError, match="rewrite.world"):  # checked before any stage runs
        RewriteStage().check(run_cfg(method="programmatic", world={"max_items": 99}))
    RewriteStage().check(run_cfg(method="llm", world={"max_items": 99}))  # the LLM never uses it
    with pytest.raises(ConfigError, match="min_agreement"):
        run_cfg(min_agreement=1.5)
    with pytest.raises(ConfigError):
        run_cfg(method="magic")
    # templates named in the config must exist
    bad = run_cfg(method="llm", seed_templates=["nope"])
    with pytest.raises(ValueError, match="no seed_guided template"):
        process(bad, standin({}), mine_table(2, [0.0, 0.0]))


# ------------------------------------------------------------------- real engines


@pytest.mark.slow
def test_llm_rewrite_through_a_real_engine_counts_every_rejection(tiny_models):
    """Tiny random models as rewriter and teacher (transformers engine): their replies
    are not JSON, so every job is retried and rejected, and the shard is the seeds."""
    torch.set_num_threads(1)
    teacher, _ = tiny_models
    table = mine_table(3, [0.0, 0.1, 0.2], seed=5)
    cfg = config_from_dict(
        {
            "run": {"name": "t"},
            "models": {
                "teacher": {"engine": "transformers", "model": str(teacher), "device": "cpu"},
                "student": {"engine": "transformers", "model": str(teacher), "device": "cpu"},
            },
            "sampling": {"instruction": "", "n": 2, "max_tokens": 8},
            "rewrite": {
                "enabled": True,
                "method": "llm",
                "variants_per_seed": 1,
                "max_attempts": 2,
                "max_tokens": 16,
                "label_samples": 2,
            },
        }
    )
    stage = RewriteStage()
    state = stage.setup(cfg)
    try:
        out = stage.process(cfg, state, ShardTask(0, [0], {"n_shards": 1}), table)
    finally:
        state.close()
    rejected = sum(
        out.skipped.get(k, 0) for k in ("rewriter_invalid_json", "rewriter_schema_invalid")
    )
    kept = out.table.num_rows - 3
    labelled_away = sum(
        v for k, v in out.skipped.items() if k.startswith("pseudo_label") or k == "duplicate"
    )
    assert rejected + kept + labelled_away == 3  # every job ends somewhere, counted
    assert rejected >= 1
    assert out.stats["rewriter_calls"] >= 2 * rejected  # each rejected job was retried
    assert out.table.column("id").to_pylist()[:3] == table.column("id").to_pylist()


@pytest.mark.slow
def test_programmatic_rewrite_feeds_the_delta_stage(tiny_models, tmp_path):
    """ingest -> mine -> rewrite -> delta through the CLI (local backend, tiny models):
    synthesised rows reach delta, which samples the student for them."""
    teacher, student = tiny_models
    write_seed_set(tmp_path / "seeds", WORLD, 6, seed=9, split="test")
    eng = {"engine": "transformers", "device": "cpu"}
    cfg = {
        "run": {"name": "rw", "root": str(tmp_path / "runs"), "shard_size": 3},
        "execution": {"backend": "local"},
        "models": {
            "teacher": {**eng, "model": str(teacher)},
            "student": {**eng, "model": str(student)},
        },
        "ingest": {
            "sources": [
                {
                    "name": "chartworld",
                    "format": "chartworld",
                    "path": str(tmp_path / "seeds"),
                    "split": "test",
                }
            ]
        },
        # Random models rarely reach a gold answer: with 1.0 a seed fails unless every
        # sample is right (fail_below is an accuracy, so at most 1).
        "mine": {"fail_below": 1.0},
        "sampling": {"n": 2, "max_tokens": 6, "instruction": ""},
        "delta": {"k": 1, "bootstrap": 0},
        # A random teacher agrees with nothing: record agreement, do not filter.
        "rewrite": {
            "enabled": True,
            "method": "programmatic",
            "variants_per_seed": 1,
            "filter_programmatic": False,
            "label_samples": 2,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli(["run", "--config", str(path), "--stages", "1-4"]) == 0
    run = tmp_path / "runs" / "rw"
    man = json.loads((run / "03-rewrite" / "manifest.json").read_text())
    assert man["status"] == "complete" and man["shards_total"] == 2
    summary = json.loads((run / "03-rewrite" / "rewrite_summary.json").read_text())
    assert summary["by_origin"]["seed"]["rows"] == 6 and summary["synthesised"] >= 1
    assert man["rows"] == 6 + summary["synthesised"]
    delta = [
        r
        for f in sorted((run / "04-delta").glob("shard-*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    by_origin = {}
    for r in delta:
        by_origin.setdefault(r["origin"], []).append(r)
    assert len(by_origin["seed"]) == 6 and len(by_origin["programmatic"]) == summary["synthesised"]
    for r in by_origin["programmatic"]:
        assert len(r["student_answers"]) >= 1 and r["delta"] is not None  # sampled in delta
