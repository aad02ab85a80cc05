"""Teacher cost of stage 4: full N, the adaptive policy, and adaptive + the student_solved skip.

On one chart-world seed pool (built with the pipeline itself: seeds, then stages 1-2
once with configs/demo.yaml), stage 4 and stage 5 run three times on copies of the same
01-ingest / 02-mine, one variant each:

  (a) full      delta.adaptive=false, delta.skip_solved=null   N teacher samples per prompt
  (b) adaptive  delta.skip_solved=null                          today's adaptive policy
  (c) skip      delta.skip_solved=1.0                           adaptive + student_solved

For each: teacher samples drawn (delta_summary.json), stage 4's wall time (its manifest:
engine start included), and the kept set (05-filter's ids, with filter.max_per_skill off
so that a balance cap cannot move prompts in or out on its own). The kept sets are
compared pairwise: how many prompts differ, and of those how many had a wrong teacher
majority (teacher_correct false where the prompt was kept).

(b) and (c) do not draw the same teacher samples for the prompts both ask about: an
engine derives each request's seed from the call's seed and the request's position in
the call, and (c)'s calls hold fewer requests. So the skip's own effect is also measured
on (b)'s very samples: the kept prompts of (b) that (c) would skip (its student_solved
set, which depends only on mine's answers), split by the teacher's majority in (b).

    python -m benchmarks.teacher_cost            # --seeds 1000 --seed 21 (about 10-20 min on 2 cores)
    python -m benchmarks.teacher_cost --resume   # after an interruption: finished variants are kept

Writes benchmarks/results/teacher_cost.{md,json}. Figures are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.core.reports import write_json, write_text
from pipeline.runner.run import Manifest
from tools.compare_runs import stage_table

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"delta.adaptive": "false", "delta.skip_solved": "null"},
    "adaptive": {"delta.skip_solved": "null"},
    "skip": {"delta.skip_solved": "1.0"},
}
LABELS = {"full": "(a) full N", "adaptive": "(b) adaptive", "skip": "(c) adaptive + skip"}
# Stage 5 without balance caps: the kept set then moves only with the Δ decisions.
FILTER = {"filter.max_per_skill": "null", "filter.max_per_source": "null"}
DELTA_READ = ["id", "skill", "stop_reason", "teacher_correct", "teacher_agreement", "zero_delta",
              "delta", "teacher_answers"]


def sh(argv: list[str], log: Path) -> float:
    """Run a command (output to ``log``), raise on failure; its wall time in seconds."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {shlex.join(argv)}; see {log}")
    return time.perf_counter() - t0


def cli_run(config: str, stages: str, run: str, overrides: dict[str, str], log: Path) -> float:
    argv = [sys.executable, "-m", "pipeline.cli", "run", "--config", config, "--stages", stages,
            f"run.name={run}", *(f"{k}={v}" for k, v in overrides.items()),
            "run.sample_store=false"]  # count the draws each policy makes, none served
    return sh(argv, log)


def variant_figures(run_dir: Path) -> dict[str, Any]:
    """What one variant's run folder holds: samples, timing, per-prompt rows, kept ids."""
    man = Manifest.read(run_dir / "04-delta")
    samples = man.report["samples"]
    rows = {r["id"]: r for r in stage_table(run_dir / "04-delta").select(DELTA_READ).to_pylist()}
    kept = set(stage_table(run_dir / "05-filter").column("id").to_pylist())
    return {
        "teacher_drawn": samples["teacher_drawn"],
        "full_budget_teacher": samples["full_budget"] // 2,
        "student_solved": samples.get("student_solved", {}).get("prompts", 0),
        "stopped_early": samples["stopped_early"],
        "stage4_seconds": man.seconds,
        # the shards' own time: sampling and Δ, the engine's start excluded
        "stage4_shard_seconds": round(sum(m["seconds"] for m in man.shards.values()), 1),
        "prompts": len(rows),
        "zero_delta": sum(bool(r["zero_delta"]) for r in rows.values()),
        "kept": len(kept),
        "_rows": rows,
        "_kept": kept,
    }


def _wrong(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("teacher_correct") is False


def compare_kept(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    """How the kept sets of two variants differ; a prompt's teacher majority is judged in
    the variant that kept it."""
    only_x, only_y = x["_kept"] - y["_kept"], y["_kept"] - x["_kept"]
    return {
        "differ": len(only_x) + len(only_y),
        "only_first": len(only_x),
        "only_first_teacher_wrong": sum(_wrong(x["_rows"].get(i)) for i in only_x),
        "only_second": len(only_y),
        "only_second_teacher_wrong": sum(_wrong(y["_rows"].get(i)) for i in only_y),
    }


def skip_on_same_samples(adaptive: dict[str, Any], solved: set[str]) -> dict[str, Any]:
    """The skip applied to (b)'s own samples: (b)'s kept prompts that it would remove."""
    removed = [adaptive["_rows"][i] for i in adaptive["_kept"] & solved]
    wrong = [r for r in removed if r["teacher_correct"] is False]
    right = [r for r in removed if r["teacher_correct"] is True]
    return {
        "solved_prompts": len(solved),
        "adaptive_teacher_samples_on_solved": sum(len(adaptive["_rows"][i]["teacher_answers"])
                                                   for i in solved if i in adaptive["_rows"]),
        "kept_removed": len(removed),
        "kept_removed_teacher_wrong": len(wrong),
        "kept_removed_teacher_right": len(right),
        "teacher_right_agreement": sorted(round(r["teacher_agreement"], 3) for r in right),
        "kept_after": len(adaptive["_kept"] - solved),
    }


def wrong_teacher_kept(variant: dict[str, Any], bounds=(0.5, 0.8, 1.0)) -> dict[str, int]:
    """Kept prompts whose teacher majority is wrong, in all and with agreement >= each bound
    (what ``filter.wrong_teacher_agreement`` at that bound would drop)."""
    wrong = [variant["_rows"][i] for i in variant["_kept"] if _wrong(variant["_rows"].get(i))]
    return {"all": len(wrong), **{f">={b:g}": sum(r["teacher_agreement"] >= b for r in wrong)
                                  for b in bounds}}


def report_md(res: dict[str, Any]) -> str:
    v, cmp_, same = res["variants"], res["kept_diff"], res["skip_on_adaptive_samples"]
    b, c = v["adaptive"]["teacher_drawn"], v["skip"]["teacher_drawn"]
    ratio = c / b if b else float("nan")
    bc = cmp_["adaptive_vs_skip"]
    only_wrong = same["kept_removed_teacher_right"] == 0
    removed, right = same["kept_removed"], same["kept_removed_teacher_right"]
    verdict = (f"**Samples: target {'met' if ratio <= 1 / 3 else 'missed'}. Kept set: target "
               f"{'met' if only_wrong else f'missed by {right} prompt' + ('s' if right != 1 else '')}.**")
    lines = [
        "# Teacher cost of stage 4: full N, adaptive, adaptive + student_solved skip",
        "",
        (f"{verdict} On {res['prompts']} chart-world seeds (same seeds, the toy teacher/student on vLLM on "
         f"the CPU) the teacher drew {v['full']['teacher_drawn']} samples at full N, {b} with the adaptive "
         f"policy and **{c} with adaptive + the skip: {ratio:.1%} of (b)** (target ≤ 33.3%). "
         f"{v['skip']['student_solved']} of {res['prompts']} prompts were student_solved and never sent to "
         f"the teacher; (b) had spent {same['adaptive_teacher_samples_on_solved']} teacher samples on them."),
        (f"Kept set, on (b)'s own samples: the skip removes {removed} of (b)'s {v['adaptive']['kept']} kept "
         f"prompts, {same['kept_removed_teacher_wrong']} with a wrong teacher majority and {right} with a right "
         "one"
         + ("." if only_wrong else
            f": a right teacher less sure than the student, which is unanimously correct (teacher agreement "
            f"{same['teacher_right_agreement']}), so Δ ≥ threshold with no wrong answer to correct; distilling "
            "it would only make the student less sure of an answer it always gets right.")
         + f" The actual runs (b) and (c) differ in {bc['differ']} kept prompts ({bc['only_first']} only in (b), "
         f"{bc['only_first_teacher_wrong']} of them with a wrong teacher majority; {bc['only_second']} only in (c), "
         f"{bc['only_second_teacher_wrong']} wrong): the few beyond the skip's own removals are sampling noise, "
         "because (c)'s engine calls hold fewer requests, which gives the other prompts other per-request seeds. "
         f"For scale, (a) and (b) differ in {cmp_['full_vs_adaptive']['differ']}."),
        (f"Stage-4 wall time, measured on a shared 2-core machine (load averages in the table), teacher engine "
         f"start included: {v['full']['stage4_seconds']:.0f} s, {v['adaptive']['stage4_seconds']:.0f} s, "
         f"{v['skip']['stage4_seconds']:.0f} s; the shards alone (sampling and Δ): "
         f"{v['full']['stage4_shard_seconds']:.0f} s, {v['adaptive']['stage4_shard_seconds']:.0f} s, "
         f"{v['skip']['stage4_shard_seconds']:.0f} s. These times move with the machine's load; the sample "
         "counts and kept sets (same seeds: deterministic) are the primary figures."),
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']}; pool built with `{res['pool_command']}`, then stages 1-2 once "
        f"(configs/demo.yaml, {res['pool_overrides']}); each variant copies 01-ingest and 02-mine and runs "
        f"stages 4-5 with {res['common_overrides']} plus its own delta settings.",
        "",
        "| variant | delta settings | teacher samples | of full N | student_solved | unanimous | decided "
        "| zero-delta | kept | stage 4 s | shards s | load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    full = v["full"]["teacher_drawn"]
    for name, f in v.items():
        settings = " ".join(f"{k}={x}" for k, x in VARIANTS[name].items())
        lines.append(
            f"| {LABELS[name]} | `{settings}` | {f['teacher_drawn']} | {f['teacher_drawn'] / full:.1%} "
            f"| {f['student_solved']} | {f['stopped_early'].get('unanimous', 0)} "
            f"| {f['stopped_early'].get('decided', 0)} | {f['zero_delta']} | {f['kept']} "
            f"| {f['stage4_seconds']:.0f} | {f['stage4_shard_seconds']:.0f} | {f['load_before']} → {f['load_after']} |")
    lines += [
        "",
        "## Kept sets",
        "",
        "A prompt's teacher majority is judged (teacher_correct, mine.grading against gold) in the variant "
        "that kept it.",
        "",
        "| pair | prompts differ | only in first | of which teacher wrong | only in second | of which teacher wrong |",
        "|---|---|---|---|---|---|",
    ]
    for pair, d in cmp_.items():
        x, y = pair.split("_vs_")
        lines.append(f"| {LABELS[x]} vs {LABELS[y]} | {d['differ']} | {d['only_first']} "
                     f"| {d['only_first_teacher_wrong']} | {d['only_second']} | {d['only_second_teacher_wrong']} |")
    lines += [
        "",
        "## The skip on (b)'s own samples",
        "",
        f"- student_solved prompts (decided on mine's answers alone): {same['solved_prompts']}",
        f"- teacher samples (b) spent on them: {same['adaptive_teacher_samples_on_solved']}",
        f"- (b)'s kept prompts among them: {same['kept_removed']} "
        f"({same['kept_removed_teacher_wrong']} teacher majority wrong, "
        f"{same['kept_removed_teacher_right']} right; agreement of the right ones: {same['teacher_right_agreement']})",
        f"- (b)'s kept set with them removed: {same['kept_after']} prompts",
        "",
        "## Kept prompts whose teacher majority is wrong",
        "",
        "What `filter.wrong_teacher_agreement` (off by default) would drop at each bound:",
        "",
        "| variant | wrong majority | agreement ≥ 0.5 | ≥ 0.8 | = 1.0 |",
        "|---|---|---|---|---|",
        *(f"| {LABELS[n]} | {w['all']} | {w['>=0.5']} | {w['>=0.8']} | {w['>=1']} |"
          for n, w in res["kept_teacher_wrong"].items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1000, help="chart-world seeds in the pool")
    p.add_argument("--seed", type=int, default=21, help="the chart world's generator seed")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--name", default="cost", help="base run name; variants are <name>-<variant>")
    p.add_argument("--root", default="runs")
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results/teacher_cost")
    p.add_argument("--resume", action="store_true",
                   help="keep variants a previous (interrupted) invocation finished, with their timings")
    args = p.parse_args(argv)

    data = f"data/cw-cost{args.seeds}-s{args.seed}"
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{args.name}-teacher_cost.log"  # every command's output (vLLM is verbose)
    log.write_text("")
    common = {"execution.backend": "local", "run.root": args.root,
              "run.shard_size": str(args.shard_size), "ingest.sources.0.path": data,
              "ingest.sources.0.limit": str(args.seeds)}
    pool_cmd = [sys.executable, "-m", "seeds.chartworld", "--out", data, "--n", str(args.seeds),
                "--seed", str(args.seed)]
    if not Path(data).exists():
        sh(pool_cmd, log)
    # Stages 1-2 once (a complete run resumes at no cost).
    cli_run(args.config, "1-2", args.name, common, log)
    variants: dict[str, dict[str, Any]] = {}
    for name, delta in VARIANTS.items():
        run = f"{args.name}-{name}"
        timing = root / run / "teacher_cost_timing.json"  # written once the variant is done
        if not (args.resume and timing.is_file()):
            shutil.rmtree(root / run, ignore_errors=True)
            for stage in ("01-ingest", "02-mine"):
                shutil.copytree(root / args.name / stage, root / run / stage)
            before = os.getloadavg()
            wall = cli_run(args.config, "4-5", run, {**common, **FILTER, **delta}, log)
            after = os.getloadavg()
            write_json(timing, {"run_4_5_wall_seconds": round(wall, 1), "load_before": f"{before[0]:.1f}",
                                "load_after": f"{after[0]:.1f}"})
        variants[name] = {**variant_figures(root / run), **json.loads(timing.read_text())}
        print(f"{name}: {variants[name]['teacher_drawn']} teacher samples, "
              f"{variants[name]['stage4_seconds']:.0f} s, kept {variants[name]['kept']}", flush=True)

    solved = {i for i, r in variants["skip"]["_rows"].items() if r["stop_reason"] == "student_solved"}
    v = variants
    res = {
        "command": shlex.join(["python", "-m", "benchmarks.teacher_cost", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, shared",
        "pool_command": shlex.join(["python", *pool_cmd[1:]]),
        "pool_overrides": " ".join(f"{k}={v}" for k, v in common.items()),
        "common_overrides": " ".join(f"{k}={v}" for k, v in FILTER.items()),
        "prompts": variants["full"]["prompts"],
        "variants": {n: {k: x for k, x in f.items() if not k.startswith("_")} for n, f in variants.items()},
        "kept_diff": {"full_vs_adaptive": compare_kept(v["full"], v["adaptive"]),
                      "adaptive_vs_skip": compare_kept(v["adaptive"], v["skip"]),
                      "full_vs_skip": compare_kept(v["full"], v["skip"])},
        "skip_on_adaptive_samples": skip_on_same_samples(v["adaptive"], solved),
        "kept_teacher_wrong": {n: wrong_teacher_kept(f) for n, f in v.items()},
    }
    write_json(Path(args.out + ".json"), res)
    write_text(Path(args.out + ".md"), report_md(res))
    print(report_md(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
