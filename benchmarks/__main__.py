"""`make bench`: run the benchmarks; each writes its figures to benchmarks/results/.

    python -m benchmarks [adaptive] [engines] [engines448] [opd] [delta] [trl] [adaptive-real]
                         [gpu] [store] [teacher_cost] [rewrite-llm] [cluster_io] [refresh]
                         (default: all but the ones marked slow)

Figures are for comparing later runs of the same command on the same machine; every
results file names the machine and the exact command that made it.
"""

from __future__ import annotations

import subprocess
import sys

# name -> argv (run as `python -m ...` from the repo root)
BENCHES = {
    "adaptive": ["benchmarks.bench_adaptive"],
    "engines": ["benchmarks.bench_engines", "--prompts", "16", "--image-size", "224", "--tokens", "32", "256",
                "--threads", "1", "--repeats", "2"],
    # the engines issue's image size (448x448: 196 visual tokens per prompt)
    "engines448": ["benchmarks.bench_engines", "--prompts", "16", "--image-size", "448", "--tokens", "32",
                   "256", "--threads", "1", "--repeats", "2", "--out", "benchmarks/results/engines_448"],
    # one OPD / VA-OPD optimizer step on the chart-world toy pair (the trainer issue's figure)
    "opd": ["benchmarks.bench_opd", "--steps", "11", "--threads", "2"],
    # stage 4's teacher samples: full N / adaptive / adaptive + student_solved skip, on a
    # 1,000-seed chart-world pool built with the pipeline (about 20 min on 2 cores)
    "teacher_cost": ["benchmarks.teacher_cost", "--seeds", "1000", "--seed", "21"],
    # issue 18: stage 4 against the bare vLLM engine (300 prompts of runs/teach, made when missing)
    "delta": ["benchmarks.bench_delta"],
    # issue 18: our OPD trainer against TRL's DistillationTrainer (the `bench` extra)
    "trl": ["benchmarks.bench_trl", "--steps", "11", "--threads", "2"],
    # issue 18: adaptive Δ on a real 1,000-prompt run (stage 4 three times)
    "adaptive-real": ["benchmarks.bench_adaptive_real"],
    # issue 18: the prepared GPU check (skips itself without a GPU; `--dry-run` for the CPU)
    "gpu": ["benchmarks.gpu_check", "--out", "benchmarks/results/gpu_check"],
    # issue 16: stage 4 for a second student beside the same teacher, sample store cold vs warm
    "store": ["benchmarks.store", "--prompts", "128"],
    # issue 17: stage 3 with a real LLM rewriter (SmolLM2; `make rewriter-model` first), per
    # engine path: vLLM structured, vllm serve + openai structured, transformers unconstrained
    "rewrite-llm": ["benchmarks.rewrite_llm", "--seeds", "30"],
    # issue 19: shard bytes through the driver per 1,000 prompts (reads a finished run folder)
    "cluster_io": ["benchmarks.cluster_io", "--run", "runs/teach"],
    # issue 16: refresh (Δ re-measured against the student being trained) vs static Δ at
    # equal OPD steps, 5 training seeds, on a 300-seed chart-world pool (about 35 min)
    "refresh": ["benchmarks.refresh", "--seeds", "300", "--train-seeds", "0", "1", "2", "3", "4",
                "--rounds", "3", "--steps", "8"],
}
# Run only when named: they take many minutes (cluster_io: needs runs/teach, `make reproduce`).
SLOW = {"teacher_cost", "rewrite-llm", "cluster_io", "refresh"}


def main(argv: list[str]) -> int:
    names = argv or [n for n in BENCHES if n not in SLOW]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== {name}: python -m {' '.join(BENCHES[name])}", flush=True)
        if subprocess.call([sys.executable, "-m", *BENCHES[name]]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
