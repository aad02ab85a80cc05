"""Adaptive Δ sampling against full-N sampling, on simulated answer distributions.

Question: if each model first draws k answers and we stop when both are unanimous on the
same answer (pipeline/delta.py), how many samples do we save, and how often does the
zero-delta decision differ from the one full-N sampling would have made?

Method. Each simulated prompt has a true answer distribution per model, drawn from one of
the families below. For each prompt we draw one stream of N answers per model; full-N
sampling uses all of it, the adaptive policy uses its first k answers and the rest only
when not settled, so "identical decision" compares the two policies on the *same* draws
(the fair comparison: the only difference is the early stop). The decision is
Δ = JSD (base 2) < threshold. Two scenarios:

* ``fresh``: both models are sampled here (budget 2N per prompt);
* ``student_reused``: the student already holds N answers from the ``mine`` stage; only the
  teacher is sampled (budget N per prompt) and the stop needs all N student answers to be
  unanimous.

We also report how often each policy agrees with the *population* decision
(Δ of the true distributions < threshold), because full-N is itself a noisy estimate.

Families (per prompt: c = probability mass on the model's modal answer, drawn uniformly
in the range given; the remaining 1-c spread uniformly over 1-3 other answers; the
last class stands for "no answer"):

* ``deterministic-agree``: both c ∈ [0.985, 1]: short answers the model is sure of (at T=0.7
  a confident VLM repeats a one-token answer almost always); same modal answer.
* ``noisy-agree``: both c ∈ [0.6, 0.95], same modal answer.
* ``disagree``: teacher c ∈ [0.8, 1] on answer 0, student c ∈ [0.5, 1] on answer 1.
* ``student-diffuse``: teacher c ∈ [0.9, 1]; student Dirichlet(0.7) over 4 answers.
* ``diffuse``: both Dirichlet(0.5) over 3-6 answers, independently.

Mixtures are weighted averages of the per-family figures (exact, no resampling):

* ``easy``: a ChartQA-like set where most prompts are zero-delta (the paper reports up to
  69%): 65/10/10/10/5;
* ``balanced``: 40/15/15/15/15;
* ``hard``: a mined set of student failures: 15/15/30/25/15.

The vectorised simulation is checked against the library: a subsample is rerun through
``pipeline.delta.adaptive_delta`` (string answers, None for the "no answer" class) and must
give the same decisions and sample counts.

Run:  PYTHONPATH=. python benchmarks/bench_adaptive.py [--prompts 20000] [--n 8] [--ks 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.delta import DeltaConfig, adaptive_delta, divergence

K_MAX = 7  # answer classes per prompt; class K_MAX-1 plays "no answer"

STRAY_RATES = [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]
FAMILIES = ["deterministic-agree", "noisy-agree", "disagree", "student-diffuse", "diffuse"]
MIXTURES = {
    "easy": [0.65, 0.10, 0.10, 0.10, 0.05],
    "balanced": [0.40, 0.15, 0.15, 0.15, 0.15],
    "hard": [0.15, 0.15, 0.30, 0.25, 0.15],
}


def _peaked(rng: np.random.Generator, n: int, mode: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Distributions with mass c ~ U(lo, hi) on `mode`, the rest uniform over 1-3 others."""
    probs = np.zeros((n, K_MAX))
    c = rng.uniform(lo, hi, size=n)
    n_other = rng.integers(1, 4, size=n)
    for i in range(n):
        others = rng.choice(
            [j for j in range(K_MAX) if j != mode[i]], size=n_other[i], replace=False
        )
        probs[i, mode[i]] = c[i]
        probs[i, others] = (1.0 - c[i]) / n_other[i]
    return probs


def _dirichlet(rng: np.random.Generator, n: int, alpha: float, lo: int, hi: int) -> np.ndarray:
    probs = np.zeros((n, K_MAX))
    sizes = rng.integers(lo, hi + 1, size=n)
    for i in range(n):
        support = rng.choice(K_MAX, size=sizes[i], replace=False)
        probs[i, support] = rng.dirichlet([alpha] * sizes[i])
    return probs


def family_distributions(
    name: str, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(teacher, student) true distributions, each (n, K_MAX)."""
    zeros, ones = np.zeros(n, dtype=int), np.ones(n, dtype=int)
    if name == "deterministic-agree":
        return _peaked(rng, n, zeros, 0.985, 1.0), _peaked(rng, n, zeros, 0.985, 1.0)
    if name.startswith("stray="):  # sensitivity sweep: both models 1-ε on the same answer
        eps = float(name.split("=", 1)[1])
        return _peaked(rng, n, zeros, 1.0 - eps, 1.0 - eps), _peaked(
            rng, n, zeros, 1.0 - eps, 1.0 - eps
        )
    if name == "noisy-agree":
        return _peaked(rng, n, zeros, 0.6, 0.95), _peaked(rng, n, zeros, 0.6, 0.95)
    if name == "disagree":
        return _peaked(rng, n, zeros, 0.8, 1.0), _peaked(rng, n, ones, 0.5, 1.0)
    if name == "student-diffuse":
        return _peaked(rng, n, zeros, 0.9, 1.0), _dirichlet(rng, n, 0.7, 4, 4)
    if name == "diffuse":
        return _dirichlet(rng, n, 0.5, 3, 6), _dirichlet(rng, n, 0.5, 3, 6)
    raise ValueError(name)


def sample_streams(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(prompts, n) answer-class indices drawn i.i.d. from each row of `probs`."""
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random((probs.shape[0], n))
    return (u[:, :, None] > cdf[:, None, :]).sum(axis=2)


def _empirical(streams: np.ndarray) -> np.ndarray:
    onehot = streams[:, :, None] == np.arange(K_MAX)[None, None, :]
    return onehot.mean(axis=1)


def _unanimous(streams: np.ndarray) -> np.ndarray:
    return (streams == streams[:, :1]).all(axis=1)


def simulate_family(
    name: str, prompts: int, n: int, ks: list[int], threshold: float, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    pt, ps = family_distributions(name, prompts, rng)
    ts, ss = sample_streams(pt, n, rng), sample_streams(ps, n, rng)
    full_zero = divergence(_empirical(ts), _empirical(ss), "jsd") < threshold
    true_zero = divergence(pt, ps, "jsd") < threshold
    out: dict = {
        "zero_delta_full": float(full_zero.mean()),
        "zero_delta_true": float(true_zero.mean()),
        "full_agrees_with_true": float((full_zero == true_zero).mean()),
        "by_k": {},
    }
    for k in ks:
        res = {}
        for scenario in ("fresh", "student_reused"):
            s_window = ss[:, :k] if scenario == "fresh" else ss
            stop = _unanimous(ts[:, :k]) & _unanimous(s_window) & (ts[:, 0] == ss[:, 0])
            # Stopping early always means "zero-delta"; otherwise the full-N decision stands.
            adaptive_zero = np.where(stop, True, full_zero)
            if scenario == "fresh":
                drawn = np.where(stop, 2 * k, 2 * n).sum()
                budget = 2 * n * prompts
            else:
                drawn = np.where(stop, k, n).sum()
                budget = n * prompts
            res[scenario] = {
                "saved": float(1.0 - drawn / budget),
                "identical": float((adaptive_zero == full_zero).mean()),
                "early_stop": float(stop.mean()),
                "adaptive_agrees_with_true": float((adaptive_zero == true_zero).mean()),
            }
        out["by_k"][str(k)] = res
    out["_streams"] = (ts, ss)  # kept for the library cross-check, dropped before writing
    return out


def _stream_reader(streams: dict, pos: dict):
    """A draw callback handing out pre-drawn answers in order (and counting them in pos)."""

    def draw(model: str, m: int) -> list[str | None]:
        got = streams[model][pos[model] : pos[model] + m]
        pos[model] += m
        return got

    return draw


def cross_check(
    ts: np.ndarray, ss: np.ndarray, n: int, k: int, threshold: float, limit: int
) -> dict:
    """Rerun prompts through pipeline.delta.adaptive_delta; count disagreements with the sim."""
    cfg = DeltaConfig(n=n, k=k, threshold=threshold, bootstrap=0)

    def label(c: int) -> str | None:
        return None if c == K_MAX - 1 else f"{c * 11}%"  # exercises the percent rule

    mismatches = 0
    for i in range(min(limit, ts.shape[0])):
        streams = {"teacher": [label(c) for c in ts[i]], "student": [label(c) for c in ss[i]]}
        pos = {"teacher": 0, "student": 0}

        rep = adaptive_delta(_stream_reader(streams, pos), cfg)
        full = (
            divergence(_empirical(ts[i : i + 1]), _empirical(ss[i : i + 1]), "jsd")[0] < threshold
        )
        stop = (ts[i, :k] == ts[i, 0]).all() and (ss[i, :k] == ts[i, 0]).all()
        expected_zero = True if stop else bool(full)
        expected_drawn = 2 * k if stop else 2 * n
        if rep["zero_delta"] != expected_zero or pos["teacher"] + pos["student"] != expected_drawn:
            mismatches += 1
    return {"checked": min(limit, ts.shape[0]), "mismatches": mismatches}


def mixture_rows(fam: dict, ks: list[int]) -> list[dict]:
    rows = []
    for mix, weights in MIXTURES.items():
        w = dict(zip(FAMILIES, weights))
        for k in ks:
            for scenario in ("fresh", "student_reused"):
                row = {"mixture": mix, "k": k, "scenario": scenario}
                for key in ("saved", "identical", "early_stop", "adaptive_agrees_with_true"):
                    row[key] = sum(w[f] * fam[f]["by_k"][str(k)][scenario][key] for f in FAMILIES)
                row["zero_delta_full"] = sum(w[f] * fam[f]["zero_delta_full"] for f in FAMILIES)
                row["full_agrees_with_true"] = sum(
                    w[f] * fam[f]["full_agrees_with_true"] for f in FAMILIES
                )
                rows.append(row)
    return rows


def write_markdown(
    path: Path, meta: dict, fam: dict, rows: list[dict], extra: dict, ks: list[int]
) -> None:
    pct = lambda x: f"{100 * x:.1f}%"
    lines = [
        "# Adaptive Δ sampling vs full-N sampling (simulated)",
        "",
        f"Command: `{meta['command']}`  ",
        (
            f"N={meta['n']} per model, threshold={meta['threshold']} (JSD, base 2), "
            f"{meta['prompts_per_family']} prompts per family, seed {meta['seed']}, "
            f"{meta['seconds']:.1f} s on {meta['machine']}."
        ),
        "",
        "Families, mixtures and method: see the docstring of `benchmarks/bench_adaptive.py`.",
        "*saved*: share of the sampling budget not drawn; *identical*: share of prompts whose",
        "zero-delta decision equals full-N's on the same draws; *vs true*: agreement with the",
        "decision on the true distributions.",
        "",
        "## Mixtures",
        "",
        "| mixture | k | scenario | saved | identical | early stop | zero-delta (full N) | full vs true | adaptive vs true |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mixture']} | {r['k']} | {r['scenario']} | {pct(r['saved'])} | {pct(r['identical'])} | "
            f"{pct(r['early_stop'])} | {pct(r['zero_delta_full'])} | {pct(r['full_agrees_with_true'])} | "
            f"{pct(r['adaptive_agrees_with_true'])} |"
        )
    lines += [
        "",
        "## Families (fresh scenario)",
        "",
        "| family | zero-delta full N | zero-delta true | "
        + " | ".join(f"k={k} saved / identical" for k in ks)
        + " |",
        "|---|---|---|" + "---|" * len(ks),
    ]
    for f in FAMILIES:
        cells = [
            f"{pct(fam[f]['by_k'][str(k)]['fresh']['saved'])} / {pct(fam[f]['by_k'][str(k)]['fresh']['identical'])}"
            for k in ks
        ]
        lines.append(
            f"| {f} | {pct(fam[f]['zero_delta_full'])} | {pct(fam[f]['zero_delta_true'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "## Sensitivity: stray-answer rate of agreeing models (fresh scenario)",
        "",
        "Both models put 1-ε on the same answer. At N=8 and threshold 0.05 one stray answer among",
        "the 16 makes full-N call the prompt non-zero-delta (JSD 0.066), so the early stop can only",
        "disagree with full N when a stray would have come later: the identical rate is",
        "about P(no stray in the remaining 2(N-k) draws), set by ε.",
        "",
        "| ε | zero-delta full N | " + " | ".join(f"k={k} saved / identical" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for eps, res in extra["stray"].items():
        cells = [
            f"{pct(res['by_k'][str(k)]['fresh']['saved'])} / {pct(res['by_k'][str(k)]['fresh']['identical'])}"
            for k in ks
        ]
        lines.append(f"| {eps} | {pct(res['zero_delta_full'])} | " + " | ".join(cells) + " |")
    if extra["thresholds"]:
        lines += [
            "",
            "## Other thresholds (mixtures, fresh scenario)",
            "",
            "| threshold | mixture | " + " | ".join(f"k={k} saved / identical" for k in ks) + " |",
            "|---|---|" + "---|" * len(ks),
        ]
        for thr, trows in extra["thresholds"].items():
            for mix in MIXTURES:
                cells = []
                for k in ks:
                    r = next(
                        r
                        for r in trows
                        if r["mixture"] == mix and r["k"] == k and r["scenario"] == "fresh"
                    )
                    cells.append(f"{pct(r['saved'])} / {pct(r['identical'])}")
                lines.append(f"| {thr} | {mix} | " + " | ".join(cells) + " |")
    cc = meta["cross_check"]
    lines += [
        "",
        (
            f"Library cross-check: {cc['checked']} (prompt, k) pairs rerun through "
            f"`pipeline.delta.adaptive_delta`, {cc['mismatches']} mismatches with the simulation."
        ),
        "",
        "## Reading",
        "",
        *meta["reading"],
        "",
    ]
    path.write_text("\n".join(lines))


def reading(
    rows: list[dict], target_saved: float = 0.40, target_identical: float = 0.98
) -> list[str]:
    """Plain-language verdict per mixture, computed from the rows (not hand-written)."""
    out = []
    for mix in MIXTURES:
        for scenario in ("fresh", "student_reused"):
            cand = [r for r in rows if r["mixture"] == mix and r["scenario"] == scenario]
            ok = [
                r for r in cand if r["saved"] >= target_saved and r["identical"] >= target_identical
            ]
            if ok:
                best = max(ok, key=lambda r: r["saved"])
                out.append(
                    f"- {mix}/{scenario}: target met at k={best['k']} "
                    f"({100 * best['saved']:.1f}% saved, {100 * best['identical']:.1f}% identical)."
                )
            else:
                best = max(cand, key=lambda r: r["identical"])
                most = max(cand, key=lambda r: r["saved"])
                out.append(
                    f"- {mix}/{scenario}: target ({100 * target_saved:.0f}% saved with "
                    f">= {100 * target_identical:.0f}% identical) not met; most identical at k={best['k']}: "
                    f"{100 * best['saved']:.1f}% saved, {100 * best['identical']:.1f}% identical; "
                    f"most saved at k={most['k']}: {100 * most['saved']:.1f}% saved, "
                    f"{100 * most['identical']:.1f}% identical."
                )
    for mix in MIXTURES:
        for r in rows:
            if r["mixture"] == mix and r["scenario"] == "fresh":
                out.append(
                    f"- {mix}, k={r['k']}: agreement with the true-distribution decision "
                    f"{100 * r['adaptive_agrees_with_true']:.1f}% (adaptive) vs "
                    f"{100 * r['full_agrees_with_true']:.1f}% (full N)."
                )
    return out


def run_families(
    names: list[str], args: argparse.Namespace, threshold: float, check: dict | None
) -> dict:
    fam = {}
    for i, f in enumerate(names):
        fam[f] = simulate_family(f, args.prompts, args.n, args.ks, threshold, args.seed + i)
        ts, ss = fam[f].pop("_streams")
        if check is not None:
            for k in args.ks:
                cc = cross_check(ts, ss, args.n, k, threshold, args.check)
                check["checked"] += cc["checked"]
                check["mismatches"] += cc["mismatches"]
    return fam


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20000, help="simulated prompts per family")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--other-thresholds", type=float, nargs="*", default=[0.07])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--check", type=int, default=1000, help="prompts per family rerun through the library"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    check = {"checked": 0, "mismatches": 0}
    fam = run_families(FAMILIES, args, args.threshold, check)
    rows = mixture_rows(fam, args.ks)
    stray = run_families([f"stray={e}" for e in STRAY_RATES], args, args.threshold, None)
    extra = {
        "stray": {name.split("=")[1]: res for name, res in stray.items()},
        "thresholds": {
            str(t): mixture_rows(run_families(FAMILIES, args, t, None), args.ks)
            for t in args.other_thresholds
        },
    }
    meta = {
        "command": (
            "PYTHONPATH=. python benchmarks/bench_adaptive.py "
            + " ".join(sys.argv[1:] if argv is None else argv)
        ).strip(),
        "n": args.n,
        "ks": args.ks,
        "threshold": args.threshold,
        "prompts_per_family": args.prompts,
        "seed": args.seed,
        "machine": f"{platform.machine()} {platform.python_version()}",
        "mixtures": {m: dict(zip(FAMILIES, w)) for m, w in MIXTURES.items()},
        "cross_check": check,
    }
    meta["reading"] = reading(rows)
    meta["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "families": fam, "mixtures": rows, **extra}
    (args.out / "adaptive.json").write_text(json.dumps(payload, indent=2))
    write_markdown(args.out / "adaptive.md", meta, fam, rows, extra, args.ks)
    print((args.out / "adaptive.md").read_text())
    return 1 if check["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
