"""Accuracy of a model on a held-out prompt table, per skill and per source.

Answers are read and compared with the project's rules (``pipeline.answers``:
``extract_answer`` + ``answers_match``), the same ones the mine and delta stages use, so
an accuracy here and a failure there mean the same thing.

Two ways to get completions, one scoring path:

* ``engine_generator(engine)``: any :class:`pipeline.engines.Engine` (vLLM, transformers,
  OpenAI-compatible), the way stages see a model;
* ``model_generator(model, processor)``: greedy ``generate`` on an in-process
  transformers model, for evaluation inside a training loop without reloading.

    python -m trainer.eval --model DIR --data heldout.parquet [--engine vllm] [--n 2000]
"""

from __future__ import annotations

import argparse
import io
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.answers import answers_match, extract_answer

# (questions, images) -> [(text, truncated)] — one completion per prompt
Generator = Callable[[list[str], list[Any]], list[tuple[str, bool]]]


@dataclass
class EvalConfig:
    max_tokens: int = 64
    temperature: float = 0.0  # greedy: accuracy of the model's mode
    batch_size: int = 32
    instruction: str | None = None  # appended to each question (after a newline) when set
    match_mode: str = "relaxed"
    limit: int | None = None  # evaluate the first `limit` rows only


@dataclass
class EvalReport:
    overall: tuple[int, int] = (0, 0)  # (correct, total)
    by_skill: dict[str, tuple[int, int]] = field(default_factory=dict)
    by_source: dict[str, tuple[int, int]] = field(default_factory=dict)
    no_answer: int = 0  # completions where no final answer could be extracted
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def acc(pair: tuple[int, int]) -> float:
        return pair[0] / pair[1] if pair[1] else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "overall": round(self.acc(self.overall), 4), "n": self.overall[1],
            "no_answer": self.no_answer,
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


def image_of(row: dict[str, Any]) -> Any:
    img = row.get("image")
    if isinstance(img, dict):
        return img.get("bytes") or img.get("path")
    return img


def evaluate(generate: Generator, rows: Sequence[dict[str, Any]], cfg: EvalConfig | None = None) -> EvalReport:
    """Score one greedy (or sampled) completion per row; rows without gold are skipped."""
    cfg = cfg or EvalConfig()
    rows = [r for r in rows if gold_answers(r)][: cfg.limit]
    correct: dict[str, dict[str, list[int]]] = {"skill": defaultdict(lambda: [0, 0]),
                                                "source": defaultdict(lambda: [0, 0])}
    report = EvalReport()
    hits = 0
    for start in range(0, len(rows), cfg.batch_size):
        chunk = rows[start:start + cfg.batch_size]
        questions = [r["question"] + (f"\n{cfg.instruction}" if cfg.instruction else "") for r in chunk]
        outputs = generate(questions, [image_of(r) for r in chunk])
        for row, (text, truncated) in zip(chunk, outputs):
            pred = extract_answer(text, row.get("choices") or None, truncated=truncated)
            ok = answers_match(pred, gold_answers(row), mode=cfg.match_mode,  # type: ignore[arg-type]
                               choices=row.get("choices") or None)
            report.no_answer += pred is None
            hits += ok
            for key, name in (("skill", row.get("skill") or "unknown"),
                              ("source", row.get("source") or row.get("type") or "unknown")):
                correct[key][name][0] += ok
                correct[key][name][1] += 1
            report.predictions.append({"question": row["question"], "gold": gold_answers(row),
                                       "text": text, "pred": pred, "correct": bool(ok),
                                       "skill": row.get("skill")})
    report.overall = (hits, len(rows))
    report.by_skill = {k: tuple(v) for k, v in correct["skill"].items()}
    report.by_source = {k: tuple(v) for k, v in correct["source"].items()}
    return report


# --- completion providers ----------------------------------------------------------------
def engine_generator(engine, cfg: EvalConfig | None = None, seed: int = 0) -> Generator:
    from pipeline.engines.base import Request, user_message

    cfg = cfg or EvalConfig()

    def gen(questions: list[str], images: list[Any]) -> list[tuple[str, bool]]:
        reqs = [Request(messages=user_message(q, 0 if im is None else 1),
                        images=[] if im is None else [im], id=str(i))
                for i, (q, im) in enumerate(zip(questions, images))]
        results = engine.sample(reqs, n=1, temperature=cfg.temperature,
                                max_tokens=cfg.max_tokens, seed=seed)
        out = []
        for res in results:
            if res.error or not res.completions:
                out.append(("", False))  # a failed request counts as a wrong answer
            else:
                c = res.completions[0]
                out.append((c.text, c.finish_reason == "length"))
        return out

    return gen


def model_generator(model, processor, cfg: EvalConfig | None = None) -> Generator:
    """Greedy generation with an in-process transformers model (left-padded batches)."""
    import torch
    from PIL import Image

    from trainer.batching import end_of_turn_id, user_messages

    cfg = cfg or EvalConfig()
    tok = processor.tokenizer
    stop = end_of_turn_id(tok)

    def gen(questions: list[str], images: list[Any]) -> list[tuple[str, bool]]:
        pil = [Image.open(io.BytesIO(im)).convert("RGB") if isinstance(im, (bytes, bytearray))
               else im for im in images]
        texts = [processor.apply_chat_template(user_messages(q, 0 if im is None else 1),
                                               add_generation_prompt=True, tokenize=False)
                 for q, im in zip(questions, pil)]
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the last real token
        try:
            kept = [im for im in pil if im is not None]
            inputs = processor(text=texts, images=kept or None, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=cfg.max_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tok.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        results = []
        for ids in new:
            ended = stop in ids
            ids = ids[: ids.index(stop)] if ended else ids
            results.append((tok.decode(ids, skip_special_tokens=True), not ended))
        return results

    return gen


def format_table(reports: dict[str, EvalReport], skills: Sequence[str] | None = None) -> str:
    """Markdown table: one column per model, one row per skill, then overall."""
    names = list(reports)
    skills = list(skills or sorted({s for r in reports.values() for s in r.by_skill}))
    head = "| skill | n | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names) + "\n"
    lines = []
    for s in skills:
        n = max(r.by_skill.get(s, (0, 0))[1] for r in reports.values())
        cells = [f"{100 * EvalReport.acc(r.by_skill[s]):.1f}%" if s in r.by_skill else "-"
                 for r in reports.values()]
        lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
    n = max(r.overall[1] for r in reports.values())
    cells = [f"**{100 * EvalReport.acc(r.overall):.1f}%**" for r in reports.values()]
    lines.append(f"| **overall** | {n} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    p = argparse.ArgumentParser(prog="python -m trainer.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="Parquet prompt table (seed or canonical rows)")
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--n", type=int, default=None, help="first n rows only")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--instruction", default=None)
    p.add_argument("--json", default=None, help="write the summary (and predictions) here")
    a = p.parse_args(argv)
    from pipeline.engines import EngineConfig, build_engine

    cfg = EvalConfig(max_tokens=a.max_tokens, batch_size=a.batch_size,
                     instruction=a.instruction, limit=a.n)
    rows = pq.read_table(a.data).to_pylist()
    with build_engine(EngineConfig(engine=a.engine, model=a.model, batch_size=a.batch_size)) as engine:
        report = evaluate(engine_generator(engine, cfg), rows, cfg)
    print(json.dumps(report.summary(), indent=2))
    print(format_table({a.model: report}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": asdict(cfg), "summary": report.summary(),
                       "predictions": report.predictions}, f, indent=1)


if __name__ == "__main__":
    main()
