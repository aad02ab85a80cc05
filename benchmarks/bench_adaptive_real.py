"""Benchmark: adaptive Δ on a real run (vLLM on the CPU), not a simulation.

    python -m benchmarks.bench_adaptive_real [--prompts 1000] [--source-run RUN]

Stage 4 (``python -m pipeline.cli stage 4``, a fresh process each) on the same prompts,
the first ``--prompts`` of a pipeline run's 02-mine (``runs/teach``: 1,000 chart-world
prompts; else a pool made once, see benchmarks/delta_runs.py), with ``configs/teach.yaml``'s
models and sampling, three times:

* **full-N**: ``delta.adaptive=false``: the teacher draws n=8 per prompt;
* **adaptive**: ``delta.adaptive=true``, same seeds (the config's ``delta.k``,
  ``step``, ``unanimous_k``);
* **full-N again** with ``sampling.seed`` + 1 (``--no-noise-floor`` skips it): how often
  two full-N runs that differ only in their draws make the same decision. A real run
  cannot compare the policies on the *same* draws as the simulation does
  (benchmarks/results/adaptive.md); this is the floor the adaptive run's agreement is
  read against.

By default the student keeps mine's n=8 samples, as stage 4 does on a real run (the
simulation's ``student_reused`` scenario); ``--fresh-student`` drops them so both models
are sampled (its ``fresh`` scenario). Only the adaptive policy decides how many samples a
prompt gets: a teacher skip on student-solved prompts (``delta.skip_solved``, where the
config has it) is switched off in every run (benchmarks/delta_runs.py); ``--set
key=value`` pins anything else to the same value in all three.

Figures: samples drawn per model and the share saved, the share of prompts whose
zero-delta decision is identical to full-N's, the stop reasons, and wall time (command,
and the shard tasks alone). Results: ``benchmarks/results/adaptive_real.md`` and ``.json``.
Target from the simulation: ≥ 40% fewer samples with ≥ 98% identical decisions.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.delta_runs import (
    CONFIG,
    default_source,
    delta_table,
    ensure_source_run,
    machine,
    prepare_run,
    run_stage4_cli,
)
from pipeline.core.config import load_config
from pipeline.core.reports import write_json, write_text

TARGET_SAVED, TARGET_IDENTICAL = 0.40, 0.98


def compare(reference: pa.Table, other: pa.Table) -> dict[str, Any]:
    """How often ``other``'s zero-delta decision equals ``reference``'s, per prompt id.

    Only prompts scored in both runs count (an engine error drops a row from stage 4).
    """
    ref = dict(zip(reference.column("id").to_pylist(), reference.column("zero_delta").to_pylist()))
    oth = dict(zip(other.column("id").to_pylist(), other.column("zero_delta").to_pylist()))
    common = [i for i in ref if i in oth]
    same = sum(ref[i] == oth[i] for i in common)
    return {
        "prompts": len(common),
        "identical": same,
        "identical_fraction": round(same / len(common), 4) if common else None,
        "zero_in_reference_only": sum(ref[i] and not oth[i] for i in common),
        "zero_in_other_only": sum(oth[i] and not ref[i] for i in common),
        "zero_delta_fraction": {"reference": round(sum(ref[i] for i in common) / len(common), 4),
                                "other": round(sum(oth[i] for i in common) / len(common), 4)}
        if common else None,
    }


def drawn(samples: dict[str, int]) -> dict[str, int]:
    return {"teacher": samples.get("teacher_drawn", 0), "student": samples.get("student_drawn", 0)}


def summarize(runs: dict[str, dict[str, Any]], decisions: dict[str, Any]) -> dict[str, Any]:
    full, adaptive = drawn(runs["full"]["samples"]), drawn(runs["adaptive"]["samples"])
    saved = {m: round(1 - adaptive[m] / full[m], 4) if full[m] else None for m in full}
    total_full, total_adaptive = sum(full.values()), sum(adaptive.values())
    saved["total"] = round(1 - total_adaptive / total_full, 4) if total_full else None
    identical = decisions["adaptive_vs_full"]["identical_fraction"]
    return {
        "drawn": {"full": full, "adaptive": adaptive},
        "saved_fraction": saved,
        "identical_fraction": identical,
        "noise_floor_identical_fraction": (decisions.get("full_vs_full_reseeded") or {}).get("identical_fraction"),
        "stopped_early": runs["adaptive"]["samples"].get("stopped_early", {}),
        "wall_s": {k: runs[k]["wall_s"] for k in runs},
        "shard_seconds": {k: runs[k]["shard_seconds"] for k in runs},
        "wall_saved_fraction": round(1 - runs["adaptive"]["wall_s"] / runs["full"]["wall_s"], 4),
        "shard_seconds_saved_fraction": round(
            1 - runs["adaptive"]["shard_seconds"] / runs["full"]["shard_seconds"], 4),
        "target_met": (saved["total"] is not None and identical is not None
                       and saved["total"] >= TARGET_SAVED and identical >= TARGET_IDENTICAL),
    }


def render(r: dict[str, Any]) -> str:
    s = r["summary"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    d = r["decisions"]
    lines = [
        f"# Adaptive Δ on a real run (stage 4, {r['engine']} engine)",
        "",
        f"**Target (from the simulation): ≥ {TARGET_SAVED:.0%} fewer samples with ≥ {TARGET_IDENTICAL:.0%} "
        f"identical decisions: {'met' if s['target_met'] else 'not met'}** (saved "
        f"{pct(s['saved_fraction']['total'])}, identical {pct(s['identical_fraction'])}"
        + (f"; two full-N runs with different draws agree on {pct(s['noise_floor_identical_fraction'])}"
           if s["noise_floor_identical_fraction"] is not None else "")
        + "). Decisions of two real runs also differ by their draws: read the identical share "
        "against that noise floor.",
        "",
        f"Command: `{r['command']}` (also `make bench ARGS=adaptive-real`)  ",
        f"Machine: {r['machine']}  ",
        f"Measured {r['date']}, {r['seconds']:.0f} s in all. {r['prompts']} chart-world prompts (the first of "
        f"`{r['source_run']}`'s 02-mine), `{r['config']}` (n={r['n']}, delta.k={r['policy']['k']}, "
        f"step={r['policy']['step']}, unanimous_k={r['policy']['unanimous_k']}). Student: "
        f"{'sampled here (fresh)' if r['fresh_student'] else 'mine samples reused (as stage 4 does)'}. "
        "Method: see the docstring of `benchmarks/bench_adaptive_real.py`.",
        "",
        "| run | teacher drawn | student drawn | command wall s | shard tasks s |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("full", "full-N (delta.adaptive=false)"), ("adaptive", "adaptive (delta.adaptive=true)"),
                       ("full_reseeded", "full-N, sampling.seed+1 (noise floor)")):
        if key in r["runs"]:
            run = r["runs"][key]
            dr = drawn(run["samples"])
            lines.append(f"| {label} | {dr['teacher']} | {dr['student']} | {run['wall_s']:.1f} | "
                         f"{run['shard_seconds']:.1f} |")
    sv = s["saved_fraction"]
    lines += [
        "",
        f"- samples saved by the adaptive policy: teacher {pct(sv['teacher'])}, student {pct(sv['student'])}, "
        f"**total {pct(sv['total'])}** (stopped early: {s['stopped_early']})",
        f"- zero-delta decisions identical to full-N's: **{pct(s['identical_fraction'])}** of "
        f"{d['adaptive_vs_full']['prompts']} prompts (zero only under full-N: "
        f"{d['adaptive_vs_full']['zero_in_reference_only']}, zero only under adaptive: "
        f"{d['adaptive_vs_full']['zero_in_other_only']})",
    ]
    if s["noise_floor_identical_fraction"] is not None:
        f2 = d["full_vs_full_reseeded"]
        lines.append(f"- noise floor: two full-N runs with different draws agree on "
                     f"{pct(s['noise_floor_identical_fraction'])} of {f2['prompts']} prompts")
    lines += [
        f"- wall time saved: {pct(s['wall_saved_fraction'])} of the command, "
        f"{pct(s['shard_seconds_saved_fraction'])} of the shard tasks"
        + (" (each run's first shard task also loads the student)" if r["fresh_student"] else ""),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_adaptive_real",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=1000)
    p.add_argument("--shard-size", type=int, default=100, help="prompts per shard (the teach run's)")
    p.add_argument("--source-run", default=None,
                   help="a run with a complete 02-mine, made when missing (default: runs/teach, else runs/bench-pool)")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--work", default="runs/bench-adaptive", help="scratch run folders")
    p.add_argument("--fresh-student", action="store_true", help="drop mine's student samples: sample both")
    p.add_argument("--no-noise-floor", action="store_true", help="skip the second full-N run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (the same in all three)")
    p.add_argument("--out", default="benchmarks/results/adaptive_real")
    a = p.parse_args(argv)

    t0 = time.time()
    cfg = load_config(a.config, a.overrides + ["run.name=x"])
    source = (ensure_source_run(Path(a.source_run), max(a.prompts, 1000), a.config)
              if a.source_run else default_source(a.prompts, a.config))
    work = Path(a.work)
    prepare_run(source, work / "prompts", a.prompts, a.shard_size, drop_student=a.fresh_student)
    plan = {"full": ["delta.adaptive=false"], "adaptive": ["delta.adaptive=true"]}
    if not a.no_noise_floor:
        plan["full_reseeded"] = ["delta.adaptive=false", f"sampling.seed={cfg.sampling.seed + 1}"]
    runs, tables = {}, {}
    for key, overrides in plan.items():
        if (work / key).exists():
            shutil.rmtree(work / key)
        shutil.copytree(work / "prompts", work / key)
        runs[key] = run_stage4_cli(work, key, a.overrides + overrides, a.config, log=work / f"{key}.log")
        tables[key] = delta_table(work / key)
        print(f"{key}: {json.dumps(runs[key])}", flush=True)
    decisions = {"adaptive_vs_full": compare(tables["full"], tables["adaptive"])}
    if "full_reseeded" in tables:
        decisions["full_vs_full_reseeded"] = compare(tables["full"], tables["full_reseeded"])
    r = {"runs": runs, "decisions": decisions, "summary": summarize(runs, decisions),
         "command": "python -m benchmarks.bench_adaptive_real " + shlex.join(argv),
         "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.time() - t0,
         "prompts": a.prompts, "source_run": str(source), "config": a.config, "n": cfg.sampling.n,
         "policy": {"k": cfg.delta.k, "step": cfg.delta.step, "unanimous_k": cfg.delta.unanimous_k},
         "fresh_student": a.fresh_student, "overrides": a.overrides,
         "engine": "/".join(sorted({cfg.models.teacher.engine, cfg.models.student.engine}))}
    out = Path(a.out)
    write_json(out.with_suffix(".json"), r)
    write_text(out.with_suffix(".md"), render(r))
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
