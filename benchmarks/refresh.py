"""Refresh vs static Δ at equal total OPD steps and equal seeds (issue 16, part 2).

From one completed pipeline run (configs/teach.yaml on a chart-world pool, made here when
missing), for each training seed:

* refresh: ``deltaprompts refresh`` with R rounds of K OPD steps: after each round the
  checkpoint becomes the student and the pool's Δ is re-measured against it, so round r
  trains on the prompts where the *current* student still disagrees with the teacher;
* static: the same trainer, settings and seed for R*K steps on the round-0 high-Δ set (Δ
  measured once, against the untrained student: what a one-shot pipeline gives).

Both start from the same student and checkpoint every K steps; each checkpoint is scored
on the same held-out questions with the same evaluator (trainer.eval.accuracy_record,
greedy), so round r of refresh is compared with step r*K of static, seed by seed (paired
t-test over seeds, benchmarks/teach_stats.py). The refresh arm also reports the pool's
zero-delta fraction round by round and the samples drawn vs served by the sample store.

    python -m benchmarks.refresh --seeds 300 --train-seeds 0 1 2 --rounds 3 --steps 8

Resumable: refresh resumes by itself; a static run writes ``result.json`` when done and
a rerun reads it back. Results: ``--results`` (.md, .json, .png), the verdict first.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.teach_stats import paired_t
from pipeline.core.config import load_config
from pipeline.core.configschema import load_dataclass
from pipeline.core.reports import COLORS, figure, save_png, write_json, write_text
from trainer.config import OPDConfig
from trainer.data import load_prompts
from trainer.eval import EvalConfig, accuracy_record
from trainer.opd import OPDTrainer

TRAIN = {"lr": 3.0e-4, "loss": "gjsd", "beta": 1.0, "prompts_per_step": 8, "rollouts_per_prompt": 4,
         "max_new_tokens": 48}  # as benchmarks/teach.py calibrated them on the toy pair


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.refresh", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/teach.yaml")
    p.add_argument("--run-name", default="refresh-base", help="the base run (made when missing)")
    p.add_argument("--seed-data", default="data/chartworld-refresh", help="its chart-world seeds")
    p.add_argument("--seeds", type=int, default=300, help="chart-world seed prompts of the base run")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="OPD steps per round (static: rounds*steps)")
    p.add_argument("--train-config", default="configs/opd.yaml")
    p.add_argument("--heldout", default="data/chartworld-heldout")
    p.add_argument("--heldout-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/refresh-bench", help="static arms' folders")
    p.add_argument("--results", default="benchmarks/results/refresh")
    return p.parse_args(argv)


def sh(argv: list[str]) -> None:
    print("$", shlex.join(argv), flush=True)
    subprocess.run(argv, check=True)


def base_overrides(a) -> list[str]:
    return [f"run.name={a.run_name}", f"ingest.sources.0.path={a.seed_data}",
            f"ingest.sources.0.limit={a.seeds}"]


def refresh_name(a, seed: int) -> str:
    return f"{a.run_name}-refresh-r{a.rounds}k{a.steps}-s{seed}"


def refresh_argv(a, seed: int) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "refresh", "--config", a.config, *base_overrides(a),
            "--name", refresh_name(a, seed), "--rounds", str(a.rounds), "--steps", str(a.steps),
            "--train-config", a.train_config, "--heldout", a.heldout, "--heldout-n", str(a.heldout_n),
            f"refresh.seed={seed}", "refresh.train=" + json.dumps({**TRAIN, "num_threads": a.threads})]


def static_arm(a, seed: int, round0: Path, evaluate) -> dict[str, Any]:
    """R*K OPD steps on the round-0 kept set, a checkpoint every K steps, each scored."""
    out = Path(a.out) / f"static-s{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = load_config(a.config, base_overrides(a))
    opd = load_dataclass(OPDConfig, a.train_config,
                         [f"{k}={json.dumps(v)}" for k, v in {**TRAIN, "num_threads": a.threads}.items()],
                         section="opd")
    total = a.rounds * a.steps
    # As refresh builds each round's trainer config (pipeline/refresh.py: train_config).
    opd.student, opd.teacher = cfg.models.student.model, cfg.models.teacher.model
    opd.data, opd.output_dir = str(round0 / "05-filter" / "shard-*.parquet"), str(out)
    opd.steps, opd.seed, opd.data_seed = total, seed, seed
    opd.instruction, opd.save_every, opd.keep_checkpoints = cfg.sampling.instruction, a.steps, a.rounds
    opd.progress = False
    t0 = time.perf_counter()
    OPDTrainer(opd).train()
    train_s = time.perf_counter() - t0
    curve = {}
    for r in range(1, a.rounds + 1):
        curve[str(r)] = evaluate(str(out / "checkpoints" / f"step_{r * a.steps}"))
    result = {"seed": seed, "steps": total, "train_s": round(train_s, 1),
              "wall_s": round(time.perf_counter() - t0, 1), "heldout": curve}
    write_json(done, result)
    return result


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """paired_t, or only the mean difference when there is one seed (a smoke run)."""
    if len(a) > 1:
        return paired_t(a, b)
    return {"diff": float(np.mean(a) - np.mean(b)), "t": float("nan"), "df": 0, "p": float("nan")}


def stats(refresh: dict[int, dict], static: dict[int, dict], rounds: int) -> dict[str, Any]:
    """Paired over seeds: refresh round r vs static step r*K, overall and per skill."""
    seeds = sorted(refresh)
    out: dict[str, Any] = {}
    for r in range(1, rounds + 1):
        ref = [refresh[s]["rounds"][r]["heldout"] for s in seeds]
        sta = [static[s]["heldout"][str(r)] for s in seeds]
        row = {"refresh": float(np.mean([x["overall"] for x in ref])),
               "static": float(np.mean([x["overall"] for x in sta])),
               "test": paired([x["overall"] for x in ref], [x["overall"] for x in sta]),
               "by_skill": {}}
        for k in sorted(ref[0]["by_skill"]):
            a_, b_ = [x["by_skill"][k] for x in ref], [x["by_skill"][k] for x in sta]
            row["by_skill"][k] = {"refresh": float(np.mean(a_)), "static": float(np.mean(b_)),
                                  "test": paired(a_, b_)}
        out[str(r)] = row
    return out


def write_results(a, meta, round0, refresh, static, comparison) -> None:
    final = comparison[str(a.rounds)]
    t = final["test"]
    won = t["diff"] > 0 and t["p"] < 0.05
    verdict = (f"Refresh {'beats' if won else 'does not beat'} static Δ at {a.rounds * a.steps} OPD "
               f"steps: held-out {final['refresh']:.3f} vs {final['static']:.3f} "
               f"(mean over {len(refresh)} seeds, paired diff {t['diff']:+.4f}, t = {t['t']:.2f}, "
               f"p = {t['p']:.3f}, two-sided paired t over seeds).")
    seeds = sorted(refresh)
    zd = {r: [refresh[s]["rounds"][r]["zero_delta_fraction"] for s in seeds] for r in range(a.rounds + 1)}
    lines = [f"# Refresh vs static Δ ({a.rounds} rounds x {a.steps} OPD steps)", "", f"**{verdict}**", "",
             "Commands (from the repo root):", "", "```",
             meta["base_command"], *[shlex.join(refresh_argv(a, s)).replace(sys.executable, "python")
                                     for s in seeds],
             meta["command"], "```", "",
             f"Machine: {meta['machine']}; {meta['seconds']:.0f} s for this invocation (parts "
             "done by an earlier, resumed invocation not counted; per-arm seconds below). Pool: the base run's stage-4 "
             f"input ({round0['pool']} prompts: {a.seeds} chart-world seeds + the programmatic rewriter's "
             f"prompts), configs/teach.yaml otherwise. Held-out: the first {a.heldout_n} questions of "
             f"{a.heldout} (`python -m seeds.chartworld --out {a.heldout} --n {a.heldout_n} --seed 2`), "
             "greedy, relaxed match. OPD: " + ", ".join(f"{k}={v}" for k, v in TRAIN.items()) +
             f"; both arms continue one optimizer (refresh carries it across rounds), seeds {seeds}.",
             "", "## Held-out accuracy, refresh round r vs static after the same steps", "",
             "| round | steps | refresh | static | diff (paired) | t | p |", "|---|---|---|---|---|---|---|",
             f"| 0 | 0 | {round0['heldout']['overall']:.3f} | {round0['heldout']['overall']:.3f} | | | |"]
    for r in range(1, a.rounds + 1):
        c = comparison[str(r)]
        lines.append(f"| {r} | {r * a.steps} | {c['refresh']:.3f} | {c['static']:.3f} | "
                     f"{c['test']['diff']:+.4f} | {c['test']['t']:.2f} | {c['test']['p']:.3f} |")
    lines += ["", f"## Per skill after {a.rounds * a.steps} steps", "",
              "| skill | untrained | refresh | static | diff | p |", "|---|---|---|---|---|---|"]
    for k, c in final["by_skill"].items():
        lines.append(f"| {k} | {round0['heldout']['by_skill'].get(k, float('nan')):.3f} | {c['refresh']:.3f} | "
                     f"{c['static']:.3f} | {c['test']['diff']:+.4f} | {c['test']['p']:.3f} |")
    lines += ["", "## The pool's zero-delta fraction under each round's student (refresh)", "",
              "| round | zero-delta (mean over seeds) | per seed | kept (mean) |", "|---|---|---|---|"]
    for r in range(a.rounds + 1):
        kept = np.mean([refresh[s]["rounds"][r]["kept"] for s in seeds])
        lines.append(f"| {r} | {np.mean(zd[r]):.3f} | {', '.join(f'{x:.3f}' for x in zd[r])} | {kept:.0f} |")
    skills = sorted(round0["zero_delta_by_skill"])
    lines += ["", "Per skill (mean over seeds):", "",
              "| skill | " + " | ".join(f"round {r}" for r in range(a.rounds + 1)) + " |",
              "|---|" + "---|" * (a.rounds + 1)]
    for k in skills:
        lines.append(f"| {k} | " + " | ".join(
            f"{np.mean([refresh[s]['rounds'][r]['zero_delta_by_skill'].get(k, float('nan')) for s in seeds]):.3f}"
            for r in range(a.rounds + 1)) + " |")
    lines += ["", "## Samples drawn vs served by the sample store, per round (seed "
              f"{seeds[0]}; other seeds alike)", "",
              "| round | teacher drawn | teacher served | student drawn | student served | "
              "train s | measure s |", "|---|---|---|---|---|---|---|"]
    for rec in refresh[seeds[0]]["rounds"][: a.rounds + 1]:
        s = rec["samples"]
        lines.append(f"| {rec['round']} | {s.get('teacher_drawn', 0)} | {s.get('teacher_served', 0)} | "
                     f"{s.get('student_drawn', 0)} | {s.get('student_served', 0)} | {rec['train_s']} | "
                     f"{rec['measure_s']} |")
    lines += ["", "Wall seconds per seed: refresh (training + measuring + held-out, all rounds) "
              + ", ".join(f"s{s}: {refresh[s]['wall_s']:.0f}" for s in seeds) + "; static (training + "
              "held-out) " + ", ".join(f"s{s}: {static[s]['wall_s']:.0f}" for s in seeds) + "."]
    out = Path(a.results)
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json(out.with_suffix(".json"), {"verdict": verdict, "meta": meta, "round0": round0,
                                          "refresh": {str(s): v for s, v in refresh.items()},
                                          "static": {str(s): v for s, v in static.items()},
                                          "comparison": comparison})
    save_png(plot(a, round0, refresh, static, zd), out.with_suffix(".png"))


def plot(a, round0, refresh, static, zd):
    fig, axes = figure(1, 2, width=11, height=4)
    seeds = sorted(refresh)
    steps = [r * a.steps for r in range(a.rounds + 1)]
    for arm, color, curve in (
            ("refresh", COLORS["good"], lambda s, r: refresh[s]["rounds"][r]["heldout"]["overall"]),
            ("static", COLORS["muted"], lambda s, r: static[s]["heldout"][str(r)]["overall"])):
        ys = np.array([[round0["heldout"]["overall"]] + [curve(s, r) for r in range(1, a.rounds + 1)]
                       for s in seeds])
        for y in ys:
            axes[0].plot(steps, y, color=color, alpha=0.3, linewidth=1)
        axes[0].plot(steps, ys.mean(axis=0), color=color, marker="o", linewidth=2.5, label=arm)
    axes[0].set_xlabel("OPD steps")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].set_title(f"held-out accuracy ({len(seeds)} seeds)")
    axes[0].legend()
    rounds = list(range(a.rounds + 1))
    for k in sorted(round0["zero_delta_by_skill"]):
        axes[1].plot(rounds, [np.mean([refresh[s]["rounds"][r]["zero_delta_by_skill"].get(k, np.nan)
                                       for s in seeds]) for r in rounds], marker=".", alpha=0.6, label=k)
    axes[1].plot(rounds, [np.mean(zd[r]) for r in rounds], color="black", marker="o", linewidth=2.5,
                 label="pool")
    axes[1].set_xlabel("round (refresh)")
    axes[1].set_xticks(rounds)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("pool zero-delta fraction under the round's student")
    axes[1].legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.time()
    cfg = load_config(a.config, base_overrides(a))
    base_cmd = ["python", "-m", "pipeline.demo", "--config", a.config, "--seeds", str(a.seeds),
                *base_overrides(a)]
    if not (cfg.run_dir / "05-filter" / "manifest.json").is_file():
        sh([sys.executable, *base_cmd[1:]])
    if not Path(a.heldout).exists():
        sh([sys.executable, "-m", "seeds.chartworld", "--out", a.heldout, "--n", str(a.heldout_n),
            "--seed", "2"])
    rows = list(load_prompts(a.heldout, split="test"))
    ecfg = EvalConfig(max_tokens=cfg.sampling.max_tokens, instruction=cfg.sampling.instruction,
                      match_mode=cfg.mine.grading, limit=a.heldout_n, batch_size=32)

    def evaluate(path: str) -> dict[str, Any]:  # as refresh scores each round (heldout_accuracy)
        return {"data": a.heldout, **accuracy_record(path, rows, ecfg)}

    refresh, static = {}, {}
    for seed in a.train_seeds:
        t = time.time()
        sh(refresh_argv(a, seed))
        top = Path(cfg.run.root) / refresh_name(a, seed)
        refresh[seed] = json.loads((top / "refresh.json").read_text())
        refresh[seed]["wall_s"] = sum(r["train_s"] + r["measure_s"] + r["heldout"]["seconds"]
                                      for r in refresh[seed]["rounds"][: a.rounds + 1])
        static[seed] = static_arm(a, seed, top / "round-00", evaluate)
        print(f"seed {seed}: refresh {refresh[seed]['rounds'][a.rounds]['heldout']['overall']:.3f}, "
              f"static {static[seed]['heldout'][str(a.rounds)]['overall']:.3f} ({time.time() - t:.0f} s)",
              flush=True)
        # Results after every seed: a run stopped early still leaves the seeds it finished.
        meta = {"command": "python -m benchmarks.refresh " + shlex.join(sys.argv[1:] if argv is None else argv),
                "base_command": shlex.join(base_cmd), "config": vars(a), "seeds_done": sorted(refresh),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, 2 CPU cores",
                "seconds": round(time.time() - t0, 1)}
        write_results(a, meta, refresh[a.train_seeds[0]]["rounds"][0], refresh, static,
                      stats(refresh, static, a.rounds))
    print(f"wrote {a.results}.md, .json, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
