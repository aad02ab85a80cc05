"""Benchmark: stage 4 (Δ) against the bare vLLM engine on the same prompts (its overhead).

    python -m benchmarks.bench_delta [--prompts 300] [--source-run RUN]

Every side samples the same prompts (the first ``--prompts`` of a pipeline run's 02-mine,
by default ``runs/teach``, else a pool made once: benchmarks/delta_runs.py) with the
teacher and the student of ``configs/teach.yaml`` (chart-world toy pair, vLLM, n=8,
T=0.7, 48 tokens). Mine's student samples are dropped, so stage 4 draws the student too:

* **bare**: a plain script. Per model it loads ``vllm.LLM`` with the engine arguments
  ``VLLMEngine`` uses, renders each prompt with the model's chat template, decodes its
  image and calls ``LLM.generate`` once with ``SamplingParams(n=8, ...)``. Nothing else:
  no answer extraction, no Δ, no files.
* **stage 4, CLI**: ``python -m pipeline.cli stage 4`` (what ``deltaprompts stage 4``
  runs) on a copy of the prepared run, ``delta.adaptive=false`` then ``true``: Ray, the
  engines started in the worker, shards read and written, the summary and histogram.
* **stage 4, in process**: the stage's own ``setup`` (both engines built, timed as
  start-up), then ``process`` over every shard with Parquet reads and writes and
  ``finalize``, timed, adaptive off then on; then the same passes under cProfile for the
  breakdown (the profiler slows Python-heavy code, so its seconds are shares, not the
  timing). vLLM's prefix and multimodal caches are reset before every pass.

Figures: wall time with start-up (fresh process to exit) and without (bare: prompt
preparation + ``generate``; ours: the in-process pass), samples drawn and samples/s, the
ratio ours / bare, and where our time goes. Results: ``benchmarks/results/delta_overhead.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.delta_runs import (
    CONFIG,
    MINE,
    default_source,
    ensure_source_run,
    machine,
    mine_table,
    prepare_run,
    run_overrides,
    run_stage4_cli,
)
from pipeline.core import shards
from pipeline.core.config import load_config
from pipeline.core.images import decode_image, image_bytes
from pipeline.core.lazy import lazy
from pipeline.core.reports import figure, write_json, write_text
from pipeline.engines.base import prepare_images, request_seed
from pipeline.engines.vllm_engine import llm_kwargs
from pipeline.runner.stage import ShardTask
from pipeline.sampling.prompts import prompt_text, requests_from_table, user_message
from seeds.chartworld.spec import WorldConfig
from stages import REGISTRY

vllm = lazy("vllm")
vllm_platforms = lazy("vllm.platforms")
transformers = lazy("transformers")

# Where stage 4's process() time goes: (label, file suffix, function). Cumulative seconds:
# a row starting "of which", or naming what it includes, overlaps the rows it names.
CATEGORIES = [
    ("request building (rows -> chat requests)", "pipeline/sampling/prompts.py", "requests_from_table"),
    ("image decode", "pipeline/core/images.py", "decode_image"),
    ("chat template", "transformers/processing_utils.py", "apply_chat_template"),
    ("prompt length count (before vLLM)", "pipeline/engines/vllm_engine.py", "prompt_length"),
    ("vLLM generate (all of it)", "vllm/entrypoints/llm.py", "generate"),
    ("  of which vLLM's own input processing", "vllm/entrypoints/common/offline.py", "_render_and_add_requests"),
    ("transformers engine: processor per request (with image decode, chat template)",
     "pipeline/engines/transformers_engine.py", "prepare_all"),
    ("transformers engine: prefill + decode", "pipeline/engines/transformers_engine.py", "_sample_batch"),
    ("answer extraction", "pipeline/core/answers.py", "extract_answer"),
    ("Δ and its bootstrap interval", "pipeline/core/divergence.py", "delta_report"),
    ("adaptive policy (stop rules, planning)", "pipeline/sampling/policy.py", "stop_reason"),
    ("adaptive policy (further draws)", "pipeline/sampling/policy.py", "further_draws"),
    ("Arrow columns", "pipeline/core/schema.py", "add_columns"),
]


# --- the bare side -------------------------------------------------------------------


def bare_side(run_dir: Path, config: str, overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(config, run_overrides(run_dir.parent, run_dir.name, overrides))
    rows = mine_table(run_dir).select(["question", "choices", "image"]).to_pylist()
    out: dict[str, Any] = {}
    for model in ("teacher", "student"):
        ecfg = getattr(cfg.models, model)
        bare = bare_vllm if ecfg.engine == "vllm" else bare_transformers
        out[model] = {"engine": ecfg.engine, **bare(ecfg, rows, cfg.sampling)}
    return out


def _chat_texts(processor, rows, instruction) -> list[str]:
    return [processor.apply_chat_template(user_message(prompt_text(r, instruction)),
                                          add_generation_prompt=True, tokenize=False) for r in rows]


def bare_vllm(ecfg, rows, s) -> dict[str, Any]:
    """``LLM.generate`` once over every prompt, with ``SamplingParams(n=...)``."""
    on_cpu = vllm_platforms.current_platform.is_cpu()
    t0 = time.perf_counter()
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, as VLLMEngine sets it
    llm = vllm.LLM(**llm_kwargs(ecfg, on_cpu))  # the arguments VLLMEngine passes
    processor = transformers.AutoProcessor.from_pretrained(ecfg.model)  # its chat template
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    prompts = [{"prompt": text, "multi_modal_data": {"image": decode_image(image_bytes(r["image"]))}}
               for text, r in zip(_chat_texts(processor, rows, s.instruction), rows)]
    prep = time.perf_counter() - t0
    params = vllm.SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    gen = time.perf_counter() - t0
    # Two more passes, caches reset before each, to say what reproducible draws cost: the
    # same generate with a seed per request (as VLLMEngine sends them, so a rerun or the
    # sample store gets the same samples), then the plain one again (the order's effect).
    seeded = [replace_params(params, seed=request_seed(0, i)) for i in range(len(prompts))]
    extra = {}
    for name, plist in (("generate_seeded_s", seeded), ("generate_again_s", params)):
        for reset in ("reset_prefix_cache", "reset_mm_cache"):
            if callable(getattr(llm, reset, None)):
                getattr(llm, reset)()
        t0 = time.perf_counter()
        llm.generate(prompts, plist, use_tqdm=False)
        extra[name] = round(time.perf_counter() - t0, 3)
    llm.llm_engine.engine_core.shutdown()
    return {"load_s": round(load, 3), "prepare_s": round(prep, 3), "generate_s": round(gen, 3),
            "samples": sum(len(o.outputs) for o in outputs),
            "tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs), **extra}


def replace_params(params, **changes):
    """A copy of vLLM ``SamplingParams`` with some fields changed."""
    out = params.clone()
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def bare_transformers(ecfg, rows, s) -> dict[str, Any]:
    """Where vLLM is absent: ``model.generate(num_return_sequences=n)`` over batches of
    ``batch_size`` prompts (the transformers engine's), the plain transformers script."""
    device = torch.device("cuda" if ecfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if ecfg.device == "auto" else ecfg.device)
    dtype = torch.bfloat16 if device.type == "cuda" and ecfg.dtype == "auto" else (
        torch.float32 if ecfg.dtype == "auto" else getattr(torch, ecfg.dtype))
    t0 = time.perf_counter()
    model = transformers.AutoModelForImageTextToText.from_pretrained(ecfg.model, dtype=dtype).to(device).eval()
    processor = transformers.AutoProcessor.from_pretrained(ecfg.model, padding_side="left")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = _chat_texts(processor, rows, s.instruction)
    images = [decode_image(image_bytes(r["image"])) for r in rows]
    prep = time.perf_counter() - t0
    pad = processor.tokenizer.pad_token_id
    samples = tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(rows), ecfg.batch_size):
            enc = processor(text=texts[i:i + ecfg.batch_size], images=images[i:i + ecfg.batch_size],
                            padding=True, return_tensors="pt").to(device)
            out = model.generate(**enc, do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0,
                                 max_new_tokens=s.max_tokens, num_return_sequences=s.n)
            new = out[:, enc["input_ids"].shape[1]:]
            samples += new.shape[0]
            tokens += int((new != pad).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    gen = time.perf_counter() - t0
    del model
    return {"load_s": round(load, 3), "prepare_s": round(prep, 3), "generate_s": round(gen, 3),
            "samples": samples, "tokens": tokens}


# --- our side, in process --------------------------------------------------------------


def _reset_caches(state) -> None:
    """A pass must not find the previous pass's prompts in vLLM's caches."""
    for engine in (state.teacher.get(), state.student.get()):
        llm = getattr(engine, "llm", None)
        for reset in ("reset_prefix_cache", "reset_mm_cache"):
            if callable(getattr(llm, reset, None)):
                getattr(llm, reset)()


def one_pass(stage, cfg, state, mine: Path, out_dir: Path, profiler=None) -> dict[str, Any]:
    """Stage 4 over every mine shard as the runner does it: read, process, write, finalize."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    t = {"read_s": 0.0, "process_s": 0.0, "write_s": 0.0}
    samples: dict[str, int] = {}
    for i in shards.complete_shards(mine):
        t0 = time.perf_counter()
        table = shards.read_shard(mine, i)
        t["read_s"] += time.perf_counter() - t0
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        out = stage.process(cfg, state, ShardTask(index=i, input_shards=[i]), table)
        t["process_s"] += time.perf_counter() - t0
        if profiler:
            profiler.disable()
        t0 = time.perf_counter()
        shards.write_shard(out_dir, shards.ShardMarker(index=i, rows=0, sha256="", skipped=out.skipped,
                                                       stats=out.stats), out.table)
        t["write_s"] += time.perf_counter() - t0
        for k, v in out.stats.get("samples", {}).items():
            samples[k] = samples.get(k, 0) + v
    t0 = time.perf_counter()
    tables = [shards.read_shard(out_dir, i) for i in shards.complete_shards(out_dir)]
    stage.finalize(cfg, out_dir, tables)
    t["finalize_s"] = time.perf_counter() - t0
    t["total_s"] = sum(t.values())
    return {**{k: round(v, 3) for k, v in t.items()}, "samples": samples,
            "rows": sum(x.num_rows for x in tables)}


def categorize(stats: pstats.Stats, total: float) -> list[dict[str, Any]]:
    """Cumulative seconds of each :data:`CATEGORIES` function (summed over call sites)."""
    out = []
    for label, suffix, func in CATEGORIES:
        secs = sum(v[3] for (path, _, name), v in stats.stats.items()  # type: ignore[attr-defined]
                   if name == func and path.replace("\\", "/").endswith(suffix))
        out.append({"part": label, "seconds": round(secs, 3),
                    "share": round(secs / total, 4) if total else None})
    return out


def count_costs(engine, table, instruction) -> dict[str, Any] | None:
    """The prompt-length count before vLLM, the old way (the whole HF processor) and the
    new (text tokens + image sizes), over the benchmark's prompts; None off vLLM."""
    if not hasattr(engine, "prompt_length"):
        return None
    prepared = []
    for request in requests_from_table(table, instruction):
        images = prepare_images(request)
        prepared.append((engine.processor.apply_chat_template(request.messages, add_generation_prompt=True,
                                                              tokenize=False), images))
    t0 = time.perf_counter()
    full = [len(engine.processor(text=[t], images=im or None, return_tensors=None)["input_ids"][0])
            for t, im in prepared]
    full_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cheap = [engine.prompt_length(t, im) for t, im in prepared]
    return {"prompts": len(prepared), "full_processor_s": round(full_s, 3),
            "from_sizes_s": round(time.perf_counter() - t0, 3), "equal": full == cheap}


def local_side(run_dir: Path, config: str, overrides: list[str], profile: bool) -> dict[str, Any]:
    cfg = load_config(config, run_overrides(run_dir.parent, run_dir.name,
                                            [*overrides, "execution.backend=local"]))
    stage = REGISTRY.by_number(4)
    t0 = time.perf_counter()
    state = stage.setup(cfg)
    state.teacher.get()  # both built lazily by the stage; here before the clock starts
    state.student.get()
    # One-off imports (Parquet reading, matplotlib for the histogram) are start-up too,
    # not the first pass's work.
    shards.read_shard(run_dir / MINE, shards.complete_shards(run_dir / MINE)[0])
    figure()
    out: dict[str, Any] = {"startup_s": round(time.perf_counter() - t0, 3)}
    out["length_count"] = count_costs(state.teacher.get(), mine_table(run_dir), cfg.sampling.instruction)
    scratch = Path(tempfile.mkdtemp(prefix="bench_delta_"))
    try:
        for adaptive in (False, True):
            c = replace(cfg, delta=replace(cfg.delta, adaptive=adaptive))
            _reset_caches(state)
            out[f"adaptive_{str(adaptive).lower()}"] = one_pass(stage, c, state, run_dir / MINE,
                                                                scratch / "out")
        if profile:
            for adaptive in (False, True):
                c = replace(cfg, delta=replace(cfg.delta, adaptive=adaptive))
                _reset_caches(state)
                prof = cProfile.Profile()
                p = one_pass(stage, c, state, run_dir / MINE, scratch / "out", profiler=prof)
                stats = pstats.Stats(prof)
                out[f"profile_adaptive_{str(adaptive).lower()}"] = {
                    "process_s_under_profiler": p["process_s"],
                    "parts": categorize(stats, p["process_s"]),
                }
    finally:
        state.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return out


# --- the orchestration -------------------------------------------------------------------

SIDES = ("bare", "cli", "local")


def _side_subprocess(side: str, run_dir: Path, a) -> dict[str, Any]:
    """Run one side in a fresh interpreter (its own engines and memory); timed to exit."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    log = run_dir.parent / f"{side}.log"
    cmd = [sys.executable, "-m", "benchmarks.bench_delta", "--side", side, "--run", str(run_dir),
           "--config", a.config, "--result", str(result), *[f"--set={o}" for o in a.overrides]]
    if a.no_profile:
        cmd.append("--no-profile")
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"side {side} failed ({rc}); see {log}")
    data = json.loads(result.read_text())
    result.unlink()
    return {"wall_s": round(wall, 3), **data}


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: times, samples, samples/s and ratios ours / bare.

    Without start-up, ours is the in-process pass; with start-up, the CLI run (None when
    the CLI side was not run).
    """
    bare = r["bare"]
    models = [bare[m] for m in ("teacher", "student")]
    base = {"side": f"bare {models[0]['engine']} (n={r['n']} per prompt, one generate)",
            "with_startup_s": bare["wall_s"],
            "without_startup_s": round(sum(m["prepare_s"] + m["generate_s"] for m in models), 3),
            "samples": sum(m["samples"] for m in models)}
    rows = [base]
    for adaptive in ("false", "true"):
        local = r["local"][f"adaptive_{adaptive}"]
        s = local["samples"]
        cli = r.get(f"cli_adaptive_{adaptive}")
        rows.append({"side": f"stage 4, delta.adaptive={adaptive}",
                     "with_startup_s": cli["wall_s"] if cli else None,
                     "without_startup_s": local["total_s"],
                     "samples": s.get("teacher_drawn", 0) + s.get("student_drawn", 0),
                     # what the CLI adds to the in-process work: interpreter, imports, Ray
                     # start, hand-offs to the worker, manifests (start-up of the engines aside)
                     "cli_overhead_s": (round(cli["wall_s"] - r["local"]["startup_s"] - local["total_s"], 3)
                                        if cli else None)})
    for row in rows:
        row["samples_per_s"] = round(row["samples"] / row["without_startup_s"], 1)
        row["ratio_without_startup"] = round(row["without_startup_s"] / base["without_startup_s"], 3)
        row["ratio_with_startup"] = (round(row["with_startup_s"] / base["with_startup_s"], 3)
                                     if row["with_startup_s"] is not None else None)
    return {"rows": rows,
            "target_adaptive_off_met": rows[1]["ratio_without_startup"] <= 1.10,
            "target_adaptive_on_met": rows[2]["ratio_without_startup"] < 1.0}


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def render(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [
        "# Stage 4 (Δ) vs the bare engine",
        "",
        f"**Targets, without start-up: adaptive off ≤ 1.10x the bare engine: "
        f"{'met' if s['target_adaptive_off_met'] else 'not met'} ({s['rows'][1]['ratio_without_startup']}x); "
        f"adaptive on < 1x: {'met' if s['target_adaptive_on_met'] else 'not met'} "
        f"({s['rows'][2]['ratio_without_startup']}x).**",
        "",
        f"Command: `{r['command']}` (also `make bench ARGS=delta`)  ",
        f"Machine: {r['machine']}  ",
        f"Measured {r['date']}, {r['seconds']:.0f} s in all. Prompts: {r['prompts']} chart-world prompts "
        f"(the first of `{r['source_run']}`), teacher and student of `{r['config']}`"
        f"{' with ' + ', '.join(f'`{o}`' for o in r['overrides']) if r['overrides'] else ''} "
        f"(engine: {r['engine']}; n={r['n']}). Both models are sampled on every side (mine's student "
        "samples dropped). What each side does: see the docstring of `benchmarks/bench_delta.py`.",
        "",
        "*with start-up*: fresh process to exit (interpreter, imports, engine loads; ours also Ray "
        "and the summary). *without*: bare = prompt preparation + generate; ours = the "
        "stage's shard passes in process (Parquet read, `process`, Parquet write, `finalize`). "
        "Ratio: ours / bare. Targets: ≤ 1.10x without start-up with adaptive off, < 1x with it on.",
        "",
        "| side | with start-up s | without s | samples | samples/s (without) | ratio without | ratio with |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in s["rows"]:
        lines.append(f"| {row['side']} | {_fmt(row['with_startup_s'], '.1f')} | {row['without_startup_s']:.2f} | "
                     f"{row['samples']} | {row['samples_per_s']} | **{row['ratio_without_startup']}x** | "
                     f"{_fmt(row['ratio_with_startup'], '')}{'x' if row['ratio_with_startup'] else ''} |")
    bare, local = r["bare"], r["local"]
    if all("generate_seeded_s" in bare[m] for m in ("teacher", "student")):
        plain = sum(bare[m]["generate_s"] for m in ("teacher", "student"))
        seeded = sum(bare[m]["generate_seeded_s"] for m in ("teacher", "student"))
        again = sum(bare[m]["generate_again_s"] for m in ("teacher", "student"))
        ours = local["adaptive_false"]["total_s"]
        lines += ["", f"What reproducible draws cost (bare side, both models, caches reset before each "
                  f"pass): generate {plain:.2f} s plain, **{seeded:.2f} s with a seed per request** (as "
                  f"our engine sends them), {again:.2f} s plain again. Stage 4 with adaptive off / the "
                  f"seeded bare generate: **{ours / seeded:.3f}x**."]
    lines += ["", "Bare side per model (s): " + "; ".join(
        f"{m}: load {bare[m]['load_s']}, prepare {bare[m]['prepare_s']}, generate {bare[m]['generate_s']}, "
        f"{bare[m]['samples']} samples, {bare[m]['tokens']} tokens" for m in ("teacher", "student")),
        "", f"Stage 4 in process: engines built in {local['startup_s']} s; passes (s): " + "; ".join(
            f"adaptive={a}: read {local[f'adaptive_{a}']['read_s']}, process {local[f'adaptive_{a}']['process_s']}, "
            f"write {local[f'adaptive_{a}']['write_s']}, finalize {local[f'adaptive_{a}']['finalize_s']}"
            for a in ("false", "true"))]
    if "cli_adaptive_false" in r:
        lines += ["", "CLI runs (Ray): " + "; ".join(
            f"adaptive={a}: {r[f'cli_adaptive_{a}']['wall_s']} s wall, shard tasks "
            f"{r[f'cli_adaptive_{a}']['shard_seconds']} s (the first one also loads the student), "
            f"≈{row['cli_overhead_s']} s beyond the in-process start-up and pass (interpreter, imports, "
            "Ray, hand-offs, manifests)" for a, row in zip(("false", "true"), s["rows"][1:]))]
    count = local.get("length_count")
    if count:
        lines += ["", f"Prompt-length check before vLLM over the {count['prompts']} prompts (teacher): the whole "
                  f"HF processor (before this change) {count['full_processor_s']} s, from text tokens and "
                  f"image sizes (now) {count['from_sizes_s']} s; same counts: {count['equal']}."]
    for a in ("false", "true"):
        prof = local.get(f"profile_adaptive_{a}")
        if not prof:
            continue
        lines += ["", f"## Where stage 4's time goes (adaptive={a}, cProfile, "
                      f"process() {prof['process_s_under_profiler']} s under the profiler)", "",
                  "| part | s | share of process() |", "|---|---:|---:|"]
        lines += [f"| {p['part']} | {p['seconds']} | {100 * p['share']:.1f}% |" for p in prof["parts"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_delta",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--shard-size", type=int, default=100, help="prompts per shard (the teach run's)")
    p.add_argument("--source-run", default=None,
                   help="a run with a complete 02-mine or 01-ingest, made when missing "
                        "(default: runs/teach, else runs/bench-pool)")
    p.add_argument("--image-size", type=int, default=None,
                   help="square chart images when the source run has to be made (default 160x128)")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every side (e.g. models.teacher.engine=transformers)")
    p.add_argument("--sides", default=",".join(SIDES),
                   help="which of bare,cli,local to run (bare and local are needed for the ratios)")
    p.add_argument("--work", default="runs/bench-delta", help="scratch run folders")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile passes")
    p.add_argument("--out", default="benchmarks/results/delta_overhead")
    # internal: one side in its own process
    p.add_argument("--side", choices=["bare", "local"], help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.side:
        run = Path(a.run)
        data = (bare_side(run, a.config, a.overrides) if a.side == "bare"
                else local_side(run, a.config, a.overrides, not a.no_profile))
        Path(a.result).write_text(json.dumps(data))
        return 0

    sides = [x for x in a.sides.split(",") if x]
    if not {"bare", "local"} <= set(sides) or set(sides) - set(SIDES):
        p.error(f"--sides must hold bare and local, from {SIDES}")
    t0 = time.time()
    cfg = load_config(a.config, run_overrides(Path(a.work), "x", a.overrides))
    world = WorldConfig(width=a.image_size, height=a.image_size) if a.image_size else None
    source = (ensure_source_run(Path(a.source_run), max(a.prompts, 100), a.config, mine=False,
                                world=world, overrides=a.overrides)
              if a.source_run else default_source(a.prompts, a.config))
    work = Path(a.work)
    prompts = work / "prompts"
    prepare_run(source, prompts, a.prompts, a.shard_size, drop_student=True)
    r: dict[str, Any] = {"bare": _side_subprocess("bare", prompts, a)}
    print("bare:", json.dumps(r["bare"]), flush=True)
    for adaptive in ("false", "true") if "cli" in sides else ():
        name = f"cli-adaptive-{adaptive}"
        if (work / name).exists():
            shutil.rmtree(work / name)
        shutil.copytree(prompts, work / name)
        r[f"cli_adaptive_{adaptive}"] = run_stage4_cli(work, name, [*a.overrides, f"delta.adaptive={adaptive}"],
                                                       a.config, log=work / f"{name}.log")
        print(f"cli adaptive={adaptive}:", json.dumps(r[f"cli_adaptive_{adaptive}"]), flush=True)
    r["local"] = _side_subprocess("local", prompts, a)
    engines = {cfg.models.teacher.engine, cfg.models.student.engine}
    r.update(command="python -m benchmarks.bench_delta " + shlex.join(argv), machine=machine(),
             date=time.strftime("%Y-%m-%d %H:%M"), seconds=time.time() - t0, prompts=a.prompts,
             source_run=str(source), config=a.config, overrides=a.overrides, n=cfg.sampling.n,
             engine="/".join(sorted(engines)))
    r["summary"] = summarize(r)
    out = Path(a.out)
    write_json(out.with_suffix(".json"), r)
    write_text(out.with_suffix(".md"), render(r))
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
