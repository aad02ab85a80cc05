"""Train the chart-world toy teacher and student (tiny Qwen3-VL) on the CPU.

    python -m seeds.chartworld.train_toys --out models/chartworld            # both
    python -m seeds.chartworld.train_toys --out /tmp/probe --only teacher --steps 50

Both models share one tokenizer (trained here on chart-world text) and start from random
weights built by ``pipeline.tiny_models``. The gap between them is designed, not hoped for:

* the teacher is larger and is trained to write a short ``<think>`` block that transcribes
  the chart and does the one arithmetic step, then ``Answer: X``;
* the student is smaller, answers directly (``Answer: X``), and sees little arithmetic and
  multi-hop data. Reading values (retrieval, extremum) it learns as well as the teacher;
  computing with them in one forward pass of a one-layer model it mostly cannot, which is
  where distillation from the teacher can help.

The world (seeds.chartworld.spec.WorldConfig defaults) is chosen for learnability on a
CPU: value labels printed on every mark, 160x128 images (20 vision tokens), values 1-9.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from seeds.chartworld.generator import direct_target, generate, make_example, reasoning_target
from seeds.chartworld.spec import LABEL_SETS, SKILLS, TITLES, WorldConfig

TRAIN_SEED = 1  # the training stream
HELDOUT_SEED = 2  # the held-out evaluation set (never trained on)

# Prompts the pipeline may send: the bare question, or the question with the run's
# answer-format instruction appended (pipeline.config.SamplingConfig.instruction and
# pipeline.delta.DEFAULT_INSTRUCTION). Training on all three keeps the toy models'
# answers stable whichever the demo uses.
INSTRUCTIONS: list[str] = [
    "",
    "Answer with a single word or number, as: Answer: <answer>",
    "Answer the question. Keep any reasoning short and end with a final line of the form "
    "'Answer: <value>'.",
]


@dataclass
class ToySpec:
    """One toy model: architecture, what it is trained on, and how long."""

    name: str
    target: Literal["reasoning", "direct"]
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vision_depth: int = 2
    vision_hidden: int = 64
    skill_weights: dict[str, float] | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    seed: int = 0


TEACHER = ToySpec(
    name="teacher", target="reasoning", hidden_size=256, num_layers=4, num_heads=4,
    intermediate_size=768, vision_depth=2, vision_hidden=128, steps=1500, seed=0,
)
# The student sees each of arithmetic and multi-hop at 1/20 the rate of the other skills.
STUDENT = ToySpec(
    name="student", target="direct", hidden_size=128, num_layers=1, num_heads=2,
    intermediate_size=384, vision_depth=2, vision_hidden=64, steps=800, seed=1,
    skill_weights={s: (0.05 if s in ("arithmetic", "multihop") else 1.0) for s in SKILLS},
)
SPECS = {"teacher": TEACHER, "student": STUDENT}


def prompt_text(question: str, rng: random.Random) -> str:
    instruction = rng.choice(INSTRUCTIONS)
    return f"{question}\n{instruction}" if instruction else question


class ChartWorldRows(Sequence):
    """A lazily generated training stream: row i = chart-world example i as
    ``{"image", "question", "target"}``; the prompt variant is drawn from the same seed."""

    def __init__(self, world: WorldConfig, n: int, seed: int, target: str):
        world.validate()
        self.world, self.n, self.seed, self.target = world, n, seed, target

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        ex = make_example(self.world, self.seed, i)
        rng = random.Random(f"prompt:{self.seed}:{i}")
        fn = reasoning_target if self.target == "reasoning" else direct_target
        return {"image": ex.image, "question": prompt_text(ex.qa.question, rng),
                "target": fn(ex.qa), "skill": ex.qa.skill}


def tokenizer_corpus(n_examples: int = 3000) -> list[str]:
    """Chart-world questions and targets, the instructions, plus the default corpus, so the
    BPE merges make the toy prompts and answers short."""
    from pipeline.tiny_models import DEFAULT_CORPUS

    corpus = list(DEFAULT_CORPUS) + [i for i in INSTRUCTIONS if i]
    corpus += [" ".join(v) for v in LABEL_SETS.values()] + [" ".join(TITLES)]
    for ex in generate(WorldConfig(), n_examples, seed=12345):
        corpus += [ex.qa.question, reasoning_target(ex.qa)]
    return corpus


def heldout_rows(world: WorldConfig, n: int, seed: int = HELDOUT_SEED) -> list[dict[str, Any]]:
    return [{"image": ex.image, "question": ex.qa.question, "answer": ex.qa.answer,
             "skill": ex.qa.skill, "type": f"chartworld_{ex.chart.kind}"}
            for ex in generate(world, n, seed=seed)]


def white_is_zero(model_dir: Path) -> None:
    """Set the processor's pixel normalisation so a white page maps to 0 (ink to < 0).

    With the default CLIP normalisation white is about +1.9 in every channel, so the
    mostly-white chart patches all embed to one large shared vector and the few ink pixels
    that carry the content are a small perturbation of it; early in training a from-scratch
    model then learns to treat image tokens as a constant (measured: token-to-token
    variation fell to ~1% of the image-embedding norm after 200 steps, and the model
    ignored the image). With white at 0, a patch's embedding is driven by its ink alone.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.image_processor.image_mean = [1.0, 1.0, 1.0]
    processor.image_processor.image_std = [0.5, 0.5, 0.5]
    processor.save_pretrained(model_dir)


def short_rope(model_dir: Path, theta: float = 10_000.0) -> None:
    """Use RoPE base 10,000 instead of Qwen3-VL's 5,000,000 (a config value; vLLM reads it).

    The large base is for 256k-token contexts: over a 100-token toy prompt it leaves almost
    no dimension that tells neighbouring positions apart, and a tiny model then struggles
    to learn even "copy the label after 'of' in the question" (measured: with an answer
    instruction appended, 3 of 8 labels still miscopied after 150 steps at 5e6; all 8
    right at 1e4).
    """
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["text_config"]["rope_parameters"]["rope_theta"] = theta
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def seed_position_code(model_dir: Path, seed: int = 0) -> None:
    """Initialise the vision tower's learned position table with a strong factorised code
    (half the channels a random unit-variance code of the row, half one of the column)
    instead of N(0, 0.02).

    The language model finds "the k-th bar" by content: its text positions sit at an
    offset from the image that varies with the question's length, so a fixed relative
    (RoPE) pattern cannot point at a grid cell. Absolute position reaches the image tokens
    only through this table, and at the default scale it is ~50x weaker than the patch
    content, so the model would first have to grow it before it could address a cell.
    Random codes of distinct rows (columns) are nearly orthogonal, and a column shares its
    code across rows. An initialisation choice; the architecture is unchanged.
    """
    import math

    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    table = model.model.visual.pos_embed.weight  # (side*side, hidden), row-major grid
    side, dim = math.isqrt(table.shape[0]), table.shape[1]
    g = torch.Generator().manual_seed(seed)
    row_code = torch.randn(side, dim // 2, generator=g)
    col_code = torch.randn(side, dim - dim // 2, generator=g)
    code = torch.cat([row_code[:, None, :].expand(side, side, -1),
                      col_code[None, :, :].expand(side, side, -1)], dim=2)
    with torch.no_grad():
        table.copy_(code.reshape(side * side, dim))
    model.save_pretrained(model_dir)


def train_one(spec: ToySpec, out_root: Path, tokenizer, world: WorldConfig, *,
              eval_n: int, eval_every: int, threads: int, steps: int | None = None) -> dict[str, Any]:
    import torch

    from pipeline.tiny_models import build_tiny_qwen3vl
    from trainer.eval import EvalConfig, evaluate, model_generator
    from trainer.sft import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    steps = steps or spec.steps
    work = out_root / "_work" / spec.name
    init = build_tiny_qwen3vl(
        work / "init", tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
        num_heads=spec.num_heads, head_dim=64, intermediate_size=spec.intermediate_size,
        vision_depth=spec.vision_depth, vision_hidden=spec.vision_hidden,
        image_size=-(-max(world.width, world.height) // 32) * 32,  # processor cap >= the image
        seed=spec.seed)
    white_is_zero(init)
    seed_position_code(init)
    short_rope(init)
    train_world = WorldConfig(**{**asdict(world), "skill_weights": spec.skill_weights})
    rows = ChartWorldRows(train_world, steps * spec.batch_size, TRAIN_SEED, spec.target)
    probe = heldout_rows(world, eval_n, seed=HELDOUT_SEED + 100)  # a quick monitor, not the report
    ecfg = EvalConfig(max_tokens=48 if spec.target == "reasoning" else 12, batch_size=64)

    def eval_fn(model, processor, step):
        return evaluate(model_generator(model, processor, ecfg), probe, ecfg).summary()

    cfg = SFTConfig(model=str(init), output_dir=str(work / "sft"), steps=steps,
                    batch_size=spec.batch_size, lr=spec.lr, warmup_steps=spec.warmup_steps,
                    seed=spec.seed, shuffle=False, log_every=10, save_every=100,
                    eval_every=eval_every, num_threads=threads, progress=False,
                    weight_decay=0.01)
    t0 = time.time()
    trainer = SFTTrainer(cfg, rows, eval_fn=eval_fn if eval_every else None)
    final = trainer.train()
    return {"final": str(final), "train_wall_s": round(time.time() - t0, 1),
            "train_s": round(trainer.state.elapsed_s, 1), "steps": steps,
            "rows": trainer.state.position, "tokens": trainer.state.tokens,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "history": trainer.state.history}


def install(final: Path, dest: Path) -> None:
    """Copy the exported model (safetensors + configs + tokenizer) into ``dest``."""
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(final, dest)


def write_training_md(dest: Path, spec: ToySpec, world: WorldConfig, result: dict[str, Any],
                      command: str) -> None:
    last_eval = result["history"][-1]["eval"] if result["history"] else None
    text = f"""# Chart-world toy {spec.name}

Trained by supervised fine-tuning (trainer/sft.py) from random weights on the CPU.

- command: `{command}`
- spec: `{json.dumps(asdict(spec), sort_keys=True)}`
- world: `{json.dumps(asdict(world), sort_keys=True)}`
- data: chart-world training stream, seed {TRAIN_SEED}, examples 0..{result['rows'] - 1}
  (generated on the fly: `seeds.chartworld.generate(world with the spec's skill_weights,
  n, seed={TRAIN_SEED})`), targets: `{spec.target}` (seeds.chartworld.generator).
- parameters: {result['params']:,}
- steps: {result['steps']} x batch {spec.batch_size}, {result['tokens']:,} completion tokens
- training time: {result['train_s']} s ({result['train_wall_s']} s wall incl. evaluation
  and checkpoints) on {platform.machine()} with the threads given on the command line
- held-out monitor (200-question slice, seed {HELDOUT_SEED + 100}) at the end: `{json.dumps(last_eval)}`
- full held-out evaluation: benchmarks/results/chartworld_models.md
"""
    (dest / "TRAINING.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m seeds.chartworld.train_toys",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="receives teacher/ and student/")
    p.add_argument("--only", choices=sorted(SPECS), default=None)
    p.add_argument("--steps", type=int, default=None, help="override the spec's steps (probes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=250)
    a = p.parse_args(argv)
    from pipeline.tiny_models import build_tokenizer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = WorldConfig()
    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size=512)
    command = "python -m seeds.chartworld.train_toys " + shlex.join(sys.argv[1:] if argv is None else argv)
    for name in [a.only] if a.only else ["teacher", "student"]:
        spec = SPECS[name]
        result = train_one(spec, out, tokenizer, world, eval_n=a.eval_n,
                           eval_every=a.eval_every, threads=a.threads, steps=a.steps)
        install(Path(result["final"]), out / name)
        write_training_md(out / name, spec, world, result, command)
        (out / "_work" / name / "result.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)


if __name__ == "__main__":
    main()
