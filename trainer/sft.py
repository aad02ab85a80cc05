"""Supervised fine-tuning of a vision-language model on (image, question, target) rows.

Also the project's off-policy distillation: rows whose targets are teacher outputs.

The loop, readable in one sitting:

    for step in range(start, steps):
        micro = next grad_accum batches of rows           (data position advances)
        n_tok = completion tokens in all of them          (the global normaliser)
        for batch in micro: (sum of token NLL / n_tok).backward()
        clip, AdamW step, LR schedule
        log to metrics.jsonl; checkpoint every save_every steps

Loss normalisation: dividing each micro-batch's summed loss by the token count of the
*whole* accumulated step makes the gradient the per-token mean over the step, whatever
the split into micro-batches (dividing by each micro-batch's own count would over-weight
tokens in short micro-batches).

A checkpoint holds the weights, optimizer and scheduler state, the step, every RNG state
and the data position, so a resumed run continues exactly as if it had not stopped.

    python -m trainer.sft --model DIR --data train.parquet --out runs/sft --steps 500
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trainer.batching import IGNORE_INDEX, SFTCollator

STATE_FILE = "trainer_state.pt"


@dataclass
class SFTConfig:
    model: str = ""  # checkpoint folder (or Hub id) to start from
    output_dir: str = "runs/sft"
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_length: int | None = None  # tokens; the prompt (image block) is never cut
    shuffle: bool = True  # a fresh permutation of the rows each epoch
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    device: str = "auto"
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 1
    eval_every: int = 0  # calls eval_fn every this many steps (0: never)
    resume: bool = True  # continue from the latest checkpoint in output_dir, if any
    final_dtype: Literal["float32", "bfloat16"] = "float32"  # of the exported final model
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed
    progress: bool = True  # tqdm bar


@dataclass
class TrainState:
    step: int = 0
    position: int = 0  # rows consumed so far (across epochs)
    tokens: int = 0  # completion tokens trained on so far
    elapsed_s: float = 0.0
    skipped: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


# --- losses ------------------------------------------------------------------------------
def completion_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over labelled positions, and how many there are.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; positions labelled IGNORE_INDEX count
    for nothing.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def forward_completion_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Model forward + :func:`completion_nll`, projecting only the labelled positions to
    the vocabulary when the model exposes its decoder and head (saves the full-vocabulary
    logits of every prompt and image token, most of the sequence)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inner = getattr(model, "model", None)
    if head is None or inner is None:
        return completion_nll(model(**inputs, use_cache=False).logits, labels)
    hidden = inner(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    loss = torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum")
    return loss, int(keep.sum())


def accumulate_gradients(model, micro: list[dict[str, torch.Tensor]], n_tok: int,
                         device: torch.device, amp: torch.dtype | None = None) -> float:
    """Backward every micro-batch with its summed loss divided by ``n_tok``, the completion
    tokens of the whole step; returns the summed loss. The gradient is then the per-token
    mean over the step, independent of how the rows were split into micro-batches."""
    total = 0.0
    for batch in micro:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss_sum, _ = forward_completion_nll(model, batch)
        (loss_sum / n_tok).backward()
        total += float(loss_sum.detach())
    return total


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


# --- setup helpers -----------------------------------------------------------------------
def resolve_device(cfg: SFTConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(cfg: SFTConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU (fp32 master weights), none on CPU (bf16 matmuls are slow there
    and the tiny models train fine in fp32)."""
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine/constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cos = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = sorted(Path(output_dir, "checkpoints").glob("step_*"),
                   key=lambda p: int(p.name.split("_")[1]))
    done = [p for p in ckpts if (p / STATE_FILE).exists()]  # state written last = complete
    return done[-1] if done else None


# --- the trainer -------------------------------------------------------------------------
class SFTTrainer:
    def __init__(self, cfg: SFTConfig, rows: Sequence[dict[str, Any]],
                 eval_fn: Callable[[Any, Any, int], dict[str, Any]] | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not cfg.model:
            raise ValueError("SFTConfig.model is required (a checkpoint folder or Hub id)")
        if len(rows) == 0:
            raise ValueError("no training rows")
        self.cfg, self.rows, self.eval_fn = cfg, rows, eval_fn
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg)
        self.amp = autocast_dtype(cfg, self.device)
        self.state = TrainState()

        resume_from = latest_checkpoint(self.out) if cfg.resume else None
        load_from = str(resume_from) if resume_from else cfg.model
        self.processor = AutoProcessor.from_pretrained(load_from)
        self.model = AutoModelForImageTextToText.from_pretrained(load_from, dtype=torch.float32)
        self.model.to(self.device).train()
        self.collator = SFTCollator(self.processor, cfg.max_length)
        self.order = DataOrder(len(rows), cfg.shuffle, cfg.seed)
        frozen = [n for n, p in self.model.named_parameters()
                  if any(n.startswith(prefix) for prefix in cfg.freeze)]
        if cfg.freeze and not frozen:
            raise ValueError(f"freeze {cfg.freeze}: no parameter name starts with these")
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        if resume_from:
            self._load_state(resume_from)
        else:
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)

    # data ------------------------------------------------------------------------------
    def _next_rows(self, k: int) -> list[dict[str, Any]]:
        out = [self.rows[self.order(self.state.position + i)] for i in range(k)]
        self.state.position += k
        return out

    # one optimizer step ----------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        micro = []
        for _ in range(cfg.grad_accum):
            batch = self.collator(self._next_rows(cfg.batch_size))
            if batch is not None:
                micro.append(batch)
        n_tok = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        lr = lr_at(self.state.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        if n_tok > 0:
            total = accumulate_gradients(self.model, micro, n_tok, self.device, self.amp)
            clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            self.optimizer.step()
        else:
            grad_norm = 0.0
        self.state.step += 1
        self.state.tokens += n_tok
        self.state.skipped = self.collator.skipped
        return {"loss": total / max(n_tok, 1), "lr": lr, "grad_norm": grad_norm, "tokens": n_tok}

    # the loop --------------------------------------------------------------------------
    def train(self) -> Path:
        from tqdm.auto import tqdm

        cfg = self.cfg
        metrics = (self.out / "metrics.jsonl").open("a")
        bar = tqdm(total=cfg.steps, initial=self.state.step, disable=not cfg.progress,
                   desc="sft", dynamic_ncols=True)
        window: list[dict[str, float]] = []
        t_last = time.perf_counter()
        try:
            while self.state.step < cfg.steps:
                window.append(self.train_step())
                now = time.perf_counter()
                self.state.elapsed_s += now - t_last
                t_last = now
                bar.update(1)
                step = self.state.step
                if step % cfg.log_every == 0 or step == cfg.steps:
                    rec = self._log_record(window)
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                    window = []
                if self.eval_fn and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    self.model.eval()
                    with torch.no_grad():
                        result = self.eval_fn(self.model, self.processor, step)
                    self.model.train()
                    rec = {"step": step, "eval": result, "elapsed_s": round(self.state.elapsed_s, 2)}
                    self.state.history.append(rec)
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    t_last = time.perf_counter()  # evaluation time is not training time
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                    self.save_checkpoint()
                    t_last = time.perf_counter()  # saving time is not training time
        finally:
            bar.close()
            metrics.close()
        self.save_checkpoint()
        return self.export(self.out / "final")

    def _log_record(self, window: list[dict[str, float]]) -> dict[str, Any]:
        toks = sum(w["tokens"] for w in window)
        loss = sum(w["loss"] * w["tokens"] for w in window) / max(toks, 1)
        return {"step": self.state.step, "loss": round(loss, 6), "lr": window[-1]["lr"],
                "grad_norm": round(window[-1]["grad_norm"], 4), "tokens": self.state.tokens,
                "rows": self.state.position, "skipped": self.state.skipped,
                "elapsed_s": round(self.state.elapsed_s, 2)}

    # checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        path = self.out / "checkpoints" / f"step_{self.state.step}"
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        torch.save({"optimizer": self.optimizer.state_dict(), "state": asdict(self.state),
                    "rng": _rng_state(), "config": asdict(self.cfg)}, path / f"{STATE_FILE}.tmp")
        (path / f"{STATE_FILE}.tmp").replace(path / STATE_FILE)  # marks the checkpoint complete
        ckpts = sorted((p for p in path.parent.glob("step_*") if p != path),
                       key=lambda p: int(p.name.split("_")[1]))
        for old in ckpts[: max(0, len(ckpts) - (self.cfg.keep_checkpoints - 1))]:
            shutil.rmtree(old)
        return path

    def _load_state(self, path: Path) -> None:
        blob = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        known = {f.name for f in fields(TrainState)}
        self.state = TrainState(**{k: v for k, v in blob["state"].items() if k in known})
        self.collator.skipped = self.state.skipped
        _set_rng_state(blob["rng"])

    def export(self, path: Path) -> Path:
        """The final model for engines: weights in ``final_dtype``, processor, tokenizer."""
        path.mkdir(parents=True, exist_ok=True)
        dtype = torch.bfloat16 if self.cfg.final_dtype == "bfloat16" else torch.float32
        model = self.model.to(dtype)
        model.config.dtype = self.cfg.final_dtype
        model.save_pretrained(path)
        self.model.to(torch.float32)
        self.processor.save_pretrained(path)
        return path


def train_sft(cfg: SFTConfig, rows: Sequence[dict[str, Any]],
              eval_fn: Callable[[Any, Any, int], dict[str, Any]] | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``rows`` ({"image", "question", "target"}); returns the
    exported final model folder (``output_dir/final``)."""
    return SFTTrainer(cfg, rows, eval_fn).train()


# --- CLI ---------------------------------------------------------------------------------
class ParquetRows(Sequence):
    """Rows of a Parquet file as {"image", "question", "target"} dicts, read once."""

    def __init__(self, path: str, target_column: str = "target", answer_format: str = "Answer: {}"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = set(table.column_names)
        if "question" not in cols:
            raise ValueError(f"{path}: no 'question' column")
        self.questions = table.column("question").to_pylist()
        self.images = table.column("image").to_pylist() if "image" in cols else [None] * len(self.questions)
        if target_column in cols:
            self.targets = table.column(target_column).to_pylist()
        elif "answer" in cols:  # a seed set: train on the gold answer line
            self.targets = [answer_format.format(a) for a in table.column("answer").to_pylist()]
        elif "answers" in cols:  # the canonical prompt schema: first gold answer
            self.targets = [answer_format.format(a[0]) if a else None
                            for a in table.column("answers").to_pylist()]
        else:
            raise ValueError(f"{path}: no {target_column!r}, 'answer' or 'answers' column")
        keep = [i for i, t in enumerate(self.targets) if t]
        self.skipped_no_target = len(self.targets) - len(keep)
        self.questions = [self.questions[i] for i in keep]
        self.images = [self.images[i] for i in keep]
        self.targets = [self.targets[i] for i in keep]

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "question": self.questions[i], "target": self.targets[i]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trainer.sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="Parquet with question, image and target "
                   "(or answer/answers) columns")
    p.add_argument("--target-column", default="target")
    for f in fields(SFTConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "output_dir":
            flag = "--out"
        if f.name == "freeze":
            p.add_argument(flag, dest=f.name, nargs="*", default=[])
        elif isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=f.default)
        else:
            kind = type(f.default) if f.default is not None else int
            p.add_argument(flag, dest=f.name, type=kind, default=f.default)
    a = vars(p.parse_args(argv))
    rows = ParquetRows(a.pop("data"), a.pop("target_column"))
    cfg = SFTConfig(**a)
    print(train_sft(cfg, rows))


if __name__ == "__main__":
    main()
