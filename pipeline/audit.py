"""Zero-delta audit: Δ for every prompt of an existing dataset, for a teacher + student pair.

This reproduces the paper's measurement ("up to 69% of prompts are zero-delta") on any
dataset in the canonical prompt schema (pipeline/schema.py): sample both models, extract
and normalise the final answers (pipeline/answers.py), compute Δ per prompt with the
adaptive policy (pipeline/delta.py), and write into ``out_dir``:

* ``audit.parquet``: one row per prompt (Δ, interval, decision, majorities, the answers);
* ``audit.json``: the summary (zero-delta fraction overall, per source and per skill, Δ
  quantiles, sample counts, no-answer rates, majority accuracy where gold exists);
* ``delta_hist.png``: a histogram of Δ with the threshold marked.

Sampling is batched: one engine call per model per round and per distinct sample count
(engines take one ``n`` per call); rounds go on until every prompt has stopped (either
rule of pipeline/delta.py) or holds ``n``. Each call gets its own seed derived from the
run seed, the round, the count and the model, so a later round never replays an earlier
round's draws (engines derive per-request seeds from the call's seed and the request's
position).

A request the engine rejects (corrupt image, prompt over the context) fails alone: the
prompt is reported with its error, counted in the summary, and left out of the fractions.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.answers import MatchMode, answers_match, extract_answer
from pipeline.delta import (
    DEFAULT_INSTRUCTION,
    NO_ANSWER,
    Answer,
    DeltaConfig,
    delta_report,
    first_round_draws,
    further_draws,
    stop_reason,
)
from pipeline.engines.base import Engine, EngineConfig, Request, user_message
from pipeline.schema import prompt_id
from pipeline.shards import atomic_write_bytes, atomic_write_json, atomic_write_table

log = logging.getLogger(__name__)

UNKNOWN = "unknown"  # source / skill of rows that do not name one
AUDIT_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("skill", pa.string()),
    pa.field("delta", pa.float64()),
    pa.field("ci_low", pa.float64()),
    pa.field("ci_high", pa.float64()),
    pa.field("zero_delta", pa.bool_()),
    pa.field("stopped_early", pa.bool_()),
    pa.field("stop_reason", pa.string()),  # "unanimous", "decided"; null: drew n (or failed)
    pa.field("teacher_majority", pa.string()),
    pa.field("teacher_agreement", pa.float64()),
    pa.field("student_majority", pa.string()),
    pa.field("student_agreement", pa.float64()),
    pa.field("n_teacher", pa.int32()),
    pa.field("n_student", pa.int32()),
    pa.field("teacher_truncated", pa.int32()),
    pa.field("student_truncated", pa.int32()),
    pa.field("teacher_answers", pa.list_(pa.string())),
    pa.field("student_answers", pa.list_(pa.string())),
    pa.field("teacher_correct", pa.bool_()),  # majority vs gold; null without gold
    pa.field("student_correct", pa.bool_()),
    pa.field("error", pa.string()),
]
AUDIT_SCHEMA = pa.schema(AUDIT_FIELDS)


# ------------------------------------------------------------------------------ requests


def format_question(question: str, choices: Sequence[str] | None, instruction: str | None) -> str:
    """The text sent to the models: question, lettered options (if any), instruction."""
    parts = [question.strip()]
    # Options are listed unless the question already spells every one of them out.
    if choices and not all(str(c).strip() and str(c).strip() in question for c in choices):
        listed = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
        parts.append("Options:\n" + listed)
    if instruction:
        parts.append(instruction.strip())
    return "\n".join(parts)


def requests_from_table(
    table: pa.Table, instruction: str | None = DEFAULT_INSTRUCTION
) -> list[Request]:
    """One chat Request per canonical prompt row: the row's image (struct bytes, else a
    readable ``path``) and its question with options and the answer-format instruction.

    A row without any image becomes a text-only request. Image bytes are passed encoded:
    the engine decodes them (and reports a corrupt one as that request's error).
    """
    missing = [c for c in ("question",) if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks required column(s) {missing}; has {table.column_names}")
    n = table.num_rows
    questions = table.column("question").to_pylist()
    images = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
    choices = _column(table, "choices", [None] * n)
    ids = _column(table, "id", [None] * n)
    out = []
    for i in range(n):
        q = questions[i]
        if q is None:
            raise ValueError(f"row {i} ({ids[i]!r}) has no question")
        data = _image_bytes(images[i])
        text = format_question(q, choices[i] or None, instruction)
        out.append(
            Request(
                messages=user_message(text, n_images=1 if data is not None else 0),
                images=[data] if data is not None else [],
                id=ids[i] if ids[i] is not None else f"row-{i}",
            )
        )
    return out


def _column(table: pa.Table, name: str, default: list) -> list:
    return table.column(name).to_pylist() if name in table.column_names else default


def _image_bytes(image: Any) -> bytes | None:
    if image is None:
        return None
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return image["bytes"]
        path = image.get("path")
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        return None
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    raise TypeError(
        f"image column holds {type(image).__name__}; expected the {{bytes, path}} struct"
    )


# ------------------------------------------------------------------------------ sampling


def _call_seed(seed: int, round_: int, count: int, model: str) -> int:
    salt = 0 if model == "teacher" else 1
    return int(
        np.random.SeedSequence([seed, round_, count, salt]).generate_state(1)[0] & 0x7FFFFFFF
    )


@dataclass
class Drawn:
    """What :func:`draw_answers` drew, one entry per request."""

    answers: list[list[Answer]]
    texts: list[list[str]]
    truncated: list[int]
    errors: list[str | None]


def draw_answers(
    engine: Engine,
    requests: Sequence[Request],
    counts: Sequence[int],
    cfg: DeltaConfig,
    choices: Sequence[Sequence[str] | None],
    *,
    model: str,
    round_: int,
) -> Drawn:
    """Draw ``counts[i]`` samples for request i; one engine call per distinct count.

    Returns, per request, the raw texts, the extracted answers, the number of truncated
    outputs and an error (or None). A request with count 0 is not sent.
    """
    answers: list[list[Answer]] = [[] for _ in requests]
    texts: list[list[str]] = [[] for _ in requests]
    truncated = [0] * len(requests)
    errors: list[str | None] = [None] * len(requests)
    by_count: dict[int, list[int]] = {}
    for i, c in enumerate(counts):
        if c > 0:
            by_count.setdefault(c, []).append(i)
    for count, idx in sorted(by_count.items()):
        results = engine.sample(
            [requests[i] for i in idx],
            n=count,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=_call_seed(cfg.seed, round_, count, model),
        )
        if len(results) != len(idx):
            raise RuntimeError(
                f"{model} engine returned {len(results)} results for {len(idx)} requests"
            )
        for i, res in zip(idx, results):
            if res.error is not None:
                errors[i] = f"{model}: {res.error}"
                continue
            for comp in res.completions:
                cut = comp.finish_reason == "length"
                truncated[i] += int(cut)
                texts[i].append(comp.text)
                answers[i].append(extract_answer(comp.text, choices[i], truncated=cut))
    return Drawn(answers, texts, truncated, errors)


def sample_adaptive(
    teacher: Engine | None,
    student: Engine | None,
    requests: Sequence[Request],
    choices: Sequence[Sequence[str] | None],
    cfg: DeltaConfig,
    student_answers: Sequence[Sequence[Answer]] | None = None,
    errors: Sequence[str | None] | None = None,
    student_truncated: Sequence[int] | None = None,
    student_texts: Sequence[Sequence[str]] | None = None,
) -> dict[str, list]:
    """Both models' answers per request under the adaptive policy, in batched rounds.

    Round 1 draws :func:`~pipeline.delta.first_round_draws` for every request; each later
    round draws :func:`~pipeline.delta.further_draws` for the requests still open (not
    stopped by either rule, not failed, short of ``n``), until none is. Each round is one
    :func:`draw_answers` per model (one engine call per distinct count).

    ``student_answers`` (one list per request, e.g. from the ``mine`` stage) are kept and
    topped up only if short of what the policy needs; ``student`` may then be None.
    ``errors`` marks requests that already failed (not sampled again);
    ``student_truncated`` counts the given student answers that hit the token limit.
    The result's ``stop_reason`` holds, per request, the rule that stopped it short of
    ``n`` ("unanimous", "decided") or None.
    """
    n = len(requests)
    t_ans: list[list[Answer]] = [[] for _ in range(n)]
    s_ans: list[list[Answer]] = (
        [list(a) for a in student_answers] if student_answers else [[] for _ in range(n)]
    )
    if len(s_ans) != n:
        raise ValueError(f"student_answers has {len(s_ans)} lists for {n} requests")
    t_txt: list[list[str]] = [[] for _ in range(n)]
    s_txt: list[list[str]] = [list(t) for t in student_texts] if student_texts else [[] for _ in range(n)]
    t_cut, s_cut = [0] * n, list(student_truncated) if student_truncated is not None else [0] * n
    errors: list[str | None] = list(errors) if errors is not None else [None] * n
    drawn = {"teacher": 0, "student": 0}
    reasons: list[str | None] = [None] * n

    plan = [first_round_draws(len(t_ans[i]), len(s_ans[i]), cfg) for i in range(n)]
    round_ = 1
    while True:
        for model, engine, store, txt, cuts, col in (
            ("teacher", teacher, t_ans, t_txt, t_cut, 0),
            ("student", student, s_ans, s_txt, s_cut, 1),
        ):
            counts = [0 if errors[i] else plan[i][col] for i in range(n)]
            if not any(counts):
                continue
            if engine is None:
                raise ValueError(
                    f"the {model} engine is needed: {sum(1 for c in counts if c)} prompts lack samples"
                )
            got = draw_answers(engine, requests, counts, cfg, choices, model=model, round_=round_)
            for i in range(n):
                if got.errors[i]:
                    errors[i] = errors[i] or got.errors[i]
                store[i].extend(got.answers[i])
                txt[i].extend(got.texts[i])
                cuts[i] += got.truncated[i]
                drawn[model] += len(got.answers[i])
        # Only a request that was just sampled can change its verdict; the others have
        # stopped, failed or been full since an earlier round.
        open_ = [i for i in range(n) if (round_ == 1 or any(plan[i])) and not errors[i]]
        plan = [(0, 0)] * n
        for i in open_:
            reasons[i] = stop_reason(t_ans[i], s_ans[i], cfg, choices[i])
            if reasons[i] is None:
                plan[i] = further_draws(t_ans[i], s_ans[i], cfg, choices[i])
        if not any(any(p) for p in plan):
            break
        round_ += 1
    return {
        "teacher": t_ans,
        "student": s_ans,
        "teacher_texts": t_txt,
        "student_texts": s_txt,
        "teacher_truncated": t_cut,
        "student_truncated": s_cut,
        "errors": errors,
        "drawn": drawn,
        "stop_reason": reasons,
    }


# --------------------------------------------------------------------------------- audit


def audit_prompts(
    table: pa.Table,
    teacher: Engine | None,
    student: Engine | None,
    cfg: DeltaConfig,
    out_dir: str | Path,
    *,
    student_answers: Sequence[Sequence[Answer]] | None = None,
    student_errors: Sequence[str | None] | None = None,
    student_truncated: Sequence[int] | None = None,
    match_mode: MatchMode = "relaxed",
) -> dict:
    """Δ for every prompt of ``table``; writes audit.parquet, audit.json, delta_hist.png.

    Returns the summary (the content of audit.json). ``student_answers`` reuses answers
    already drawn (then ``student`` may be None) and ``student_errors`` the requests that
    failed while drawing them (``student_truncated``: how many hit the token limit);
    ``match_mode`` scores majorities against
    the gold ``answers`` column where a row has one.
    """
    out_dir = Path(out_dir)
    requests = requests_from_table(table, cfg.instruction)
    n = len(requests)
    choices = [c or None for c in _column(table, "choices", [None] * n)]
    sampled = sample_adaptive(
        teacher, student, requests, choices, cfg, student_answers, student_errors, student_truncated
    )

    sources = [s or UNKNOWN for s in _column(table, "source", [None] * n)]
    skills = [s or UNKNOWN for s in _column(table, "skill", [None] * n)]
    golds = _column(table, "answers", [None] * n)
    rows = []
    for i, req in enumerate(requests):
        t, s = sampled["teacher"][i], sampled["student"][i]
        row: dict[str, Any] = {
            "id": req.id,
            "source": sources[i],
            "skill": skills[i],
            "teacher_answers": t,
            "student_answers": s,
            "n_teacher": len(t),
            "n_student": len(s),
            "teacher_truncated": sampled["teacher_truncated"][i],
            "student_truncated": sampled["student_truncated"][i],
            "error": sampled["errors"][i],
        }
        if row["error"] is None and t and s:
            rep = delta_report(t, s, cfg, choices[i])
            reason = sampled["stop_reason"][i]
            row.update(
                {
                    k: rep[k]
                    for k in (
                        "delta",
                        "ci_low",
                        "ci_high",
                        "zero_delta",
                        "teacher_majority",
                        "teacher_agreement",
                        "student_majority",
                        "student_agreement",
                    )
                }
            )
            row["stopped_early"] = reason is not None
            row["stop_reason"] = reason
            if golds[i]:
                row["teacher_correct"] = _majority_correct(
                    rep["teacher_majority"], golds[i], match_mode, choices[i]
                )
                row["student_correct"] = _majority_correct(
                    rep["student_majority"], golds[i], match_mode, choices[i]
                )
        elif row["error"] is None:
            row["error"] = "no samples"
        rows.append(row)

    per_prompt = pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)
    summary = summarize(
        rows, cfg, sampled["drawn"], reused_student=sum(len(a) for a in student_answers or [])
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_table(out_dir / "audit.parquet", per_prompt)
    atomic_write_bytes(
        out_dir / "delta_hist.png",
        delta_histogram_png([r["delta"] for r in rows if "delta" in r], cfg),
    )
    summary["files"] = {"per_prompt": "audit.parquet", "histogram": "delta_hist.png"}
    atomic_write_json(out_dir / "audit.json", summary)
    return summary


def _majority_correct(majority: str, golds: Sequence[str], mode: MatchMode, choices) -> bool:
    # The majority is already a normal form; normalising it again is the identity for
    # numbers, letters and text, so answers_match can take it as a prediction.
    if majority == NO_ANSWER:
        return False
    return answers_match(majority, list(golds), mode=mode, choices=choices)


def _group_stats(rows: list[dict], key: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out = {}
    for name, rs in sorted(groups.items()):
        zero = sum(bool(r["zero_delta"]) for r in rs)
        out[name] = {
            "n": len(rs),
            "zero_delta": zero,
            "zero_delta_fraction": zero / len(rs),
            "delta_mean": float(np.mean([r["delta"] for r in rs])),
        }
    return out


def summarize(
    rows: list[dict], cfg: DeltaConfig, drawn: dict[str, int], reused_student: int = 0
) -> dict:
    """The audit.json summary from per-prompt rows (scored rows carry a ``delta``)."""
    scored = [r for r in rows if "delta" in r]
    failed = [r for r in rows if "delta" not in r]
    deltas = np.array([r["delta"] for r in scored], dtype=float)
    zero = sum(bool(r["zero_delta"]) for r in scored)
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    quantiles = (
        {f"p{int(q * 100)}": float(v) for q, v in zip(qs, np.quantile(deltas, qs))}
        if len(deltas)
        else {}
    )
    t_total = sum(len(r["teacher_answers"]) for r in scored)
    s_total = sum(len(r["student_answers"]) for r in scored)
    t_none = sum(a is None for r in scored for a in r["teacher_answers"])
    s_none = sum(a is None for r in scored for a in r["student_answers"])
    with_gold = [r for r in scored if r.get("teacher_correct") is not None]
    budget = 2 * cfg.n * len(rows)
    return {
        "n_prompts": len(rows),
        "n_scored": len(scored),
        "n_errors": len(failed),
        "errors": [{"id": r["id"], "error": r["error"]} for r in failed[:50]],
        "zero_delta_count": zero,
        "zero_delta_fraction": zero / len(scored) if scored else None,
        "delta_mean": float(deltas.mean()) if len(deltas) else None,
        "delta_quantiles": quantiles,
        "by_source": _group_stats(scored, "source"),
        "by_skill": _group_stats(scored, "skill"),
        "no_answer_fraction": {
            "teacher": t_none / t_total if t_total else None,
            "student": s_none / s_total if s_total else None,
        },
        "majority_accuracy": {
            "n_with_gold": len(with_gold),
            "teacher": float(np.mean([r["teacher_correct"] for r in with_gold]))
            if with_gold
            else None,
            "student": float(np.mean([r["student_correct"] for r in with_gold]))
            if with_gold
            else None,
        },
        "samples": {
            "teacher_drawn": drawn.get("teacher", 0),
            "student_drawn": drawn.get("student", 0),
            "student_reused": reused_student,
            "full_budget": budget,
            "saved_fraction": (
                1.0 - (drawn.get("teacher", 0) + drawn.get("student", 0) + reused_student) / budget
            )
            if budget
            else None,
            "stopped_early": sum(bool(r.get("stopped_early")) for r in scored),
            # Outputs cut by max_tokens: a high share means max_tokens is too small for
            # the model's reasoning, and Δ then compares "no answer" classes.
            "teacher_truncated": sum(r["teacher_truncated"] for r in rows),
            "student_truncated": sum(r["student_truncated"] for r in rows),
        },
        "metric": cfg.metric,
        "threshold": cfg.threshold,
        "config": asdict(cfg),
    }


def delta_histogram_png(deltas: Sequence[float], cfg: DeltaConfig, bins: int = 20) -> bytes:
    """PNG bytes of a Δ histogram with the zero-delta threshold marked.

    Uses the object-oriented Agg canvas, not pyplot, so no global figure state is touched.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(list(deltas), bins=np.linspace(0.0, 1.0, bins + 1), color="#4C72B0", edgecolor="white")
    ax.axvline(cfg.threshold, color="#C44E52", linestyle="--", label=f"threshold {cfg.threshold:g}")
    zero = sum(d < cfg.threshold for d in deltas)
    frac = f"{100 * zero / len(deltas):.1f}%" if len(deltas) else "n/a"
    ax.set_title(f"Δ ({cfg.metric}) over {len(deltas)} prompts; zero-delta {frac}")
    ax.set_xlabel("Δ")
    ax.set_ylabel("prompts")
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------ datasets


def load_prompt_table(path_or_glob: str | Path, limit: int | None = None) -> pa.Table:
    """Prompt rows from Parquet files (a file, a folder of them, or a glob) or a
    ``datasets.save_to_disk`` folder (a Dataset, or a DatasetDict: splits concatenated).

    Missing optional columns are filled: ``id`` (computed like ingest does), ``source``
    and ``skill`` ("unknown"), ``choices`` and ``answers`` (empty).
    """
    p = Path(path_or_glob)
    if p.is_dir() and (
        (p / "dataset_info.json").exists()
        or (p / "dataset_dict.json").exists()
        or (p / "state.json").exists()
    ):
        table = _load_saved_dataset(p)
    else:
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*.parquet"))
        elif p.is_file():
            files = [str(p)]
        else:
            files = sorted(glob.glob(str(path_or_glob), recursive=True))
        if not files:
            raise FileNotFoundError(f"no Parquet files or saved dataset at {path_or_glob!s}")
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    if limit is not None:
        table = table.slice(0, limit)
    return _fill_optional_columns(table)


def _load_saved_dataset(path: Path) -> pa.Table:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        parts = []
        for split, d in ds.items():
            t = d.with_format("arrow")[:]
            if "split" not in t.column_names:
                t = t.append_column("split", pa.array([split] * t.num_rows, pa.string()))
            parts.append(t)
        return pa.concat_tables(parts, promote_options="default")
    return ds.with_format("arrow")[:]


def _fill_optional_columns(table: pa.Table) -> pa.Table:
    if "question" not in table.column_names:
        raise ValueError(f"dataset has no 'question' column; columns: {table.column_names}")
    n = table.num_rows
    if "id" not in table.column_names:
        images = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
        ids = [
            prompt_id(_image_bytes(im), q or "")
            for im, q in zip(images, table.column("question").to_pylist())
        ]
        table = table.append_column("id", pa.array(ids, pa.string()))
    for name in ("source", "skill"):
        if name not in table.column_names:
            table = table.append_column(name, pa.array([UNKNOWN] * n, pa.string()))
    for name in ("choices", "answers"):
        if name not in table.column_names:
            table = table.append_column(
                name, pa.array([[] for _ in range(n)], pa.list_(pa.string()))
            )
    return table


def run_audit(
    dataset_path_or_parquet_glob: str | Path,
    teacher_cfg: EngineConfig | dict,
    student_cfg: EngineConfig | dict,
    delta_cfg: DeltaConfig | dict | None,
    out_dir: str | Path,
    limit: int | None = None,
) -> dict:
    """Load a dataset, audit it with freshly built engines, write the outputs; the summary.

    One model is in memory at a time (two vLLM engines rarely fit on one GPU): the student
    draws its full ``n`` first and is closed, then the teacher runs the adaptive policy
    against those answers. The saving is therefore on the teacher, the expensive model.
    """
    from pipeline.engines import build_engine

    tcfg = teacher_cfg if isinstance(teacher_cfg, EngineConfig) else EngineConfig(**teacher_cfg)
    scfg = student_cfg if isinstance(student_cfg, EngineConfig) else EngineConfig(**student_cfg)
    dcfg = delta_cfg if isinstance(delta_cfg, DeltaConfig) else DeltaConfig(**(delta_cfg or {}))
    table = load_prompt_table(dataset_path_or_parquet_glob, limit)
    log.info("audit: %d prompts from %s", table.num_rows, dataset_path_or_parquet_glob)
    requests = requests_from_table(table, dcfg.instruction)
    choices = [c or None for c in table.column("choices").to_pylist()]

    with build_engine(scfg) as student:
        drawn = draw_answers(
            student, requests, [dcfg.n] * len(requests), dcfg, choices, model="student", round_=0
        )
    with build_engine(tcfg) as teacher:
        summary = audit_prompts(
            table,
            teacher,
            None,
            dcfg,
            out_dir,
            student_answers=drawn.answers,
            student_errors=drawn.errors,
            student_truncated=drawn.truncated,
        )
    # The student's answers were drawn here, not reused from an earlier stage.
    summary["samples"]["student_drawn"] += summary["samples"].pop("student_reused")
    summary["dataset"] = str(dataset_path_or_parquet_glob)
    atomic_write_json(Path(out_dir) / "audit.json", summary)
    return summary


def summary_text(summary: dict) -> str:
    """A few lines for the terminal: overall and per-source/skill zero-delta fractions."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"prompts: {summary['n_prompts']} (scored {summary['n_scored']}, errors {summary['n_errors']})",
        (
            f"zero-delta: {pct(summary['zero_delta_fraction'])} "
            f"(Δ={summary['metric']} < {summary['threshold']:g}); median Δ "
            f"{summary['delta_quantiles'].get('p50', float('nan')):.3f}"
        ),
    ]
    for key in ("by_source", "by_skill"):
        for name, g in summary[key].items():
            lines.append(f"  {key[3:]} {name}: {pct(g['zero_delta_fraction'])} of {g['n']}")
    return "\n".join(lines)
