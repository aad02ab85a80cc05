"""Stage 3, rewrite (stages/rewrite.py) and the chart-world programmatic rewriter
(seeds/chartworld/rewrite.py).

The accept path of the LLM passes runs on a scripted stand-in engine (named as such: it
is not a model) whose "teacher" answers chart-world questions exactly from the charts it
was shown; the real-engine path (tiny random models, which write no valid JSON) checks the
rejection accounting; the last test runs ingest -> mine -> rewrite -> delta through the CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import replace

import pyarrow as pa
import pytest

from pipeline.config import config_from_dict
from pipeline.engines.base import Completion, Engine, SampleResult
from pipeline.stage import ShardTask
from seeds.chartworld.questions import QA, recompute_answer
from seeds.chartworld.rewrite import STRATEGIES, rewrite_variants, strategies_for
from seeds.chartworld.spec import SKILLS, Chart, WorldConfig
from stages.rewrite import (
    COLUMNS,
    RewriteStage,
    _Engines,
    pseudo_label,
    question_key,
    select_seeds,
)

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


# ------------------------------------------------------------------ programmatic rewriter


@pytest.mark.parametrize("skill", SKILLS)
def test_programmatic_variants_target_the_skill_with_exact_answers(skill):
    from PIL import Image

    from seeds.chartworld.render import render_png

    parent = Chart("bar", "Sales", ["A", "C", "E", "G"], [2, 7, 4, 9])
    parent_png = render_png(parent, WORLD, 5)
    parent_q = "What is the title?"
    for seed in range(6):
        variants = rewrite_variants(
            skill,
            4,
            WORLD,
            random.Random(seed),
            parent=parent,
            parent_image=parent_png,
            parent_question=parent_q,
        )
        assert variants, f"no variant for {skill}"
        for v in variants:
            assert v.qa.skill == skill
            assert recompute_answer(v.chart, v.qa) == v.qa.answer  # answer re-derived from data
            assert skill in (STRATEGIES[v.strategy].skills or SKILLS)
            assert v.qa.family not in STRATEGIES[v.strategy].avoid_families
            vals = v.chart.values
            assert WORLD.min_items <= len(vals) <= WORLD.max_items
            assert all(WORLD.min_value <= x <= WORLD.max_value for x in vals)
            if v.strategy == "same_chart":
                assert v.chart == parent and v.image == parent_png and v.qa.question != parent_q
            else:
                img = Image.open(io.BytesIO(v.image))
                assert img.size == (WORLD.width, WORLD.height)
                assert v.image == render_png(v.chart, WORLD, v.style_seed)  # reproducible
            if v.strategy == "more_items":
                assert len(vals) == WORLD.max_items
            if v.strategy == "closer_values":
                assert max(vals) - min(vals) <= 2
            if v.strategy == "harder_arithmetic":
                assert min(vals) >= (WORLD.min_value + WORLD.max_value + 1) // 2
                assert len(vals) == WORLD.max_items
        same = [v.qa.question for v in variants if v.strategy == "same_chart"]
        assert len(same) == len(set(same))  # one image never gets a question twice


def test_programmatic_variants_are_seeded_and_respect_the_strategy_list():
    a = rewrite_variants("arithmetic", 3, WORLD, random.Random(7))
    b = rewrite_variants("arithmetic", 3, WORLD, random.Random(7))
    assert [(v.chart, v.qa) for v in a] == [(v.chart, v.qa) for v in b]
    only = rewrite_variants(
        "arithmetic", 3, WORLD, random.Random(7), strategies=["harder_arithmetic"]
    )
    assert {v.strategy for v in only} == {"harder_arithmetic"}
    assert strategies_for("text") == ["same_chart", "more_items"]
    with pytest.raises(ValueError, match="unknown programmatic strategies"):
        strategies_for("text", ["bigger"])
    # same_chart without a parent chart is impossible, not an error
    assert rewrite_variants("text", 2, WORLD, random.Random(0), strategies=["same_chart"]) == []


def test_programmatic_rewriter_stays_inside_a_different_world():
    world = WorldConfig(
        kinds=["table"], min_items=4, max_items=7, max_value=20, label_set="days", width=224
    )
    for v in rewrite_variants("multihop", 6, world, random.Random(1)):
        assert v.chart.kind == "table" and 4 <= len(v.chart.values) <= 7
        assert max(v.chart.values) <= 20 and set(v.chart.labels) <= {
            "Mon",
            "Tue",
            "Wed",
            "Thu",
            "Fri",
            "Sat",
            "Sun",
        }
        assert recompute_answer(v.chart, v.qa) == v.qa.answer


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


def test_question_key_normalises_text_per_image():
    img = {"bytes": b"png1", "path": None}
    assert question_key(img, "What is A's value?") == question_key(img, "  what is a s VALUE ")
    assert question_key(img, "What is A?") != question_key({"bytes": b"png2"}, "What is A?")


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
    from pipeline.images import normalize_image
    from pipeline.schema import make_prompt_row, rows_to_table
    from seeds.chartworld.generator import generate
    from stages.common import add_columns

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


class ScriptedStandInEngine(Engine):
    """A STAND-IN for both the rewriter and the teacher; not a model.

    Rewriter prompts (they carry the JSON instruction) are answered by ``rewriter(request,
    image_sha)``; anything else is a teacher question, answered exactly from the chart
    registered for the request's image (``recompute_answer`` parses the question), or
    ``fallback`` for images it was never shown.
    """

    def __init__(self, charts: dict[str, Chart], rewriter=None, fallback: str = "3"):
        self.charts, self.rewriter, self.fallback = charts, rewriter, fallback
        self.rewrite_prompts: list[str] = []
        self.teacher_questions: list[tuple[str, str]] = []

    def sample(
        self,
        requests,
        *,
        n=1,
        temperature=0.7,
        top_p=1.0,
        max_tokens=256,
        seed=None,
        stop=None,
        logprobs=False,
        ignore_eos=False,
    ):
        out = []
        for r in requests:
            text = next(p["text"] for p in r.messages[0]["content"] if p["type"] == "text")
            img = sha(r.images[0]) if r.images else ""
            if '"expected_answer"' in text:
                self.rewrite_prompts.append(text)
                reply = self.rewriter(text, img)
            else:
                q = text.split("\n")[0]
                self.teacher_questions.append((img, q))
                chart = self.charts.get(img)
                if chart is None:
                    ans = self.fallback
                elif q in CUSTOM:
                    ans = CUSTOM[q](chart)
                else:
                    ans = recompute_answer(chart, QA(q, "", "", "", ""))
                reply = f"Answer: {ans}"
            out.append(SampleResult(completions=[Completion(reply, [])] * n))
        return out

    def score(self, requests, completions):
        raise NotImplementedError("the scripted stand-in does not score")


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
                "teacher": {"model": "stand-in-teacher"},
                "student": {"model": "stand-in-student"},
            },
            "delta": {"instruction": "", "n": 4},
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
    return RewriteStage().process(cfg, _Engines(cfg, teacher=engine), task, table)


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

    engine = ScriptedStandInEngine(charts, rewriter)
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
        and r["rewriter"] == "stand-in-teacher"
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
        from pipeline.schema import prompt_id

        assert r["id"] == prompt_id(r["image"]["bytes"], r["question"])
        assert r["student_samples"] is None and r["student_answers"] is None
        assert r["student_accuracy"] is None and r["student_failed"] is None
        meta = json.loads(r["meta"])
        assert meta["pass"] == r["origin"] and meta["teacher_majority"] == r["answers"][0]
    assert set(COLUMNS) <= set(out.table.column_names)

    # The same shard and config give the same output (resume relies on it).
    calls.clear()
    again = process(cfg, ScriptedStandInEngine(charts, rewriter), table)
    assert again.table.select(["id", "origin", "template"]).equals(
        out.table.select(["id", "origin", "template"])
    )


@pytest.mark.parametrize("filter_programmatic", [True, False])
def test_programmatic_pass_labels_and_filters(filter_programmatic):
    acc = [0.0, 0.0, 0.25, 0.0, 1.0, 0.0]
    table = mine_table(6, acc, seed=4)
    charts = charts_of(table)
    engine = ScriptedStandInEngine(charts, fallback="3")  # new charts: the teacher says "3"
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
    out = process(cfg, ScriptedStandInEngine(charts_of(table)), table, n_shards=2)
    per_skill = {s: min(skills.count(s), 1) for s in set(skills)}  # ceil(2 / 2) = 1 per skill
    assert out.stats["seeds_selected"] == sum(per_skill.values())
    # Seeds without chart data cannot be rewritten programmatically: counted, not fatal.
    from stages.common import add_columns

    plain = add_columns(table, {"meta": (pa.string(), ["{}"] * 6)})
    out = process(cfg, ScriptedStandInEngine({}), plain)
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
    from pipeline.configschema import ConfigError

    with pytest.raises(ConfigError, match="rewrite.world"):
        run_cfg(world={"max_items": 99})
    with pytest.raises(ConfigError, match="min_agreement"):
        run_cfg(min_agreement=1.5)
    with pytest.raises(ConfigError):
        run_cfg(method="magic")
    # templates named in the config must exist
    bad = run_cfg(method="llm", seed_templates=["nope"])
    with pytest.raises(ValueError, match="no seed_guided template"):
        process(bad, ScriptedStandInEngine({}), mine_table(2, [0.0, 0.0]))


# ------------------------------------------------------------------- real engines


@pytest.mark.slow
def test_llm_rewrite_through_a_real_engine_counts_every_rejection(tiny_models):
    """Tiny random models as rewriter and teacher (transformers engine): their replies
    are not JSON, so every job is retried and rejected, and the shard is the seeds."""
    import torch

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
            "delta": {"instruction": "", "n": 2, "k": 1, "max_tokens": 8},
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
    import yaml

    from pipeline.cli import main as cli
    from seeds.chartworld.writer import write_seed_set

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
        # Random models rarely reach a gold answer: every seed counts as failed.
        "mine": {"fail_below": 1.01},
        "delta": {"n": 2, "k": 1, "max_tokens": 6, "bootstrap": 0, "instruction": ""},
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
    import pyarrow.parquet as pq

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
