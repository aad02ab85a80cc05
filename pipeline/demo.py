"""`make demo`: the whole pipeline on the embedded chart world, then a short summary.

    python -m pipeline.demo --config configs/demo.yaml [key.sub=value ...]

Chart-world sources whose folder does not exist yet are generated first (deterministic:
same seed, same bytes), so a fresh clone needs no download, no GPU and no training.
The output is kept short (a bar per stage, a line when it ends, the summary); the
engines' and Ray's logs go to runs/<run>/logs/, and ``-v`` shows them here instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import report_user_error, run_console, stage_printer
from pipeline.core.config import RunConfig, load_config
from pipeline.core.console import Console
from pipeline.core.errors import ArgumentParser, UserError
from pipeline.core.reports import write_json
from pipeline.report import write_report
from pipeline.runner.run import Manifest, run_stages
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from stages import REGISTRY


def ensure_chartworld_seeds(cfg: RunConfig, n_default: int, console: Console) -> None:
    for src in cfg.ingest.sources:
        if src.format == "chartworld" and src.path and not Path(src.path).exists():
            n = src.limit or n_default
            console.say(f"demo: generating {n} chart-world seed prompts into {src.path}")
            write_seed_set(src.path, WorldConfig(), n, seed=src.seed, split=src.split)


def summary(cfg: RunConfig) -> dict:
    out = {"run": str(cfg.run_dir), "stages": {}}
    for st in REGISTRY:
        man = Manifest.read(cfg.run_dir / st.dirname)
        if man is None:
            continue
        out["stages"][st.dirname] = {"rows": man.rows, "skipped": sum(man.skipped.values())}
        if "zero_delta_fraction" in man.report:
            out["zero_delta_fraction"] = man.report["zero_delta_fraction"]
            out["delta_histogram"] = str(cfg.run_dir / st.dirname / "delta_hist.png")
        if "dataset" in man.report:
            out["dataset"] = man.report["dataset"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m pipeline.demo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--seeds", type=int, default=300, help="chart-world prompts to generate")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="everything on the terminal (engine and Ray logs, error tracebacks)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        args = p.parse_args(argv)
        cfg = load_config(args.config, args.overrides)
        with run_console(cfg, args.verbose, "demo", ["python -m pipeline.demo", *argv]) as console:
            ensure_chartworld_seeds(cfg, args.seeds, console)
            run_stages(cfg, REGISTRY.numbers, REGISTRY, on_done=stage_printer(cfg, console),
                       progress=console.err, log_path=console.log_path)
            s = summary(cfg)
            write_json(cfg.run_dir / "summary.json", s)
            print_summary(s, write_report(cfg.run_dir, REGISTRY), console)
    except UserError as e:
        return report_user_error(e, verbose)
    return 0


def print_summary(s: dict, report: Path, console: Console) -> None:
    console.say("\n== demo summary ==")
    for name, st in s["stages"].items():
        console.say(f"  {name:<12} {st['rows']:>6} rows  ({st['skipped']} skipped)")
    if s.get("zero_delta_fraction") is not None:
        console.say(f"  zero-delta fraction of the measured prompts: {s['zero_delta_fraction']:.1%}")
        console.say(f"  Δ histogram: {s['delta_histogram']}")
    console.say(f"  dataset: {s.get('dataset')}")
    console.say(f"  report: {report}")
    if console.log_path:
        console.say(f"  logs: {console.log_path}")


if __name__ == "__main__":
    sys.exit(main())
