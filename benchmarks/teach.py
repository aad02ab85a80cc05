"""Does the data teach? Learning curves of on-policy distillation on each kind of prompt set.

From one pipeline run with stage 3 on (configs/teach.yaml: 1,000 chart-world seeds and
the programmatic rewriter's prompts), the same student is distilled from the same teacher
with equal prompts per step and equal steps on six training sets (benchmarks/teach_arms.py:
random, filtered, synthesised, deltaprompts, zero_delta, replay), each for several seeds,
and evaluated on the 2,000 held-out chart-world questions at every budget of a log scale.
Two smaller settings of the paper ride along: off-policy fine-tuning on the teacher's
answers (random vs deltaprompts) and transfer to a second student of another shape
(random vs deltaprompts, on the set built for the first pair).

    make reproduce                 # pipeline run + this experiment (--jobs 2), ~2 h on 2 CPU cores
    make reproduce QUICK=1         # a few minutes: small run, 1 seed, 2 short budgets

Each training run writes ``result.json`` in its folder under ``--out``; a rerun skips the
runs already done, so a long experiment resumes after a crash. Results go to
``--results`` (.md, .json, .png), the targets' verdicts in the first lines.

``--jobs N`` trains N runs at a time in N worker processes (``--threads`` split among them):
the toy models are too small for a second torch thread to help one run much (a 160-step
OPD run trains in 119 s on 2 threads, 189 s on 1), so on 2 cores two 1-thread workers get
through the experiment about 1.3x faster than one 2-thread process.
Workers take the next untaken run of the plan (a claim file made with O_EXCL), so no run is
trained twice and a fast worker does not wait for a slow one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import transformers

from benchmarks.teach_arms import (
    ARMS,
    REPLAY_SHARE,
    heldout_overlap,
    measured_prompts,
    pool_problems,
    select_pools,
)
from benchmarks.teach_report import write_results
from pipeline.core.reports import write_json
from pipeline.core.shards import atomic_write_table
from pipeline.data.loader import read_dataset
from trainer.config import OPDConfig, SFTConfig
from trainer.eval import EvalConfig, evaluate, model_generator
from trainer.offpolicy import teacher_rows
from trainer.opd import OPDTrainer
from trainer.sft import SFTTrainer

SETTINGS = {
    "opd": list(ARMS),
    "sft": ["random", "deltaprompts"],
    "transfer": ["random", "deltaprompts"],
}


def heldout_rows(path: str, n: int) -> list[dict[str, Any]]:
    root = Path(path)
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    return [r for f in files for r in pq.read_table(f).to_pylist()][:n]


class Evaluator:
    """Held-out accuracy of an in-process model (greedy), as the trainers' ``eval_fn``."""

    def __init__(self, rows: list[dict[str, Any]], max_tokens: int, instruction: str | None):
        self.rows = rows
        self.cfg = EvalConfig(max_tokens=max_tokens, batch_size=64, instruction=instruction)
        self.seconds = 0.0

    def __call__(self, model, processor, step: int) -> dict[str, Any]:
        t = time.perf_counter()
        summary = evaluate(model_generator(model, processor, self.cfg), self.rows, self.cfg).summary()
        self.seconds += time.perf_counter() - t
        return {k: summary[k] for k in ("overall", "by_skill", "n", "no_answer")}

    def model_dir(self, path: str) -> dict[str, Any]:
        processor = transformers.AutoProcessor.from_pretrained(path)
        model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            return self(model, processor, 0)


def curve_of(metrics_path: Path) -> list[dict[str, Any]]:
    """The evaluations a training run logged, in step order."""
    out = []
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            out.append({"step": rec["step"], **rec["eval"]})
    return out


def plan_of(a) -> list[tuple[str, str, int]]:
    """Every training run, seed-major: every arm gets each seed before the next seed, so a
    stopped experiment has comparable arms."""
    return [(setting, arm, seed)
            for setting in a.settings
            for seed in (a.seeds if setting == "opd" else a.small_seeds)
            for arm in SETTINGS[setting] if arm in a.arms]


def run_dir(a, setting: str, arm: str, seed: int) -> Path:
    return Path(a.out) / setting / arm / f"seed{seed}"


def threads_per_run(a) -> int:
    return max(1, a.threads // a.jobs)


def claim(claims: Path, index: int) -> bool:
    """Take run ``index`` of the plan for this worker; False if another worker has it."""
    try:
        os.close(os.open(claims / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def run_workers(a, argv: list[str], n_runs: int) -> None:
    """Train the plan in ``a.jobs`` worker processes; returns when all have ended."""
    threads = threads_per_run(a)
    with tempfile.TemporaryDirectory(prefix="claims-", dir=a.out) as claims:
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.teach", *argv, "--jobs", "1",
                                   "--threads", str(threads), "--worker-claims", claims])
                 for _ in range(min(a.jobs, n_runs))]
        failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise SystemExit(f"error: worker(s) {failed} of {len(procs)} failed (their output is above); "
                         f"the runs that finished are kept under {a.out}: rerun the same command to resume")


def run_one(setting: str, arm: str, seed: int, a, pools_dir: Path, evaluator: Evaluator,
            student: str) -> dict[str, Any]:
    """One training run (resumable: a finished run's result.json is read back)."""
    out = run_dir(a, setting, arm, seed)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    evaluator.seconds = 0.0
    budgets = sorted(a.budgets)
    common = dict(output_dir=str(out), steps=budgets[-1], seed=seed, eval_at=budgets,
                  instruction=a.instruction, progress=False, resume=True, num_threads=a.threads,
                  save_every=budgets[len(budgets) // 2] if len(budgets) > 2 else 0)
    if setting == "sft":
        rows, skipped = teacher_rows(read_dataset(str(pools_dir / f"{arm}.parquet")), a.instruction)
        cfg = SFTConfig(model=student, batch_size=a.prompts_per_step, lr=a.sft_lr,
                        schedule="constant", log_every=10, **common)
        trainer = SFTTrainer(cfg, rows, eval_fn=evaluator)
        trainer.train()
        tokens, train_s = trainer.state.tokens, trainer.state.elapsed_s
        extra = {"rows": len(rows), "skipped_no_target": skipped}
    else:
        cfg = OPDConfig(student=student, teacher=a.teacher, data=str(pools_dir / f"{arm}.parquet"),
                        data_seed=seed, prompts_per_step=a.prompts_per_step,
                        rollouts_per_prompt=a.rollouts, max_new_tokens=a.max_new_tokens, lr=a.lr,
                        loss=a.loss, beta=a.beta, **common)
        trainer = OPDTrainer(cfg, eval_fn=evaluator)
        trainer.train()
        tokens, train_s = trainer.state.tokens, trainer.state.elapsed_s
        extra = {"pool": len(trainer.selection)}
    result = {
        "setting": setting, "arm": arm, "seed": seed,
        "curve": curve_of(out / "metrics.jsonl"),
        "rollout_tokens": tokens,  # completion tokens trained on (OPD: the student's rollouts)
        "train_s": round(train_s, 1),  # training wall seconds, evaluation excluded
        "eval_s": round(evaluator.seconds, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        **extra,
    }
    write_json(done, result)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the curve is kept, not the weights
    return result


def announce(r: dict[str, Any]) -> dict[str, Any]:
    final = r["curve"][-1]["overall"] if r["curve"] else float("nan")
    print(f"{r['setting']} {r['arm']} seed {r['seed']}: final {final:.3f} ({r['train_s']} s training)",
          flush=True)
    return r


def pools_dir_of(a) -> Path:
    return Path(a.out) / "pools"


def build_pools(a) -> tuple[Path, dict[str, int], dict[str, int], dict[str, dict[str, int]]]:
    """Write each arm's pool as Parquet; check sizes and disjointness from the held-out."""
    pools = select_pools(measured_prompts(Path(a.run)), a.replay_share, seed=0)
    problems = pool_problems(pools, max(a.budgets), a.prompts_per_step, a.max_repeats, a.arms)
    if problems:
        raise SystemExit("error: pools too small for the longest budget (a prompt would repeat more than "
                         f"{a.max_repeats} times): " + "; ".join(problems))
    overlap = heldout_overlap(pools, heldout_rows(a.heldout, a.heldout_n))
    if any(overlap.values()):
        raise SystemExit(f"error: training pools overlap the held-out questions: {overlap}")
    pools_dir = pools_dir_of(a)
    for arm in ARMS:
        path = pools_dir / f"{arm}.parquet"
        if not path.is_file():
            atomic_write_table(path, pools.arm_table(arm))
    return pools_dir, pools.sizes(), overlap, pools.skills()


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.teach", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/teach", help="pipeline run with stage 3 on (configs/teach.yaml)")
    p.add_argument("--heldout", default="data/chartworld-heldout")
    p.add_argument("--heldout-n", type=int, default=2000)
    p.add_argument("--teacher", default="models/chartworld/teacher")
    p.add_argument("--student", default="models/chartworld/student")
    p.add_argument("--student-b", default="models/chartworld/student_b",
                   help="the transfer student, another shape (python -m tools.train_toys "
                   "--out models/chartworld --only student_b)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                   help="the arms to train (default all; the report names those left out)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--small-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the SFT and transfer settings")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 80, 160])
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    # As the micro-reproduction calibrated them on this pair (benchmarks/results/micro_repro.md).
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--loss", choices=["reverse_kl", "gjsd"], default="gjsd")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--sft-lr", type=float, default=1e-4)
    p.add_argument("--replay-share", type=float, default=REPLAY_SHARE)
    # "No prompt repeats more than ~3 times": the filtered arm's 422 prompts are drawn 3.03
    # times each at 160 steps x 8 prompts, which a limit of exactly 3.0 refused.
    p.add_argument("--max-repeats", type=float, default=3.1,
                   help="the most draws per prompt of an arm's pool at the longest budget")
    p.add_argument("--instruction", default=None, help="the run's sampling.instruction (toys: none)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in all (split among --jobs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="training runs at a time, each in its own process (2 on 2 cores: ~1.3x faster)")
    p.add_argument("--worker-claims", default=None, help=argparse.SUPPRESS)  # set by --jobs for its workers
    p.add_argument("--out", default="runs/teach-exp")
    p.add_argument("--results", default="benchmarks/results/teach")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.jobs < 1 or a.threads < 1:
        raise SystemExit("error: --jobs and --threads must be at least 1")
    t0 = time.time()
    torch.set_num_threads(a.threads)
    evaluator = Evaluator(heldout_rows(a.heldout, a.heldout_n), a.max_new_tokens, a.instruction)
    students = {"opd": a.student, "sft": a.student, "transfer": a.student_b}
    plan = plan_of(a)
    if a.worker_claims:  # a worker of --jobs: its parent built and checked the pools
        for i, (setting, arm, seed) in enumerate(plan):
            if claim(Path(a.worker_claims), i):
                announce(run_one(setting, arm, seed, a, pools_dir_of(a), evaluator, students[setting]))
        return 0
    pools_dir, sizes, overlap, pool_skills = build_pools(a)
    print(f"pools: {sizes}; held-out overlap: {overlap}", flush=True)
    base_path = Path(a.out) / "baseline.json"
    baseline = json.loads(base_path.read_text()) if base_path.is_file() else {}
    for name, path in (("student", a.student), ("teacher", a.teacher), ("student_b", a.student_b)):
        if name not in baseline and (name != "student_b" or "transfer" in a.settings):
            baseline[name] = evaluator.model_dir(path)
            write_json(base_path, baseline)
            print("baseline", name, json.dumps(baseline[name]), flush=True)
    args = list(sys.argv[1:] if argv is None else argv)
    if a.jobs > 1:
        run_workers(a, args, len(plan))
        runs = [json.loads((run_dir(a, *p) / "result.json").read_text()) for p in plan]
    else:
        runs = [announce(run_one(s, arm, seed, a, pools_dir, evaluator, students[s])) for s, arm, seed in plan]
    meta = {
        "command": "python -m benchmarks.teach " + shlex.join(args),
        "config": {k: v for k, v in vars(a).items() if k != "worker_claims"},
        "pools": sizes, "pool_skills": pool_skills, "heldout_overlap": overlap,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {a.jobs} run(s) at a time "
                   f"with {threads_per_run(a)} torch thread(s) each",
        "seconds": round(time.time() - t0, 1),
    }
    write_results(Path(a.results), meta, baseline, runs)
    print(f"wrote {a.results}.md, .json, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
