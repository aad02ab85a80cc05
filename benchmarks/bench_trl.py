"""Benchmark: our OPD trainer against TRL's ``DistillationTrainer`` at equal settings.

    pip install "deltaprompts[bench]"     # TRL, a benchmark-only extra (pyproject.toml)
    python -m benchmarks.bench_trl [--steps 11] [--prompts-per-step 8] [--rollouts 4]

TRL 1.16 ships ``trl.DistillationTrainer`` (stable, ``trl/trainer/``): on-policy
distillation with the generalized JSD(β) of GKD over the full vocabulary, computed in
chunks from hidden states, student rollouts with ``generate`` at T=1, and image inputs
for vision-language models through the processor. ``GKDTrainer`` is now under
``trl.experimental`` and mixes in off-policy batches (``lmbda``); the distillation
trainer is the one that matches ``deltaprompts train opd``, so it is the one measured.

Both sides get, in fresh processes of their own (peak memory is per process):

* the chart-world toy pair (``models/chartworld``: student and teacher share one
  tokenizer), the student in float32 with bf16 autocast on a GPU, the teacher in the
  autocast dtype;
* the same prompts in the same order (chart-world prompts, bare questions, our data
  order replayed for TRL), ``--prompts-per-step`` prompts x ``--rollouts`` rollouts per
  optimizer step, up to ``--max-new-tokens`` new tokens at T=1, top_p=1, no top-k;
* the same loss, full-vocabulary generalized JSD with ``--beta`` (1.0: reverse KL), over
  completion tokens only, averaged over the step's tokens;
* the same optimizer: AdamW, constant learning rate, betas (0.9, 0.95), no weight decay,
  gradient clipping at 1.0, no warm-up, one micro-batch per step, no gradient
  checkpointing.

TRL samples one completion per prompt (``n=1``), so its dataset repeats each prompt
``--rollouts`` times in a row and is not reshuffled: one step holds the same P x K
(prompt, rollout) pairs as ours. Ours samples the K rollouts of a prompt in one
``generate`` call (prefill once); TRL generates the whole batch in one call.

A step's time: ours is the trainer's own ``step_s`` (rollouts, forwards, loss, backward,
optimizer; its metrics line is written after it); TRL's is the wall time between the ends of
consecutive optimizer steps (the same work plus its per-step logging and data loading).

Figures (median over steps 2..N; step 1 is warm-up): seconds per optimizer step,
completion tokens per step and per second, the share spent in rollouts, peak memory
(GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS). Results:
``benchmarks/results/opd_vs_trl.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from benchmarks.delta_runs import machine
from pipeline.core.reports import write_json, write_text
from pipeline.sampling.prompts import format_question, user_message
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from trainer.config import OPDConfig
from trainer.data import BadPrompt, decode_prompt, load_prompts, select_prompts
from trainer.loop import DataOrder
from trainer.opd import train_opd

SIDES = ("ours", "trl")


def opd_config(a, data: Path, out: Path) -> OPDConfig:
    """Our trainer at the benchmark's settings (TRL's are set to match in :func:`trl_side`)."""
    return OPDConfig(student=str(Path(a.models) / "student"), teacher=str(Path(a.models) / "teacher"),
                     data=str(data), instruction=None, output_dir=str(out), mode="opd", loss="gjsd",
                     beta=a.beta, steps=a.steps, prompts_per_step=a.prompts_per_step,
                     rollouts_per_prompt=a.rollouts, max_new_tokens=a.max_new_tokens, lr=a.lr,
                     schedule="constant", beta1=0.9, beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
                     warmup_steps=0, num_threads=a.threads or None, seed=0, log_every=1,
                     progress=False, resume=False, device=a.device)


def ordered_prompts(cfg: OPDConfig, n: int) -> list[dict[str, Any]]:
    """The first ``n`` prompts our trainer consumes, in its order: ``{prompt, image}`` rows
    in TRL's conversational format (the same question text: our prompt builder)."""
    dataset = load_prompts(cfg.data, cfg.data_split)
    seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    selection = select_prompts(dataset, cfg.where, cfg.num_prompts, seed)
    order = DataOrder(len(selection), shuffle=True, seed=seed)
    rows, position = [], 0
    while len(rows) < n:
        try:
            p = decode_prompt(dataset[selection[order(position)]])
        except BadPrompt:  # our trainer skips these too
            position += 1
            continue
        position += 1
        text = format_question(p.question, p.choices or None, cfg.instruction)
        rows.append({"prompt": user_message(text, 1), "image": p.image})
    return rows


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ours_side(a, data: Path, work: Path) -> dict[str, Any]:
    cfg = opd_config(a, data, work / "ours")
    train_opd(cfg)
    records = [json.loads(ln) for ln in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    steps = [{"step_s": r["step_s"], "tokens": r["tokens"], "gen_s": r["gen_s"]} for r in records]
    return {"steps": steps}


class _StepClock(transformers.TrainerCallback):
    """Wall time between optimizer-step ends (the first from the start of training)."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_begin(self, args, state, control, **kw):
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kw):
        self.marks.append(time.perf_counter())


def trl_side(a, data: Path, work: Path) -> dict[str, Any]:
    import trl  # the benchmark-only extra, imported here: the ours side runs without it

    cfg = opd_config(a, data, work / "ours")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else (
        "cpu" if a.device == "auto" else a.device)
    gpu = device.startswith("cuda")
    rows = ordered_prompts(cfg, a.prompts_per_step * a.steps)
    repeated = [r for r in rows for _ in range(a.rollouts)]  # K rollouts of a prompt, n=1 each
    dataset = datasets.Dataset.from_list(repeated)
    auto = transformers.AutoModelForImageTextToText
    student = auto.from_pretrained(cfg.student, dtype=torch.float32)
    teacher = auto.from_pretrained(cfg.teacher, dtype=torch.bfloat16 if gpu else torch.float32)
    processor = transformers.AutoProcessor.from_pretrained(cfg.student, padding_side="left")
    args = trl.DistillationConfig(
        output_dir=str(work / "trl"), max_steps=a.steps, per_device_train_batch_size=len(repeated) // a.steps,
        gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, gradient_checkpointing=False,
        bf16=gpu, use_cpu=not gpu, temperature=1.0, top_p=1.0, top_k=0, max_completion_length=a.max_new_tokens,
        beta=a.beta, shuffle_dataset=False, logging_steps=1, report_to=[], save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_dropout=True,
    )
    timings: dict[str, list] = {"tokens": [], "gen_s": []}

    class Timed(trl.DistillationTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            timings["gen_s"].append(time.perf_counter() - t0)
            return out

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            timings["tokens"].append(int(out["completion_mask"].sum()))
            return out

    clock = _StepClock()
    trainer = Timed(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                    processing_class=processor, callbacks=[clock])
    trainer.train()
    step_s = [b - e for e, b in zip(clock.marks, clock.marks[1:])]
    steps = [{"step_s": s, "tokens": t, "gen_s": g}
             for s, t, g in zip(step_s, timings["tokens"], timings["gen_s"])]
    return {"steps": steps, "trl_version": trl.__version__}


def side_main(a) -> None:
    work = Path(a.work)
    data = work / "data"
    result = ours_side(a, data, work) if a.side == "ours" else trl_side(a, data, work)
    device = "cuda" if torch.cuda.is_available() and a.device in ("auto", "cuda") else "cpu"
    result["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    result["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    Path(a.result).write_text(json.dumps(result))


def medians(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median step figures over steps 2..N (step 1 is warm-up)."""
    measured = steps[1:]
    if not measured:
        raise ValueError("need at least 2 steps: the first is warm-up")
    per_s = [s["tokens"] / s["step_s"] for s in measured]
    return {"steps_measured": len(measured),
            "step_s": round(statistics.median(s["step_s"] for s in measured), 4),
            "tokens": statistics.median(s["tokens"] for s in measured),
            "tokens_per_s": round(statistics.median(per_s), 1),
            "rollout_share": round(statistics.median(s["gen_s"] / s["step_s"] for s in measured), 3)}


def render(r: dict[str, Any]) -> str:
    s, o, t = r["settings"], r["ours"], r.get("trl", {})
    lines = [
        "# OPD trainer vs TRL's DistillationTrainer",
        "",
        f"Command: `{r['command']}` (also `make bench ARGS=trl`)  ",
        f"Machine: {r['machine']}; device {o['device']}  ",
        f"Measured {r['date']}, {r['seconds']:.0f} s in all; TRL {t.get('trl_version')}.",
        "",
        f"Chart-world toy pair (`{s['models']}`), {s['prompts_per_step']} prompts x {s['rollouts']} rollouts per "
        f"step, up to {s['max_new_tokens']} new tokens at T=1, generalized JSD β={s['beta']} over the full "
        f"vocabulary, AdamW lr {s['lr']} constant, betas (0.9, 0.95), clip 1.0; {s['steps']} steps, median "
        "over steps 2..N. Same prompts in the same order. What each side does: see the docstring of "
        "`benchmarks/bench_trl.py`.",
        "",
        "| trainer | s/step | completion tokens/step | tokens/s | rollout share of step | peak memory MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, side in (("ours (`deltaprompts train opd`)", o), ("TRL DistillationTrainer", t)):
        if not side:
            lines.append(f"| {name} | {'failed' if r.get('trl_error') else 'not run'} | | | | |")
            continue
        m = side["median"]
        lines.append(f"| {name} | {m['step_s']:.3f} | {m['tokens']:.0f} | **{m['tokens_per_s']:.0f}** | "
                     f"{100 * m['rollout_share']:.0f}% | {side['peak_memory_mb']:.0f} |")
    lines += ["", f"Ours / TRL tokens/s: **{r['ratio_tokens_per_s']}x** (target ≥ 1.0x)."
              + (f" {r['trl_error']}" if r.get("trl_error") else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_trl", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models/chartworld", help="folder with teacher/ and student/")
    p.add_argument("--steps", type=int, default=11, help="optimizer steps per trainer (the first is warm-up)")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--beta", type=float, default=1.0, help="generalized JSD β (1.0: reverse KL)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: default)")
    p.add_argument("--image-size", type=int, default=None, help="square chart images (default 160x128)")
    p.add_argument("--device", default="auto")
    p.add_argument("--sides", default=",".join(SIDES), help="ours,trl (ours alone where TRL is missing)")
    p.add_argument("--out", default="benchmarks/results/opd_vs_trl")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be >= 2: the first step is warm-up and is not measured")
    if a.side:
        side_main(a)
        return 0

    t0 = time.time()
    r: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        work = Path(tmp)
        world = WorldConfig(width=a.image_size, height=a.image_size) if a.image_size else WorldConfig()
        write_seed_set(work / "data", world, a.prompts_per_step * a.steps * 2, seed=0, split="train")
        inner = list(argv)
        for side in [x for x in a.sides.split(",") if x in SIDES]:
            result = work / f"{side}.json"
            cmd = [sys.executable, "-m", "benchmarks.bench_trl", *inner, "--side", side,
                   "--work", str(work), "--result", str(result)]
            rc = subprocess.call(cmd)
            if rc != 0 and side == "trl":  # ours is still worth writing (e.g. TRL not installed)
                r["trl_error"] = f"the TRL side failed ({rc}): {shlex.join(cmd)}"
                print(r["trl_error"], file=sys.stderr)
                continue
            if rc != 0:
                raise SystemExit(f"the {side} side failed ({rc}): {shlex.join(cmd)}")
            r[side] = json.loads(result.read_text())
            r[side]["median"] = medians(r[side]["steps"])
            print(side, json.dumps(r[side]["median"]), flush=True)
    if "ours" not in r:
        p.error("--sides must include ours")
    ratio = (round(r["ours"]["median"]["tokens_per_s"] / r["trl"]["median"]["tokens_per_s"], 3)
             if "trl" in r else None)
    r.update(ratio_tokens_per_s=ratio,
             settings={"models": a.models, "steps": a.steps, "prompts_per_step": a.prompts_per_step,
                       "rollouts": a.rollouts, "max_new_tokens": a.max_new_tokens, "beta": a.beta, "lr": a.lr,
                       "threads": a.threads},
             command="python -m benchmarks.bench_trl " + shlex.join(argv), machine=machine(),
             date=time.strftime("%Y-%m-%d %H:%M"), seconds=time.time() - t0)
    out = Path(a.out)
    write_json(out.with_suffix(".json"), r)
    write_text(out.with_suffix(".md"), render(r))
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
