"""The teach experiment's results: tables, statistics, targets, curves (md, json, png).

Reads the per-run results of benchmarks/teach.py (each a learning curve: held-out accuracy
overall and per skill at every budget, plus its costs) and computes everything reported
from them, so the file's numbers are the runs' numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.teach_arms import ARMS
from benchmarks.teach_stats import auc_log, bootstrap_steps_to_reach, paired_t, steps_to_reach
from pipeline.core.reports import COLORS, figure, save_png, write_json, write_text

GAP = 0.3  # a skill where the teacher beats the untrained student by this much is a gap skill
HAD = 0.5  # a skill the untrained student gets this often right (and is no gap) it "had"
ARM_COLORS = {"random": COLORS["muted"], "filtered": "#DD8452", "synthesised": "#8172B3",
              "deltaprompts": COLORS["main"], "zero_delta": COLORS["bad"], "replay": COLORS["good"]}


def skill_groups(baseline: dict[str, Any]) -> dict[str, list[str]]:
    s, t = baseline["student"]["by_skill"], baseline["teacher"]["by_skill"]
    gap = sorted(k for k in s if t.get(k, 0) - s[k] >= GAP)
    had = sorted(k for k in s if k not in gap and s[k] >= HAD)
    return {"gap": gap, "had": had}


def _curves(runs: list[dict], key=lambda point: point["overall"]) -> tuple[list[int], dict[int, list[float]]]:
    """Budgets and, per seed, the curve of ``key`` (runs of one setting and arm)."""
    steps = [p["step"] for p in runs[0]["curve"]]
    return steps, {r["seed"]: [key(p) for p in r["curve"]] for r in runs}


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")


def _group_mean(point: dict, skills: list[str]) -> float:
    vals = [point["by_skill"][k] for k in skills if k in point["by_skill"]]
    return float(np.mean(vals)) if vals else math.nan


def analyse(baseline: dict, runs: list[dict]) -> dict[str, Any]:
    """Every number the report shows, per setting."""
    by: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by[r["setting"]][r["arm"]].append(r)
    groups = skill_groups(baseline)
    out: dict[str, Any] = {"skill_groups": groups, "settings": {}}
    for setting, arms in by.items():
        s: dict[str, Any] = {"arms": {}, "paired_vs_random": {}}
        ref_steps, ref = _curves(arms["random"]) if "random" in arms else (None, None)
        target = statistics.mean(c[-1] for c in ref.values()) if ref else None
        for arm, rs in arms.items():
            steps, curves = _curves(rs)
            seeds = sorted(curves)
            matrix = [curves[k] for k in seeds]
            per_skill = {k: [statistics.mean(p["by_skill"].get(k, math.nan) for p in col)
                             for col in zip(*(r["curve"] for r in rs))]
                         for k in rs[0]["curve"][0]["by_skill"]}
            entry = {
                "seeds": seeds, "steps": steps,
                "overall_mean": [statistics.mean(col) for col in zip(*matrix)],
                "overall_sd": [statistics.stdev(col) if len(col) > 1 else 0.0 for col in zip(*matrix)],
                "per_skill_mean": per_skill,
                "gap_mean": [statistics.mean(v) for v in zip(*_curves(rs, lambda p: _group_mean(p, groups["gap"]))[1].values())],
                "had_mean": [statistics.mean(v) for v in zip(*_curves(rs, lambda p: _group_mean(p, groups["had"]))[1].values())],
                "auc": [auc_log(steps, c) for c in matrix] if len(steps) > 1 else [],
                "rollout_tokens": statistics.mean(r["rollout_tokens"] for r in rs),
                "train_s": statistics.mean(r["train_s"] for r in rs),
            }
            if target is not None:
                entry["steps_to_random_final"] = bootstrap_steps_to_reach(steps, matrix, target)
                entry["steps_to_random_final_per_seed"] = [steps_to_reach(steps, c, target) for c in matrix]
            s["arms"][arm] = entry
            if ref and arm != "random":
                common = sorted(set(curves) & set(ref))
                if len(common) >= 2:
                    s["paired_vs_random"][arm] = {
                        str(step): paired_t([curves[k][i] for k in common], [ref[k][i] for k in common])
                        for i, step in enumerate(steps)
                    }
                    if len(steps) > 1:
                        s["paired_vs_random"][arm]["auc"] = paired_t(
                            [auc_log(steps, curves[k]) for k in common],
                            [auc_log(ref_steps, ref[k]) for k in common])
        s["random_final"] = target
        out["settings"][setting] = s
    out["targets"] = targets(baseline, out)
    return out


def targets(baseline: dict, a: dict) -> list[dict[str, Any]]:
    """The issue's targets, each with its verdict and the numbers behind it."""
    opd = a["settings"].get("opd")
    if not opd or "deltaprompts" not in opd["arms"] or "random" not in opd["arms"]:
        return []
    dp, steps = opd["arms"]["deltaprompts"], opd["arms"]["deltaprompts"]["steps"]
    longest = steps[-1]
    reach = dp["steps_to_random_final"]
    t1 = {"target": f"deltaprompts reaches random's final accuracy ({opd['random_final']:.3f}) "
                    f"in at most half the steps ({longest // 2})",
          "measured": f"{reach['steps']:.0f} steps (90% interval {reach['low']:.0f}-{reach['high']:.0f})",
          "met": reach["steps"] <= longest / 2}
    pv = opd["paired_vs_random"].get("deltaprompts", {})
    early = [s for s in steps if s <= 80]
    rows = [(s, pv.get(str(s))) for s in early]
    ok = all(r and r["diff"] >= 0.03 and r["p"] < 0.01 for _, r in rows)
    t2 = {"target": "deltaprompts beats random at every budget <= 80 steps by >= 3 points, paired p < 0.01",
          "measured": "; ".join(f"{s}: {r['diff'] * 100:+.1f} pts, p={r['p']:.3g}" for s, r in rows if r),
          "met": bool(rows) and ok}
    out = [t1, t2]
    if "replay" in opd["arms"]:
        base = baseline["student"]["by_skill"]
        rp = opd["arms"]["replay"]["per_skill_mean"]
        drops = {k: rp[k][-1] - base[k] for k in a["skill_groups"]["had"]}
        gain_dp = np.mean([dp["per_skill_mean"][k][-1] - base[k] for k in a["skill_groups"]["gap"]])
        gain_rp = np.mean([rp[k][-1] - base[k] for k in a["skill_groups"]["gap"]])
        kept = gain_rp / gain_dp if gain_dp > 0 else math.nan
        out.append({
            "target": "replay keeps every skill the student had within 2 points of untrained and >= 90% "
                      "of deltaprompts' gain on the gap skills (at the longest budget)",
            "measured": "had skills " + ", ".join(f"{k} {v * 100:+.1f}" for k, v in drops.items())
                        + f" pts; gap gain {gain_rp * 100:+.1f} vs {gain_dp * 100:+.1f} pts ({kept:.0%})",
            "met": all(v >= -0.02 for v in drops.values()) and kept >= 0.9,
        })
    return out


def _table(setting: dict, baseline_overall: float) -> list[str]:
    steps = next(iter(setting["arms"].values()))["steps"]
    lines = ["| arm | " + " | ".join(f"{s} steps" for s in steps) + " | AUC (log) | steps to random's final | rollout tokens | train s |",
             "|---|" + "---:|" * (len(steps) + 4)]
    for arm, e in setting["arms"].items():
        cells = [f"{m:.3f} ± {sd:.3f}" for m, sd in zip(e["overall_mean"], e["overall_sd"])]
        reach = e.get("steps_to_random_final")
        r = "-" if reach is None else (f"{reach['steps']:.0f} [{reach['low']:.0f}, {reach['high']:.0f}]"
                                       if math.isfinite(reach["steps"]) else "never")
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_mean_sd(e['auc'])} | {r} | "
                     f"{e['rollout_tokens']:.0f} | {e['train_s']:.0f} |")
    lines.append(f"\nUntrained student: {baseline_overall:.3f}.")
    return lines


def _skill_table(setting: dict, baseline: dict) -> list[str]:
    skills = sorted(baseline["student"]["by_skill"])
    lines = ["| arm (longest budget) | " + " | ".join(skills) + " |", "|---|" + "---:|" * len(skills),
             "| untrained student | " + " | ".join(f"{baseline['student']['by_skill'][k]:.3f}" for k in skills) + " |",
             "| teacher | " + " | ".join(f"{baseline['teacher']['by_skill'][k]:.3f}" for k in skills) + " |"]
    for arm, e in setting["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{e['per_skill_mean'][k][-1]:.3f}" for k in skills) + " |")
    lines += ["", "<details><summary>Per skill at every budget (mean over seeds)</summary>", "",
              "| arm | steps | " + " | ".join(skills) + " |", "|---|---:|" + "---:|" * len(skills)]
    for arm, e in setting["arms"].items():
        for i, step in enumerate(e["steps"]):
            lines.append(f"| {arm} | {step} | " + " | ".join(f"{e['per_skill_mean'][k][i]:.3f}" for k in skills) + " |")
    return lines + ["", "</details>"]


def _pool_table(pool_skills: dict[str, dict[str, int]]) -> list[str]:
    """Each arm's pool by skill, as shares of the pool (n in the last column)."""
    skills = sorted({k for counts in pool_skills.values() for k in counts})
    lines = ["What each arm's pool holds (share of its prompts by skill):", "",
             "| pool | " + " | ".join(skills) + " | prompts |", "|---|" + "---:|" * (len(skills) + 1)]
    for arm, counts in pool_skills.items():
        n = sum(counts.values())
        lines.append(f"| {arm} | " + " | ".join(f"{counts.get(k, 0) / max(n, 1):.0%}" for k in skills)
                     + f" | {n} |")
    return lines + [""]


def _paired(setting: dict) -> list[str]:
    lines = ["| arm - random | budget | diff (pts) | t | p (paired t, two-sided) |", "|---|---|---:|---:|---:|"]
    for arm, tests in setting["paired_vs_random"].items():
        for budget, r in tests.items():
            lines.append(f"| {arm} | {budget} | {r['diff'] * 100:+.1f} | {r['t']:.2f} | {r['p']:.3g} |")
    return lines


def plot(a: dict) -> Any:
    settings = [s for s in ("opd", "sft", "transfer") if s in a["settings"]]
    panels = [("opd", "overall_mean", "OPD: held-out accuracy"), ("opd", "gap_mean", "OPD: gap skills"),
              ("opd", "had_mean", "OPD: skills the student had")]
    panels += [(s, "overall_mean", f"{s}: held-out accuracy") for s in settings if s != "opd"]
    fig, axes = figure(1, len(panels), width=4.2 * len(panels), height=3.6)
    for ax, (setting, key, title) in zip(axes, panels):
        for arm, e in a["settings"].get(setting, {}).get("arms", {}).items():
            ax.plot(e["steps"], e[key], marker="o", label=arm, color=ARM_COLORS.get(arm))
            if key == "overall_mean":
                lo = np.array(e["overall_mean"]) - np.array(e["overall_sd"])
                hi = np.array(e["overall_mean"]) + np.array(e["overall_sd"])
                ax.fill_between(e["steps"], lo, hi, alpha=0.15, color=ARM_COLORS.get(arm))
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("OPD steps" if setting != "sft" else "SFT steps")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    return fig


def scale_shortfalls(cfg: dict, runs: list[dict]) -> list[str]:
    """Where a run is smaller than the experiment's design (>= 5 seeds per OPD arm, >= 5
    budgets, 2,000 held-out questions, every setting), in words; empty when it is not."""
    out = []
    seeds: dict[str, set] = {}
    for r in runs:
        if r["setting"] == "opd":
            seeds.setdefault(r["arm"], set()).add(r["seed"])
    left_out = [arm for arm in ARMS if arm not in seeds]
    if left_out:
        out.append("OPD arms not run: " + ", ".join(left_out))
    fewest = min((len(v) for v in seeds.values()), default=0)
    if fewest < 5:
        out.append(f"{fewest} seed(s) per OPD arm, not 5")
    if len(cfg["budgets"]) < 5:
        out.append(f"{len(cfg['budgets'])} budgets, not 5")
    if max(cfg["budgets"]) < 160:
        out.append(f"longest budget {max(cfg['budgets'])} steps, not 160")
    if cfg["heldout_n"] < 2000:
        out.append(f"{cfg['heldout_n']} held-out questions, not 2,000")
    missing = [s for s in ("sft", "transfer") if not any(r["setting"] == s for r in runs)]
    if missing:
        out.append("not run: " + ", ".join(missing))
    return out


def write_results(stem: Path, meta: dict, baseline: dict, runs: list[dict]) -> dict:
    a = analyse(baseline, runs)
    write_json(stem.with_suffix(".json"), {"meta": meta, "baseline": baseline, "analysis": a, "runs": runs})
    save_png(plot(a), stem.with_suffix(".png"))
    verdicts = [f"- **{'MET' if t['met'] else 'MISSED'}**: {t['target']}: {t['measured']}."
                for t in a["targets"]]
    cfg = meta["config"]
    short = scale_shortfalls(cfg, runs)
    lines = ["# Does the data teach? Learning curves of OPD on each kind of prompt set", "",
             *verdicts, "",
             *([f"**Smaller than the experiment asks for**: {'; '.join(short)}. The verdicts above "
                "are on this scale.", ""] if short else []),
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; the training runs' wall time summed: "
             f"{sum(r.get('wall_s', 0) for r in runs):.0f} s (on a machine other jobs shared: "
             "read costs per arm from the rollout tokens, not the seconds).  ",
             f"Settings: {cfg['prompts_per_step']} prompts x {cfg['rollouts']} rollouts per step, loss "
             f"{cfg['loss']} (beta {cfg['beta']}), lr {cfg['lr']}, budgets {cfg['budgets']}, seeds "
             f"{cfg['seeds']} (SFT and transfer: {cfg['small_seeds']}), {cfg['heldout_n']} held-out "
             f"questions, pools from `{cfg['run']}`: {meta['pools']} prompts; held-out overlap "
             f"{meta['heldout_overlap']}.", "",
             f"Skill groups (from the untrained student and the teacher): gap {a['skill_groups']['gap']}, "
             f"had {a['skill_groups']['had']}.", "",
             *(_pool_table(meta["pool_skills"]) if meta.get("pool_skills") else [])]
    for setting, title in (("opd", "On-policy distillation"), ("sft", "Off-policy fine-tuning on the teacher's answers"),
                           ("transfer", "Transfer: a second student of another shape")):
        if setting not in a["settings"]:
            continue
        base = baseline["student_b" if setting == "transfer" else "student"]["overall"]
        s = a["settings"][setting]
        lines += [f"## {title}", "", "Held-out accuracy (mean ± sd over seeds):", "", *_table(s, base), "",
                  *(_skill_table(s, baseline) if setting == "opd" else []), "", *_paired(s), ""]
    write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    return a
