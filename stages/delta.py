"""Stage 4, delta: the answer divergence Δ between teacher and student, per prompt.

Samples come from the sample store first (pipeline/sampling/store.py, run.cache_dir): only
what it lacks is drawn, so a new student beside a teacher already measured draws no teacher
samples; the manifest counts samples served (teacher_served, student_served) and drawn.
Student samples already drawn by `mine` are reused; the student is only loaded for rows
without them (synthesised prompts from `rewrite`). With the adaptive policy the teacher
(and a student without samples) first draws k answers for every prompt in one batched
call, then rounds of more for the prompts not yet decided (pipeline/sampling/policy.py).
Δ, its bootstrap interval, and both sides' majority answers and agreement become columns
(pipeline/sampling/measure.py: the same measurement as `deltaprompts audit`).

Before any draw, a prompt with gold whose mined student answers are all correct
(delta.skip_solved, graded with mine.grading) is decided without the teacher: stop_reason
"student_solved", no teacher samples, Δ = 0 by definition. delta_summary.json and the
manifest's report count them (samples.student_solved).
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import shards
from pipeline.core.reports import save_png, write_json
from pipeline.core.schema import add_columns, column_or, keep_rows
from pipeline.runner.stage import ShardOutput, Stage
from pipeline.sampling.measure import (
    DELTA_COLUMNS,
    delta_columns,
    delta_histogram,
    held_from_table,
    measure,
    summarize_table,
)
from stages.common import LazyEngine, engine_resources, sample_stores


class _Engines:
    """Both models built on first use: the student only for rows without student samples
    (the rewrite stage's new prompts), the teacher only for samples the store lacks
    (a new student beside a teacher already sampled draws none); a load costs minutes."""

    def __init__(self, cfg):
        self.teacher = LazyEngine(cfg.models.teacher)
        self.student = LazyEngine(cfg.models.student)
        self.stores = sample_stores(cfg, "teacher", "student")

    def close(self):
        self.teacher.close()
        self.student.close()


class DeltaStage(Stage):
    number = 4
    name = "delta"
    columns = DELTA_COLUMNS
    # mine.grading: how answers are matched to gold (the student_solved rule, teacher_correct).
    config_keys = ["models.teacher", "models.student", "sampling", "delta", "mine.grading"]
    outputs = ("delta_summary.json", "delta_hist.png")
    uses_models = True

    def upstream(self, cfg):
        return "rewrite" if cfg.rewrite.enabled else "mine"

    def resources(self, cfg):
        return engine_resources(cfg.models.teacher, cfg.models.student)

    def setup(self, cfg):
        return _Engines(cfg)

    def process(self, cfg, state, task, table):
        held = held_from_table(table)
        m = measure(table, state.teacher, state.student, cfg.sampling, cfg.delta, held=held,
                    grading=cfg.mine.grading, stores=state.stores)
        skipped = {"engine_error": m.scored.count(False)} if not all(m.scored) else {}
        reused = sum(len(h.student) for h, ok in zip(held, m.scored) if ok)
        errors = m.errors(column_or(table, "id"))
        stats = {"samples": m.sample_counts(student_reused=reused), "errors": errors}
        out = add_columns(keep_rows(table, m.scored), delta_columns(m))
        return ShardOutput(out, skipped=skipped, stats=stats, skipped_rows=[
            {"id": e["id"], "reason": "engine_error", "detail": e["error"]} for e in errors])

    def finalize(self, cfg, stage_dir, tables):
        table = pa.concat_tables(tables, promote_options="default")
        samples: dict[str, int] = {}
        errors: list[dict[str, str]] = []
        for i in shards.complete_shards(stage_dir):
            stats = shards.read_marker(stage_dir, i).stats
            for k, v in stats.get("samples", {}).items():
                samples[k] = samples.get(k, 0) + v
            errors += stats.get("errors", [])
        summary = summarize_table(table, cfg.sampling, cfg.delta, samples, errors, cfg.mine.grading)
        write_json(stage_dir / "delta_summary.json", summary)
        save_png(delta_histogram(table.column("delta").to_pylist(), cfg.delta.threshold,
                                 cfg.delta.metric),
                 stage_dir / "delta_hist.png")
        return {**summary["overall"], "samples": summary["samples"]}
