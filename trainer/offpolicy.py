"""Off-policy fine-tuning: the student learns the teacher's own sampled answers.

    deltaprompts train offpolicy --data runs/demo/06-assemble/dataset \\
        --set model=models/chartworld/student --set output_dir=runs/offpolicy --set steps=200

The delta stage keeps the teacher's raw samples (`teacher_samples`) and its majority
answer; the target of a prompt is the first teacher sample whose extracted answer is that
majority, so the student imitates a typical *correct-by-consensus* completion (reasoning
included), never a stray one. Only text crosses between the models, so this is the path
that works across model families with different tokenizers.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.core.answers import extract_answer
from pipeline.core.configschema import load_dataclass
from pipeline.core.divergence import answer_class
from pipeline.core.errors import ArgumentParser
from pipeline.sampling.prompts import format_question
from trainer.config import SFTConfig
from trainer.data import load_prompts
from trainer.sft import train_sft


def teacher_target(samples: list[str] | None, majority: str | None,
                   choices: list[str] | None = None) -> str | None:
    """The first teacher sample whose final answer falls in the majority class."""
    if not samples or majority is None:
        return None
    for text in samples:
        if answer_class(extract_answer(text, choices), choices) == majority:
            return text.strip()
    return None


def teacher_rows(dataset, instruction: str | None) -> tuple[list[dict[str, Any]], int]:
    """SFT rows {"image", "question", "target"} from a built dataset, and the count of
    prompts skipped for having no usable teacher sample.

    ``question`` is the prompt the teacher answered (pipeline/sampling/prompts.py: options
    included, then ``instruction``, which must be the run's sampling.instruction)."""
    missing = [c for c in ("teacher_samples", "teacher_majority") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no {missing} column(s): build it with the delta stage, "
                         "or use `deltaprompts train sft` with explicit targets")
    rows, skipped = [], 0
    for r in dataset:
        target = teacher_target(r["teacher_samples"], r["teacher_majority"], r.get("choices") or None)
        if target is None:
            skipped += 1
            continue
        question = format_question(r["question"], r.get("choices") or None, instruction)
        rows.append({"image": r["image"], "question": question, "target": target})
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="deltaprompts train offpolicy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="built dataset folder, Parquet glob or Hub id (user/name[@revision])")
    p.add_argument("--split", default="train")
    p.add_argument("--config", help="YAML with SFTConfig fields (or an `sft:` section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an SFTConfig field, e.g. --set model=PATH --set steps=200")
    args = p.parse_args(argv)
    cfg = load_dataclass(SFTConfig, args.config, args.overrides, section="sft")
    rows, skipped = teacher_rows(load_prompts(args.data, args.split), cfg.instruction)
    print(f"off-policy: {len(rows)} prompts with a teacher target, {skipped} skipped (no sample "
          "in the teacher's majority class)")
    if not rows:
        return 1
    print(train_sft(cfg, rows))
    return 0
