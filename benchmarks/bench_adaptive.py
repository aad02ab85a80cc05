"""Adaptive Δ sampling against full-N sampling, on simulated answer distributions.

Question: if each model first draws k answers, then ``step`` more per round, and we stop as
soon as either rule of pipeline/sampling/policy.py fires (both sides unanimous on the same answer
over at least u answers each; or the zero-delta decision full-N sampling would make is
already fixed whatever the remaining draws are), how many samples do we save, and how
often does the decision differ from the one full-N sampling would have made?

Method. Each simulated prompt has a true answer distribution per model, drawn from one of
the families below. For each prompt we draw one stream of N answers per model; full-N
sampling uses all of it, the adaptive policy uses its first k answers, then the next
``step`` ones per round while it has not stopped, so "identical decision" compares the
policies on the *same* draws (the fair comparison: the only difference is the early stop).
The decision is Δ = JSD (base 2) < threshold. Two scenarios:

* ``fresh``: both models are sampled here (budget 2N per prompt);
* ``student_reused``: the student already holds N answers from the ``mine`` stage (what
  the delta stage and ``run_audit`` do); only the teacher is sampled (budget N per prompt)
  and the unanimity stop needs all N student answers to be unanimous.

Policies (k = ``delta.k``, u = ``delta.unanimous_k``, step = ``delta.step``):

* ``unanimity`` (the previous policy, kept as the baseline): two rounds, k then the rest
  unless both sides are unanimous on the same answer (u = k);
* ``both rules``: the unanimity stop at u plus the exact "decision fixed" stop, after
  every round: k, then ``step`` more per side per round (capped at N), except that a
  prompt still all one class on both sides is brought to exactly u in one round (so the
  unanimity stop is checked at u). ``step`` ≥ N-k with u = k is the two-round schedule.
  The fixed-decision stop never changes a decision (it is exact by construction, and the
  simulation checks it); only the unanimity stop can.

We also report how often each policy agrees with the *population* decision (Δ of the true
distributions < threshold), because full-N is itself a noisy estimate.

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

The fixed-decision test itself is the library's (``pipeline.sampling.policy.fixed_decision_counts``,
called once per distinct count profile); the vectorised round schedule is checked against
the library: a subsample is rerun through ``pipeline.sampling.policy.adaptive_delta`` (string
answers, None for the "no answer" class) and must give the same decisions, sample counts
per side and stop reasons.

The default (k, u, step) is chosen from the easy mixture by :func:`choose_default` and
reported in the "Reading" section; the config (AdaptivePolicy's defaults) ships it (the run warns if they differ).

Run:  PYTHONPATH=. python benchmarks/bench_adaptive.py [--prompts 20000] [--n 8]
          [--us 2 3 4 5 6] [--firsts 1 2] [--steps 1 2 8] [--check 40]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from pipeline.core.config import DeltaConfig
from pipeline.core.divergence import divergence
from pipeline.sampling.policy import AdaptivePolicy, adaptive_delta, fixed_decision_counts

K_MAX = 7  # answer classes per prompt; class K_MAX-1 plays "no answer"

STRAY_RATES = [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]
FAMILIES = ["deterministic-agree", "noisy-agree", "disagree", "student-diffuse", "diffuse"]
MIXTURES = {
    "easy": [0.65, 0.10, 0.10, 0.10, 0.05],
    "balanced": [0.40, 0.15, 0.15, 0.15, 0.15],
    "hard": [0.15, 0.15, 0.30, 0.25, 0.15],
}
SCENARIOS = ("fresh", "student_reused")
BASELINE = "unanimity"
NEW = "both rules"
TARGET_SAVED, TARGET_IDENTICAL = 0.40, 0.98
# Mean figures per (family, policy) cell; mixtures are their weighted averages.
METRICS = (
    "saved",
    "identical",
    "early_stop",
    "stop_unanimous",
    "stop_decided",
    "rounds",
    "adaptive_agrees_with_true",
)


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


def _counts(streams: np.ndarray) -> np.ndarray:
    """(prompts, K_MAX) answer counts of each row of class indices."""
    return (streams[:, :, None] == np.arange(K_MAX)[None, None, :]).sum(axis=1)


def _empirical(streams: np.ndarray) -> np.ndarray:
    return _counts(streams) / streams.shape[1]


def _unanimous(streams: np.ndarray) -> np.ndarray:
    return (streams == streams[:, :1]).all(axis=1)


def fixed_decisions(
    tc: np.ndarray, sc: np.ndarray, n: int, threshold: float
) -> np.ndarray:
    """Per prompt: 1 certainly zero-delta, 0 certainly not, -1 open (library verdict).

    The verdict depends only on the multiset of (teacher, student) count pairs, so the
    library is asked once per distinct sorted profile.
    """
    pairs = np.sort(tc * (n + 1) ** 2 + sc, axis=1)  # one code per class, order-free
    profiles, inverse = np.unique(pairs, axis=0, return_inverse=True)
    verdict = np.empty(len(profiles), dtype=np.int8)
    for j, row in enumerate(profiles):
        t, s = row // (n + 1) ** 2, row % (n + 1) ** 2
        d = fixed_decision_counts(t, s, n, threshold, "jsd")
        verdict[j] = -1 if d is None else int(d)
    return verdict[np.asarray(inverse).reshape(-1)]


def simulate_policy(
    ts: np.ndarray,
    ss: np.ndarray,
    full_zero: np.ndarray,
    true_zero: np.ndarray,
    *,
    n: int,
    k: int,
    u: int,
    step: int,
    scenario: str,
    threshold: float,
    decided_rule: bool,
) -> dict:
    """One policy on the pre-drawn streams; per-prompt outcomes plus their means.

    Mirrors pipeline.sampling.policy: round 1 brings each side to k; after each round a prompt stops
    when both sides hold >= u answers all of one class (unanimity) or, with
    ``decided_rule``, when the full-N decision is fixed; otherwise it draws ``step`` more
    per side, or exactly up to u while both sides are still all one class. The previous
    policy is ``decided_rule=False, u=k, step>=n-k``.
    """
    prompts = ts.shape[0]
    have_t = np.full(prompts, k)
    have_s = np.full(prompts, k if scenario == "fresh" else n)
    zero = full_zero.copy()
    reason = np.zeros(prompts, dtype=np.int8)  # 0 none, 1 unanimous, 2 decided
    rounds = np.zeros(prompts, dtype=np.int64)
    active = np.ones(prompts, dtype=bool)
    r = 0
    while active.any():
        r += 1
        rounds[active] = r
        idx_all = np.flatnonzero(active)
        code = have_t[idx_all] * (n + 1) + have_s[idx_all]
        for c in np.unique(code):  # prompts holding the same numbers of answers
            idx = idx_all[code == c]
            a, b = int(c // (n + 1)), int(c % (n + 1))
            if a >= n and b >= n:
                active[idx] = False
                continue
            t_win, s_win = ts[idx, :a], ss[idx, :b]
            one_class = _unanimous(t_win) & _unanimous(s_win) & (t_win[:, 0] == s_win[:, 0])
            stop_u = one_class & (a >= u) & (b >= u)
            stop_d = np.zeros(len(idx), dtype=bool)
            if decided_rule:
                verdict = fixed_decisions(_counts(t_win), _counts(s_win), n, threshold)
                stop_d = (verdict >= 0) & ~stop_u
                bad = stop_d & ((verdict == 1) != full_zero[idx])
                if bad.any():  # the fixed-decision stop is exact: this must never happen
                    raise AssertionError(f"{bad.sum()} fixed decisions differ from full N")
            stop = stop_u | stop_d
            reason[idx[stop_u]] = 1
            reason[idx[stop_d]] = 2
            zero[idx[stop_u]] = True  # the unanimity stop always says "zero-delta"
            active[idx[stop]] = False
            go, still = idx[~stop], one_class[~stop]
            inc_t = np.where(still, max(0, u - a), step)
            inc_s = np.where(still, max(0, u - b), step)
            have_t[go] = np.minimum(n, a + inc_t)
            have_s[go] = np.minimum(n, b + inc_s)
    if scenario == "fresh":
        drawn, budget = (have_t + have_s).sum(), 2 * n * prompts
    else:
        drawn, budget = have_t.sum(), n * prompts
    return {
        "saved": float(1.0 - drawn / budget),
        "identical": float((zero == full_zero).mean()),
        "early_stop": float((reason > 0).mean()),
        "stop_unanimous": float((reason == 1).mean()),
        "stop_decided": float((reason == 2).mean()),
        "rounds": float(rounds.mean()),
        "max_rounds": int(rounds.max()),
        "adaptive_agrees_with_true": float((zero == true_zero).mean()),
        "_per_prompt": {"zero": zero, "reason": reason, "t": have_t, "s": have_s},
    }


def policies(n: int, us: list[int], firsts: list[int], steps: list[int]) -> list[dict]:
    """The grid: the previous policy at each u (its k), the new one at each (k, u, step).

    k = u with every step; smaller first rounds k (``firsts``) with steps < n-k only (a
    larger step fills to N in round 2, so the unanimity stop could not fire at u).
    """
    out = []
    for u in us:
        out.append({"policy": BASELINE, "k": u, "u": u, "step": n - u})
        for k in sorted({u, *(f for f in firsts if f < u)}, reverse=True):
            seen = set()
            for step in steps:
                eff = max(1, min(step, n - k))
                if eff in seen or (k < u and eff >= n - k):
                    continue
                seen.add(eff)
                out.append({"policy": NEW, "k": k, "u": u, "step": eff})
    return out


def _key(p: dict, scenario: str) -> str:
    return f"{p['policy']}|k={p['k']}|u={p['u']}|step={p['step']}|{scenario}"


def simulate_family(
    name: str, prompts: int, n: int, grid: list[dict], threshold: float, seed: int
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
        "cells": {},
    }
    per_prompt = {}
    for p in grid:
        for scenario in SCENARIOS:
            res = simulate_policy(
                ts, ss, full_zero, true_zero, n=n, k=p["k"], u=p["u"], step=p["step"],
                scenario=scenario, threshold=threshold, decided_rule=p["policy"] == NEW,
            )
            per_prompt[_key(p, scenario)] = res.pop("_per_prompt")
            out["cells"][_key(p, scenario)] = res
    # Kept for the library cross-check, dropped before writing.
    out["_streams"] = (ts, ss, full_zero, per_prompt)
    return out


def _stream_reader(streams: dict, pos: dict):
    """A draw callback handing out pre-drawn answers in order (and counting them in pos)."""

    def draw(model: str, m: int) -> list[str | None]:
        got = streams[model][pos[model] : pos[model] + m]
        pos[model] += m
        return got

    return draw


def _label(c: int) -> str | None:
    return None if c == K_MAX - 1 else f"{c * 11}%"  # exercises the percent rule


def cross_check(
    streams: tuple, n: int, grid: list[dict], threshold: float, limit: int
) -> dict:
    """Rerun prompts through pipeline.sampling.policy.adaptive_delta (new policy cells only); count
    prompts whose decision, samples per side or stop reason differ from the simulation."""
    ts, ss, _, per_prompt = streams
    m = min(limit, ts.shape[0])
    checked = mismatches = 0
    names = {0: None, 1: "unanimous", 2: "decided"}
    labels_t = [[_label(c) for c in row] for row in ts[:m]]
    labels_s = [[_label(c) for c in row] for row in ss[:m]]
    for p in grid:
        if p["policy"] != NEW:
            continue
        cfg = AdaptivePolicy(n=n, k=p["k"], unanimous_k=p["u"], step=p["step"], threshold=threshold)
        no_ci = DeltaConfig(threshold=threshold, bootstrap=0)
        for scenario in SCENARIOS:
            sim = per_prompt[_key(p, scenario)]
            for i in range(m):
                pos = {"teacher": 0, "student": 0}
                if scenario == "fresh":
                    draw = _stream_reader({"teacher": labels_t[i], "student": labels_s[i]}, pos)
                    rep = adaptive_delta(draw, cfg, no_ci)
                    n_s = pos["student"]
                else:
                    draw = _stream_reader({"teacher": labels_t[i], "student": []}, pos)
                    rep = adaptive_delta(draw, cfg, no_ci, student_answers=labels_s[i])
                    n_s = rep["n_student"]
                checked += 1
                if (
                    rep["zero_delta"] != bool(sim["zero"][i])
                    or pos["teacher"] != sim["t"][i]
                    or n_s != sim["s"][i]
                    or rep["stop_reason"] != names[int(sim["reason"][i])]
                    or rep["stopped_early"] != bool(sim["reason"][i])
                ):
                    mismatches += 1
    return {"checked": checked, "mismatches": mismatches}


def mixture_rows(fam: dict, grid: list[dict]) -> list[dict]:
    rows = []
    for mix, weights in MIXTURES.items():
        w = dict(zip(FAMILIES, weights))
        for p in grid:
            for scenario in SCENARIOS:
                row = {"mixture": mix, **p, "scenario": scenario}
                key = _key(p, scenario)
                for m in METRICS:
                    row[m] = sum(w[f] * fam[f]["cells"][key][m] for f in FAMILIES)
                row["max_rounds"] = max(fam[f]["cells"][key]["max_rounds"] for f in FAMILIES)
                row["zero_delta_full"] = sum(w[f] * fam[f]["zero_delta_full"] for f in FAMILIES)
                row["full_agrees_with_true"] = sum(
                    w[f] * fam[f]["full_agrees_with_true"] for f in FAMILIES
                )
                rows.append(row)
    return rows


def _meets(r: dict) -> bool:
    return r["saved"] >= TARGET_SAVED and r["identical"] >= TARGET_IDENTICAL


def _setting(r: dict) -> tuple:
    return (r["policy"], r["k"], r["u"], r["step"])


def _row(rows: list[dict], mix: str, scenario: str, setting: tuple) -> dict:
    return next(
        r for r in rows
        if r["mixture"] == mix and r["scenario"] == scenario and _setting(r) == setting
    )


def choose_default(rows: list[dict], n: int) -> dict:
    """The (k, unanimous_k, step) to ship, from the easy mixture's rows of the new policy.

    Preference, in order: meets the target in both scenarios; meets it in student_reused
    (what the delta stage and run_audit do); otherwise the highest identical rate in
    student_reused. Within the preferred set: most saved in student_reused, where a
    setting with a larger step (fewer rounds) wins if it saves at most 1 point less.
    """
    easy = {
        (_setting(r), r["scenario"]): r for r in rows if r["mixture"] == "easy" and r["policy"] == NEW
    }
    settings = sorted({s for s, _ in easy}, key=lambda s: s[1:])
    both = [s for s in settings if all(_meets(easy[(s, sc)]) for sc in SCENARIOS)]
    reused = [s for s in settings if _meets(easy[(s, "student_reused")])]
    if both:
        pool, why = both, "meets the target on the easy mixture in both scenarios"
    elif reused:
        pool, why = reused, (
            "meets the target on the easy mixture in student_reused (the case of the delta "
            "stage and of run_audit, which reuse the student's N answers); no setting meets "
            "it in both scenarios"
        )
    else:
        best = max(settings, key=lambda s: easy[(s, "student_reused")]["identical"])
        pool, why = [best], "no setting meets the target on the easy mixture; most identical"

    def saved(s):
        return easy[(s, "student_reused")]["saved"]

    top = max(pool, key=saved)
    near = [s for s in pool if s[2] == top[2] and saved(s) >= saved(top) - 0.01]
    choice = max(near, key=lambda s: (s[3], saved(s)))
    _, k, u, step = choice
    return {"k": k, "unanimous_k": u, "step": step, "why": why, "two_rounds": step >= n - k}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _step_label(r: dict, n: int) -> str:
    return "≥N-k" if r["step"] >= n - r["k"] else str(r["step"])


def _policy_label(r: dict, n: int) -> str:
    if r["policy"] == BASELINE:
        return f"unanimity (old), k={r['k']}"
    return f"both, k={r['k']}, u={r['u']}, step {_step_label(r, n)}"


def write_markdown(
    path: Path, meta: dict, fam: dict, rows: list[dict], extra: dict, grid: list[dict]
) -> None:
    n = meta["n"]
    d = meta["default"]
    chosen = (NEW, d["k"], d["unanimous_k"], d["step"])
    old = (BASELINE, d["unanimous_k"], d["unanimous_k"], n - d["unanimous_k"])
    settings = [(p["policy"], p["k"], p["u"], p["step"]) for p in grid]
    lines = [
        "# Adaptive Δ sampling vs full-N sampling (simulated)",
        "",
        f"Command: `{meta['command']}`  ",
        (
            f"N={n} per model, threshold={meta['threshold']} (JSD, base 2), "
            f"{meta['prompts_per_family']} prompts per family, seed {meta['seed']}, "
            f"{meta['seconds']:.1f} s on {meta['machine']}."
        ),
        "",
        "Families, mixtures, policies and method: see the docstring of",
        "`benchmarks/bench_adaptive.py`. *saved*: share of the sampling budget not drawn;",
        "*identical*: share of prompts whose zero-delta decision equals full-N's on the same",
        "draws. Settings: *k* first-round samples per model (`delta.k`), *u* answers per model",
        "the unanimity stop needs (`delta.unanimous_k`), *step* samples per model per further",
        "round (`delta.step`; ≥N-k: two rounds). *unanimity (old)* is the previous policy (two",
        "rounds, unanimity stop at k only); *both* adds the exact fixed-decision stop after",
        f"every round. **✓**: meets the target ({_pct(TARGET_SAVED)} saved with ≥ "
        f"{_pct(TARGET_IDENTICAL)} identical). The chosen default is in bold.",
        "",
        "## Mixtures: saved / identical",
        "",
        "| policy | k | u | step | "
        + " | ".join(f"{m} {sc}" for m in MIXTURES for sc in SCENARIOS)
        + " |",
        "|---|---|---|---|" + "---|" * (len(MIXTURES) * len(SCENARIOS)),
    ]
    for s in settings:
        r0 = _row(rows, "easy", "fresh", s)
        cells = []
        for mix in MIXTURES:
            for sc in SCENARIOS:
                r = _row(rows, mix, sc, s)
                cells.append(
                    f"{_pct(r['saved'])} / {_pct(r['identical'])}" + (" **✓**" if _meets(r) else "")
                )
        name = "unanimity (old)" if s[0] == BASELINE else "both rules"
        head = f"{name} | {s[1]} | {s[2]} | {_step_label(r0, n)}"
        if s == chosen:
            head = f"**{name}** | **{s[1]}** | **{s[2]}** | **{_step_label(r0, n)}**"
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Easy mixture: which rule stopped, rounds, agreement with the true decision",
        "",
        "*unanimous* / *decided*: share of prompts stopped early by each rule; *rounds*: mean",
        "(max) batched rounds per prompt; *vs true*: agreement of the decision with the one on",
        "the true distributions (full N: "
        + ", ".join(
            f"{mix} {_pct(_row(rows, mix, 'fresh', settings[0])['full_agrees_with_true'])}"
            for mix in MIXTURES
        )
        + "; zero-delta under full N: "
        + ", ".join(
            f"{mix} {_pct(_row(rows, mix, 'fresh', settings[0])['zero_delta_full'])}"
            for mix in MIXTURES
        )
        + ").",
        "",
        "| policy | k | u | step | "
        + " | ".join(f"{sc}: unanimous / decided / rounds / vs true" for sc in SCENARIOS)
        + " |",
        "|---|---|---|---|" + "---|" * len(SCENARIOS),
    ]
    for s in settings:
        cells = []
        for sc in SCENARIOS:
            r = _row(rows, "easy", sc, s)
            cells.append(
                f"{_pct(r['stop_unanimous'])} / {_pct(r['stop_decided'])} / "
                f"{r['rounds']:.2f} ({r['max_rounds']}) / {_pct(r['adaptive_agrees_with_true'])}"
            )
        r0 = _row(rows, "easy", "fresh", s)
        name = "unanimity (old)" if s[0] == BASELINE else "both rules"
        lines.append(f"| {name} | {s[1]} | {s[2]} | {_step_label(r0, n)} | " + " | ".join(cells) + " |")
    dkey_new = {"policy": NEW, "k": d["k"], "u": d["unanimous_k"], "step": d["step"]}
    dkey_old = {"policy": BASELINE, "k": old[1], "u": old[2], "step": old[3]}
    lines += [
        "",
        (
            f"## Families (the chosen default k={d['k']}, u={d['unanimous_k']}, step={d['step']}; "
            f"the old policy at k={old[1]})"
        ),
        "",
        "| family | zero-delta full N | zero-delta true | "
        + " | ".join(
            f"{sc}: old saved / identical | {sc}: new saved / identical / decided"
            for sc in SCENARIOS
        )
        + " |",
        "|---|---|---|" + "---|---|" * len(SCENARIOS),
    ]
    for f in FAMILIES:
        cells = []
        for sc in SCENARIOS:
            b = fam[f]["cells"][_key(dkey_old, sc)]
            a = fam[f]["cells"][_key(dkey_new, sc)]
            cells.append(f"{_pct(b['saved'])} / {_pct(b['identical'])}")
            cells.append(
                f"{_pct(a['saved'])} / {_pct(a['identical'])} / {_pct(a['stop_decided'])}"
            )
        lines.append(
            f"| {f} | {_pct(fam[f]['zero_delta_full'])} | {_pct(fam[f]['zero_delta_true'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "## Sensitivity: stray-answer rate of agreeing models (chosen default)",
        "",
        "Both models put 1-ε on the same answer. At N=8 and threshold 0.05 one stray answer among",
        "the 16 makes full-N call the prompt non-zero-delta (JSD 0.066), so the unanimity stop can",
        "only disagree with full N when a stray would have come later: the identical rate is",
        "about P(no stray in the remaining draws), set by ε and u. The fixed-decision stop cannot",
        "avoid these errors: while no stray has been seen, a later one can still make the prompt",
        "non-zero-delta, so such a prompt is never decided early.",
        "",
        "| ε | zero-delta full N | "
        + " | ".join(f"{sc}: old saved / identical | {sc}: new saved / identical" for sc in SCENARIOS)
        + " |",
        "|---|---|" + "---|---|" * len(SCENARIOS),
    ]
    for eps, res in extra["stray"].items():
        cells = []
        for sc in SCENARIOS:
            for want in (dkey_old, dkey_new):
                c = res["cells"][_key(want, sc)]
                cells.append(f"{_pct(c['saved'])} / {_pct(c['identical'])}")
        lines.append(f"| {eps} | {_pct(res['zero_delta_full'])} | " + " | ".join(cells) + " |")
    if extra["thresholds"]:
        lines += [
            "",
            "## Other thresholds (chosen default; the old policy at the same u)",
            "",
            "| threshold | mixture | "
            + " | ".join(
                f"{sc}: old saved / identical | {sc}: new saved / identical" for sc in SCENARIOS
            )
            + " |",
            "|---|---|" + "---|---|" * len(SCENARIOS),
        ]
        for thr, trows in extra["thresholds"].items():
            for mix in MIXTURES:
                cells = []
                for sc in SCENARIOS:
                    for want in (old, chosen):
                        r = _row(trows, mix, sc, want)
                        cells.append(f"{_pct(r['saved'])} / {_pct(r['identical'])}")
                lines.append(f"| {thr} | {mix} | " + " | ".join(cells) + " |")
    cc = meta["cross_check"]
    lines += [
        "",
        (
            f"Library cross-check: {cc['checked']} (prompt, setting, scenario) runs through "
            f"`pipeline.sampling.policy.adaptive_delta`, {cc['mismatches']} mismatches with the simulation "
            "(decision, samples per side, stop reason). Every fixed-decision stop of the "
            "simulation (all settings and thresholds) was checked against the full-N decision: "
            "none differs."
        ),
        "",
        "## Reading",
        "",
        *meta["reading"],
        "",
    ]
    path.write_text("\n".join(lines))


def reading(rows: list[dict], n: int, default: dict) -> list[str]:
    """Plain-language verdict per mixture, computed from the rows (not hand-written)."""
    out = []
    for mix in MIXTURES:
        for scenario in SCENARIOS:
            cand = [r for r in rows if r["mixture"] == mix and r["scenario"] == scenario]
            for policy in (BASELINE, NEW):
                pc = [r for r in cand if r["policy"] == policy]
                ok = [r for r in pc if _meets(r)]
                name = "old policy" if policy == BASELINE else "new policy"
                if ok:
                    best = max(ok, key=lambda r: (r["saved"], r["step"]))
                    out.append(
                        f"- {mix}/{scenario}, {name}: target met by {len(ok)} of {len(pc)} "
                        f"settings; most saved: {_policy_label(best, n)} ({_pct(best['saved'])} "
                        f"saved, {_pct(best['identical'])} identical)."
                    )
                else:
                    best = max(pc, key=lambda r: (r["identical"], r["saved"]))
                    fine = [r for r in pc if r["identical"] >= TARGET_IDENTICAL]
                    most = max(fine or pc, key=lambda r: r["saved"])
                    out.append(
                        f"- {mix}/{scenario}, {name}: target NOT met by any setting; most identical: "
                        f"{_policy_label(best, n)} ({_pct(best['saved'])} saved, "
                        f"{_pct(best['identical'])} identical); most saved"
                        + (f" with >= {_pct(TARGET_IDENTICAL)} identical" if fine else "")
                        + f": {_policy_label(most, n)} ({_pct(most['saved'])} saved, "
                        f"{_pct(most['identical'])} identical)."
                    )
    coupled = [
        r for r in rows
        if r["mixture"] == "easy" and r["scenario"] == "student_reused" and r["policy"] == NEW
        and r["k"] == r["u"]
    ]
    ok = [r for r in coupled if _meets(r)]
    fine = [r for r in coupled if r["identical"] >= TARGET_IDENTICAL]
    big = [r for r in coupled if r["saved"] >= TARGET_SAVED]
    if ok:
        best = max(ok, key=lambda r: r["saved"])
        line = f"met, best {_policy_label(best, n)} ({_pct(best['saved'])} / {_pct(best['identical'])})"
    else:
        line = "NOT met"
        if fine:
            r = max(fine, key=lambda r: r["saved"])
            line += f"; most saved with >= {_pct(TARGET_IDENTICAL)} identical: {_policy_label(r, n)} ({_pct(r['saved'])} / {_pct(r['identical'])})"
        if big:
            r = max(big, key=lambda r: r["identical"])
            line += f"; most identical with >= {_pct(TARGET_SAVED)} saved: {_policy_label(r, n)} ({_pct(r['saved'])} / {_pct(r['identical'])})"
    out.append(
        f"- easy/student_reused with the first round equal to the unanimity count (k = u, "
        f"one knob as before): target {line}."
    )
    k, u, step = default["k"], default["unanimous_k"], default["step"]
    chosen = (NEW, k, u, step)
    old = (BASELINE, u, u, n - u)
    old_shipped = (BASELINE, 3, 3, n - 3)
    out.append("")
    out.append(
        f"Default: `delta.k={k}`, `delta.unanimous_k={u}`, `delta.step={step}`"
        + (" (two rounds)" if default["two_rounds"] else "")
        + f": it {default['why']}. Rule: most saved in student_reused, a larger step (fewer "
        "rounds) winning when it saves at most 1 point less. At this setting (old policy at "
        f"k={u}, and at the previous default k=3, in brackets):"
    )
    for mix in MIXTURES:
        for scenario in SCENARIOS:
            new = _row(rows, mix, scenario, chosen)
            o = _row(rows, mix, scenario, old)
            o3 = next(
                (r for r in rows if r["mixture"] == mix and r["scenario"] == scenario
                 and _setting(r) == old_shipped),
                None,
            )
            prev = f"; k=3: {_pct(o3['saved'])} / {_pct(o3['identical'])}" if o3 else ""
            out.append(
                f"- {mix}/{scenario}: {_pct(new['saved'])} saved, {_pct(new['identical'])} identical "
                f"(old k={u}: {_pct(o['saved'])} / {_pct(o['identical'])}{prev}); stopped by "
                f"unanimity {_pct(new['stop_unanimous'])}, by a fixed decision "
                f"{_pct(new['stop_decided'])}; {new['rounds']:.2f} rounds on average, at most "
                f"{new['max_rounds']}; target {'met' if _meets(new) else 'NOT met'}."
            )
    out.append("")
    out.append(
        "The fixed-decision stop is exact, so every decision that differs from full N comes "
        "from the unanimity stop (a stray answer full N would have seen later); its error is "
        "set by u, not by k or step. The new stop adds savings without errors, mostly on "
        "disagreeing prompts and most in student_reused, where the student's N answers are "
        "known and one or two teacher draws can rule zero-delta out. A first round smaller "
        "than u lets those prompts stop before u draws, while prompts that are still unanimous "
        "are brought up to u in one round."
    )
    fresh_fail = [
        mix for mix in MIXTURES
        if not any(
            _meets(r) for r in rows
            if r["mixture"] == mix and r["scenario"] == "fresh" and r["policy"] == NEW
        )
    ]
    if fresh_fail:
        out.append("")
        out.append(
            f"Not met: in the fresh scenario ({', '.join(fresh_fail)}) no setting reaches the "
            "target. There a stray answer can come in either model's remaining draws, so the "
            "unanimity stop errs about twice as often at the same u, and ≥ 98% identical needs "
            "a u that leaves little to save on agreeing prompts; fixed decisions come later too "
            "(the student's answers are not known in advance). Where the student's answers are "
            "reused (the pipeline's case) the target is met as listed above."
        )
    return out


def run_families(
    names: list[str], args: argparse.Namespace, grid: list[dict], threshold: float,
    check: dict | None,
) -> dict:
    fam = {}
    for i, f in enumerate(names):
        fam[f] = simulate_family(f, args.prompts, args.n, grid, threshold, args.seed + i)
        streams = fam[f].pop("_streams")
        if check is not None:
            cc = cross_check(streams, args.n, grid, threshold, args.check)
            check["checked"] += cc["checked"]
            check["mismatches"] += cc["mismatches"]
    return fam


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20000, help="simulated prompts per family")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument(
        "--us", type=int, nargs="+", default=[2, 3, 4, 5, 6],
        help="unanimity counts u (the old policy's k)",
    )
    ap.add_argument(
        "--firsts", type=int, nargs="*", default=[1, 2], help="first rounds k smaller than u"
    )
    ap.add_argument(
        "--steps", type=int, nargs="+", default=[1, 2, 8], help="values >= n-k: two rounds"
    )
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--other-thresholds", type=float, nargs="*", default=[0.07])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--check",
        type=int,
        default=40,
        help="prompts per family and new-policy setting rerun through the library",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    grid = policies(args.n, args.us, args.firsts, args.steps)
    check = {"checked": 0, "mismatches": 0}
    fam = run_families(FAMILIES, args, grid, args.threshold, check)
    rows = mixture_rows(fam, grid)
    default = choose_default(rows, args.n)
    u = default["unanimous_k"]
    dgrid = [
        {"policy": BASELINE, "k": u, "u": u, "step": args.n - u},
        {"policy": NEW, "k": default["k"], "u": u, "step": default["step"]},
    ]
    stray = run_families([f"stray={e}" for e in STRAY_RATES], args, dgrid, args.threshold, None)
    extra = {
        "stray": {name.split("=")[1]: res for name, res in stray.items()},
        "thresholds": {
            str(t): mixture_rows(run_families(FAMILIES, args, dgrid, t, None), dgrid)
            for t in args.other_thresholds
        },
    }
    shipped = AdaptivePolicy()
    meta = {
        "command": (
            "PYTHONPATH=. python benchmarks/bench_adaptive.py "
            + " ".join(sys.argv[1:] if argv is None else argv)
        ).strip(),
        "n": args.n,
        "us": args.us,
        "firsts": args.firsts,
        "steps": args.steps,
        "threshold": args.threshold,
        "prompts_per_family": args.prompts,
        "seed": args.seed,
        "machine": f"{platform.machine()} {platform.python_version()}",
        "mixtures": {m: dict(zip(FAMILIES, w)) for m, w in MIXTURES.items()},
        "target": {"saved": TARGET_SAVED, "identical": TARGET_IDENTICAL},
        "cross_check": check,
        "default": default,
        "shipped_default": {
            f.name: getattr(shipped, f.name)
            for f in fields(shipped)
            if f.name in ("n", "k", "unanimous_k", "step", "threshold", "metric")
        },
    }
    meta["reading"] = reading(rows, args.n, default)
    meta["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "families": fam, "mixtures": rows, **extra}
    (args.out / "adaptive.json").write_text(json.dumps(payload, indent=2))
    write_markdown(args.out / "adaptive.md", meta, fam, rows, extra, grid)
    print((args.out / "adaptive.md").read_text())
    want = (default["k"], default["unanimous_k"], default["step"])
    if (args.n, args.threshold) == (shipped.n, shipped.threshold) and (
        (shipped.k, shipped.unanimous_k, shipped.step) != want
    ):
        print(
            f"note: the config ships k={shipped.k}, unanimous_k={shipped.unanimous_k}, "
            f"step={shipped.step}; the measurements choose k={want[0]}, unanimous_k={want[1]}, "
            f"step={want[2]}",
            file=sys.stderr,
        )
    return 1 if check["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
