"""What the stage-4 benchmarks share: a prompt pool, run folders cut from it, timed runs.

    source = ensure_source_run(Path("runs/teach"), n=1000)        # 02-mine of a real run
    run = prepare_run(source, Path("runs/bench/x"), n=200, drop_student=True)
    timed = run_stage4_cli(Path("runs/bench"), "x", ["delta.adaptive=false"])

A benchmark run folder holds only a complete ``02-mine`` (rewrite off, so stage 4 reads
it): the first ``n`` prompts of the source run's mine shards, re-cut into shards of
``shard_size``. ``drop_student`` removes mine's student samples, so stage 4 draws the
student too (both models sampled, as a hand-written script would); otherwise it reuses
them, which is what stage 4 does on a real run.

The source is a finished pipeline run (``make reproduce`` makes ``runs/teach``, 1,000
chart-world prompts). When it is missing, :func:`default_source` makes ``runs/bench-pool``
(:func:`ensure_source_run`: chart-world seeds, then stages 1 and 2 with
``configs/teach.yaml``, rewrite off), once.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from pipeline.core import shards
from pipeline.core.config import DeltaConfig, load_config
from pipeline.runner.run import Manifest, run_stages
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from stages import REGISTRY

CONFIG = "configs/teach.yaml"  # the chart-world toy pair, n=8, 48 tokens, bare questions
INGEST = REGISTRY.by_number(1).dirname
MINE = REGISTRY.by_number(2).dirname
DELTA = REGISTRY.by_number(4).dirname
TEACH_RUN, POOL_RUN = Path("runs/teach"), Path("runs/bench-pool")
STUDENT_COLUMNS = ("student_samples", "student_answers", "student_accuracy", "student_failed")
# Every benchmark run: the config's models and sampling, rewrite off (stage 4 reads mine),
# and only the adaptive policy deciding how many samples a prompt gets: a teacher skip on
# prompts the student already solves (delta.skip_solved, where the config has it) is off.
# The sample store off: these benchmarks time and count draws, which a warm store would serve.
BASE_OVERRIDES = ["rewrite.enabled=false", "run.sample_store=false"] + (
    ["delta.skip_solved=null"] if "skip_solved" in {f.name for f in fields(DeltaConfig)} else [])


def run_overrides(root: Path, name: str, extra: list[str] = ()) -> list[str]:
    return [f"run.root={root}", f"run.name={name}", *BASE_OVERRIDES, *extra]


def ensure_source_run(source: Path, n: int, config: str = CONFIG, *, mine: bool = True,
                      world: WorldConfig | None = None, overrides: list[str] = ()) -> Path:
    """``source`` if it holds prompts (a complete 02-mine, or 01-ingest when ``mine`` is
    off); else a new run there: ``n`` chart-world prompts (``world``), stage 1 and, when
    ``mine``, stage 2, in process. ``overrides`` go to the config (models, say)."""
    if _complete(source / MINE) or (not mine and _complete(source / INGEST)):
        return source
    data = source.parent / f"{source.name}-seeds"
    print(f"no prompts in {source}: making {n} chart-world prompts and stage(s) "
          f"{'1-2' if mine else '1'} there", flush=True)
    if not data.exists():
        write_seed_set(data, world or WorldConfig(), n, seed=11, split="test")
    cfg = load_config(config, run_overrides(source.parent, source.name, [
        f"ingest.sources.0.path={data}", f"ingest.sources.0.limit={n}",
        "execution.backend=local", *overrides]))
    run_stages(cfg, [1, 2] if mine else [1], REGISTRY)
    return source


def default_source(n: int, config: str = CONFIG) -> Path:
    """``runs/teach`` (``make reproduce``'s 1,000-prompt run) when its 02-mine is complete;
    else ``runs/bench-pool``, made once (``n`` prompts, at least 1,000; stages 1-2) and
    shared by the benchmarks. A benchmark never writes into ``runs/teach``."""
    if _complete(TEACH_RUN / MINE):
        return TEACH_RUN
    return ensure_source_run(POOL_RUN, max(n, 1000), config)


def _complete(stage_dir: Path) -> bool:
    man = Manifest.read(stage_dir)
    return man is not None and man.status == "complete"


def mine_table(source: Path) -> pa.Table:
    """Every prompt of a run, in shard order: its 02-mine, else its 01-ingest."""
    stage_dir = source / MINE if _complete(source / MINE) else source / INGEST
    return pa.concat_tables([shards.read_shard(stage_dir, i) for i in shards.complete_shards(stage_dir)],
                            promote_options="default")


def prepare_run(source: Path, run_dir: Path, n: int, shard_size: int = 100,
                drop_student: bool = False) -> int:
    """A run folder whose complete 02-mine holds the first ``n`` source prompts; rows written.

    A source without a 02-mine gives its 01-ingest rows (no student samples: stage 4 draws
    them). Anything already in ``run_dir`` goes (a benchmark starts clean).
    """
    table = mine_table(source)
    if n > table.num_rows:
        raise ValueError(f"{source} has {table.num_rows} prompts, {n} asked")
    table = table.slice(0, n)
    if drop_student:
        table = table.drop_columns([c for c in STUDENT_COLUMNS if c in table.column_names])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    stage_dir = run_dir / MINE
    stage_dir.mkdir(parents=True)
    man = Manifest(stage=MINE, config_hash="benchmark", input_hash="", status="complete",
                   upstream=None, rows=n)
    for index, start in enumerate(range(0, n, shard_size)):
        part = table.slice(start, shard_size)
        marker = shards.write_shard(stage_dir, shards.ShardMarker(index=index, rows=0, sha256=""),
                                    part)
        man.shards[str(index)] = asdict(marker)
    man.shards_total = len(man.shards)
    man.write(stage_dir)
    return n


def run_stage4_cli(root: Path, name: str, overrides: list[str], config: str = CONFIG,
                   log: Path | None = None) -> dict[str, Any]:
    """``python -m pipeline.cli stage 4`` in a fresh process (what a user runs), timed.

    Returns the wall time of the whole command (interpreter, Ray, engine start-up, every
    shard, the summary) and what its manifest says.
    """
    cmd = [sys.executable, "-m", "pipeline.cli", "stage", "4", "--config", config,
           *run_overrides(root, name, overrides)]
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"stage 4 failed ({rc}): {' '.join(cmd)}" + (f"; see {log}" if log else ""))
    man = Manifest.read(root / name / DELTA)
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 3),
            "manifest_seconds": man.seconds,
            "shard_seconds": round(sum(s["seconds"] for s in man.shards.values()), 3),
            "samples": man.report.get("samples", {}), "rows": man.rows}


def delta_table(run_dir: Path) -> pa.Table:
    stage_dir = run_dir / DELTA
    return pa.concat_tables([shards.read_shard(stage_dir, i)
                             for i in shards.complete_shards(stage_dir)],
                            promote_options="default")


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU count, platform, load, GPU if any."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
