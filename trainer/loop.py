"""What every training loop shares: data order, LR schedule, RNG state, checkpoints,
metrics and curves. trainer/sft.py and trainer/opd.py are each one loop over these.

A checkpoint (``<output_dir>/checkpoints/step_N/``) holds the weights, the processor,
the optimizer state, :class:`TrainState` (step, data position, counters), every RNG
state and the config; ``trainer_state.pt`` is written last and marks it complete, so a
resumed run continues exactly as if it had not stopped, and a checkpoint cut short by a
crash is never resumed from.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.reports import figure, save_png
from trainer.config import RESUMABLE_CHANGES, TrainConfig

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


@dataclass
class TrainState:
    step: int = 0
    position: int = 0  # data positions consumed so far (across epochs); skipped rows included
    tokens: int = 0  # completion tokens trained on so far
    elapsed_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluation records

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


# --- data order --------------------------------------------------------------------------
class DataOrder:
    """Which row sits at each data position: epoch-wise permutations keyed on the seed, so
    the order is a pure function of (position, seed) and resuming needs only the position."""

    def __init__(self, n_rows: int, shuffle: bool, seed: int):
        self.n_rows, self.shuffle, self.seed = n_rows, shuffle, seed
        self._epoch, self._perm = -1, []  # the current epoch's permutation, made lazily

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.n_rows)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n_rows, generator=g).tolist()
        return self._perm[offset]


# --- machine -----------------------------------------------------------------------------
def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU (fp32 master weights), none on CPU (bf16 matmuls are slow there
    and the tiny models train fine in fp32)."""
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- schedule and optimiser --------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine/constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cos = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- checkpoints -------------------------------------------------------------------------
def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = sorted(Path(output_dir, "checkpoints").glob("step_*"),
                   key=lambda p: int(p.name.split("_")[1]))
    done = [p for p in ckpts if (p / STATE_FILE).exists()]  # state written last = complete
    return done[-1] if done else None


def resume_point(cfg: TrainConfig) -> Path | None:
    """The checkpoint to continue from; refuses to mix two different runs in one folder."""
    last = latest_checkpoint(cfg.output_dir)
    if last is None:
        return None
    if not cfg.resume:
        raise FileExistsError(
            f"{cfg.output_dir} already holds checkpoints ({last.name}); set resume=true to "
            "continue that run or choose a new output_dir")
    saved = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)["config"]
    changed = sorted(k for k, v in asdict(cfg).items()
                     if k not in RESUMABLE_CHANGES and k in saved and saved[k] != v)
    if changed:
        raise ValueError(
            f"cannot resume {cfg.output_dir}: the config changed in {changed} since {last.name}; "
            "use a new output_dir for a different experiment")
    return last


def save_checkpoint(cfg: TrainConfig, state: TrainState, model, processor,
                    optimizer: torch.optim.Optimizer) -> Path:
    """Write ``checkpoints/step_<state.step>`` and keep only ``cfg.keep_checkpoints``."""
    path = Path(cfg.output_dir) / "checkpoints" / f"step_{state.step}"
    if path.exists():
        shutil.rmtree(path)  # an incomplete earlier attempt at this step
    path.mkdir(parents=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    torch.save({"optimizer": optimizer.state_dict(), "state": asdict(state), "rng": rng_state(),
                "config": asdict(cfg)}, path / f"{STATE_FILE}.tmp")
    (path / f"{STATE_FILE}.tmp").replace(path / STATE_FILE)  # written last: marks it complete
    older = sorted((p for p in path.parent.glob("step_*") if p != path),
                   key=lambda p: int(p.name.split("_")[1]))
    for old in older[: max(0, len(older) - (cfg.keep_checkpoints - 1))]:
        shutil.rmtree(old)
    return path


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore the optimizer and every RNG from ``path``; the saved TrainState."""
    blob = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    known = {f.name for f in fields(TrainState)}
    saved = {k: v for k, v in blob["state"].items() if k in known}
    if isinstance(saved.get("skipped"), int):  # checkpoints written before skips had reasons
        saved["skipped"] = {"skipped": saved["skipped"]} if saved["skipped"] else {}
    set_rng_state(blob["rng"])
    return TrainState(**saved)


def export_model(model, processor, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The trained model for engines and evaluation: weights in ``dtype`` + processor."""
    path.mkdir(parents=True, exist_ok=True)
    if dtype != torch.float32:
        model = model.to(dtype)
        model.config.dtype = str(dtype).removeprefix("torch.")
    model.save_pretrained(path)
    if dtype != torch.float32:
        model.to(torch.float32)
    processor.save_pretrained(path)
    return path


# --- metrics -----------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl`` in the output folder: one JSON record per line, appended."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE

    def append(self, record: dict[str, Any]) -> None:
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in record.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run redoes them)."""
        records = self.records()
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def plot(self, keys: list[str], png_path: Path | None = None) -> Path | None:
        """One small panel per logged curve among ``keys`` (curves.png next to the log)."""
        records = self.records()
        keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
        if not keys:
            return None
        cols = 3
        rows = math.ceil(len(keys) / cols)
        fig, axes = figure(rows, cols, width=4 * cols, height=3 * rows)
        for ax, key in zip(axes, keys):
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
            ax.set_title(key)
            ax.set_xlabel("step")
        for ax in axes[len(keys):]:
            ax.set_visible(False)
        return save_png(fig, png_path or self.path.parent / CURVES_FILE, dpi=80)
