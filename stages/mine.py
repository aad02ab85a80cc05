"""Stage 2, mine: where does the student fail?

The student answers every prompt N times (the run's sampling settings, the same ones the
delta stage uses, so these samples are reused there rather than drawn again). Each answer
is graded against the gold answers with `answers_match`; a prompt is a failure when the
student's accuracy is below `mine.fail_below`. The report groups failures by skill and
source (JSON + PNG) — the map the rewrite stage aims at.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa

from pipeline.stage import ShardOutput, Stage
from stages.common import SAMPLING_KEYS, add_columns, draw, engine_resources, keep_rows

COLUMNS = {
    "student_samples": "the student's N raw outputs (sampled with the run's delta.* settings)",
    "student_answers": "final answers extracted from student_samples (null: no answer)",
    "student_accuracy": "share of student answers matching the gold answers (null: no gold)",
    "student_failed": "student_accuracy < mine.fail_below",
}


class MineStage(Stage):
    number = 2
    name = "mine"
    input_stage = "ingest"
    config_keys = ["models.student", "mine", *SAMPLING_KEYS]
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
        from pipeline.answers import answers_match

        if cfg.mine.tag_skills:
            table = _tag_missing_skills(state, table)
        got = draw(state.student, table, cfg, [cfg.delta.n] * table.num_rows, "student", round_=0)
        golds = table.column("answers").to_pylist()
        choices = table.column("choices").to_pylist()
        keep, samples, answers, acc, failed, skipped = [], [], [], [], [], {}
        for texts, ans, err, gold, ch in zip(got.texts, got.answers, got.errors, golds, choices):
            if err:
                skipped["engine_error"] = skipped.get("engine_error", 0) + 1
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
        out = add_columns(keep_rows(table, keep), {
            "student_samples": (pa.list_(pa.string()), samples),
            "student_answers": (pa.list_(pa.string()), answers),
            "student_accuracy": (pa.float64(), acc),
            "student_failed": (pa.bool_(), failed),
        })
        return ShardOutput(out, skipped=skipped)

    def finalize(self, cfg, stage_dir, tables):
        report = failure_report(pa.concat_tables(tables, promote_options="default")
                                .select(["source", "skill", "student_accuracy", "student_failed"]))
        (stage_dir / "failures.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_failures(report, stage_dir / "failures.png")
        return {"failure_rate": report["overall"]["failure_rate"], "prompts": report["overall"]["prompts"]}


class _Engines:
    """The student; the skill tagger (rewriter, else teacher) only once a row needs it."""

    def __init__(self, cfg):
        from pipeline.engines import build_engine

        self.cfg = cfg
        self.student = build_engine(cfg.models.student)
        self._tagger = None

    def tagger(self):
        if self._tagger is None:
            from pipeline.engines import build_engine

            self._tagger = build_engine(self.cfg.models.rewriter or self.cfg.models.teacher)
        return self._tagger

    def close(self):
        self.student.close()
        if self._tagger is not None:
            self._tagger.close()


def _tag_missing_skills(engines: _Engines, table: pa.Table) -> pa.Table:
    from pipeline.skills import tag_skills

    skills = table.column("skill").to_pylist()
    missing = [i for i, s in enumerate(skills) if not s]
    if not missing:
        return table
    tags = tag_skills(engines.tagger(), table.take(pa.array(missing, pa.int64())))
    for i, tag in zip(missing, tags):
        skills[i] = tag
    return add_columns(table, {"skill": (pa.string(), skills)})


def failure_report(table: pa.Table) -> dict:
    """Failure rate and mean accuracy per skill and per source (prompts with gold only)."""
    groups: dict[str, dict[str, list]] = {"skill": defaultdict(list), "source": defaultdict(list)}
    rows = table.to_pylist()
    graded = [r for r in rows if r["student_failed"] is not None]
    for r in graded:
        groups["skill"][r["skill"] or "unknown"].append(r)
        groups["source"][r["source"]].append(r)

    def summary(rs):
        n = len(rs)
        return {
            "prompts": n,
            "failures": sum(r["student_failed"] for r in rs),
            "failure_rate": round(sum(r["student_failed"] for r in rs) / n, 4) if n else None,
            "mean_accuracy": round(sum(r["student_accuracy"] for r in rs) / n, 4) if n else None,
        }

    return {
        "overall": summary(graded) | {"ungraded": len(rows) - len(graded)},
        "by_skill": {k: summary(v) for k, v in sorted(groups["skill"].items())},
        "by_source": {k: summary(v) for k, v in sorted(groups["source"].items())},
    }


def plot_failures(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, key, title in ((axes[0][0], "by_skill", "skill"), (axes[0][1], "by_source", "source")):
        items = report[key]
        names = list(items)
        rates = [items[k]["failure_rate"] or 0.0 for k in names]
        ax.barh(names, rates, color="#c0504d")
        for y, k in enumerate(names):
            ax.text(min(rates[y] + 0.01, 0.9), y, f"{items[k]['failures']}/{items[k]['prompts']}",
                    va="center", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("student failure rate")
        ax.set_title(f"failures by {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
