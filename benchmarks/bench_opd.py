"""Benchmark: throughput of one OPD / VA-OPD optimizer step (completion tokens per second).

One step = student rollouts (``generate`` at T=1, top_p=1), teacher and student forwards
over the same tokens, the chunked loss, backward and the AdamW step; VA-OPD adds the
teacher's forward on the degraded image. ``tokens_per_s`` is the step's completion
tokens over its wall time, as the trainer logs it in ``metrics.jsonl``; the figure is the
median over steps 2..N (step 1 carries one-off warm-up).

Models: the committed chart-world toy pair (``models/chartworld``: teacher 4 layers,
student 2, vocab 512, 160x128 charts), the same pair and settings as the
micro-reproduction (8 prompts x 4 rollouts, up to 48 new tokens, bare questions), so the
figures can be set beside ``micro_repro.md``. Results: ``benchmarks/results/opd_step.md``
and ``.json``.

    python -m benchmarks.bench_opd --steps 11 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from trainer.config import OPDConfig
from trainer.opd import train_opd

# (mode, loss, beta): the trainer's default loss, and the paper's full-vocabulary reverse KL.
VARIANTS = [("opd", "reverse_kl", 1.0), ("opd", "gjsd", 1.0),
            ("va_opd", "reverse_kl", 1.0), ("va_opd", "gjsd", 1.0)]
FIELDS = ("tokens", "completion_len", "gen_s", "step_s", "tokens_per_s")


def measure(variant: tuple[str, str, float], data: Path, models: Path, work: Path, a) -> dict:
    mode, loss, beta = variant
    out = work / f"{mode}-{loss}"
    cfg = OPDConfig(student=str(models / "student"), teacher=str(models / "teacher"), data=str(data),
                    instruction=None, output_dir=str(out), mode=mode, loss=loss, beta=beta,
                    steps=a.steps, prompts_per_step=a.prompts_per_step, rollouts_per_prompt=a.rollouts,
                    max_new_tokens=a.max_new_tokens, lr=3e-4, num_threads=a.threads,
                    progress=False, resume=False)
    train_opd(cfg)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][1:]
    row = {"mode": mode, "loss": loss, "beta": beta, "steps_measured": len(records)}
    row.update({k: statistics.median(r[k] for r in records) for k in FIELDS})
    return row


def write_results(rows: list[dict], meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = "\n".join(
        f"| {r['mode']} | {r['loss']}{' β=' + str(r['beta']) if r['loss'] == 'gjsd' else ''} | "
        f"{r['tokens']:.0f} | {r['completion_len']:.1f} | {r['step_s']:.2f} | {r['gen_s']:.2f} | "
        f"**{r['tokens_per_s']:.0f}** |" for r in rows)
    out.with_suffix(".md").write_text(f"""# One OPD / VA-OPD optimizer step: throughput

Command: `{meta['command']}` (also `make bench ARGS=opd`)
Machine: {meta['machine']}; device {meta['device']} ({meta['dtype']}), {meta['threads']} torch threads; load average
{meta['load_before']} before the run (other work on the machine slows every figure).
Measured {meta['date']}, {meta['seconds']:.0f} s in all.

Models: the chart-world toy pair (`models/chartworld`); data: {meta['prompts']} chart-world
prompts (seed 0); {meta['prompts_per_step']} prompts x {meta['rollouts']} rollouts per
step, up to {meta['max_new_tokens']} new tokens; median over steps 2-{meta['steps']}.
`gen_s` is the part of the step spent in the student's rollouts. At this size (vocabulary
512; teacher 4.7 M parameters, student 3.1 M) Python and `generate` overheads dominate and the full-vocabulary
loss costs no more than the sampled one: compare later runs of this command with these
figures, do not size GPU jobs with them.

| mode | loss | completion tokens / step | mean completion | step s | of which rollouts s | tokens/s |
|---|---|---:|---:|---:|---:|---:|
{table}
""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_opd",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models/chartworld", help="folder with teacher/ and student/")
    p.add_argument("--steps", type=int, default=11, help="optimizer steps per variant (the first is warm-up)")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/opd_step")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be >= 2: the first step is warm-up and is not measured")

    t0 = time.time()
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    n_prompts = a.prompts_per_step * a.steps
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_opd_") as tmp:
        data = write_seed_set(Path(tmp) / "data", WorldConfig(), n_prompts, seed=0, split="train")
        for variant in VARIANTS:
            rows.append(measure(variant, data, Path(a.models), Path(tmp), a))
            print(json.dumps(rows[-1]), flush=True)

    gpu = torch.cuda.is_available()
    meta = {"device": torch.cuda.get_device_name() if gpu else "cpu", "dtype": "bf16" if gpu else "fp32",
            "command": "python -m benchmarks.bench_opd " + shlex.join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": a.threads,
            "load_before": load_before, "date": time.strftime("%Y-%m-%d"), "seconds": time.time() - t0,
            "prompts": n_prompts, "prompts_per_step": a.prompts_per_step, "rollouts": a.rollouts,
            "max_new_tokens": a.max_new_tokens, "steps": a.steps}
    write_results(rows, meta, Path(a.out))
    print(f"wrote {a.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
