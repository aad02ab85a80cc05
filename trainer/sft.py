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

Checkpoints, resume, the LR schedule and metrics are trainer/loop.py's (shared with OPD).

    deltaprompts train sft --data train.parquet --set model=DIR --set output_dir=runs/sft --set steps=500
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers
from tqdm.auto import tqdm

from pipeline.core.configschema import load_dataclass
from pipeline.core.errors import ArgumentParser, DataError
from pipeline.sampling.prompts import format_question
from trainer.batching import IGNORE_INDEX, SFTCollator
from trainer.config import SFTConfig
from trainer.loop import (
    DataOrder,
    MetricsLog,
    TrainState,
    adamw,
    autocast_dtype,
    export_model,
    load_checkpoint,
    lr_at,
    resolve_device,
    resume_point,
    save_checkpoint,
    seed_everything,
    set_lr,
)


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


# --- the trainer -------------------------------------------------------------------------
class SFTTrainer:
    def __init__(self, cfg: SFTConfig, rows: Sequence[dict[str, Any]],
                 eval_fn: Callable[[Any, Any, int], dict[str, Any]] | None = None):
        cfg.validate()
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
        self.metrics = MetricsLog(self.out)

        resume_from = resume_point(cfg)
        load_from = str(resume_from) if resume_from else cfg.model
        self.processor = transformers.AutoProcessor.from_pretrained(load_from)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(load_from, dtype=torch.float32)
        self.model.to(self.device).train()
        self.collator = SFTCollator(self.processor, cfg.max_length)
        self.order = DataOrder(len(rows), cfg.shuffle, cfg.seed)
        frozen = [n for n, p in self.model.named_parameters()
                  if any(n.startswith(prefix) for prefix in cfg.freeze)]
        if cfg.freeze and not frozen:
            raise ValueError(f"freeze {cfg.freeze}: no parameter name starts with these")
        for name, p in self.model.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
        self.optimizer = adamw(self.model, cfg)
        if resume_from:
            self.state = load_checkpoint(resume_from, self.optimizer)
            self.collator.skipped = self.state.skipped.get("prompt_too_long", 0)
        else:
            seed_everything(cfg.seed)

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
        set_lr(self.optimizer, lr)
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
        if self.collator.skipped:
            self.state.skipped["prompt_too_long"] = self.collator.skipped
        return {"loss": total / max(n_tok, 1), "lr": lr, "grad_norm": grad_norm, "tokens": n_tok}

    # the loop --------------------------------------------------------------------------
    def train(self) -> Path:
        cfg = self.cfg
        self.metrics.truncate_after(self.state.step)
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
                    self.metrics.append(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                    window = []
                if self.eval_fn and cfg.evaluates_at(step):
                    self.model.eval()
                    with torch.no_grad():
                        result = self.eval_fn(self.model, self.processor, step)
                    self.model.train()
                    rec = {"step": step, "eval": result, "elapsed_s": round(self.state.elapsed_s, 2)}
                    self.state.history.append(rec)
                    self.metrics.append(rec)
                    t_last = time.perf_counter()  # evaluation time is not training time
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                    self.save_checkpoint()
                    t_last = time.perf_counter()  # saving time is not training time
        finally:
            bar.close()
        self.save_checkpoint()
        dtype = torch.bfloat16 if cfg.final_dtype == "bfloat16" else torch.float32
        return export_model(self.model, self.processor, self.out / "final", dtype)

    def save_checkpoint(self) -> Path:
        path = save_checkpoint(self.cfg, self.state, self.model, self.processor, self.optimizer)
        self.metrics.plot(["loss", "grad_norm", "lr"])
        return path

    def _log_record(self, window: list[dict[str, float]]) -> dict[str, Any]:
        toks = sum(w["tokens"] for w in window)
        loss = sum(w["loss"] * w["tokens"] for w in window) / max(toks, 1)
        return {"step": self.state.step, "loss": round(loss, 6), "lr": window[-1]["lr"],
                "grad_norm": round(window[-1]["grad_norm"], 4), "tokens": self.state.tokens,
                "rows": self.state.position, "skipped": dict(self.state.skipped),
                "elapsed_s": round(self.state.elapsed_s, 2)}


def train_sft(cfg: SFTConfig, rows: Sequence[dict[str, Any]],
              eval_fn: Callable[[Any, Any, int], dict[str, Any]] | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``rows`` ({"image", "question", "target"}); returns the
    exported final model folder (``output_dir/final``)."""
    return SFTTrainer(cfg, rows, eval_fn).train()


# --- CLI ---------------------------------------------------------------------------------
class ParquetRows(Sequence):
    """Rows of a Parquet file as {"image", "question", "target"} dicts, read once.

    ``question`` is the prompt as the models see it (pipeline/sampling/prompts.py): the
    row's question, its options when it has ``choices``, then ``instruction``.
    """

    def __init__(self, path: str, target_column: str = "target", answer_format: str = "Answer: {}",
                 instruction: str | None = None):
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise DataError(f"{path} does not exist; give a Parquet file of question, image "
                            "and target rows") from None
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not readable as Parquet ({e})") from None
        cols = set(table.column_names)
        if "question" not in cols:
            raise DataError(f"{path}: no 'question' column")
        choices = table.column("choices").to_pylist() if "choices" in cols else [None] * table.num_rows
        self.questions = [format_question(q, c or None, instruction)
                          for q, c in zip(table.column("question").to_pylist(), choices)]
        self.images = table.column("image").to_pylist() if "image" in cols else [None] * len(self.questions)
        if target_column in cols:
            self.targets = table.column(target_column).to_pylist()
        elif "answer" in cols:  # a seed set: train on the gold answer line
            self.targets = [answer_format.format(a) for a in table.column("answer").to_pylist()]
        elif "answers" in cols:  # the canonical prompt schema: first gold answer
            self.targets = [answer_format.format(a[0]) if a else None
                            for a in table.column("answers").to_pylist()]
        else:
            raise DataError(f"{path}: no {target_column!r}, 'answer' or 'answers' column")
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
    p = ArgumentParser(prog="deltaprompts train sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="Parquet with question, image and target "
                   "(or answer/answers) columns")
    p.add_argument("--target-column", default="target")
    p.add_argument("--config", help="YAML with SFTConfig fields (or an `sft:` section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an SFTConfig field, e.g. --set model=PATH --set steps=200 "
                   f"(fields: {', '.join(f.name for f in fields(SFTConfig))})")
    a = p.parse_args(argv)
    cfg = load_dataclass(SFTConfig, a.config, a.overrides, section="sft")
    rows = ParquetRows(a.data, a.target_column, instruction=cfg.instruction)
    print(train_sft(cfg, rows))


if __name__ == "__main__":
    main()
