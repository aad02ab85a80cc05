"""`deltaprompts refresh`: Δ measured against the student being trained.

A static high-Δ set is measured once, against the student before training; after a few
steps of distillation the student has changed, and so has where it still disagrees with
the teacher. Refresh starts from a completed run (stages 1-5) and works in rounds:

    round 0:  Δ of the whole pool (the run's stage-4 input: seeds + synthesised prompts)
              against the run's own student; filter -> the round-0 high-Δ set
    round r:  OPD for `steps` optimizer steps on round r-1's high-Δ set, continuing round
              r-1's optimizer (weights, moments, RNG, step counter: R rounds of K steps
              are one K*R-step run whose data changes between rounds)
              -> the checkpoint becomes models.student
              -> mine the whole pool with it (student samples only)
              -> Δ against the teacher, served from the sample store
              -> filter -> round r's high-Δ set

Why mine again: stage 2's samples are the student's, and stage 4 reuses them and decides
`student_solved` on them; after training they describe a student that no longer exists.
Mining the pool with the new student costs only student samples and keeps both right.
With `refresh.full_n` (default) every round measures at full sampling.n with no
student_solved skip: the teacher's n samples per prompt are drawn once, in round 0 (the
ones the base run drew are served), and every later round draws none. Re-synthesis (stage
3 aimed at the new failures) is not part of a round: the pool stays the base run's.

Each round is a run folder of its own, `<run.root>/<refresh.name>/round-NN/`, with the
stages `01-pool` (the base pool, copied), `02-mine`, `04-delta`, `05-filter` (manifests,
resume, refuse-on-change: the runner's) and `opd/` (the trainer's checkpoints,
`final/` the round's student). `refresh.json` in the refresh folder holds the settings
and one record per finished round; a rerun of the same command continues where it
stopped (a round's stages resume by shard, its training from its checkpoint); changed
settings are refused unless --recompute. Per round: the pool's zero-delta fraction
overall and per skill, the kept set, samples drawn vs served, held-out accuracy
(`refresh.heldout`), collected in `refresh.md` and `refresh.png`.

    deltaprompts refresh --config configs/teach.yaml --rounds 3 --steps 8 \\
        --heldout data/chartworld-heldout
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.core import shards
from pipeline.core.config import RunConfig, config_from_dict
from pipeline.core.configschema import load_dataclass
from pipeline.core.console import Console
from pipeline.core.errors import RunError, UsageError
from pipeline.core.reports import COLORS, figure, save_png, write_json, write_text
from pipeline.refresh_state import ROUND, STATE, read_state, round_line
from pipeline.runner.run import Manifest, input_fingerprint, run_lock, run_stages, stage_status
from pipeline.runner.stage import ShardOutput, ShardTask, Stage, StageRegistry
from pipeline.sampling.fingerprint import model_identity
from stages import REGISTRY
from stages.delta import DeltaStage
from stages.filter import FilterStage
from stages.mine import MineStage
from trainer.config import OPDConfig
from trainer.data import load_prompts
from trainer.eval import EvalConfig, accuracy_record
from trainer.loop import latest_checkpoint
from trainer.opd import OPDTrainer

log = logging.getLogger(__name__)

# mine's columns: the pool carries the base student's, each round replaces them.
MINED = tuple(MineStage.columns)
# refresh.* keys that may change between reruns of one refresh: more rounds, another
# held-out set (rounds already measured are scored on it when missing).
RESUMABLE = ("rounds", "heldout", "heldout_n", "heldout_split", "name")


class PoolStage(Stage):
    """Round stage 1: the base run's pool (its stage-4 input), shard for shard, without the
    base student's mined columns. Which pool is checked by refresh.json (its shard hashes)."""

    number = 1
    name = "pool"

    def __init__(self, source_dir: str | Path | None = None):
        self.source_dir = str(source_dir) if source_dir else ""

    def plan(self, cfg, input_indices):
        return [ShardTask(index=i) for i in shards.complete_shards(Path(self.source_dir))]

    def process(self, cfg, state, task, table):
        table = shards.read_shard(Path(self.source_dir), task.index)
        return ShardOutput(table.drop_columns([c for c in MINED if c in table.column_names]))


class RoundMineStage(MineStage):
    """Stage 2 on the pool: every prompt, seeds and synthesised alike, with this round's student."""

    input_stage = "pool"


def round_registry(pool_dir: Path) -> StageRegistry:
    return StageRegistry([PoolStage(pool_dir), RoundMineStage, DeltaStage, FilterStage])


ROUND_STAGES = [1, 2, 4, 5]


# --- the base run ---------------------------------------------------------------------------
def check(cfg: RunConfig) -> Path:
    """What a refresh needs before any folder is made (one line each): models, a held-out
    set that exists, a base run whose stages 1-5 are complete. Returns the pool folder."""
    if cfg.models is None:
        raise UsageError("refresh needs models.teacher and models.student in the config")
    held = cfg.refresh.heldout
    if held and not Path(held).exists() and not glob.glob(held):
        raise UsageError(f"--heldout {held!r} does not exist; give held-out prompts (a Parquet "
                         "file, glob or folder, or a dataset folder)")
    train_config(cfg)  # its file and values, checked now rather than after round 0
    return base_pool(cfg)


def base_pool(cfg: RunConfig) -> Path:
    """The base run's stage-4 input folder, after checking stages 1-5 are complete (one
    line saying what to run otherwise)."""
    run_dir = cfg.run_dir
    if not run_dir.is_dir():
        raise RunError(f"no base run at {run_dir}: run the pipeline first "
                       f"(deltaprompts run --config ... --stages 1-5), then refresh")
    for n in (1, 2, 3, 4, 5):
        stage = REGISTRY.by_number(n)
        if not stage.enabled(cfg):
            continue
        state = stage_status(run_dir, stage)["status"]
        if state != "complete":
            raise RunError(f"base run {run_dir}: stage {stage.dirname} is {state}; refresh starts "
                           f"from a run whose stages 1-5 are complete (deltaprompts run --config "
                           f"... --stages 1-5)")
    return run_dir / REGISTRY.by_name(REGISTRY.by_number(4).upstream(cfg)).dirname


# --- settings and state ---------------------------------------------------------------------
def refresh_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.root) / (cfg.refresh.name or f"{cfg.run.name}-refresh")


def train_config(cfg: RunConfig) -> OPDConfig:
    """The OPD settings every round shares (per-round fields are set by :func:`train_round`)."""
    r = cfg.refresh
    if not Path(r.train_config).is_file():
        raise UsageError(f"refresh.train_config {r.train_config!r} does not exist; give an OPD "
                         "config YAML (--train-config configs/opd.yaml)")
    overrides = [f"{k}={json.dumps(v)}" for k, v in sorted(r.train.items())]
    base = load_dataclass(OPDConfig, r.train_config, overrides, section="opd")
    return dataclasses.replace(
        base, student=cfg.models.student.model, teacher=cfg.models.teacher.model, data="-",
        output_dir="-", seed=r.seed, data_seed=r.seed, instruction=cfg.sampling.instruction,
        where={}, num_prompts=None, init_from=None, resume=True, eval_every=0, eval_at=[],
        save_every=0)


def settings(cfg: RunConfig, pool_dir: Path) -> dict[str, Any]:
    """What determines a refresh's rows: changing any of it refuses a rerun."""
    parts = cfg.parts_of(["models.teacher", "models.student", "sampling", "delta", "mine",
                          "filter", "refresh"])
    for key in RESUMABLE:
        parts["refresh"].pop(key, None)
    # The runner's own hash of a complete stage's shards (what refuse-on-change compares).
    parts["pool"] = {"folder": str(pool_dir), "shards": input_fingerprint(pool_dir)[0]}
    parts["train"] = {k: v for k, v in dataclasses.asdict(train_config(cfg)).items()
                      if k not in ("progress", "num_threads", "device", "log_every")}
    return json.loads(json.dumps(parts, default=str))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def _remove_round(folder: Path, top: Path) -> None:
    """Delete one round folder of this refresh (a name refresh makes, inside its folder)."""
    target = folder.resolve()
    if target.parent != top.resolve() or not target.name.startswith("round-"):
        raise RunError(f"refusing to delete {folder}: not a round folder of {top}")
    shutil.rmtree(target)


# --- one round ------------------------------------------------------------------------------
def round_config(cfg: RunConfig, top: Path, r: int, student: str) -> RunConfig:
    raw = cfg.to_dict()
    raw["run"].update(root=str(top), name=ROUND.format(r))
    raw["rewrite"]["enabled"] = False  # the pool is fixed: delta reads this round's mine
    raw["mine"]["tag_skills"] = False  # the pool's skills are the base run's
    raw["models"]["student"]["model"] = student
    if cfg.refresh.full_n:
        raw["delta"].update(adaptive=False, skip_solved=None)
    return config_from_dict(raw)


def train_round(cfg: RunConfig, top: Path, r: int, console: Console) -> dict[str, Any]:
    """OPD for refresh.steps more steps on round r-1's kept set, from round r-1's
    checkpoint; returns the training record (the student's folder among it)."""
    prev, here = top / ROUND.format(r - 1), top / ROUND.format(r)
    kept = Manifest.read(prev / "05-filter")
    if kept is None or kept.rows == 0:
        raise RunError(f"round {r - 1} kept no prompts ({prev / '05-filter'}): nothing to train "
                       f"round {r} on; lower filter.threshold or use fewer rounds")
    init = latest_checkpoint(prev / "opd") if r > 1 else None
    opd = dataclasses.replace(
        train_config(cfg), data=str(prev / "05-filter" / "shard-*.parquet"),
        output_dir=str(here / "opd"), steps=r * cfg.refresh.steps,
        init_from=str(init) if init else None, progress=True)
    t0 = time.perf_counter()
    trainer = OPDTrainer(opd)
    console.say(f"round {r}: OPD steps {(r - 1) * cfg.refresh.steps + 1}-{opd.steps} on "
                f"{len(trainer.selection)} prompts of round {r - 1}")
    with contextlib.redirect_stderr(console.err):  # the step bar on the terminal
        final = trainer.train()
    del trainer
    return {"student": str(final), "steps": opd.steps, "train_s": round(time.perf_counter() - t0, 1)}


def _samples(run_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for stage in ("02-mine", "04-delta"):
        man = Manifest.read(run_dir / stage)
        for k, v in (man.report.get("samples", {}) if man else {}).items():
            if k.endswith(("_drawn", "_served")) and isinstance(v, int):
                out[k] = out.get(k, 0) + v
    return out


def measure_round(rcfg: RunConfig, pool_dir: Path, console: Console) -> dict[str, Any]:
    """Stages pool, mine, delta, filter in the round's folder (resumable); their figures."""
    t0 = time.perf_counter()

    def said(stage, man):
        console.say(f"  {stage.dirname}: {man.rows} rows, {man.seconds:.1f}s")

    run_stages(rcfg, ROUND_STAGES, round_registry(pool_dir), progress=console.err, on_done=said,
               log_path=console.log_path)
    run_dir = rcfg.run_dir
    summary = json.loads((run_dir / "04-delta" / "delta_summary.json").read_text())
    kept = json.loads((run_dir / "05-filter" / "filter_report.json").read_text())
    return {
        "pool": summary["overall"]["prompts"],
        "zero_delta_fraction": summary["overall"]["zero_delta_fraction"],
        "zero_delta_by_skill": {k: v["zero_delta_fraction"] for k, v in summary["by_skill"].items()},
        "delta_mean": summary["overall"]["delta_mean"],
        "kept": kept["kept"], "kept_per_skill": kept.get("kept_per_skill", {}),
        "samples": _samples(run_dir),
        "measure_s": round(time.perf_counter() - t0, 1),
    }


def heldout_accuracy(cfg: RunConfig, model: str) -> dict[str, Any]:
    """Greedy accuracy of ``model`` on refresh.heldout (transformers, in process)."""
    r = cfg.refresh
    ecfg = EvalConfig(max_tokens=cfg.sampling.max_tokens, instruction=cfg.sampling.instruction,
                      match_mode=cfg.mine.grading, limit=r.heldout_n, batch_size=32)
    rows = list(load_prompts(r.heldout, split=r.heldout_split))
    return {"data": r.heldout, **accuracy_record(model, rows, ecfg, device=cfg.models.student.device)}


# --- the loop -------------------------------------------------------------------------------
def run_refresh(cfg: RunConfig, console: Console, recompute: bool = False) -> dict[str, Any]:
    """Round 0, then rounds 1..refresh.rounds (resumable); returns the refresh state."""
    pool_dir = check(cfg)
    top = refresh_dir(cfg)
    want = settings(cfg, pool_dir)
    state_path = top / STATE
    state = read_state(state_path)
    if state is not None and state.get("settings") != want and not recompute:
        changed = _differences(state.get("settings") or {}, want)
        raise RunError(f"refresh {top} was made with other settings ({', '.join(changed)}); "
                       "rerun with --recompute to redo it, or set refresh.name to start another")
    if recompute:  # start over: the round folders (runs and checkpoints) of this refresh go
        for folder in sorted(top.glob("round-[0-9][0-9]")):
            _remove_round(folder, top)
        state = None
    if state is None:
        state = {"settings": want, "base_run": str(cfg.run_dir), "rounds": []}
    rounds: list[dict[str, Any]] = state["rounds"]
    held = {"data": cfg.refresh.heldout, "limit": cfg.refresh.heldout_n}
    for r in range(cfg.refresh.rounds + 1):
        rec = rounds[r] if r < len(rounds) else {"round": r}
        if r == len(rounds):
            rounds.append(rec)
        if not rec.get("complete"):
            if r == 0:
                rec.update(student=cfg.models.student.model, steps=0, train_s=0.0)
            elif not rec.get("trained"):
                rec.update(train_round(cfg, top, r, console), trained=True)
                write_json(state_path, state)
            rcfg = round_config(cfg, top, r, rec["student"])
            rec["student_id"] = model_identity(rcfg.models.student)
            console.say(f"round {r}: Δ of the pool against {rec['student']}")
            rec.update(measure_round(rcfg, pool_dir, console), complete=True)
            write_json(state_path, state)
        # Scored once per held-out set; another set (or none) later scores it again.
        if held["data"] and {k: (rec.get("heldout") or {}).get(k) for k in held} != held:
            rec["heldout"] = {**heldout_accuracy(cfg, rec["student"]), "limit": held["limit"]}
            write_json(state_path, state)
        console.say(round_line(rec))
    write_json(state_path, state)
    write_report(top, state, cfg.refresh.rounds)
    return state


# --- the report -----------------------------------------------------------------------------
def write_report(top: Path, state: dict[str, Any], upto: int) -> None:
    rounds = [r for r in state["rounds"] if r.get("complete")][: upto + 1]
    skills = sorted({k for r in rounds for k in r["zero_delta_by_skill"]})
    lines = [f"# Refresh of {state['base_run']}", "",
             "Δ of the whole pool against each round's student (round 0: the base student).", "",
             "| round | OPD steps | zero-delta | kept | held-out | teacher drawn / served | "
             "student drawn / served |", "|---|---|---|---|---|---|---|"]
    for r in rounds:
        s, h = r.get("samples", {}), r.get("heldout")
        lines.append(f"| {r['round']} | {r['steps']} | {r['zero_delta_fraction']:.3f} | {r['kept']} | "
                     f"{h['overall']:.3f} | " if h else
                     f"| {r['round']} | {r['steps']} | {r['zero_delta_fraction']:.3f} | {r['kept']} | - | ")
        lines[-1] += (f"{s.get('teacher_drawn', 0)} / {s.get('teacher_served', 0)} | "
                      f"{s.get('student_drawn', 0)} / {s.get('student_served', 0)} |")
    lines += ["", "Zero-delta fraction per skill:", "",
              "| skill | " + " | ".join(f"round {r['round']}" for r in rounds) + " |",
              "|---|" + "---|" * len(rounds)]
    for k in skills:
        lines.append(f"| {k} | " + " | ".join(
            f"{r['zero_delta_by_skill'].get(k, float('nan')):.3f}" for r in rounds) + " |")
    if any(r.get("heldout") for r in rounds):
        held_skills = sorted({k for r in rounds for k in (r.get("heldout") or {}).get("by_skill", {})})
        lines += ["", "Held-out accuracy per skill:", "",
                  "| skill | " + " | ".join(f"round {r['round']}" for r in rounds) + " |",
                  "|---|" + "---|" * len(rounds)]
        for k in held_skills:
            lines.append(f"| {k} | " + " | ".join(
                f"{(r.get('heldout') or {}).get('by_skill', {}).get(k, float('nan')):.3f}"
                for r in rounds) + " |")
    write_text(top / "refresh.md", "\n".join(lines) + "\n")
    save_png(plot_rounds(rounds), top / "refresh.png")


def plot_rounds(rounds: list[dict[str, Any]]):
    """Zero-delta fraction of the pool and held-out accuracy over rounds, overall and per skill."""
    fig, axes = figure(1, 2, width=11, height=4)
    xs = [r["round"] for r in rounds]
    panels = ((axes[0], lambda r: r["zero_delta_fraction"], lambda r: r["zero_delta_by_skill"],
               "zero-delta fraction of the pool"),
              (axes[1], lambda r: (r.get("heldout") or {}).get("overall"),
               lambda r: (r.get("heldout") or {}).get("by_skill", {}), "held-out accuracy"))
    for ax, overall, by_skill, title in panels:
        skills = sorted({k for r in rounds for k in by_skill(r)})
        for k in skills:
            ax.plot(xs, [by_skill(r).get(k, float("nan")) for r in rounds], marker=".",
                    linewidth=1, alpha=0.6, label=k)
        ys = [overall(r) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", linewidth=2.5,
                    color=COLORS["main"] if not skills else "black", label="overall")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.set_ylim(0, 1)
        ax.set_title(title)
    return fig


def folder_config(cfg: RunConfig) -> RunConfig:
    """The config whose run folder is the refresh folder (its lock, its logs)."""
    raw = cfg.to_dict()
    raw["run"]["name"] = refresh_dir(cfg).name
    return config_from_dict(raw)


def main_refresh(cfg: RunConfig, console: Console, recompute: bool = False) -> dict[str, Any]:
    """Run or resume the refresh under its folder's lock; says where its reports are."""
    top = refresh_dir(cfg)
    with run_lock(top):
        state = run_refresh(cfg, console, recompute)
    console.say(f"refresh: {top / STATE}, {top / 'refresh.md'}, {top / 'refresh.png'}")
    return state
