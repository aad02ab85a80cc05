"""Stage 2, mine: where does the student fail?

The student answers every prompt N times (the run's `sampling` settings, the same ones
the delta stage uses, so these samples are reused there rather than drawn again). Each
answer is graded against the gold answers with `answers_match`; a prompt is a failure
when the student's accuracy is below `mine.fail_below`. The report groups failures by
skill and source (JSON + PNG) — the map the rewrite stage aims at.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import shards
from pipeline.core.answers import answers_match
from pipeline.core.reports import COLORS, figure, grouped, save_png, write_json
from pipeline.core.schema import add_columns, keep_rows
from pipeline.runner.stage import ShardOutput, Stage
from pipeline.sampling.draw import draw_answers
from pipeline.sampling.prompts import choices_of, requests_from_table
from pipeline.sampling.skill_tags import tag_skills
from stages.common import LazyEngine, engine_resources, sample_stores


class MineStage(Stage):
    number = 2
    name = "mine"
    input_stage = "ingest"
    columns = {
        "student_samples": (pa.list_(pa.string()), "the student's N raw outputs (sampled with the run's sampling.* settings)"),
        "student_answers": (pa.list_(pa.string()), "final answers extracted from student_samples (null: no answer)"),
        "student_accuracy": (pa.float64(), "share of student answers matching the gold answers (null: no gold)"),
        "student_failed": (pa.bool_(), "student_accuracy < mine.fail_below"),
    }
    config_keys = ["models.student", "mine", "sampling"]
    outputs = ("failures.json", "failures.png")
    uses_models = True

    def resources(self, cfg):
        return engine_resources(cfg.models.student)

    def hash_keys(self, cfg):
        # The tagging model only matters when tagging is on.
        tagger = ["models.rewriter" if cfg.models.rewriter else "models.teacher"]
        return self.config_keys + (tagger if cfg.mine.tag_skills else [])

    def setup(self, cfg):
        return _Engines(cfg)

    def process(self, cfg, state, task, table):
        if cfg.mine.tag_skills:
            table = _tag_missing_skills(state, table)
        got = draw_answers(state.student, requests_from_table(table, cfg.sampling.instruction),
                           [cfg.sampling.n] * table.num_rows, cfg.sampling, choices_of(table),
                           model="student", round_=0, store=state.stores.get("student"))
        golds = table.column("answers").to_pylist()
        choices = table.column("choices").to_pylist()
        keep, samples, answers, acc, failed, skipped, skipped_rows = [], [], [], [], [], {}, []
        for pid, texts, ans, err, gold, ch in zip(table.column("id").to_pylist(), got.texts,
                                                  got.answers, got.errors, golds, choices):
            if err:
                skipped["engine_error"] = skipped.get("engine_error", 0) + 1
                skipped_rows.append({"id": pid, "reason": "engine_error", "detail": err})
                keep.append(False)
                continue
            keep.append(True)
            samples.append(texts)
            answers.append(ans)
            if gold:
                a = sum(x is not None and answers_match(x, gold, mode=cfg.mine.grading,
                                                        choices=ch or None)
                        for x in ans) / len(ans)
                acc.append(a)
                failed.append(a < cfg.mine.fail_below)
            else:
                acc.append(None)
                failed.append(None)
        values = {"student_samples": samples, "student_answers": answers,
                  "student_accuracy": acc, "student_failed": failed}
        out = add_columns(keep_rows(table, keep),
                          {k: (dtype, values[k]) for k, (dtype, _) in self.columns.items()})
        stats = {"samples": {"student_drawn": got.drawn, "student_served": got.served}}
        return ShardOutput(out, skipped=skipped, skipped_rows=skipped_rows, stats=stats)

    def finalize(self, cfg, stage_dir, tables):
        rows = (pa.concat_tables(tables, promote_options="default")
                .select(["source", "skill", "student_accuracy", "student_failed"]).to_pylist())
        report = failure_report(rows)
        write_json(stage_dir / "failures.json", report)
        save_png(plot_failures(report), stage_dir / "failures.png")
        samples: dict[str, int] = {}
        for i in shards.complete_shards(stage_dir):  # drawn vs served by the sample store
            for k, v in shards.read_marker(stage_dir, i).stats.get("samples", {}).items():
                samples[k] = samples.get(k, 0) + v
        return {"failure_rate": report["overall"]["failure_rate"],
                "prompts": report["overall"]["prompts"], "samples": samples}


class _Engines:
    """The student; the skill tagger (rewriter, else teacher) only once a row needs it."""

    def __init__(self, cfg):
        self.student = LazyEngine(cfg.models.student)  # not loaded when the store holds all
        self.stores = sample_stores(cfg, "student")
        self.tagger = LazyEngine(cfg.models.rewriter or cfg.models.teacher)

    def close(self):
        self.student.close()
        self.tagger.close()


def _tag_missing_skills(engines: _Engines, table: pa.Table) -> pa.Table:
    skills = table.column("skill").to_pylist()
    missing = [i for i, s in enumerate(skills) if not s]
    if not missing:
        return table
    tags = tag_skills(engines.tagger.get(), table.take(pa.array(missing, pa.int64())))
    for i, tag in zip(missing, tags):
        skills[i] = tag
    return add_columns(table, {"skill": (pa.string(), skills)})


def _failure_stats(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "prompts": n,
        "failures": sum(r["student_failed"] for r in rows),
        "failure_rate": round(sum(r["student_failed"] for r in rows) / n, 4) if n else None,
        "mean_accuracy": round(sum(r["student_accuracy"] for r in rows) / n, 4) if n else None,
    }


def failure_report(rows: list[dict]) -> dict:
    """Failure rate and mean accuracy overall, per skill and per source (prompts with gold)."""
    graded = [r for r in rows if r["student_failed"] is not None]
    report = grouped(graded, _failure_stats)
    report["overall"]["ungraded"] = len(rows) - len(graded)
    return report


def plot_failures(report: dict):
    fig, axes = figure(1, 2, width=11, height=4)
    for ax, key, title in ((axes[0], "by_skill", "skill"), (axes[1], "by_source", "source")):
        items = report[key]
        names = list(items)
        rates = [items[k]["failure_rate"] or 0.0 for k in names]
        ax.barh(names, rates, color=COLORS["bad"])
        for y, k in enumerate(names):
            ax.text(min(rates[y] + 0.01, 0.9), y, f"{items[k]['failures']}/{items[k]['prompts']}",
                    va="center", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("student failure rate")
        ax.set_title(f"failures by {title}")
    return fig
