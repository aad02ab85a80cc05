"""`deltaprompts audit`: stage 4's measurement on any dataset, outside a run.

    summary = run_audit("data/heldout", cfg.models.teacher, cfg.models.student,
                        cfg.sampling, cfg.delta, out_dir="runs/x/audit")

The paper's "up to 69% of prompts are zero-delta" measurement for a dataset you already
have (pipeline/data/loader.py reads it). One model is in memory at a time (two vLLM
engines rarely fit on one GPU): the student draws its full ``n`` first and is closed,
then the teacher runs the adaptive policy against those answers, exactly as stage 4 does
after mine (pipeline/sampling/measure.py), the student_solved rule included: with
delta.skip_solved on, a prompt whose student answers all match gold counts as zero-delta
without a teacher sample (set it to null to measure the teacher on every prompt).
Writes into ``out_dir``:

* ``audit.parquet``: one row per scored prompt (stage 4's Δ columns; images left out);
* ``audit.json``: the summary, in the same format as stage 4's ``delta_summary.json``;
* ``delta_hist.png``: the histogram of Δ, the metric's name on the axis.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.answers import MatchMode
from pipeline.core.config import DeltaConfig, EngineConfig, SamplingConfig
from pipeline.core.errors import DataError
from pipeline.core.reports import save_png, write_json
from pipeline.core.schema import add_columns, keep_rows
from pipeline.core.shards import atomic_write_table
from pipeline.data.loader import read_table
from pipeline.engines import build_engine
from pipeline.sampling.draw import PromptSamples, draw_answers
from pipeline.sampling.measure import delta_columns, delta_histogram, measure, summarize_table
from pipeline.sampling.prompts import choices_of, requests_from_table

log = logging.getLogger(__name__)


def run_audit(
    data: str | Path,
    teacher_cfg: EngineConfig,
    student_cfg: EngineConfig,
    sampling: SamplingConfig,
    delta: DeltaConfig,
    out_dir: str | Path,
    limit: int | None = None,
    match_mode: MatchMode = "relaxed",
) -> dict:
    """Load ``data``, measure Δ of every prompt with freshly built engines, write the
    outputs; returns the summary (the content of audit.json)."""
    out_dir = Path(out_dir)
    table = read_table(data, limit=limit)
    if table.num_rows == 0:
        raise DataError(f"{data} holds no prompts (0 rows); give a dataset with rows")
    log.info("audit: %d prompts from %s", table.num_rows, data)
    with build_engine(student_cfg) as student:
        drawn = draw_answers(student, requests_from_table(table, sampling.instruction),
                             [sampling.n] * table.num_rows, sampling, choices_of(table),
                             model="student", round_=0)
    held = [PromptSamples(student=a, student_texts=t, student_truncated=c, error=e)
            for a, t, c, e in zip(drawn.answers, drawn.texts, drawn.truncated, drawn.errors)]
    with build_engine(teacher_cfg) as teacher:
        m = measure(table, teacher, None, sampling, delta, held=held,
                    grading=match_mode)  # type: ignore[arg-type]
    scored = add_columns(keep_rows(table, m.scored), delta_columns(m))
    samples = m.sample_counts(student_drawn_before=sum(len(a) for a in drawn.answers))
    summary = summarize_table(scored, sampling, delta, samples,
                              m.errors(table.column("id").to_pylist()), match_mode)
    summary["dataset"] = str(data)
    summary["files"] = {"per_prompt": "audit.parquet", "histogram": "delta_hist.png"}
    out_dir.mkdir(parents=True, exist_ok=True)
    per_prompt = scored.drop_columns([c for c in ("image",) if c in scored.column_names])
    atomic_write_table(out_dir / "audit.parquet", per_prompt)
    save_png(delta_histogram(scored.column("delta").to_pylist(), delta.threshold, delta.metric),
             out_dir / "delta_hist.png")
    write_json(out_dir / "audit.json", summary)
    return summary
