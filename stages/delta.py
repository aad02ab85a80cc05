"""Stage 4, delta: the answer divergence Δ between teacher and student, per prompt.

Student samples already drawn by `mine` are reused; the student is only loaded for rows
without them (synthesised prompts from `rewrite`). With the adaptive policy the teacher
(and a student without samples) first draws k answers for every prompt in one batched
call; only prompts where the two sides are not unanimous on the same answer get the
remaining N-k, in a second batched call. Δ, its bootstrap interval, and both sides'
majority answers and agreement become columns.
"""

from __future__ import annotations

import json

import pyarrow as pa

from pipeline.stage import ShardOutput, Stage
from stages.common import add_columns, engine_resources, keep_rows

COLUMNS = {
    "teacher_samples": "the teacher's raw outputs (adaptive: as many as the policy drew, up to N)",
    "teacher_answers": "final answers extracted from teacher_samples",
    "delta": "answer divergence Δ (delta.metric, base 2) between the two answer distributions",
    "delta_low": "lower end of Δ's bootstrap interval (delta.ci_level)",
    "delta_high": "upper end of Δ's bootstrap interval",
    "zero_delta": "Δ < delta.threshold",
    "stop_reason": "why sampling stopped short of N: unanimous, decided (exact), or null",
    "teacher_majority": "the teacher's most frequent normalised answer",
    "teacher_agreement": "share of teacher answers in its majority class",
    "student_majority": "the student's most frequent normalised answer",
    "student_agreement": "share of student answers in its majority class",
}


class _LazyStudent:
    """The student engine, built on first use: only rows without student samples (the
    rewrite stage's new prompts) need it, and loading a model costs minutes on a GPU."""

    def __init__(self, cfg):
        self.cfg, self.engine = cfg, None

    def sample(self, requests, **kw):
        if self.engine is None:
            from pipeline.engines import build_engine

            self.engine = build_engine(self.cfg.models.student)
        return self.engine.sample(requests, **kw)

    def close(self):
        if self.engine is not None:
            self.engine.close()


class _Engines:
    def __init__(self, cfg):
        from pipeline.engines import build_engine

        self.teacher = build_engine(cfg.models.teacher)
        self.student = _LazyStudent(cfg)

    def close(self):
        self.teacher.close()
        self.student.close()


class DeltaStage(Stage):
    number = 4
    name = "delta"
    config_keys = ["models.teacher", "models.student", "delta"]
    uses_models = True

    def upstream(self, cfg):
        return "rewrite" if cfg.rewrite.enabled else "mine"

    def resources(self, cfg):
        return engine_resources(cfg.models.teacher, cfg.models.student)

    def setup(self, cfg):
        return _Engines(cfg)

    def process(self, cfg, state, task, table):
        from pipeline.audit import requests_from_table, sample_adaptive
        from pipeline.delta import delta_report

        d, n = cfg.delta, table.num_rows

        def column(name):
            return table.column(name).to_pylist() if name in table.column_names else [None] * n

        choices = [c or None for c in table.column("choices").to_pylist()]
        have_answers = [a or [] for a in column("student_answers")]
        got = sample_adaptive(state.teacher, state.student, requests_from_table(table, d.instruction),
                              choices, d, student_answers=have_answers,
                              student_texts=[t or [] for t in column("student_samples")])
        keep, reports, skipped = [], [], {}
        for i in range(n):
            ok = not got["errors"][i] and got["teacher"][i] and got["student"][i]
            keep.append(bool(ok))
            if ok:
                reports.append(delta_report(got["teacher"][i], got["student"][i], d, choices[i]))
            else:
                skipped["engine_error"] = skipped.get("engine_error", 0) + 1
        kept = [i for i in range(n) if keep[i]]

        def rows(key):
            return [got[key][i] for i in kept]

        def rep(key):
            return [r[key] for r in reports]

        out = add_columns(keep_rows(table, keep), {
            "student_samples": (pa.list_(pa.string()), rows("student_texts")),
            "student_answers": (pa.list_(pa.string()), rows("student")),
            "teacher_samples": (pa.list_(pa.string()), rows("teacher_texts")),
            "teacher_answers": (pa.list_(pa.string()), rows("teacher")),
            "delta": (pa.float64(), rep("delta")),
            "delta_low": (pa.float64(), rep("ci_low")),
            "delta_high": (pa.float64(), rep("ci_high")),
            "zero_delta": (pa.bool_(), rep("zero_delta")),
            "stop_reason": (pa.string(), rows("stop_reason")),
            "teacher_majority": (pa.string(), rep("teacher_majority")),
            "teacher_agreement": (pa.float64(), rep("teacher_agreement")),
            "student_majority": (pa.string(), rep("student_majority")),
            "student_agreement": (pa.float64(), rep("student_agreement")),
        })
        return ShardOutput(out, skipped=skipped, stats={"samples_drawn": got["drawn"]})

    def finalize(self, cfg, stage_dir, tables):
        table = pa.concat_tables(tables, promote_options="default")
        summary = delta_summary(table, cfg.delta.threshold)
        (stage_dir / "delta_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_delta_hist(table.column("delta").to_pylist(), cfg.delta.threshold, stage_dir / "delta_hist.png")
        return summary["overall"]


def delta_summary(table: pa.Table, threshold: float) -> dict:
    """Zero-delta fraction overall, per source and per skill, with Δ quantiles."""
    import numpy as np

    rows = table.select(["source", "skill", "delta", "zero_delta"]).to_pylist()

    def summary(rs):
        ds = np.array([r["delta"] for r in rs], dtype=float)
        return {
            "prompts": len(rs),
            "zero_delta": int(sum(r["zero_delta"] for r in rs)),
            "zero_delta_fraction": round(float(np.mean([r["zero_delta"] for r in rs])), 4) if rs else None,
            "delta_mean": round(float(ds.mean()), 4) if rs else None,
            "delta_quantiles": ({str(q): round(float(np.quantile(ds, q)), 4) for q in (0.1, 0.5, 0.9)}
                                if rs else {}),
        }

    by = {"source": {}, "skill": {}}
    for key in by:
        for r in rows:
            by[key].setdefault(r[key] or "unknown", []).append(r)
    return {
        "threshold": threshold,
        "overall": summary(rows),
        "by_source": {k: summary(v) for k, v in sorted(by["source"].items())},
        "by_skill": {k: summary(v) for k, v in sorted(by["skill"].items())},
    }


def plot_delta_hist(deltas: list[float], threshold: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(deltas, bins=20, range=(0, 1), color="#4f81bd", edgecolor="white")
    ax.axvline(threshold, color="#c0504d", linestyle="--", label=f"threshold {threshold}")
    zero = sum(d < threshold for d in deltas)
    ax.set_title(f"answer divergence Δ: {zero}/{len(deltas)} zero-delta")
    ax.set_xlabel("Δ (JSD, base 2)")
    ax.set_ylabel("prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
