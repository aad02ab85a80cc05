"""Per-skill accuracy of the toy teacher and student on the held-out chart-world set.

    python -m tools.toy_report --models models/chartworld --n 2000 \\
        --out benchmarks/results/chartworld_models.md

The held-out set is chart-world seed 2 (training used seed 1), examples 0..n-1 of the
default world, all skills equally likely. Answers are read and matched with
``pipeline.core.answers`` (the stages' own rules); decoding is greedy.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

from pipeline.engines import EngineConfig, build_engine
from seeds.chartworld.spec import SKILLS, WorldConfig
from tools.train_toys import HELDOUT_SEED, INSTRUCTIONS, heldout_rows
from trainer.eval import (
    EvalConfig,
    EvalReport,
    engine_generator,
    evaluate,
    format_table,
    model_generator,
)


def by_family(rows: list[dict], report: EvalReport) -> dict[str, tuple[int, int]]:
    """(correct, total) per question family; ``evaluate`` keeps the rows' order."""
    if len(rows) != len(report.predictions):
        raise ValueError(f"{len(report.predictions)} predictions for {len(rows)} rows")
    counts: dict[str, list[int]] = {}
    for row, pred in zip(rows, report.predictions):
        if pred["question"] != row["question"]:
            raise ValueError(f"prediction for {pred['question']!r} is not row {row['question']!r}")
        c = counts.setdefault(row["family"], [0, 0])
        c[0] += pred["correct"]
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(counts.items())}


def evaluate_dir(model_dir: Path, rows: list[dict], cfg: EvalConfig, engine: str) -> tuple[EvalReport, float]:
    t0 = time.time()
    if engine == "transformers-inprocess":
        processor = transformers.AutoProcessor.from_pretrained(model_dir)
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=torch.float32).eval()
        report = evaluate(model_generator(model, processor, cfg), rows, cfg)
    else:
        with build_engine(EngineConfig(engine=engine, model=str(model_dir),
                                       batch_size=cfg.batch_size)) as eng:
            report = evaluate(engine_generator(eng, cfg), rows, cfg)
    return report, time.time() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.toy_report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models/chartworld", help="folder with teacher/ and student/")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=HELDOUT_SEED)
    p.add_argument("--engine", default="transformers-inprocess",
                   choices=["transformers-inprocess", "transformers", "vllm"])
    p.add_argument("--instruction", type=int, default=0, choices=range(len(INSTRUCTIONS)),
                   help="which training instruction to append (0 = bare question)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="markdown file to write")
    p.add_argument("--json", default=None, help="also write summaries + predictions here")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    rows = heldout_rows(WorldConfig(), a.n, seed=a.seed)
    reports, times = {}, {}
    for name, max_tokens in (("teacher", 64), ("student", 64)):  # both write a <think> first
        cfg = EvalConfig(max_tokens=max_tokens, batch_size=64,
                         instruction=INSTRUCTIONS[a.instruction] or None)
        reports[name], times[name] = evaluate_dir(Path(a.models) / name, rows, cfg, a.engine)
        print(name, json.dumps(reports[name].summary()), f"{times[name]:.0f}s", flush=True)
    command = "python -m tools.toy_report " + shlex.join(sys.argv[1:] if argv is None else argv)
    table = format_table(reports, skills=SKILLS)
    kinds = format_table({k: EvalReport(overall=r.overall, by_skill=r.by_source)
                          for k, r in reports.items()})
    families = format_table({k: EvalReport(overall=r.overall, by_skill=by_family(rows, r))
                             for k, r in reports.items()})
    text = f"""# Chart-world toy models: held-out accuracy per skill

Command: `{command}`

Held-out set: {a.n} chart-world questions, seed {a.seed} (training used seed 1), default
world (`seeds.chartworld.WorldConfig()`: bar/line/pie/table/document, 3-5 items, values
1-9, value labels on, 160x128 px), all skills equally likely. Prompt: the question{"" if not a.instruction else " + a newline + " + repr(INSTRUCTIONS[a.instruction])}. Greedy decoding (engine: {a.engine}); answers
extracted and matched with `pipeline.core.answers` (relaxed).
Machine: {platform.machine()}, {a.threads} threads; evaluation time teacher
{times['teacher']:.0f} s, student {times['student']:.0f} s.

{table}
By chart kind (same runs):

{kinds.replace("| skill |", "| kind |")}
By question family (same runs; seeds/chartworld/questions.py):

{families.replace("| skill |", "| family |")}
No answer extracted: teacher {reports['teacher'].no_answer}, student {reports['student'].no_answer}.
"""
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps(
            {k: {"summary": r.summary(), "predictions": r.predictions} for k, r in reports.items()},
            indent=1))


if __name__ == "__main__":
    main()
