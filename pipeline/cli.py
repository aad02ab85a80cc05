"""`deltaprompts`: run the pipeline's stages, inspect runs, audit datasets, push, train.

Every subcommand takes `--config FILE` plus `key.sub=value` overrides, e.g.

    deltaprompts run --config configs/demo.yaml --stages 1-3 sampling.n=4
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from pipeline.audit import run_audit
from pipeline.core.config import RunConfig, load_config
from pipeline.core.errors import ConfigError, UserError
from pipeline.data.hub import PushError, PushRefusedError, push_dataset_folder
from pipeline.runner.run import Manifest, lock_holder, run_stages, stage_status
from pipeline.runner.stage import Stage
from pipeline.sampling.measure import summary_text
from stages import REGISTRY

EPILOG = (
    "stages: " + ", ".join(f"{s.number} {s.name}" for s in REGISTRY) + ".\n"
    "Each stage reads the previous stage's shards under runs/<run>/NN-<stage>/ and writes its\n"
    "own; rerunning resumes (complete shards are skipped). If a stage's config or inputs\n"
    "changed, it refuses unless --recompute is given.\n"
)

# The trainers run only when asked: their modules import torch and transformers, which
# `status` or `--help` must not wait for (the one first-party import by name; see
# ARCHITECTURE.md).
TRAINERS = {
    "opd": ("trainer.opd", "on-policy distillation / VA-OPD (--config YAML, --set key=value)"),
    "sft": ("trainer.sft", "supervised fine-tuning on a Parquet of question/image/target rows"),
    "offpolicy": ("trainer.offpolicy", "off-policy fine-tuning of the student on the teacher's "
                  "sampled answers in a built dataset"),
}


def parse_stage_range(text: str) -> list[int]:
    """'1-3' -> [1, 2, 3]; '2,4-6' -> [2, 4, 5, 6]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
            if lo > hi:
                raise argparse.ArgumentTypeError(f"bad stage range {part!r}")
            out.extend(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    return sorted(set(out))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, value parsed as YAML (e.g. sampling.n=4)")


def _load(args) -> RunConfig:
    return load_config(args.config, args.overrides)


def stage_printer(cfg: RunConfig):
    """The ``on_done`` of run_stages that prints one line per stage as it ends."""

    def say(stage: Stage, man: Manifest | None) -> None:
        if man is None:
            print(f"{stage.dirname}: disabled in config, skipped")
            return
        print(f"{stage.dirname}: {man.rows} rows, {sum(man.skipped.values())} skipped, "
              f"{man.shards_total} shards, {man.seconds:.1f}s -> {cfg.run_dir / stage.dirname}")
    return say


def cmd_run(args) -> int:
    cfg = _load(args)
    run_stages(cfg, parse_stage_range(args.stages), REGISTRY, recompute=args.recompute,
               on_done=stage_printer(cfg))
    return 0


def cmd_stage(args) -> int:
    cfg = _load(args)
    run_stages(cfg, [args.number], REGISTRY, recompute=args.recompute, on_done=stage_printer(cfg))
    return 0


def _run_dir(run: str, root: str) -> Path:
    p = Path(run)
    return p if p.is_dir() else Path(root) / run


def cmd_status(args) -> int:
    run_dir = _run_dir(args.run, args.root)
    if not run_dir.is_dir():
        print(f"no run folder {args.run} (looked in . and {args.root}/)", file=sys.stderr)
        return 2
    holder = lock_holder(run_dir)
    rows = [stage_status(run_dir, st) for st in REGISTRY]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"run {run_dir}")
    for r in rows:
        if r["status"] == "not started":
            print(f"  {r['stage']:<12} not started")
            continue
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(r["skipped"].items())) or "none"
        extra = f", failed shards {r['failed_shards']}" if r["failed_shards"] else ""
        if r["skipped"] and r["skipped_rows_file"]:
            extra += f" (rows and details: {r['skipped_rows_file']})"
        print(f"  {r['stage']:<12} {r['status']:<9} shards {r['shards_done']}/{r['shards_total']}, "
              f"rows {r['rows']}, skipped: {skipped}{extra}")
    if any(r["status"] == "crashed" for r in rows):
        print("  crashed: the process that ran it died (no live process holds the run lock); "
              "rerun the same command to resume")
    elif holder is not None:
        print(f"  in progress: pid {holder} holds the run lock")
    return 0


def cmd_audit(args) -> int:
    cfg = _load(args)
    if cfg.models is None:
        raise ConfigError("audit needs models.teacher and models.student in the config")
    data = args.data or str(cfg.run_dir / REGISTRY.by_name("ingest").dirname / "shard-*.parquet")
    out = Path(args.out) if args.out else cfg.run_dir / "audit"
    summary = run_audit(data, cfg.models.teacher, cfg.models.student, cfg.sampling, cfg.delta, out,
                        limit=args.limit, match_mode=cfg.mine.grading)
    print(f"audit of {data}")
    print(summary_text(summary))
    print(f"summary: {out / 'audit.json'}; histogram: {out / 'delta_hist.png'}")
    return 0


def cmd_push(args) -> int:
    """Push only a dataset the assemble stage finished: its manifest complete (no live or
    dead run in the middle of it) and every file byte for byte what it recorded."""
    run_dir = _run_dir(args.run, args.root)
    last = REGISTRY.last()
    folder = run_dir / last.dirname / "dataset"
    if not folder.is_dir():
        print(f"error: {folder} does not exist; run stage {last.number} "
              f"({last.name}) first", file=sys.stderr)
        return 2
    state = stage_status(run_dir, last)["status"]
    man = Manifest.read(run_dir / last.dirname)
    if state != "complete" or man is None or "files" not in man.report:
        why = (f"stage {last.dirname} is {state}" if state != "complete"
               else f"stage {last.dirname} recorded no file hashes (made by an older version)")
        print(f"error: refusing to push {folder}: {why}; rerun stage {last.number} "
              f"(deltaprompts stage {last.number} --config ...) and push once it is complete",
              file=sys.stderr)
        return 2
    try:
        report = push_dataset_folder(folder, args.repo_id, private=args.private, dry_run=args.dry_run,
                                     revision=args.revision, expected_files=man.report["files"])
    except PushRefusedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PushError as e:
        print(f"error: push failed: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def cmd_train(args) -> int:
    module = importlib.import_module(TRAINERS[args.kind][0])
    return module.main(args.args) or 0


def cmd_eval(args) -> int:
    module = importlib.import_module("trainer.eval")
    return module.main(args.args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltaprompts",
        description="Build VLM distillation data where teacher and student disagree "
        "(answer divergence Δ), stage by stage, resumable, on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a range of stages (default: all)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--stages", default=f"{REGISTRY.numbers[0]}-{REGISTRY.numbers[-1]}",
                   help="stages to run, e.g. 1-3 or 2,4-6 (default: all)")
    p.add_argument("--recompute", action="store_true",
                   help="discard a stage's results made with another config/input and redo it")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stage", help="run one stage", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("number", type=int, choices=REGISTRY.numbers, metavar="N",
                   help=f"stage number {REGISTRY.numbers[0]}-{REGISTRY.numbers[-1]}")
    _add_config_args(p)
    p.add_argument("--recompute", action="store_true", help="discard and redo this stage")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("status", help="per stage: shards done/total, rows, skipped rows by reason")
    p.add_argument("--run", required=True, help="run name (under --root) or run folder path")
    p.add_argument("--root", default="runs", help="runs root (default: runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("audit", help="Δ of every prompt of an existing dataset: zero-delta "
                       "fraction overall and per source/skill, JSON summary + PNG histogram")
    _add_config_args(p)
    p.add_argument("--data", help="Parquet file/glob, dataset folder or Hub id "
                   "(default: the run's ingest shards)")
    p.add_argument("--out", help="output folder (default: runs/<run>/audit)")
    p.add_argument("--limit", type=int, help="audit only the first N prompts")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("push", help="upload a run's assembled dataset to the Hugging Face Hub")
    p.add_argument("--run", required=True, help="run name (under --root) or run folder path")
    p.add_argument("--root", default="runs", help="runs root (default: runs)")
    p.add_argument("--repo-id", required=True, help="dataset repo, e.g. me/deltaprompts-chart")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--dry-run", action="store_true", help="list the files and the commit; send nothing")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("train", help="train the student on a built dataset (opd, sft, offpolicy); "
                       "`deltaprompts train KIND --help` lists each trainer's options")
    p.add_argument("kind", choices=sorted(TRAINERS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in sorted(TRAINERS.items())))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the trainer's own options")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy of a model on a held-out prompt set, per skill/source "
                       "(`deltaprompts eval --help` lists options)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="trainer.eval's options")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come anywhere (`stage 2 --config f sampling.n=3`): argparse binds the
    # positional list early, so collect the leftover key=value words here.
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "eval"):
        # argparse's REMAINDER lets a leading option escape into `extra` (and so reorders
        # the words): hand the delegated command its words exactly as typed instead.
        start = argv.index(args.command) + (2 if args.command == "train" else 1)
        args.args, extra = argv[start:], []
    bad = [w for w in extra if w.startswith("-") or "=" not in w]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed shards are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
