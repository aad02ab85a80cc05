"""`deltaprompts report`: one self-contained HTML page about a run, to look at.

    path = write_report(Path("runs/demo"), REGISTRY)      # runs/demo/report.html

The page (prompts_templates/run_report.html.j2) holds the stage table, the Δ histogram,
zero-delta by source and by skill, the student's failures by skill, and a browsable
sample of prompts, highest Δ first, filterable by skill and by kept / dropped: each with
its image, question, gold answer and the teacher's and the student's answer counts side
by side, so a person sees in a minute *why* a prompt is high-Δ. Images are embedded as
data URLs (thumbnails) and the page loads nothing from the network.

Everything comes from what the stages wrote: manifests, reports and shards. A stage that
has not run yet shows as such; the page can be written at any point of a run.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2

from pipeline.core import shards
from pipeline.core.answers import answers_match
from pipeline.core.images import decode_image
from pipeline.core.reports import write_text
from pipeline.runner.run import stage_status
from pipeline.runner.stage import StageRegistry
from prompts_templates import TEMPLATE_ROOT

TEMPLATE = "run_report.html.j2"
REPORT = "report.html"
THUMBNAIL = 340  # pixels, longest side
# What the page reads of each measured prompt; the image and the raw outputs only for the
# prompts it shows (a big run's samples are most of its bytes).
PROMPT_COLUMNS = ["id", "source", "skill", "question", "answers", "choices", "delta", "delta_low",
                  "delta_high", "zero_delta", "teacher_answers", "student_answers"]
SHOWN_COLUMNS = ["image", "teacher_samples", "student_samples"]


def write_report(run_dir: Path, registry: StageRegistry, sample: int = 120) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT
    write_text(path, render(collect(run_dir, registry, sample)))
    return path


def render(data: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_ROOT)),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template(TEMPLATE).render(**data, pct=_pct)


def collect(run_dir: Path, registry: StageRegistry, sample: int) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    delta_dir = run_dir / registry.by_name("delta").dirname
    summary = _json(delta_dir / "delta_summary.json")
    failures = _json(run_dir / registry.by_name("mine").dirname / "failures.json")
    kept_ids = _kept_ids(run_dir / registry.by_name("filter").dirname)
    rows = _measured_rows(delta_dir)
    hist = delta_dir / "delta_hist.png"
    return {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "written": time.strftime("%Y-%m-%d %H:%M"),
        "stages": [_stage_row(stage_status(run_dir, st)) for st in registry],
        "metric": (summary or {}).get("metric", "jsd"),
        "threshold": (summary or {}).get("threshold"),
        "overall": (summary or {}).get("overall"),
        "histogram": _data_url(hist.read_bytes(), "image/png") if summary and hist.is_file() else None,
        "zero_delta_tables": [(key[3:], summary[key]) for key in ("by_source", "by_skill")]
                             if summary else [],
        "failures": (failures or {}).get("by_skill"),
        "measured": len(rows),
        "skills": sorted({r["skill"] for r in rows}),
        "prompts": [_prompt_view(r, kept_ids) for r in _shown(delta_dir, _sample(rows, kept_ids, sample))],
    }


def _stage_row(status: dict[str, Any]) -> dict[str, Any]:
    keys = ("shards_done", "shards_total", "rows", "skipped", "seconds", "note")
    return {"stage": status["stage"], "status": status["status"],
            **{k: status.get(k) for k in keys}}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kept_ids(filter_dir: Path) -> set[str] | None:
    """Ids the filter kept; None when the filter has not completed."""
    idx = shards.complete_shards(filter_dir) if filter_dir.is_dir() else []
    if not idx:
        return None
    return {i for n in idx for i in shards.read_shard(filter_dir, n, ["id"]).column("id").to_pylist()}


def _measured_rows(delta_dir: Path) -> list[dict[str, Any]]:
    """Every measured prompt (no image), with where it lies: (shard, row)."""
    out = []
    for n in shards.complete_shards(delta_dir) if delta_dir.is_dir() else []:
        table = shards.read_shard(delta_dir, n, PROMPT_COLUMNS)
        for i, row in enumerate(table.to_pylist()):
            row["skill"] = row["skill"] or "unknown"
            out.append({**row, "_at": (n, i)})
    return out


def _is_kept(row: dict[str, Any], kept_ids: set[str] | None) -> bool:
    return (not row["zero_delta"]) if kept_ids is None else row["id"] in kept_ids


def _sample(rows: list[dict[str, Any]], kept_ids: set[str] | None, sample: int) -> list[dict[str, Any]]:
    """The highest-Δ prompts of every (skill, kept) group, as many from each as the budget
    allows, then in Δ order: every skill and both verdicts can be browsed."""
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (-r["delta"], r["id"])):
        groups.setdefault((r["skill"], _is_kept(r, kept_ids)), []).append(r)
    per_group = max(2, sample // max(1, len(groups)))
    chosen = [r for g in groups.values() for r in g[:per_group]]
    return sorted(chosen, key=lambda r: (-r["delta"], r["id"]))[:sample]


def _shown(delta_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chosen rows with their image (a thumbnail data URL) and raw outputs, one read
    per shard."""
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_shard.setdefault(r["_at"][0], []).append(r)
    for n, rs in by_shard.items():
        table = shards.read_shard(delta_dir, n, SHOWN_COLUMNS)
        for r in rs:
            extra = table.slice(r["_at"][1], 1).to_pylist()[0]
            r.update(extra, image=_thumbnail(extra["image"]))
    return rows


def _thumbnail(image: Any) -> str | None:
    if not image or not image.get("bytes"):
        return None
    try:
        img = decode_image(image)
    except Exception:  # noqa: BLE001 - a row's unreadable image shows as "no image"
        return None
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return _data_url(buf.getvalue(), "image/jpeg")


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _prompt_view(r: dict[str, Any], kept_ids: set[str] | None) -> dict[str, Any]:
    kept = _is_kept(r, kept_ids)
    if kept:
        verdict = "kept"
    elif r["zero_delta"]:
        verdict = "dropped: zero-delta"
    else:
        verdict = "dropped by the filter (duplicate, cap or unsure teacher)"
    samples = [(side, r[f"{side}_samples"][0]) for side in ("teacher", "student") if r[f"{side}_samples"]]
    return {**{k: r[k] for k in ("id", "source", "skill", "question", "answers", "choices",
                                 "delta", "delta_low", "delta_high")},
            "image": r["image"], "kept": kept, "verdict": verdict, "samples": samples,
            "teacher": _distribution(r["teacher_answers"], r["answers"], r["choices"]),
            "student": _distribution(r["student_answers"], r["answers"], r["choices"])}


def _distribution(answers: list[str | None], golds: list[str], choices: list[str]) -> list[dict]:
    """Counts per answer, most frequent first, each marked when it matches the gold."""
    counts = Counter(answers)
    total = max(1, len(answers))
    out = []
    for answer, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        gold = bool(answer is not None and golds
                    and answers_match(answer, golds, mode="relaxed", choices=choices or None))
        out.append({"answer": answer, "count": n, "share": n / total, "gold": gold})
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
