"""Δ for every prompt of a table, its columns, one summary format and one histogram.

Stage 4 (``delta``) and the ``audit`` command are the same measurement: both call
:func:`measure`, write :func:`delta_columns`, summarise with :func:`summarize_table` and
draw :func:`delta_histogram`; they differ only in where the prompts and the student's
samples come from (mine's shards, or a dataset and a fresh student pass).

    m = measure(table, teacher, student, sampling, delta, held=held, grading="relaxed")
    out = add_columns(keep_rows(table, m.scored), delta_columns(m))

Prompts the policy's ``student_solved`` rule sets aside (delta.skip_solved: gold given,
the student's held answers all correct) never reach the teacher engine. Their rows say
``stop_reason = "student_solved"``, hold no teacher samples (empty lists; teacher majority,
agreement and correctness null) and Δ = 0.0 with the interval [0, 0] and zero_delta true:
by definition, not a measurement. The filter drops them as zero-delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.answers import MatchMode, answers_match
from pipeline.core.config import DeltaConfig, SamplingConfig
from pipeline.core.divergence import NO_ANSWER, Answer, answer_counts, delta_report
from pipeline.core.reports import COLORS, figure, grouped
from pipeline.core.schema import column_or
from pipeline.engines.base import Engine
from pipeline.sampling.draw import AdaptiveDraw, PromptSamples, sample_adaptive
from pipeline.sampling.policy import STUDENT_SOLVED, AdaptivePolicy, student_solved
from pipeline.sampling.prompts import choices_of, requests_from_table
from pipeline.sampling.store import ModelSamples

# The columns Δ adds to a prompt table: name -> (type, what it holds). Stage 4 declares
# them as its output columns and the dataset card documents them from here.
DELTA_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "student_samples": (pa.list_(pa.string()), "the student's raw outputs (mine's N, or drawn here)"),
    "student_answers": (pa.list_(pa.string()), "final answers extracted from student_samples (null: no answer)"),
    "teacher_samples": (pa.list_(pa.string()), "the teacher's raw outputs (adaptive: as many as the policy drew, up to N)"),
    "teacher_answers": (pa.list_(pa.string()), "final answers extracted from teacher_samples"),
    "delta": (pa.float64(), "answer divergence Δ (delta.metric) between the two answer distributions (student_solved: 0.0 by definition)"),
    "delta_low": (pa.float64(), "lower end of Δ's bootstrap interval (delta.ci_level)"),
    "delta_high": (pa.float64(), "upper end of Δ's bootstrap interval"),
    "zero_delta": (pa.bool_(), "Δ < delta.threshold"),
    "stop_reason": (pa.string(), "why sampling stopped short of N: unanimous, decided (exact), student_solved (no teacher samples: delta.skip_solved), or null"),
    "teacher_majority": (pa.string(), "the teacher's most frequent normalised answer (null: no teacher samples)"),
    "teacher_agreement": (pa.float64(), "share of teacher answers in its majority class (null: no teacher samples)"),
    "teacher_correct": (pa.bool_(), "the teacher's majority matches the gold answers (mine.grading); null: no gold (LLM-rewritten prompts) or no teacher samples"),
    "student_majority": (pa.string(), "the student's most frequent normalised answer"),
    "student_agreement": (pa.float64(), "share of student answers in its majority class"),
}
METRIC_LABELS = {"jsd": "Jensen-Shannon divergence (bits)", "tv": "total variation",
                 "hellinger": "Hellinger distance"}


# What the summary reads of a measured table (the Δ columns plus the prompt's gold).
SUMMARY_COLUMNS = ["source", "skill", "delta", "zero_delta", "teacher_answers", "student_answers",
                   "stop_reason", "answers", "choices", "teacher_majority", "student_majority"]


# Rows whose `answers` are gold, for the student_solved rule and teacher_correct: seeds
# (no `origin` column, or origin "seed") and the chart world's programmatic rewrites, whose
# answers are computed from the chart. An LLM rewrite's answer was proposed by the
# rewriter or is the teacher's own pseudo-label: no ground to judge either model by.
GOLD_ORIGINS = (None, "seed", "programmatic")


def gold_answers(table: pa.Table) -> list[list[str] | None]:
    """Each row's gold answers, or None (none given, or not gold: :data:`GOLD_ORIGINS`)."""
    return [list(a) if a and o in GOLD_ORIGINS else None
            for a, o in zip(column_or(table, "answers"), column_or(table, "origin"))]


@dataclass
class Measurement:
    """Δ of each prompt of a table: its samples, and its report where it could be scored."""

    samples: list[PromptSamples]
    reports: list[dict[str, Any] | None]  # delta_report; None: not scored (see samples[i].error)
    drawn: dict[str, int]  # samples the engines drew for this measurement, per model
    served: dict[str, int] = field(default_factory=lambda: {"teacher": 0, "student": 0})  # from the store

    @property
    def scored(self) -> list[bool]:
        return [r is not None for r in self.reports]

    def sample_counts(self, student_reused: int = 0, student_drawn_before: int = 0) -> dict[str, int]:
        """Samples drawn (and reused) per model, and outputs cut by max_tokens."""
        return {
            "teacher_drawn": self.drawn["teacher"],
            "student_drawn": self.drawn["student"] + student_drawn_before,
            "student_reused": student_reused,
            "teacher_served": self.served["teacher"],  # from the sample store
            "student_served": self.served["student"],
            "teacher_truncated": sum(p.teacher_truncated for p in self.samples),
            "student_truncated": sum(p.student_truncated for p in self.samples),
        }

    def errors(self, ids: Sequence[str]) -> list[dict[str, str]]:
        """``{"id", "error"}`` of every prompt that could not be scored."""
        return [{"id": i, "error": p.error} for i, p in zip(ids, self.samples) if p.error]


def held_from_table(table: pa.Table) -> list[PromptSamples]:
    """The student samples a table already carries (mine's columns), per row."""
    answers = column_or(table, "student_answers")
    texts = column_or(table, "student_samples")
    return [PromptSamples(student=list(a or []), student_texts=list(t or []))
            for a, t in zip(answers, texts)]


def measure(
    table: pa.Table,
    teacher: Engine | None,
    student: Engine | None,
    sampling: SamplingConfig,
    delta: DeltaConfig,
    held: Sequence[PromptSamples] | None = None,
    grading: MatchMode = "relaxed",
    stores: dict[str, ModelSamples] | None = None,
) -> Measurement:
    """Sample what each prompt lacks (adaptive policy) and compute Δ with its report.

    First the prompts the student already solves (``student_solved``, on ``held``) are set
    aside without a draw; the others go through :func:`sample_adaptive`. ``grading``
    matches answers to gold (mine.grading) for that rule and for ``teacher_correct``.
    """
    choices = choices_of(table)
    policy = AdaptivePolicy.of(sampling, delta, grading)
    golds = gold_answers(table)
    requests = requests_from_table(table, sampling.instruction)
    n = len(requests)
    if held is not None and len(held) != n:
        raise ValueError(f"held has {len(held)} entries for {n} requests")
    solved = [held is not None and held[i].error is None
              and student_solved(held[i].student, golds[i], policy, choices[i]) for i in range(n)]
    ask = [i for i in range(n) if not solved[i]]
    got: AdaptiveDraw = sample_adaptive(
        teacher, student, [requests[i] for i in ask], [choices[i] for i in ask], sampling, policy,
        held=None if held is None else [held[i] for i in ask], stores=stores,
    )
    prompts: list[PromptSamples] = [PromptSamples() for _ in range(n)]
    for i, p in zip(ask, got.prompts):
        prompts[i] = p
    reports: list[dict[str, Any] | None] = [None] * n
    for i, p in enumerate(prompts):
        if solved[i]:
            h = held[i]  # type: ignore[index]
            prompts[i] = p = PromptSamples(student=list(h.student), student_texts=list(h.student_texts),
                                           student_truncated=h.student_truncated,
                                           stop_reason=STUDENT_SOLVED)
            reports[i] = solved_report(p.student, choices[i])
        elif p.scored:
            r = delta_report(p.teacher, p.student, delta, choices[i])
            r["teacher_correct"] = majority_correct(r["teacher_majority"], golds[i], grading, choices[i])
            reports[i] = r
        elif p.error is None:
            p.error = "no samples"
    return Measurement(prompts, reports, got.drawn, got.served)


def solved_report(student_answers: Sequence[Answer], choices: Sequence[str] | None) -> dict[str, Any]:
    """The report of a prompt decided without teacher samples (``student_solved``): Δ = 0
    and its interval [0, 0] by definition; the teacher's fields are null."""
    counts = answer_counts(student_answers, choices)
    majority, top = counts.most_common(1)[0]
    return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "zero_delta": True,
            "teacher_majority": None, "teacher_agreement": None, "teacher_correct": None,
            "student_majority": majority, "student_agreement": top / len(student_answers)}


def delta_columns(m: Measurement) -> dict[str, tuple[pa.DataType, list[Any]]]:
    """The :data:`DELTA_COLUMNS` of the scored prompts, in order (for ``add_columns``)."""
    kept = [(p, r) for p, r in zip(m.samples, m.reports) if r is not None]
    values: dict[str, list[Any]] = {
        "student_samples": [p.student_texts for p, _ in kept],
        "student_answers": [p.student for p, _ in kept],
        "teacher_samples": [p.teacher_texts for p, _ in kept],
        "teacher_answers": [p.teacher for p, _ in kept],
        "delta": [r["delta"] for _, r in kept],
        "delta_low": [r["ci_low"] for _, r in kept],
        "delta_high": [r["ci_high"] for _, r in kept],
        "zero_delta": [r["zero_delta"] for _, r in kept],
        "stop_reason": [p.stop_reason for p, _ in kept],
        **{k: [r[k] for _, r in kept] for k in ("teacher_majority", "teacher_agreement",
                                                "student_majority", "student_agreement")},
        "teacher_correct": [r.get("teacher_correct") for _, r in kept],
    }
    return {name: (dtype, values[name]) for name, (dtype, _) in DELTA_COLUMNS.items()}


def majority_correct(majority: str | None, golds: Sequence[str] | None, mode: MatchMode,
                     choices: Sequence[str] | None) -> bool | None:
    """Whether a majority answer matches the gold answers; None without gold."""
    if not golds or majority is None:
        return None
    # The majority is already a normal form; normalising it again is the identity for
    # numbers, letters and text, so answers_match can take it as a prediction.
    if majority == NO_ANSWER:
        return False
    return answers_match(majority, list(golds), mode=mode, choices=choices)


# ---------------------------------------------------------------------------- reporting


def _zero_delta_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ds = np.array([r["delta"] for r in rows], dtype=float)
    zero = int(sum(bool(r["zero_delta"]) for r in rows))
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    return {
        "prompts": len(rows),
        "zero_delta": zero,
        "zero_delta_fraction": round(zero / len(rows), 4) if rows else None,
        "delta_mean": round(float(ds.mean()), 4) if rows else None,
        "delta_quantiles": ({f"p{int(q * 100)}": round(float(v), 4)
                             for q, v in zip(qs, np.quantile(ds, qs))} if rows else {}),
    }


def summarize_table(
    table: pa.Table,
    sampling: SamplingConfig,
    delta: DeltaConfig,
    samples: dict[str, int],
    errors: Sequence[dict[str, str]] = (),
    match_mode: MatchMode = "relaxed",
) -> dict[str, Any]:
    """The one Δ summary (stage 4's delta_summary.json and the audit's audit.json) of a
    table carrying the Δ columns, one row per scored prompt.

    ``samples``: drawn / reused counts per model and truncations
    (:meth:`Measurement.sample_counts`); ``errors``: the prompts that could not be scored.
    """
    rows = table.select([c for c in SUMMARY_COLUMNS if c in table.column_names]).to_pylist()
    t_all = [a for r in rows for a in r["teacher_answers"]]
    s_all = [a for r in rows for a in r["student_answers"]]
    correct = {
        side: [c for r in rows
               if (c := majority_correct(r.get(f"{side}_majority"), r.get("answers"),
                                         match_mode, r.get("choices") or None)) is not None]
        for side in ("teacher", "student")
    }
    drawn = samples.get("teacher_drawn", 0) + samples.get("student_drawn", 0)
    solved = sum(r.get("stop_reason") == STUDENT_SOLVED for r in rows)
    budget = 2 * sampling.n * (len(rows) + len(errors))
    return {
        "metric": delta.metric,
        "threshold": delta.threshold,
        **grouped(rows, _zero_delta_stats),
        "errors": {"count": len(errors), "examples": list(errors)[:50]},
        "samples": {
            **samples,
            "full_budget": budget,
            "saved_fraction": (round(1.0 - (drawn + samples.get("student_reused", 0)) / budget, 4)
                               if budget else None),
            "stopped_early": {reason: sum(r.get("stop_reason") == reason for r in rows)
                              for reason in ("unanimous", "decided")},
            # delta.skip_solved: prompts the teacher was never asked about, and the teacher
            # samples full-n sampling would have drawn for them.
            "student_solved": {"prompts": solved, "teacher_not_drawn": solved * sampling.n},
        },
        "no_answer_fraction": {
            "teacher": round(sum(a is None for a in t_all) / len(t_all), 4) if t_all else None,
            "student": round(sum(a is None for a in s_all) / len(s_all), 4) if s_all else None,
        },
        "majority_accuracy": {
            "n_with_gold": len(correct["teacher"]),
            **{side: round(float(np.mean(v)), 4) if v else None for side, v in correct.items()},
        },
    }


def summary_text(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: overall and per-source/skill zero-delta fractions."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    o = summary["overall"]
    lines = [
        f"prompts: {o['prompts']} scored, {summary['errors']['count']} errors",
        (f"zero-delta: {pct(o['zero_delta_fraction'])} (Δ={summary['metric']} < "
         f"{summary['threshold']:g}); median Δ {o['delta_quantiles'].get('p50', float('nan')):.3f}"),
    ]
    for key in ("by_source", "by_skill"):
        for name, g in summary[key].items():
            lines.append(f"  {key[3:]} {name}: {pct(g['zero_delta_fraction'])} of {g['prompts']}")
    return "\n".join(lines)


def delta_histogram(deltas: Sequence[float], threshold: float, metric: str, bins: int = 20):
    """A Figure: the histogram of Δ with the zero-delta threshold marked."""
    fig, (ax,) = figure(width=6, height=3.6)
    ax.hist(list(deltas), bins=np.linspace(0.0, 1.0, bins + 1), color=COLORS["main"],
            edgecolor="white")
    ax.axvline(threshold, color=COLORS["bad"], linestyle="--", label=f"threshold {threshold:g}")
    zero = sum(d < threshold for d in deltas)
    frac = f"{100 * zero / len(deltas):.1f}%" if len(deltas) else "n/a"
    ax.set_title(f"Δ over {len(deltas)} prompts: {zero} zero-delta ({frac})")
    ax.set_xlabel(f"Δ: {METRIC_LABELS.get(metric, metric)}")
    ax.set_ylabel("prompts")
    ax.legend(loc="upper right")
    return fig
