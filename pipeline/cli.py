"""`deltaprompts`: run the pipeline's stages, inspect runs, audit datasets, push, train.

Every subcommand takes `--config FILE` plus `key.sub=value` overrides, e.g.

    deltaprompts run --config configs/demo.yaml --stages 1-3 sampling.n=4

A user's mistake (pipeline/core/errors.py) is one line on stderr and exit code 2; `-v`
adds its traceback. Anything else is a bug and keeps its traceback. Runs are quiet: a
progress bar per stage, a line when it ends, a summary; the engines', Ray's and our own
logs go to runs/<run>/logs/ (`-v` shows everything on the terminal instead).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.audit import run_audit
from pipeline.core.config import RunConfig, default_cache_dir, load_config
from pipeline.core.console import Console, captured_output, log_file
from pipeline.core.errors import (
    ArgumentParser,
    ConfigError,
    RunError,
    UsageError,
    UserError,
    one_line,
)
from pipeline.data.hub import PushError, PushRefusedError, push_dataset_folder
from pipeline.refresh_state import ROUND, STATE, read_state, round_line
from pipeline.report import write_report
from pipeline.runner.run import (
    Manifest,
    StageFailedError,
    lock_holder,
    prepare_run_dir,
    run_stages,
    stage_status,
)
from pipeline.runner.stage import Stage
from pipeline.sampling.measure import summary_text
from pipeline.sampling.store import SampleStore
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


def parse_stage_range(text: str, numbers: list[int] | None = None) -> list[int]:
    """'1-3' -> [1, 2, 3]; '2,4-6' -> [2, 4, 5, 6]. UsageError for anything else, or for a
    stage that does not exist (``numbers``: the stages there are; default: the registry)."""
    numbers = REGISTRY.numbers if numbers is None else numbers
    span = f"{numbers[0]}-{numbers[-1]}"
    hint = f"stages are {span}; e.g. --stages {span} or --stages 2,4-{numbers[-1]}"
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo_text, dash, hi_text = part.partition("-")
        if not part or not lo_text.strip().isdigit() or (dash and not hi_text.strip().isdigit()):
            raise UsageError(f"--stages {text!r}: {part!r} is not a stage number or range; {hint}")
        lo, hi = int(lo_text), int(hi_text) if dash else int(lo_text)
        if lo > hi:
            raise UsageError(f"--stages {text!r}: the range {part!r} runs backwards; write it "
                             f"{hi}-{lo}")
        missing = [n for n in range(lo, hi + 1) if n not in numbers]
        if missing:
            raise UsageError(f"--stages {text!r}: no stage {missing[0]}; {hint}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, value parsed as YAML (e.g. sampling.n=4)")


def _load(args) -> RunConfig:
    return load_config(args.config, args.overrides)


def stage_printer(cfg: RunConfig, console: Console | None = None):
    """The ``on_done`` of run_stages that prints one line per stage as it ends."""

    def say(stage: Stage, man: Manifest | None) -> None:
        out = console.out if console else sys.stdout
        if man is None:
            print(f"{stage.dirname}: disabled in config, skipped", file=out, flush=True)
            return
        print(f"{stage.dirname}: {man.rows} rows, {sum(man.skipped.values())} skipped, "
              f"{man.shards_total} shards, {man.seconds:.1f}s -> {cfg.run_dir / stage.dirname}",
              file=out, flush=True)
    return say


@contextmanager
def run_console(cfg: RunConfig, verbose: bool, command: str, words: list[str]) -> Iterator[Console]:
    """The run folder made (or a clear error), then the process's output captured into
    ``<run>/logs/`` for the command (``verbose``: nothing captured); says where. ``words``:
    the command line, the log's first line."""
    prepare_run_dir(cfg)
    path = None if verbose else log_file(cfg.run_dir, command)
    with captured_output(path, header=" ".join(words)) as console:
        if path is not None:
            console.say(f"logs: {path} (-v shows them here)")
        yield console


def _run(cfg: RunConfig, numbers: list[int], args, command: str, report: bool) -> int:
    with run_console(cfg, args.verbose, command, args.words) as console:
        run_stages(cfg, numbers, REGISTRY, recompute=args.recompute,
                   on_done=stage_printer(cfg, console), progress=console.err,
                   log_path=console.log_path)
        if report:
            console.say(f"report: {write_report(cfg.run_dir, REGISTRY)}")
    return 0


def cmd_run(args) -> int:
    numbers = parse_stage_range(args.stages)
    return _run(_load(args), numbers, args, "run", report=True)


def cmd_stage(args) -> int:
    return _run(_load(args), [args.number], args, "stage", report=False)


def _run_dir(run: str, root: str) -> Path:
    p = Path(run)
    run_dir = p if p.is_dir() else Path(root) / run
    if not run_dir.is_dir():
        raise RunError(f"no run folder {run!r} (looked for that folder and for {root}/{run}); "
                       f"give a run name under --root or a run folder path")
    return run_dir


def cmd_status(args) -> int:
    run_dir = _run_dir(args.run, args.root)
    if (run_dir / STATE).is_file():
        return _refresh_status(run_dir, args.json)
    holder = lock_holder(run_dir)
    rows = [stage_status(run_dir, st) for st in REGISTRY]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"run {run_dir}")
    for r in rows:
        if r["status"] in ("not started", "disabled"):
            print(f"  {r['stage']:<12} {r['status']}")
            continue
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(r["skipped"].items())) or "none"
        extra = f", failed shards {r['failed_shards']}" if r["failed_shards"] else ""
        if r["skipped"] and r["skipped_rows_file"]:
            extra += f" (rows and details: {r['skipped_rows_file']})"
        print(f"  {r['stage']:<12} {r['status']:<9} shards {r['shards_done']}/{r['shards_total']}, "
              f"rows {r['rows']}, skipped: {skipped}{extra}")
        if r.get("note"):
            print(f"  {'':<12} note: {r['note']}")
    if any(r["status"] == "crashed" for r in rows):
        print("  crashed: the process that ran it died (no live process holds the run lock); "
              "rerun the same command to resume")
    elif holder is not None:
        print(f"  in progress: pid {holder} holds the run lock")
    return 0


def cmd_report(args) -> int:
    run_dir = _run_dir(args.run, args.root)
    if args.sample < 1:
        raise UsageError(f"--sample {args.sample}: give at least 1 prompt to show")
    print(f"report: {write_report(run_dir, REGISTRY, sample=args.sample)}")
    return 0


def cmd_audit(args) -> int:
    cfg = _load(args)
    if cfg.models is None:
        raise ConfigError("audit needs models.teacher and models.student in the config")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give at least 1 prompt (or leave it out for all)")
    data = args.data
    if not data:
        ingest = cfg.run_dir / REGISTRY.by_name("ingest").dirname
        if not list(ingest.glob("shard-*.parquet")):
            raise UsageError(f"audit: no --data given and run {cfg.run.name!r} has no ingest "
                             f"shards in {ingest}; give --data PATH or run stage 1 first")
        data = str(ingest / "shard-*.parquet")
    out = Path(args.out) if args.out else cfg.run_dir / "audit"
    with run_console(cfg, args.verbose, "audit", args.words) as console:
        summary = run_audit(data, cfg.models.teacher, cfg.models.student, cfg.sampling, cfg.delta,
                            out, limit=args.limit, match_mode=cfg.mine.grading)
        console.say(f"audit of {data}")
        console.say(summary_text(summary))
        console.say(f"summary: {out / 'audit.json'}; histogram: {out / 'delta_hist.png'}")
    return 0


def _refresh_status(top: Path, as_json: bool) -> int:
    """A refresh folder: its rounds from refresh.json, then the stages of a round that has
    started but not finished (each round folder is a run: `status --run <it>/round-NN`)."""
    state = read_state(top / STATE) or {}
    rounds = state.get("rounds", [])
    if as_json:
        print(json.dumps({"base_run": state.get("base_run"), "rounds": rounds}, indent=2))
        return 0
    asked = state.get("settings", {}).get("refresh", {})
    print(f"refresh {top} of run {state.get('base_run')}: {sum(bool(r.get('complete')) for r in rounds)} "
          f"round(s) measured, {asked.get('steps', '?')} OPD steps per round")
    for rec in rounds:
        if rec.get("complete"):
            print(f"  {round_line(rec)}")
            continue
        folder = top / ROUND.format(rec["round"])
        print(f"  round {rec['round']}: {'trained, ' if rec.get('trained') else ''}not measured yet "
              f"({folder})")
        for st in REGISTRY:
            row = stage_status(folder, st)
            if row["status"] not in ("not started", "disabled"):
                print(f"    {row['stage']:<12} {row['status']:<9} shards "
                      f"{row['shards_done']}/{row['shards_total']}, rows {row['rows']}")
    holder = lock_holder(top)
    if holder is not None:
        print(f"  in progress: pid {holder} holds the refresh's lock")
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


def cmd_cache(args) -> int:
    """`cache stats` / `cache prune`: the sample store (run.cache_dir) shown and trimmed."""
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if not root.is_dir():
        raise UsageError(f"no sample store at {root} (nothing drawn yet, or give --cache-dir)")
    store = SampleStore(root)
    if args.action == "stats":
        stats = store.stats()
        if args.json:
            print(json.dumps(stats, indent=2))
            return 0
        print(f"sample store {stats['root']}: {stats['samples']} samples in {stats['files']} "
              f"files, {stats['bytes'] / 1e6:.1f} MB")
        for model, m in stats["models"].items():
            print(f"  model {model}: {m['samples']} samples, {m['files']} files, "
                  f"{m['bytes'] / 1e6:.1f} MB ({', '.join(m['labels']) or 'no label'})")
        if stats["corrupt_files"]:
            print(f"  {len(stats['corrupt_files'])} corrupt file(s), ignored; "
                  "`deltaprompts cache prune` removes them")
        return 0
    if args.older_than is not None and args.older_than < 0:
        raise UsageError(f"--older-than {args.older_than}: give a number of days >= 0")
    if args.max_gb is not None and args.max_gb < 0:
        raise UsageError(f"--max-gb {args.max_gb}: give a size >= 0")
    out = store.prune(older_than_days=args.older_than, model=args.model,
                      max_bytes=None if args.max_gb is None else int(args.max_gb * 1e9),
                      dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {out['files_removed']} files ({out['samples_removed']} samples, "
          f"{out['bytes_removed'] / 1e6:.1f} MB) and {out['temp_removed']} temp leftovers")
    return 0


def cmd_train(args) -> int:
    module = importlib.import_module(TRAINERS[args.kind][0])
    return module.main(args.args) or 0


def cmd_refresh(args) -> int:
    """Rounds of OPD -> re-measured Δ -> re-filter from a completed run (pipeline/refresh.py,
    loaded by name: it imports the trainer, and so torch)."""
    flags = {"rounds": args.rounds, "steps": args.steps, "train_config": args.train_config,
             "heldout": args.heldout, "heldout_n": args.heldout_n, "name": args.name}
    words = [f"refresh.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = load_config(args.config, list(args.overrides) + words)
    refresh = importlib.import_module("pipeline.refresh")
    refresh.check(cfg)  # e.g. a missing or unfinished base run: one line, before any folder is made
    with run_console(refresh.folder_config(cfg), args.verbose, "refresh", args.words) as console:
        refresh.main_refresh(cfg, console, recompute=args.recompute)
    return 0


def cmd_eval(args) -> int:
    module = importlib.import_module("trainer.eval")
    return module.main(args.args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="deltaprompts",
        description="Build VLM distillation data where teacher and student disagree "
        "(answer divergence Δ), stage by stage, resumable, on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="everything on the terminal: engine, Ray and debug logs, and the "
                        "traceback of an error")
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

    p = sub.add_parser("report", help="write <run>/report.html: stages, Δ histogram, zero-delta "
                       "and failures by source/skill, and prompts to browse (self-contained)")
    p.add_argument("--run", required=True, help="run name (under --root) or run folder path")
    p.add_argument("--root", default="runs", help="runs root (default: runs)")
    p.add_argument("--sample", type=int, default=120, help="prompts to show (default: 120)")
    p.set_defaults(func=cmd_report)

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

    p = sub.add_parser("cache", help="the sample store every run shares (run.cache_dir): "
                       "`stats` shows it per model, `prune` trims it")
    p.add_argument("action", choices=["stats", "prune"])
    p.add_argument("--cache-dir", help="the store's folder (default: $DELTAPROMPTS_CACHE_DIR, "
                   "else ~/.cache/deltaprompts/samples)")
    p.add_argument("--json", action="store_true", help="stats: machine-readable output")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="prune: remove samples written more than DAYS ago")
    p.add_argument("--model", metavar="ID", help="prune: remove one model's samples (an id "
                   "prefix as `stats` shows it)")
    p.add_argument("--max-gb", type=float, help="prune: then remove the oldest files until the "
                   "store is at most this size")
    p.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="train the student on a built dataset (opd, sft, offpolicy); "
                       "`deltaprompts train KIND --help` lists each trainer's options")
    p.add_argument("kind", choices=sorted(TRAINERS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in sorted(TRAINERS.items())))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the trainer's own options")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "refresh", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="Δ against the student being trained: rounds of OPD on the current high-Δ set, "
        "then the pool's Δ re-measured with the new checkpoint as the student, then re-filtered",
        description=(
            "Δ against the student being trained. Starts from a run whose stages 1-5 are\n"
            "complete (the same --config and overrides). Round 0 measures the whole pool (the\n"
            "run's stage-4 input: seeds + synthesised) against the run's student. Round r\n"
            "trains OPD for --steps more steps on round r-1's kept set (continuing its\n"
            "optimizer), makes that checkpoint the student, mines the pool with it (student\n"
            "samples only), measures Δ with the teacher served from the sample store, filters.\n\n"
            "One run folder per round: <run.root>/<refresh.name>/round-NN/ (01-pool, 02-mine,\n"
            "04-delta, 05-filter, opd/). refresh.json, refresh.md and refresh.png there hold,\n"
            "per round, the pool's zero-delta fraction (overall, per skill), the kept prompts,\n"
            "samples drawn vs served and held-out accuracy. Rerunning the same command resumes\n"
            "(--rounds may grow); other settings are refused unless --recompute. The flags set\n"
            "the config's refresh.* keys; refresh.train holds OPD overrides, refresh.full_n\n"
            "(default true) measures every round at full n so the teacher is sampled once."),
        epilog="example:\n  deltaprompts refresh --config configs/teach.yaml --rounds 3 --steps 8 "
        "\\\n      --heldout data/chartworld-heldout refresh.train='{lr: 3.0e-4, loss: gjsd}'")
    _add_config_args(p)
    p.add_argument("--rounds", type=int, help="training rounds after round 0 (refresh.rounds, default 3)")
    p.add_argument("--steps", type=int, help="OPD optimizer steps per round (refresh.steps, default 10)")
    p.add_argument("--train-config", help="OPD config YAML, its opd: section (refresh.train_config, "
                   "default configs/opd.yaml); student, teacher, data, steps are set per round")
    p.add_argument("--heldout", help="held-out prompts to score each round's student on "
                   "(refresh.heldout; Parquet file/folder, dataset folder)")
    p.add_argument("--heldout-n", type=int, help="score only the first N held-out rows with gold")
    p.add_argument("--name", help="the refresh folder inside run.root (refresh.name, default "
                   "<run.name>-refresh)")
    p.add_argument("--recompute", action="store_true",
                   help="redo a refresh made with other settings (its round folders are deleted)")
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("eval", help="accuracy of a model on a held-out prompt set, per skill/source "
                       "(`deltaprompts eval --help` lists options)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="trainer.eval's options")
    p.set_defaults(func=cmd_eval)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    # Overrides may come anywhere (`stage 2 --config f sampling.n=3`): argparse binds the
    # positional list early, so collect the leftover key=value words here.
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
    args.words = ["deltaprompts", *argv]
    return args


def report_user_error(error: UserError, verbose: bool) -> int:
    """One line on stderr (the traceback first under -v); exit code 2."""
    if verbose:
        traceback.print_exception(error)
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # -v before the command is ours (a trainer's own options come after it)
    verbose = any(w in ("-v", "--verbose") for w in argv[:next(
        (i for i, w in enumerate(argv) if not w.startswith("-")), len(argv))])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = _parse(build_parser(), argv)
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        return args.func(args)
    except UserError as e:
        return report_user_error(e, verbose)
    except StageFailedError as e:
        # A bug in a stage task: the workers' tracebacks (the driver's own says nothing).
        for f in e.failures:
            print(f"--- shard {f.index} ---\n{f.traceback.rstrip()}", file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; completed shards are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
