"""Accuracy of models on a held-out prompt set, per skill and per source, before vs after.

Answers are read and compared with the project's rules (``pipeline.core.answers``), the same
ones the mine and delta stages use, so an accuracy here and a failure there mean the same
thing. Each row is scored in one match mode: ``relaxed`` (ChartQA's 5% numeric
tolerance) or ``exact`` give 1 or 0; ``anls`` gives the row's ANLS (0..1), so a group
scored with it reports mean ANLS, the DocVQA metric. The mode is ``match_mode``, or
``match_by_source[row.source]``, so one held-out set can score its charts relaxed and its
documents with ANLS.

Rows that cannot be asked are counted in ``skipped`` by reason and never scored (no gold
answer, an undecodable image); a request the engine fails is scored 0 and counted in
``errors``, so every model is scored on the same rows.

Two ways to get completions, one scoring path:

* ``engine_generator(engine)``: any :class:`pipeline.engines.Engine` (vLLM, transformers,
  OpenAI-compatible), the way stages see a model;
* ``model_generator(model, processor)``: greedy ``generate`` on an in-process
  transformers model, for evaluation inside a training loop without reloading.

    deltaprompts eval --model before=models/chartworld/student --model after=runs/opd/final \\
        --data data/chartworld-heldout --out runs/eval-opd
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.answers import anls_score, answers_match, extract_answer
from pipeline.core.config import DEFAULT_INSTRUCTION, load_config
from pipeline.core.errors import ArgumentParser, UsageError
from pipeline.core.reports import figure, save_png, write_json, write_text
from pipeline.core.skills import UNKNOWN
from pipeline.engines import EngineConfig, build_engine
from pipeline.sampling.prompts import build_request, format_question, user_message
from trainer.batching import end_of_turn_id
from trainer.data import BadPrompt, load_prompts, to_pil

MATCH_MODES = ("relaxed", "anls", "exact")

# (questions, images) -> [(text, truncated)], one completion per prompt; text is None
# where the request failed. Images are decoded RGB PIL images, or None for text-only rows.
Generator = Callable[[list[str], list[Any]], list[tuple[str | None, bool]]]


@dataclass
class EvalConfig:
    max_tokens: int = 64
    temperature: float = 0.0  # greedy: accuracy of the model's mode
    batch_size: int = 32
    # The answer-format instruction of the prompt builder: pass the run's
    # sampling.instruction so the rows are asked as they were measured and trained on.
    instruction: str | None = DEFAULT_INSTRUCTION
    match_mode: str = "relaxed"
    match_by_source: dict[str, str] = field(default_factory=dict)  # source -> mode
    limit: int | None = None  # evaluate the first `limit` rows that have gold answers

    def __post_init__(self):
        for where, mode in [("match_mode", self.match_mode)] + [
                (f"match_by_source[{s!r}]", m) for s, m in self.match_by_source.items()]:
            if mode not in MATCH_MODES:
                raise ValueError(f"{where}: unknown match mode {mode!r}; use one of {MATCH_MODES}")

    def mode_for(self, source: str) -> str:
        return self.match_by_source.get(source, self.match_mode)


@dataclass
class EvalReport:
    overall: tuple[float, int] = (0.0, 0)  # (sum of row scores, rows scored)
    by_skill: dict[str, tuple[float, int]] = field(default_factory=dict)
    by_source: dict[str, tuple[float, int]] = field(default_factory=dict)
    no_answer: int = 0  # completions where no final answer could be extracted
    errors: int = 0  # requests the engine failed (scored 0)
    skipped: dict[str, int] = field(default_factory=dict)  # rows not scored, by reason
    match_modes: dict[str, str] = field(default_factory=dict)  # source -> mode used
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def acc(pair: tuple[float, int]) -> float:
        return pair[0] / pair[1] if pair[1] else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "overall": round(self.acc(self.overall), 4), "n": self.overall[1],
            "no_answer": self.no_answer, "errors": self.errors,
            "skipped": dict(sorted(self.skipped.items())),
            "match_modes": dict(sorted(self.match_modes.items())),
            "by_skill": {k: round(self.acc(v), 4) for k, v in sorted(self.by_skill.items())},
            "by_source": {k: round(self.acc(v), 4) for k, v in sorted(self.by_source.items())},
        }


def gold_answers(row: dict[str, Any]) -> list[str]:
    """Gold answers of a canonical prompt row (``answers``) or a seed row (``answer``)."""
    if row.get("answers"):
        return [str(a) for a in row["answers"]]
    if row.get("answer") is not None:
        return [str(row["answer"])]
    return []


def score_answer(pred: str | None, golds: list[str], mode: str, choices: list[str] | None = None) -> float:
    """One row's score: ANLS in ``anls`` mode, else 1.0 for a match and 0.0 otherwise."""
    if mode == "anls":
        return anls_score(pred, golds)
    return float(answers_match(pred, golds, mode=mode, choices=choices))  # type: ignore[arg-type]


def _decoded_image(row: dict[str, Any]) -> Any:
    """The row's image as RGB PIL, None for a text-only row; BadPrompt if undecodable."""
    return None if row.get("image") is None else to_pil(row["image"])


def evaluate(generate: Generator, rows: Iterable[dict[str, Any]], cfg: EvalConfig | None = None) -> EvalReport:
    """Score one completion per row (greedy unless ``cfg.temperature`` > 0), in row order."""
    cfg = cfg or EvalConfig()
    report = EvalReport()
    skipped: dict[str, int] = defaultdict(int)
    candidates = []
    for row in rows:
        if gold_answers(row):
            candidates.append(row)
        else:
            skipped["no_gold"] += 1
    candidates = candidates[: cfg.limit]
    sums: dict[str, dict[str, list]] = {"skill": defaultdict(lambda: [0.0, 0]),
                                        "source": defaultdict(lambda: [0.0, 0])}
    for start in range(0, len(candidates), cfg.batch_size):
        chunk, images = [], []
        for row in candidates[start:start + cfg.batch_size]:  # decode one batch at a time
            try:
                images.append(_decoded_image(row))
            except BadPrompt as e:
                skipped[e.reason] += 1
                continue
            chunk.append(row)
        if not chunk:
            continue
        questions = [format_question(r["question"], r.get("choices") or None, cfg.instruction)
                     for r in chunk]
        outputs = generate(questions, images)
        if len(outputs) != len(chunk):
            raise RuntimeError(f"generator returned {len(outputs)} completions for {len(chunk)} prompts")
        for row, (text, truncated) in zip(chunk, outputs):
            choices = list(row.get("choices") or []) or None
            golds = gold_answers(row)
            source = row.get("source") or row.get("type") or UNKNOWN
            mode = cfg.mode_for(source)
            pred = None if text is None else extract_answer(text, choices, truncated=truncated)
            score = score_answer(pred, golds, mode, choices)
            report.errors += text is None
            report.no_answer += text is not None and pred is None
            report.match_modes[source] = mode
            for key, name in (("skill", row.get("skill") or UNKNOWN), ("source", source)):
                sums[key][name][0] += score
                sums[key][name][1] += 1
            report.predictions.append({"id": row.get("id"), "question": row["question"], "gold": golds,
                                       "text": text, "pred": pred, "score": round(score, 4),
                                       "correct": score > 0, "mode": mode,
                                       "skill": row.get("skill"), "source": source})
    total = sum(v[1] for v in sums["source"].values())
    report.overall = (sum(v[0] for v in sums["source"].values()), total)
    report.by_skill = {k: (v[0], v[1]) for k, v in sums["skill"].items()}
    report.by_source = {k: (v[0], v[1]) for k, v in sums["source"].items()}
    report.skipped = dict(skipped)
    return report


# --- completion providers ----------------------------------------------------------------
def engine_generator(engine, cfg: EvalConfig | None = None, seed: int = 0) -> Generator:
    cfg = cfg or EvalConfig()

    def gen(questions: list[str], images: list[Any]) -> list[tuple[str | None, bool]]:
        reqs = [build_request(q, im, id=str(i)) for i, (q, im) in enumerate(zip(questions, images))]
        results = engine.sample(reqs, n=1, temperature=cfg.temperature,
                                max_tokens=cfg.max_tokens, seed=seed)
        out: list[tuple[str | None, bool]] = []
        for res in results:
            if res.error or not res.completions:
                out.append((None, False))
            else:
                c = res.completions[0]
                out.append((c.text, c.finish_reason == "length"))
        return out

    return gen


def model_generator(model, processor, cfg: EvalConfig | None = None) -> Generator:
    """Greedy generation with an in-process transformers model (left-padded batches)."""
    cfg = cfg or EvalConfig()
    tok = processor.tokenizer
    stop = end_of_turn_id(tok)

    def gen(questions: list[str], images: list[Any]) -> list[tuple[str | None, bool]]:
        texts = [processor.apply_chat_template(user_message(q, 0 if im is None else 1),
                                               add_generation_prompt=True, tokenize=False)
                 for q, im in zip(questions, images)]
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the last real token
        try:
            kept = [im for im in images if im is not None]
            inputs = processor(text=texts, images=kept or None, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=cfg.max_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tok.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        results: list[tuple[str | None, bool]] = []
        for ids in new:
            ended = stop in ids
            ids = ids[: ids.index(stop)] if ended else ids
            results.append((tok.decode(ids, skip_special_tokens=True), not ended))
        return results

    return gen


def evaluate_model(path: str, rows: list[dict[str, Any]], cfg: EvalConfig, engine: str = "transformers",
                   device: str = "auto") -> EvalReport:
    """One model folder (or Hub id) scored on ``rows`` through an engine, loaded and closed
    here: what `deltaprompts eval` does per model, `refresh` per round, benchmarks per arm."""
    with build_engine(EngineConfig(engine=engine, model=path, batch_size=cfg.batch_size,
                                   device=device)) as eng:
        return evaluate(engine_generator(eng, cfg), rows, cfg)


def accuracy_record(path: str, rows: list[dict[str, Any]], cfg: EvalConfig,
                    device: str = "auto") -> dict[str, Any]:
    """:func:`evaluate_model` as the record refresh keeps per round and its benchmark per
    arm: n, overall, by_skill, no_answer and the seconds it took."""
    t0 = time.perf_counter()
    s = evaluate_model(path, rows, cfg, device=device).summary()
    return {"n": s["n"], "overall": s["overall"], "by_skill": s["by_skill"],
            "no_answer": s["no_answer"], "seconds": round(time.perf_counter() - t0, 1)}


# --- reporting -----------------------------------------------------------------------------
def format_table(reports: dict[str, EvalReport], skills: Iterable[str] | None = None,
                 by: str = "skill") -> str:
    """Markdown table: one column per model, one row per skill (or source), then overall."""
    groups = {name: (r.by_skill if by == "skill" else r.by_source) for name, r in reports.items()}
    keys = list(skills or sorted({k for g in groups.values() for k in g}))
    head = f"| {by} | n | " + " | ".join(reports) + " |\n|---|---:|" + "---:|" * len(reports) + "\n"
    lines = []
    for k in keys:
        n = max(g.get(k, (0, 0))[1] for g in groups.values())
        cells = [f"{100 * EvalReport.acc(g[k]):.1f}%" if k in g else "-" for g in groups.values()]
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
    n = max(r.overall[1] for r in reports.values())
    cells = [f"**{100 * EvalReport.acc(r.overall):.1f}%**" for r in reports.values()]
    lines.append(f"| **overall** | {n} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot_accuracy(reports: dict[str, EvalReport]):
    """Grouped bars: accuracy per skill and overall, one bar per model (a Figure)."""
    skills = sorted({s for r in reports.values() for s in r.by_skill}) + ["overall"]
    x = np.arange(len(skills))
    width = 0.8 / len(reports)
    fig, (ax,) = figure(width=max(6.0, 1.1 * len(skills) + 2), height=3.6)
    for i, (name, r) in enumerate(reports.items()):
        vals = [EvalReport.acc(r.overall if s == "overall" else r.by_skill.get(s, (0.0, 0))) for s in skills]
        ax.bar(x + (i - (len(reports) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, skills, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return fig


def write_outputs(out: Path, reports: dict[str, EvalReport], header: str) -> None:
    """``summary.json``, ``accuracy.md`` (per skill and per source), ``accuracy.png`` and
    one ``predictions-<i>.jsonl`` per model (i = the model's position on the command line)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", {k: r.summary() for k, r in reports.items()})
    anls = sorted({s for r in reports.values() for s, m in r.match_modes.items() if m == "anls"})
    note = f"\nScored with ANLS (mean, 0..1), not accuracy: {', '.join(anls)}.\n" if anls else ""
    write_text(out / "accuracy.md",
               f"{header}\n\n{format_table(reports)}\n{format_table(reports, by='source')}{note}")
    save_png(plot_accuracy(reports), out / "accuracy.png", dpi=90)
    for i, r in enumerate(reports.values()):
        write_text(out / f"predictions-{i}.jsonl", "".join(json.dumps(p) + "\n" for p in r.predictions))


def _named_models(specs: list[str]) -> dict[str, str]:
    """``[NAME=]PATH`` words -> {name: path}; the name defaults to the path."""
    models: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (spec, "", spec)
        if not name or not path:
            raise UsageError(f"--model {spec!r}: expected PATH or NAME=PATH")
        if name in models:
            raise UsageError(f"two models are named {name!r}; name them with NAME=PATH")
        models[name] = path
    for name, path in models.items():  # before any model loads: a typo fails in a second
        if not Path(path).expanduser().exists() and (
                path.startswith((".", "/", "~")) or path.count("/") != 1):
            raise UsageError(f"--model {name}={path}: no such model folder {path!r}, and not a "
                             "Hub id (user/name) either; give a model folder or a Hub id")
    return models


def _source_modes(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        source, _, mode = spec.rpartition("=")
        if not source or mode not in MATCH_MODES:
            raise UsageError(f"--match {spec!r}: expected SOURCE=MODE with MODE one of {MATCH_MODES}")
        out[source] = mode
    return out


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(
        prog="deltaprompts eval",
        description="Accuracy of one or more models on a held-out prompt set, per skill and per "
        "source, with the pipeline's answer matching (relaxed; ANLS for documents with --match). "
        "Give the student before and after training to compare them side by side.")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                   help="model folder or Hub id; repeat to compare (e.g. before=DIR after=DIR)")
    p.add_argument("--data", required=True,
                   help="held-out prompts: Parquet file or glob, dataset folder (save_to_disk or "
                   "Parquet shards) or Hub dataset id (user/name[@revision])")
    p.add_argument("--split", default="test", help="split of a saved DatasetDict or Hub dataset (default test)")
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--n", type=int, default=None, help="first n rows with gold answers only")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--config", help="the run config the data was built with: its "
                   "sampling.instruction is the one asked (as mine, delta and OPD ask it)")
    p.add_argument("--instruction", default=None,
                   help="the answer-format instruction appended by the prompt builder "
                   "(default: --config's sampling.instruction, else the pipeline's default)")
    p.add_argument("--match-mode", default="relaxed", choices=MATCH_MODES,
                   help="answer matching for every row (default relaxed: ChartQA's 5%% tolerance)")
    p.add_argument("--match", action="append", default=[], metavar="SOURCE=MODE",
                   help="another mode for one source's rows, e.g. lmms-lab/DocVQA=anls (repeatable)")
    p.add_argument("--out", default=None,
                   help="folder for summary.json, accuracy.md, accuracy.png and predictions-<i>.jsonl")
    a = p.parse_args(argv)
    models = _named_models(a.model)
    instruction = a.instruction
    if instruction is None:
        instruction = load_config(a.config).sampling.instruction if a.config else DEFAULT_INSTRUCTION
    cfg = EvalConfig(max_tokens=a.max_tokens, batch_size=a.batch_size, instruction=instruction,
                     limit=a.n, match_mode=a.match_mode, match_by_source=_source_modes(a.match))
    rows = list(load_prompts(a.data, split=a.split))
    reports: dict[str, EvalReport] = {}
    for name, path in models.items():
        reports[name] = evaluate_model(path, rows, cfg, engine=a.engine)
        print(name, json.dumps(reports[name].summary()), flush=True)
    print(format_table(reports))
    print(format_table(reports, by="source"))
    if a.out:
        words = sys.argv[1:] if argv is None else argv
        header = (f"# Held-out accuracy\n\nCommand: `deltaprompts eval {shlex.join(words)}`\n\n"
                  f"Greedy decoding ({a.engine}), up to {a.max_tokens} new tokens; answers read "
                  f"and matched with pipeline.core.answers ({a.match_mode} unless --match says otherwise).")
        write_outputs(Path(a.out), reports, header)
        print(f"wrote {a.out}/summary.json, accuracy.md, accuracy.png, predictions-*.jsonl")


if __name__ == "__main__":
    main()
