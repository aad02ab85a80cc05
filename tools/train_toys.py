"""Train the chart-world toy teacher and student (tiny Qwen3-VL) on the CPU.

    python -m tools.train_toys --out models/chartworld            # both
    python -m tools.train_toys --out /tmp/probe --only teacher --steps 50

Both models share one tokenizer (trained here on chart-world text). The teacher starts
from random weights built by ``tools.tiny_models``; the student from the trained
teacher's first two language-model layers. The gap between them is designed, not hoped
for:

* the teacher is larger (4 layers) and trained on every skill to write a short
  ``<think>`` block with the facts it read and the one arithmetic step, then
  ``Answer: X``;
* the student has 2 layers, writes in the same format, and sees little arithmetic and
  multi-hop data, which is where distillation from the teacher can help.

The world (seeds.chartworld.spec.WorldConfig defaults) is chosen for learnability on a
CPU: value labels printed on every mark, 160x128 images (20 vision tokens), values 1-9.
The teacher's vision tower starts as a glyph reader (``glyph_patch_embed`` +
``glyph_readout``: a printed "C" reaches the language model as the text embedding of
"C"), standing in for the OCR a pretrained VLM brings; without it, no lookup of one
item among several was learned in 3000 steps (49% held-out, see git history).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from pipeline.sampling.prompts import format_question
from seeds.chartworld.generator import direct_target, generate, make_example, reasoning_target
from seeds.chartworld.render import INK, _font
from seeds.chartworld.spec import LABEL_SETS, PATCH, SKILLS, TITLES, WorldConfig
from tools.tiny_models import DEFAULT_CORPUS, build_tiny_qwen3vl, build_tokenizer
from trainer.config import SFTConfig
from trainer.eval import EvalConfig, evaluate, model_generator
from trainer.sft import SFTTrainer

TRAIN_SEED = 1  # the training stream
HELDOUT_SEED = 2  # the held-out evaluation set (never trained on)

# Prompts the pipeline may send: the bare question, or the question with the run's
# answer-format instruction appended (sampling.instruction, whose default is
# DEFAULT_INSTRUCTION). Training on all three keeps the toy models'
# answers stable whichever the demo uses.
INSTRUCTIONS: list[str] = [
    "",
    "Answer with a single word or number, as: Answer: <answer>",
    "Answer the question. Keep any reasoning short and end with a final line of the form "
    "'Answer: <value>'.",
]
# Which of them training uses: the bare question only. An appended instruction moves the
# question's label tokens a variable distance away, and copying them took the tiny models
# markedly longer to learn (measured in a copy probe); the demo config sends no
# instruction (sampling.instruction: ""), so the models are trained for exactly that.
TRAIN_INSTRUCTIONS: list[str] = [""]


@dataclass
class ToySpec:
    """One toy model: architecture, what it is trained on, and how long."""

    name: str
    target: Literal["reasoning", "direct"]
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    head_dim: int = 64
    vision_depth: int = 2
    vision_hidden: int = 64
    skill_weights: dict[str, float] | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    seed: int = 0
    # Start from the first `truncate_teacher` language-model layers of the trained teacher
    # (vision tower, embeddings, head and those layers copied) instead of random weights;
    # the hidden sizes then come from the teacher and the fields above are ignored.
    truncate_teacher: int | None = None
    # Keep the vision tower (and its mergers) at their initial weights. The idea: trained
    # end to end, the teacher's vision tokens lost the labels (linear-probe accuracy of the
    # label glyph from its token fell from 100% at initialisation to 67%, values stayed at
    # 100%). Measured since (2026-12-01, 600 steps, all skills): frozen, the model learned
    # to ignore the image altogether (17% held-out, chance level), so it is off by default.
    freeze_vision: bool = False
    # tools.tiny_models' suppression of vision placeholders (a constant embedding
    # channel). A model that is trained never samples them anyway; without it the answer
    # format is learned faster (loss 0.46 vs 0.78 at step 180), accuracy unchanged by 400.
    suppress_placeholders: bool = True
    # Initialise the patch embedding with glyph matched filters (see glyph_patch_embed).
    glyph_filters: bool = False
    # ... and the merger so those glyphs reach the LM as their text embeddings
    # (glyph_readout; needs glyph_filters).
    glyph_readout: bool = False


# The committed teacher had two more phases (models/chartworld/teacher/TRAINING.md, via
# `--continue --skill-weights`): 1000 steps at lr 1e-3 with extremum and text x3,
# counting x2, because the label-from-value lookup ("max 9 C") is the last thing it learns
# (held-out monitor at 3000 steps: extremum 67%, text 68%, all else >= 86%; after: 100%,
# 74%); then 500 at 5e-4 with text and counting x3 (the 2000-question report stood at
# 89.9%, label_at 22% and count_above 68% the only families under 92%).
TEACHER = ToySpec(
    name="teacher", target="reasoning", hidden_size=256, num_layers=4, num_heads=4,
    intermediate_size=768, vision_depth=2, vision_hidden=128, steps=3000, warmup_steps=100,
    seed=0, glyph_filters=True, glyph_readout=True,
)
# The student: the teacher's first 2 of 4 language-model layers (same vision tower and
# vocabulary), fine-tuned in the teacher's answer format (a short <think>, then
# "Answer: X") on every skill but arithmetic and multi-hop. Reading the chart it inherits
# from the teacher; computing with what it read, with two layers and no data for it, it
# mostly cannot: that is the gap distillation should close. (At 1/20 the rate of the other
# skills, the first two of the glyph-reading teacher's layers kept too much: arithmetic
# 59%, multi-hop 65% on the 200-question monitor.) Same format on purpose: with a
# direct-answer student ("Answer: X" only) on-policy distillation first had to unlearn the format (the teacher gives its
# "Answer" first token almost no mass; reverse KL ~12 nats/token) and collapsed held-out
# accuracy from 36% to 11-17% in 60-150 steps before it could teach any content.
STUDENT = ToySpec(
    name="student", target="reasoning", hidden_size=256, num_layers=2, num_heads=4,
    intermediate_size=768, vision_depth=2, vision_hidden=128, steps=800, warmup_steps=50,
    lr=1e-3, seed=1, truncate_teacher=2,
    skill_weights={s: (0.0 if s in ("arithmetic", "multihop") else 1.0) for s in SKILLS},
)
# A second student of another shape, for the transfer setting of benchmarks/teach.py: the
# teacher's first 3 of 4 layers (not 2), trained exactly as the first student was. It is
# built by `make reproduce` (not committed); its accuracy per skill is measured there.
STUDENT_B = ToySpec(
    name="student_b", target="reasoning", hidden_size=256, num_layers=3, num_heads=4,
    intermediate_size=768, vision_depth=2, vision_hidden=128, steps=800, warmup_steps=50,
    lr=1e-3, seed=2, truncate_teacher=3,
    skill_weights={s: (0.0 if s in ("arithmetic", "multihop") else 1.0) for s in SKILLS},
)
SPECS = {"teacher": TEACHER, "student": STUDENT, "student_b": STUDENT_B}


def prompt_text(question: str, rng: random.Random) -> str:
    return format_question(question, None, rng.choice(TRAIN_INSTRUCTIONS))


class ChartWorldRows(Sequence):
    """A lazily generated training stream: row i = chart-world example ``start + i`` as
    ``{"image", "question", "target"}``; the prompt variant is drawn from the same seed."""

    def __init__(self, world: WorldConfig, n: int, seed: int, target: str, start: int = 0):
        world.validate()
        self.world, self.n, self.seed, self.target, self.start = world, n, seed, target, start

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        ex = make_example(self.world, self.seed, self.start + i)
        rng = random.Random(f"prompt:{self.seed}:{self.start + i}")
        fn = reasoning_target if self.target == "reasoning" else direct_target
        return {"image": ex.image, "question": prompt_text(ex.qa.question, rng),
                "target": fn(ex.qa), "skill": ex.qa.skill}


def tokenizer_corpus(n_examples: int = 3000) -> list[str]:
    """Chart-world questions and targets, the instructions, plus the default corpus, so the
    BPE merges make the toy prompts and answers short."""

    corpus = list(DEFAULT_CORPUS) + [i for i in INSTRUCTIONS if i]  # compact if ever used
    corpus += [" ".join(v) for v in LABEL_SETS.values()] + [" ".join(TITLES)]
    for ex in generate(WorldConfig(), n_examples, seed=12345):
        corpus += [ex.qa.question, reasoning_target(ex.qa)]
    return corpus


def heldout_rows(world: WorldConfig, n: int, seed: int = HELDOUT_SEED) -> list[dict[str, Any]]:
    return [{"image": ex.image, "question": ex.qa.question, "answer": ex.qa.answer,
             "skill": ex.qa.skill, "family": ex.qa.family, "type": f"chartworld_{ex.chart.kind}"}
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

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.image_processor.image_mean = [1.0, 1.0, 1.0]
    processor.image_processor.image_std = [0.5, 0.5, 0.5]
    processor.save_pretrained(model_dir)


def truncate_model(src: Path, dst: Path, num_layers: int) -> Path:
    """Copy ``src`` keeping only its first ``num_layers`` language-model layers."""

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for extra in ("TRAINING.md", "training_log.json"):
        (dst / extra).unlink(missing_ok=True)
    config = AutoConfig.from_pretrained(src)
    if not 0 < num_layers <= config.text_config.num_hidden_layers:
        raise ValueError(f"cannot keep {num_layers} of {config.text_config.num_hidden_layers} layers")
    config.text_config.num_hidden_layers = num_layers
    full = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    small = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    missing, unexpected = small.load_state_dict(full.state_dict(), strict=False)
    dropped = [k for k in unexpected if ".layers." not in k]
    if missing or dropped:
        raise RuntimeError(f"truncation lost weights: missing={missing} unexpected={dropped}")
    small.generation_config = full.generation_config
    small.save_pretrained(dst)
    return dst


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


GLYPHS = list("0123456789") + LABEL_SETS["letters"]  # what an item's two patches can show


def glyph_patch_embed(model_dir: Path, world: WorldConfig, glyphs: Sequence[str] = GLYPHS,
                      scale: float = 24.0) -> float:
    """Initialise the first ``len(glyphs)`` channels of the vision patch embedding as
    matched filters of the chart world's glyphs, so a patch showing glyph g embeds with a
    large response on channel g (the rest stays random).

    Why: with a random patch embedding, a token's glyph is a small perturbation of what
    every item token shares (rules, shading, the position code): across images its
    features varied by only ~2-4% of their squared norm at the language model's input, and
    a from-scratch model could not learn to read a digit off a one-item table in 150 steps
    (chance accuracy), while it read the same value off a bar's height in 100. With these
    filters the share rises to ~29% and the same probe reads the digit at 100% by step
    150. Glyphs are drawn exactly as render.py draws them (Pillow's embedded font,
    centred in a 16x16 patch), and the filters are the pseudo-inverse of the glyph
    templates, so a clean glyph gives a one-hot response of height ``scale``. It stands in
    for what a pretrained, OCR-capable vision encoder brings to a real VLM; every weight
    is trained afterwards. Returns the largest deviation from one-hot on the templates.
    """

    processor = AutoProcessor.from_pretrained(model_dir)
    templates = []
    for g in glyphs:  # one glyph centred in the top-left patch of a small white image
        img = Image.new("RGB", (4 * PATCH, 4 * PATCH), (255, 255, 255))
        ImageDraw.Draw(img).text((PATCH / 2, PATCH / 2), g, fill=INK,
                                 font=_font(world.font_size), anchor="mm")
        pixels = processor.image_processor(images=[img], return_tensors="pt")["pixel_values"]
        templates.append(pixels[pixels.abs().sum(1).argmax()].numpy())  # the inked patch
    t = np.stack(templates)
    filters = np.linalg.pinv(t).T  # filters @ t.T == identity
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    proj = model.model.visual.patch_embed.proj
    if len(glyphs) > proj.out_channels:
        raise ValueError(f"{len(glyphs)} glyphs need as many of the {proj.out_channels} channels")
    with torch.no_grad():
        proj.weight[: len(glyphs)] = torch.tensor(scale * filters, dtype=proj.weight.dtype).view(
            len(glyphs), *proj.weight.shape[1:])
        proj.bias[: len(glyphs)] = 0.0
    model.save_pretrained(model_dir)
    return float(np.abs(filters @ t.T - np.eye(len(glyphs))).max())


def glyph_readout(model_dir: Path, glyphs: Sequence[str] = GLYPHS, bias: float = -2.0,
                  gain: float = 2.0, rest: float = 0.5) -> None:
    """Initialise the vision merger so a token whose patch shows glyph g (a channel of
    ``glyph_patch_embed``) reaches the language model carrying the text embeddings of g
    ("C" and " C"): what a pretrained VLM's projector gives, a picture of a letter landing
    near the letter's word.

    Why: the language model must *match* a label named in the question (or written in its
    <think>) against the image tokens, and with unrelated visual and text codes it never
    learned the match within the CPU budget (3000 steps: 11-14% on argmax/argmin/label_at,
    chance level, while everything computable by pooling all tokens reached 100%). With
    shared codes the match is the same one it learns for copying text. Each glyph channel of
    each of a token's 4 patches gets one fc1 unit (an identity read-out of the channel,
    shifted by ``bias`` so noise stays under GELU's knee) and an fc2 column along the
    glyph's text embedding, ``gain`` times a text embedding's norm; the other units keep
    their random weights scaled by ``rest``, and every weight is trained afterwards.
    Measured at initialisation (teacher size, 796 items): the nearest letter embedding to
    an item's token is its label for 100% of items (12% without), the nearest digit its
    value for 99% (9%). 600-step probes: with the read-out, value lookup reached 27%
    held-out in the old "C=5" <think> format and 97% in the "C 5" one (questions.py).
    """

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    embed = model.get_input_embeddings().weight.detach()
    merger = model.model.visual.merger
    channels = model.config.vision_config.hidden_size
    patches = model.config.vision_config.spatial_merge_size ** 2
    directions = []
    vocab = tokenizer.get_vocab()
    for g in glyphs:
        ids = [vocab[t] for t in (g, "\u0120" + g) if t in vocab]  # "C" and " C", as they exist
        if not ids:
            raise ValueError(f"glyph {g!r} is not a token of the tokenizer")
        directions.append(embed[ids].sum(0))
    directions = torch.stack(directions)
    target_norm = gain * float(embed.norm(dim=1).mean())
    with torch.no_grad():
        merger.linear_fc2.weight *= rest  # the random units: position, colour, strokes
        for p in range(patches):
            for g in range(len(glyphs)):
                unit = p * len(glyphs) + g
                merger.linear_fc1.weight[unit] = 0.0
                merger.linear_fc1.weight[unit, p * channels + g] = 1.0
                merger.linear_fc1.bias[unit] = bias
                # a clean glyph reads ~sqrt(channels) after the per-patch LayerNorm
                scale = target_norm / (directions[g].norm() * (channels ** 0.5 + bias))
                merger.linear_fc2.weight[:, unit] = directions[g] * scale
    model.save_pretrained(model_dir)


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


def train_one(spec: ToySpec, work: Path, tokenizer, world: WorldConfig, *, eval_n: int,
              eval_every: int, threads: int, steps: int, lr: float, warmup_steps: int,
              init_from: Path | None = None, start_row: int = 0,
              skill_weights: dict[str, float] | None = None) -> dict[str, Any]:
    """One training phase in ``work``: from fresh random weights (``init_from`` None) or
    from an earlier phase's model, on training-stream rows ``start_row ..``."""

    torch.set_num_threads(threads)
    if init_from is None:
        init = build_tiny_qwen3vl(
            work / "init", tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
            num_heads=spec.num_heads, head_dim=spec.head_dim, intermediate_size=spec.intermediate_size,
            vision_depth=spec.vision_depth, vision_hidden=spec.vision_hidden,
            image_size=-(-max(world.width, world.height) // 32) * 32,  # processor cap >= image
            seed=spec.seed, suppress_placeholders=spec.suppress_placeholders)
        white_is_zero(init)  # before the glyph filters: they see the normalised pixels
        if spec.glyph_filters:
            glyph_patch_embed(init, world)
        if spec.glyph_readout:
            if not spec.glyph_filters:
                raise ValueError("glyph_readout reads the channels glyph_filters sets up")
            glyph_readout(init)
        seed_position_code(init)
        short_rope(init)
    else:
        init = work / "init"
        if init.exists():
            shutil.rmtree(init)
        shutil.copytree(init_from, init)
    weights = skill_weights if skill_weights is not None else spec.skill_weights
    train_world = WorldConfig(**{**asdict(world), "skill_weights": weights})
    rows = ChartWorldRows(train_world, steps * spec.batch_size, TRAIN_SEED, spec.target, start_row)
    probe = heldout_rows(world, eval_n, seed=HELDOUT_SEED + 100)  # a quick monitor, not the report
    ecfg = EvalConfig(max_tokens=48 if spec.target == "reasoning" else 12, batch_size=64,
                      instruction=None)  # the toys are trained on bare questions

    def eval_fn(model, processor, step):
        return evaluate(model_generator(model, processor, ecfg), probe, ecfg).summary()

    cfg = SFTConfig(model=str(init), output_dir=str(work / "sft"), steps=steps,
                    batch_size=spec.batch_size, lr=lr, warmup_steps=warmup_steps,
                    seed=spec.seed, shuffle=False, log_every=10, save_every=50,
                    eval_every=eval_every, num_threads=threads, progress=False,
                    weight_decay=0.01, keep_checkpoints=1,
                    freeze=["model.visual."] if spec.freeze_vision else [])
    t0 = time.time()
    trainer = SFTTrainer(cfg, rows, eval_fn=eval_fn if eval_every else None)
    final = trainer.train()
    return {"final": str(final), "train_wall_s": round(time.time() - t0, 1),
            "train_s": round(trainer.state.elapsed_s, 1), "steps": steps, "lr": lr,
            "warmup_steps": warmup_steps, "batch_size": spec.batch_size,
            "skill_weights": weights,
            "rows": [start_row, start_row + trainer.state.position],
            "tokens": trainer.state.tokens,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "history": trainer.state.history}


def install(final: Path, dest: Path) -> None:
    """Copy the exported model (safetensors + configs + tokenizer) into ``dest``."""

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(final, dest)


def write_training_md(dest: Path, spec: ToySpec, world: WorldConfig, phases: list[dict[str, Any]]) -> None:
    """TRAINING.md (for people) and training_log.json (for a later phase) in ``dest``."""
    (dest / "training_log.json").write_text(json.dumps(phases, indent=1) + "\n")
    total_s = sum(ph["train_s"] for ph in phases)
    if spec.truncate_teacher:
        origin = (f"from the first {spec.truncate_teacher} language-model layers of the trained "
                  "teacher (vision tower, embeddings and head copied; `truncate_model` in "
                  "tools/train_toys.py; the teacher as described in ../teacher/TRAINING.md)")
    else:
        init_steps = ["white_is_zero"] + (["glyph_patch_embed"] if spec.glyph_filters else []) + (
            ["glyph_readout"] if spec.glyph_readout else []) + ["seed_position_code", "short_rope"]
        origin = ("from random weights (built by tools.tiny_models, then "
                  + ", ".join(f"`{f}`" for f in init_steps) + " in tools/train_toys.py)")
    lines = [f"# Chart-world toy {spec.name}", "",
             f"Trained by supervised fine-tuning (trainer/sft.py) {origin}, on the CPU.", "",
             f"- spec: `{json.dumps(asdict(spec), sort_keys=True)}`",
             f"- world: `{json.dumps(asdict(world), sort_keys=True)}`",
             f"- data: the chart-world training stream, seed {TRAIN_SEED} (examples generated on "
             "the fly by `seeds.chartworld.generate` with the spec's skill_weights), prompt = "
             f"the bare question, target style `{spec.target}` (seeds.chartworld.generator)",
             f"- parameters: {phases[-1]['params']:,}",
             f"- total training time: {total_s:.0f} s of {phases[0].get('threads', 2)} CPU threads "
             f"({platform.machine()}), evaluation and checkpoints excluded", ""]
    for i, ph in enumerate(phases, 1):
        last = ph["history"][-1]["eval"] if ph.get("history") else None
        lines += [f"## Phase {i}", "",
                  f"- command: `{ph['command']}`",
                  f"- steps: {ph['steps']} x batch {ph['batch_size']}, lr {ph['lr']} (warmup "
                  f"{ph['warmup_steps']}, cosine to 10%), training-stream examples "
                  f"{ph['rows'][0]}..{ph['rows'][1] - 1}, {ph['tokens']:,} completion tokens",
                  f"- skill weights: `{json.dumps(ph.get('skill_weights'))}` (null = uniform)",
                  f"- training time: {ph['train_s']} s ({ph['train_wall_s']} s wall incl. "
                  "evaluation and checkpoints)",
                  f"- held-out monitor at the end (200 questions, seed {HELDOUT_SEED + 100}, "
                  f"greedy): `{json.dumps(last)}`", ""]
    lines += ["Full held-out evaluation: benchmarks/results/chartworld_models.md", ""]
    (dest / "TRAINING.md").write_text("\n".join(lines))


def _previous_phases(dest: Path, work: Path) -> list[dict[str, Any]]:
    log = dest / "training_log.json"
    if log.exists():
        return json.loads(log.read_text())
    raise FileNotFoundError(f"--continue: no {log}; train the first phase without --continue")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.train_toys",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="receives teacher/ and student/")
    p.add_argument("--work", default="runs/toy-models",
                   help="initial weights, checkpoints, metrics (not committed)")
    p.add_argument("--only", choices=sorted(SPECS), default=None)
    p.add_argument("--steps", type=int, default=None, help="override the spec's steps")
    p.add_argument("--lr", type=float, default=None, help="override the spec's peak lr")
    p.add_argument("--skill-weights", default=None,
                   help='JSON skill -> weight for this phase (default: the spec\'s)')
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="another phase from the model already in --out, on the next examples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    a = p.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = WorldConfig()
    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size=512)
    command = "python -m tools.train_toys " + shlex.join(sys.argv[1:] if argv is None else argv)
    for name in [a.only] if a.only else ["teacher", "student"]:  # student_b: only by name
        spec = SPECS[name]
        dest = out / name
        phases = _previous_phases(dest, Path(a.work) / name) if a.cont else []
        work = Path(a.work) / (name if not phases else f"{name}-phase{len(phases) + 1}")
        start = phases[-1]["rows"][1] if phases else 0
        init_from = dest if phases else None
        if init_from is None and spec.truncate_teacher:
            if not (out / "teacher" / "model.safetensors").exists():
                raise FileNotFoundError(f"the {name} starts from {out / 'teacher'}: train it first")
            init_from = truncate_model(out / "teacher", work / "truncated", spec.truncate_teacher)
        result = train_one(
            spec, work, tokenizer, world, eval_n=a.eval_n, eval_every=a.eval_every,
            threads=a.threads, steps=a.steps or spec.steps, lr=a.lr or spec.lr,
            warmup_steps=spec.warmup_steps, init_from=init_from, start_row=start,
            skill_weights=json.loads(a.skill_weights) if a.skill_weights else None)
        result.update(command=command, threads=a.threads)
        if init_from is not None:
            from transformers import AutoTokenizer

            if AutoTokenizer.from_pretrained(init_from).get_vocab() != tokenizer.get_vocab():
                raise RuntimeError(f"{init_from}: tokenizer differs from the one built now")
        install(Path(result["final"]), dest)
        write_training_md(dest, spec, world, phases + [result])
        (work / "result.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)


if __name__ == "__main__":
    main()
