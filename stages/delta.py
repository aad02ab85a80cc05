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
from stages.common import SAMPLING_KEYS, add_columns, engine_resources, keep_rows, sample_table

COLUMNS = {
    "teacher_samples": "the teacher's raw outputs (adaptive: k, or N when not settled early)",
    "teacher_answers": "final answers extracted from teacher_samples",
    "delta": "answer divergence Δ (delta.metric, base 2) between the two answer distributions",
    "delta_low": "lower end of Δ's bootstrap interval (delta.ci_level)",
    "delta_high": "upper end of Δ's bootstrap interval",
    "zero_delta": "Δ < delta.threshold",
    "teacher_majority": "the teacher's most frequent normalised answer",
    "teacher_agreement": "share of teacher answers in its majority class",
    "student_majority": "the student's most frequent normalised answer",
    "student_agreement": "share of student answers in its majority class",
}


class _LazyStudent:
    """The student engine, loaded only if some row has no student samples."""

    def __init__(self, cfg):
        self.cfg, self.engine = cfg, None

    def get(self):
        if self.engine is None:
            from pipeline.engines import build_engine

            self.engine = build_engine(self.cfg.models.student)
        return self.engine


class _Engines:
    def __init__(self, cfg):
        from pipeline.engines import build_engine

        self.teacher = build_engine(cfg.models.teacher)
        self.student = _LazyStudent(cfg)

    def close(self):
        self.teacher.close()
        if self.student.engine is not None:
            self.student.engine.close()


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
        from pipeline.delta import delta_report, first_round_draws, further_draws

        d = cfg.delta
        n_rows = table.num_rows
        have_s = (table.column("student_answers").to_pylist() if "student_answers" in table.column_names
                  else [None] * n_rows)
        have_texts = (table.column("student_samples").to_pylist() if "student_samples" in table.column_names
                      else [None] * n_rows)
        t_texts = [[] for _ in range(n_rows)]
        t_ans = [[] for _ in range(n_rows)]
        s_texts = [list(x or []) for x in have_texts]
        s_ans = [list(x or []) for x in have_s]
        errors: list[str | None] = [None] * n_rows
        choices = table.column("choices").to_pylist()

        def draw(engine_get, who_texts, who_ans, rows, n, round_no):
            if not rows:
                return
            sub = table.take(pa.array(rows, pa.int64()))
            for r, s in zip(rows, sample_table(engine_get(), sub, cfg, n, seed_offset=round_no)):
                if s.error:
                    errors[r] = errors[r] or s.error
                else:
                    who_texts[r] += s.texts
                    who_ans[r] += s.answers

        # Round 1: k (or N) per model for every prompt lacking them.
        need = [first_round_draws(0, len(s_ans[r]), d) for r in range(n_rows)]
        draw(lambda: state.teacher, t_texts, t_ans, [r for r in range(n_rows) if need[r][0]], need[0][0] if n_rows else 0, 1)
        s_rows = [r for r in range(n_rows) if need[r][1]]
        for m in sorted({need[r][1] for r in s_rows}):
            draw(state.student.get, s_texts, s_ans, [r for r in s_rows if need[r][1] == m], m, 1)
        # Round 2: the rest of the budget, only where the two sides are not settled.
        more = [further_draws(t_ans[r], s_ans[r], d, choices[r] or None) if not errors[r] else (0, 0)
                for r in range(n_rows)]
        for m in sorted({x[0] for x in more if x[0]}):
            draw(lambda: state.teacher, t_texts, t_ans, [r for r in range(n_rows) if more[r][0] == m], m, 2)
        for m in sorted({x[1] for x in more if x[1]}):
            draw(state.student.get, s_texts, s_ans, [r for r in range(n_rows) if more[r][1] == m], m, 2)

        keep, reports, skipped = [], [], {}
        for r in range(n_rows):
            if errors[r] or not t_ans[r] or not s_ans[r]:
                skipped["engine_error"] = skipped.get("engine_error", 0) + 1
                keep.append(False)
                continue
            keep.append(True)
            reports.append(delta_report(t_ans[r], s_ans[r], d, choices[r] or None))
        kept = [r for r in range(n_rows) if keep[r]]
        out = add_columns(keep_rows(table, keep), {
            "student_samples": (pa.list_(pa.string()), [s_texts[r] for r in kept]),
            "student_answers": (pa.list_(pa.string()), [s_ans[r] for r in kept]),
            "teacher_samples": (pa.list_(pa.string()), [t_texts[r] for r in kept]),
            "teacher_answers": (pa.list_(pa.string()), [t_ans[r] for r in kept]),
            "delta": (pa.float64(), [x["delta"] for x in reports]),
            "delta_low": (pa.float64(), [x["ci_low"] for x in reports]),
            "delta_high": (pa.float64(), [x["ci_high"] for x in reports]),
            "zero_delta": (pa.bool_(), [x["zero_delta"] for x in reports]),
            "teacher_majority": (pa.string(), [x["teacher_majority"] for x in reports]),
            "teacher_agreement": (pa.float64(), [x["teacher_agreement"] for x in reports]),
            "student_majority": (pa.string(), [x["student_majority"] for x in reports]),
            "student_agreement": (pa.float64(), [x["student_agreement"] for x in reports]),
        })
        drawn = sum(len(t_ans[r]) for r in kept) + sum(len(s_ans[r]) - len(have_s[r] or []) for r in kept)
        return ShardOutput(out, skipped=skipped, stats={"samples_drawn": drawn, "prompts": len(kept)})

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
