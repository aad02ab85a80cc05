"""On-policy distillation (OPD) and VA-OPD of a vision-language student from a teacher.

Both models run in process and must share one tokenizer and chat template (checked at
start; otherwise use off-policy fine-tuning, trainer/sft.py). The loop, in one sitting:

    for step in range(start, steps):
        prompts  = the next prompts_per_step prompts        (data position advances)
        rollouts = K student samples per prompt at T=1, top_p=1, no top-k (no grad),
                   every prompt of the step in one left-padded generate call:
                   an unbiased sample of the student's own distribution
        n_tok    = completion tokens in all rollouts         (the global normaliser)
        for each of grad_accum micro-batches of whole prompts:
            student forward (grad) and teacher forward (no grad) on prompt + rollout,
            each model through its own processor; hidden states at completion positions only
            per-token loss: sampled reverse KL (default) or generalized JSD(β), in chunks
            opd:     loss = Σ per-token / n_tok
            va_opd:  the teacher also scores the rollout with a degraded image ->
                     VA_t = max(log p_T(y|v) - log p_T(y|ṽ), 0);
                     loss = Σ_prompts Σ_k w_k·(λ·mean KL(high-VA) + (1-λ)·mean KL(low)) / P
            loss.backward()
        clip, AdamW step, LR schedule; metrics.jsonl; checkpoint every save_every steps

The prompt and its image tokens never enter the loss: only positions that predict a
completion token are projected to the vocabulary. Prompts are never truncated (so an
image block is never cut); a prompt over ``max_prompt_tokens`` is skipped and counted.

The paper's VA-OPD setting is ``mode="va_opd", loss="gjsd", beta=1.0`` (full-vocabulary
reverse KL against the teacher on the full image); ``loss="reverse_kl"`` uses the
sampled-token estimator inside the same grouped objective.

Comparing training sets (the micro-reproduction): keep ``student``, ``teacher``,
``steps``, ``prompts_per_step``, ``rollouts_per_prompt`` and ``num_prompts`` equal and vary
only the data and the seed, one ``output_dir`` per arm and seed, e.g.
(a) ``data=runs/x/05-filter`` (the high-Δ set); (b) ``data=<seed parquet>`` (a random
seed sample: ``num_prompts`` draws it with ``data_seed``); (c) ``data=runs/x/04-delta``
with ``where={zero_delta: true}``; each with ``seed`` in {0, 1, 2}. ``eval_fn`` (held-out
accuracy) runs every ``eval_every`` steps and at ``eval_at``, logged beside the training metrics.

    python -m trainer.opd --config opd.yaml [--set key=value ...]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

from pipeline.core.configschema import load_dataclass
from pipeline.core.errors import ArgumentParser
from pipeline.core.reports import write_json
from pipeline.sampling.prompts import format_question
from trainer.batching import IGNORE_INDEX, collate, encode_prompt, join
from trainer.config import OPDConfig
from trainer.data import BadPrompt, TrainPrompt, decode_prompt, load_prompts, select_prompts
from trainer.loop import (
    STATE_FILE,
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
from trainer.losses import (
    chunked_generalized_jsd,
    chunked_token_logprobs,
    sampled_reverse_kl,
)
from trainer.visual_advantage import degrade, va_opd_loss, va_summary, visual_advantage

CURVE_KEYS = ["loss", "divergence", "eval_reverse_kl", "grad_norm", "completion_len", "tokens_per_s",
              "va_mean", "va_top10_share", "high_group_va_share"]


class TokenizerMismatchError(ValueError):
    """Teacher and student cannot be compared token by token."""


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _chat_template(processor) -> str | None:
    return getattr(processor, "chat_template", None) or getattr(_tokenizer(processor), "chat_template", None)


def check_same_tokenizer(student_processor, teacher_processor) -> None:
    """Refuse a pair whose vocabularies, special tokens or chat templates differ.

    Per-token losses compare p_s(y_t) with p_t(y_t) for the *same token id* after the *same
    rendered prompt*; a silent mismatch trains on garbage (the most reported OPD bug).
    """
    s_tok, t_tok = _tokenizer(student_processor), _tokenizer(teacher_processor)
    problems = []
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        differ = sorted(set(s_vocab.items()) ^ set(t_vocab.items()), key=lambda kv: kv[1])[:3]
        problems.append(f"vocabularies differ (student {len(s_vocab)} tokens, teacher {len(t_vocab)}; "
                        f"e.g. {differ})")
    if sorted(s_tok.all_special_tokens) != sorted(t_tok.all_special_tokens):
        problems.append("special tokens differ")
    if _chat_template(student_processor) != _chat_template(teacher_processor):
        problems.append("chat templates differ")
    if problems:
        raise TokenizerMismatchError(
            "teacher and student do not share a tokenizer: " + "; ".join(problems) + ". "
            "On-policy distillation (OPD / VA-OPD) compares the two models token by token and "
            "needs one vocabulary and one chat template. For models with different tokenizers "
            "use off-policy fine-tuning instead: sample the teacher's answers and train the "
            "student on them with trainer.sft (supervised fine-tuning)."
        )


@contextmanager
def plain_sampling(model, max_new_tokens: int, num_return_sequences: int) -> Iterator[Any]:
    """A generation config that samples the raw distribution: T=1, top_p=1, no top-k.

    ``generate`` fills every field left unset from the checkpoint's own generation config
    (Qwen ships top_k=20, top_p=0.8, T=0.7, sometimes a repetition penalty). Any of those
    would bias the reverse-KL estimator, so during our sampling the checkpoint's config is
    swapped for one that holds only the special-token ids.
    """
    original = model.generation_config
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=original.eos_token_id, pad_token_id=original.pad_token_id,
        bos_token_id=original.bos_token_id,
    )
    try:
        yield transformers.GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                               max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                               eos_token_id=original.eos_token_id, pad_token_id=original.pad_token_id)
    finally:
        model.generation_config = original


@dataclass
class PromptRollouts:
    """One prompt, its encodings for each model, and the student's K completions."""

    prompt: TrainPrompt
    student_enc: dict[str, Any]
    teacher_enc: dict[str, Any]
    completions: list[list[int]]  # K token lists, each ending at (and including) EOS if sampled
    truncated: int = 0  # rollouts that hit max_new_tokens
    degraded_enc: dict[str, Any] | None = None  # teacher encoding of the degraded image (va_opd)


def initial_checkpoint(cfg: OPDConfig) -> Path | None:
    """``cfg.init_from`` as a complete checkpoint folder (None when unset)."""
    if not cfg.init_from:
        return None
    path = Path(cfg.init_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"init_from {path} is not a complete checkpoint (no {STATE_FILE}); "
                                "give a <output_dir>/checkpoints/step_N folder of an OPD run")
    return path


class OPDTrainer:
    def __init__(self, cfg: OPDConfig, eval_fn: Callable[[Any, Any, int], dict[str, Any]] | None = None):
        cfg.validate()
        self.cfg, self.eval_fn = cfg, eval_fn
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.output_dir)
        self.device = resolve_device(cfg)
        self.amp = autocast_dtype(cfg, self.device)
        self.state = TrainState()
        self.metrics = MetricsLog(self.out)

        # Cheap checks first: processors load in a second, models may take minutes.
        # Our own latest checkpoint first (a killed run resumes), else init_from.
        resume_from = resume_point(cfg) or initial_checkpoint(cfg)
        auto_processor = transformers.AutoProcessor
        self.processor = auto_processor.from_pretrained(str(resume_from) if resume_from else cfg.student)
        self.teacher_processor = auto_processor.from_pretrained(cfg.teacher)
        check_same_tokenizer(self.processor, self.teacher_processor)

        auto_model = transformers.AutoModelForImageTextToText
        self.student = auto_model.from_pretrained(
            str(resume_from) if resume_from else cfg.student, dtype=torch.float32).to(self.device)
        self.teacher = auto_model.from_pretrained(
            cfg.teacher, dtype=self.amp or torch.float32).to(self.device).eval()
        self.teacher.requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.student.gradient_checkpointing_enable()
        self._check_heads()

        tok = _tokenizer(self.processor)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        eos = self.student.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if "<|im_end|>" in tok.get_vocab():  # the end of an assistant turn, whatever the config says
            self.eos_ids.add(tok.convert_tokens_to_ids("<|im_end|>"))
        # A sampled vision placeholder fed back for scoring would be taken for an image.
        self.forbidden_ids = {
            tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                    "<|vision_end|>") if t in tok.get_vocab()
        }

        self.dataset = load_prompts(cfg.data, cfg.data_split)
        data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        self.selection = select_prompts(self.dataset, cfg.where, cfg.num_prompts, data_seed)
        self.order = DataOrder(len(self.selection), shuffle=True, seed=data_seed)

        self.optimizer = adamw(self.student, cfg)
        if resume_from:
            self.state = load_checkpoint(resume_from, self.optimizer)
        else:
            seed_everything(cfg.seed)

    # setup ----------------------------------------------------------------------------
    def _check_heads(self) -> None:
        s_head, t_head = self.student.get_output_embeddings(), self.teacher.get_output_embeddings()
        if s_head is None or t_head is None:
            raise ValueError("both models need an output embedding (LM head) to score tokens")
        for model in (self.student, self.teacher):
            text_cfg = getattr(model.config, "text_config", model.config)
            if getattr(text_cfg, "final_logit_softcapping", None):
                raise ValueError("logit soft-capping is not supported: logits would not be head(hidden)")
        if self.cfg.loss == "gjsd" and s_head.out_features != t_head.out_features:
            raise TokenizerMismatchError(
                f"full-vocabulary JSD needs equal LM-head sizes (student {s_head.out_features}, "
                f"teacher {t_head.out_features}); use loss='reverse_kl'")

    # data -----------------------------------------------------------------------------
    def _next_prompts(self, n: int) -> list[PromptRollouts]:
        """The next ``n`` usable prompts, encoded for both models; bad rows are counted."""
        out: list[PromptRollouts] = []
        misses = 0
        while len(out) < n:
            row = self.dataset[self.selection[self.order(self.state.position)]]
            self.state.position += 1
            try:
                out.append(self._encode(decode_prompt(row)))
                misses = 0
            except BadPrompt as e:
                self.state.skip(e.reason)
                misses += 1
                if misses > len(self.selection):
                    raise RuntimeError(f"no usable prompt in the whole selection (skips: {self.state.skipped})") from None
        return out

    def _encode(self, prompt: TrainPrompt) -> PromptRollouts:
        # The same text the models saw when Δ was measured (options, instruction).
        question = format_question(prompt.question, prompt.choices or None, self.cfg.instruction)
        s_enc = encode_prompt(self.processor, question, prompt.image)
        t_enc = encode_prompt(self.teacher_processor, question, prompt.image)
        limit = self.cfg.max_prompt_tokens
        if limit is not None and max(len(s_enc["input_ids"]), len(t_enc["input_ids"])) > limit:
            raise BadPrompt("prompt_too_long")
        d_enc = None
        if self.cfg.mode == "va_opd":
            d_enc = encode_prompt(self.teacher_processor, question,
                                  degrade(prompt.image, self.cfg.degrade, self.cfg.degrade_factor))
            if len(d_enc["input_ids"]) != len(t_enc["input_ids"]):
                raise BadPrompt("degraded_token_count")  # cannot happen for same-size images
        return PromptRollouts(prompt, s_enc, t_enc, completions=[], degraded_enc=d_enc)

    # rollouts -------------------------------------------------------------------------
    def _sample(self, item: PromptRollouts, k: int) -> None:
        """K rollouts of one prompt (:meth:`_sample_many` of one), or BadPrompt."""
        (problem,) = self._sample_many([item], k)
        if problem is not None:
            raise BadPrompt(problem)

    @torch.no_grad()
    def _sample_many(self, items: list[PromptRollouts], k: int) -> list[str | None]:
        """K rollouts of every prompt in one ``generate`` call; per item None, or the reason
        it cannot be trained on (a BadPrompt reason).

        One call for the whole step rather than one per prompt: decoding runs as many steps
        as the longest rollout of the step instead of the sum over prompts of each prompt's
        longest, which is what made our steps slower than TRL's (benchmarks/bench_trl.py).
        Prompts are left-padded (attention mask 0, token type 0), so each row sees only
        its own prompt; ``generate`` repeats every prompt's row K times in order.
        """
        encs = [it.student_enc for it in items]
        width = max(len(e["input_ids"]) for e in encs)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        mm = torch.zeros((len(items), width), dtype=torch.long)
        for i, e in enumerate(encs):
            n = len(e["input_ids"])
            ids[i, width - n:] = torch.tensor(e["input_ids"])
            mask[i, width - n:] = 1
            if e.get("mm_token_type_ids") is not None:
                mm[i, width - n:] = torch.tensor(e["mm_token_type_ids"])
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if any(e.get("mm_token_type_ids") is not None for e in encs):
            inputs["mm_token_type_ids"] = mm.to(self.device)
        for key in ("pixel_values", "image_grid_thw"):
            parts = [e[key] for e in encs if e.get(key) is not None]
            if parts:
                inputs[key] = torch.cat(parts, dim=0).to(self.device)
        self.student.eval()
        with plain_sampling(self.student, self.cfg.max_new_tokens, k) as gen_cfg, \
                torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.student.generate(**inputs, generation_config=gen_cfg)
        new = out[:, width:].tolist()
        problems: list[str | None] = []
        for i, item in enumerate(items):
            item.completions, item.truncated = [], 0
            for tokens in new[i * k:(i + 1) * k]:
                cut = next((j for j, t in enumerate(tokens) if t in self.eos_ids or t in self.forbidden_ids), None)
                if cut is None:
                    item.truncated += 1
                    item.completions.append(tokens)
                elif tokens[cut] in self.eos_ids:
                    item.completions.append(tokens[: cut + 1])  # EOS is trained on: the student learns to stop
                else:
                    item.completions.append(tokens[:cut])  # an on-policy prefix, without the placeholder
            problems.append("vision_token_sampled" if any(len(c) == 0 for c in item.completions) else None)
        return problems

    # scoring --------------------------------------------------------------------------
    def _completion_hidden(self, model, encs: list[dict[str, Any]], completions: list[list[int]]):
        """Final hidden states at the positions that predict completion tokens, and those tokens.

        Rows are (prompt encoding, completion) pairs; the result is flattened row-major, so
        the student and the teacher (own processors, own prompt lengths) line up token by token.
        """
        batch = collate([join(e, c) for e, c in zip(encs, completions)], pad_id=self.pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        hidden = model.model(**batch, use_cache=False).last_hidden_state  # (R, L, H)
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX  # completion tokens only: never prompt or image tokens
        return hidden[:, :-1][keep], target[keep]

    def _micro_batch_loss(self, items: list[PromptRollouts], n_tok: int, n_prompts: int) -> tuple[torch.Tensor, dict]:
        cfg, k = self.cfg, self.cfg.rollouts_per_prompt
        rows = [(it, c) for it in items for c in it.completions]
        comps = [c for _, c in rows]
        s_head, t_head = self.student.get_output_embeddings(), self.teacher.get_output_embeddings()
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            with torch.no_grad():
                t_hidden, t_tokens = self._completion_hidden(self.teacher, [it.teacher_enc for it, _ in rows], comps)
            s_hidden, tokens = self._completion_hidden(self.student, [it.student_enc for it, _ in rows], comps)
            if not torch.equal(tokens, t_tokens):
                raise RuntimeError("student and teacher completion tokens do not line up")
            teacher_lp = None
            if cfg.loss == "reverse_kl" or cfg.mode == "va_opd":
                with torch.no_grad():
                    teacher_lp = chunked_token_logprobs(t_hidden, t_head, tokens, cfg.loss_chunk_size)
            if cfg.loss == "reverse_kl":
                student_lp = chunked_token_logprobs(s_hidden, s_head, tokens, cfg.loss_chunk_size)
                per_token = sampled_reverse_kl(student_lp, teacher_lp)
            else:
                per_token = chunked_generalized_jsd(s_hidden, s_head, t_hidden, t_head, cfg.beta, cfg.loss_chunk_size)
            stats: dict[str, Any] = {"divergence_sum": float(per_token.detach().sum())}
            if cfg.mode == "opd":
                return per_token.sum() / n_tok, stats

            with torch.no_grad():
                d_hidden, _ = self._completion_hidden(self.teacher, [it.degraded_enc for it, _ in rows], comps)
                degraded_lp = chunked_token_logprobs(d_hidden, t_head, tokens, cfg.loss_chunk_size)
        # Back to the (rollouts, length) layout the grouped objective works on.
        lengths = torch.tensor([len(c) for c in comps], device=tokens.device)
        mask = torch.arange(int(lengths.max()), device=tokens.device)[None, :] < lengths[:, None]

        def grid(flat: torch.Tensor) -> torch.Tensor:
            return torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(mask, flat)

        va = visual_advantage(grid(teacher_lp), grid(degraded_lp), mask)
        loss, va_stats = va_opd_loss(grid(per_token), va, mask, rollouts_per_prompt=k, num_prompts=n_prompts,
                                     lam=cfg.va_lambda, high_frac=cfg.va_high_frac, tau=cfg.va_tau, eps=cfg.va_eps)
        stats.update(va_stats)
        stats["va_values"] = va[mask].cpu()
        return loss, stats

    # one optimizer step ---------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        items: list[PromptRollouts] = []
        while len(items) < cfg.prompts_per_step:
            batch = self._next_prompts(cfg.prompts_per_step - len(items))
            for item, problem in zip(batch, self._sample_many(batch, cfg.rollouts_per_prompt)):
                if problem is None:
                    items.append(item)
                else:
                    self.state.skip(problem)
        t_gen = time.perf_counter() - t0
        n_tok = sum(len(c) for it in items for c in it.completions)

        lr = lr_at(self.state.step, cfg)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        self.student.train()
        per_micro = cfg.prompts_per_step // cfg.grad_accum
        total, divergence, va_parts = 0.0, 0.0, []
        for start in range(0, len(items), per_micro):
            loss, stats = self._micro_batch_loss(items[start:start + per_micro], n_tok, len(items))
            loss.backward()
            total += float(loss.detach())
            divergence += stats.pop("divergence_sum")
            if stats:
                va_parts.append(stats)
        clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip))
        self.optimizer.step()
        self.state.step += 1
        self.state.tokens += n_tok
        seconds = time.perf_counter() - t0
        n_rollouts = sum(len(it.completions) for it in items)
        record: dict[str, Any] = {
            "loss": total, "divergence": divergence / n_tok, "lr": lr, "grad_norm": grad_norm,
            "tokens": n_tok, "completion_len": n_tok / n_rollouts,
            "truncated_frac": sum(it.truncated for it in items) / n_rollouts,
            "tokens_per_s": n_tok / seconds, "gen_s": t_gen, "step_s": seconds,
        }
        if va_parts:  # the VA distribution over every completion token of the step
            va = torch.cat([p["va_values"] for p in va_parts])
            record.update(va_summary(va[None, :], torch.ones(1, va.numel(), dtype=torch.bool)))
            mass = float(va.sum())
            record["high_group_va_share"] = (sum(p["high_group_va_mass"] for p in va_parts) / mass
                                             if mass > 0 else float("nan"))
            record["rollout_weight_max"] = max(p["rollout_weight_max"] for p in va_parts)
            record["rollout_weight_min"] = min(p["rollout_weight_min"] for p in va_parts)
        return record

    # evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def measure_reverse_kl(self, n_prompts: int | None = None, k: int | None = None, seed: int = 1234) -> dict[str, float]:
        """Mean full-vocabulary KL(student || teacher) per completion token on fresh student
        rollouts for the first ``n_prompts`` prompts of the selection (a fixed probe set).

        Sampling uses its own seed inside a forked RNG, so measuring never changes training.
        """
        n_prompts = n_prompts or self.cfg.eval_prompts
        k = k or self.cfg.rollouts_per_prompt
        s_head, t_head = self.student.get_output_embeddings(), self.teacher.get_output_embeddings()
        total, count = 0.0, 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for index in self.selection[:n_prompts]:
                try:
                    item = self._encode(decode_prompt(self.dataset[index]))
                    self._sample(item, k)
                except BadPrompt:
                    continue
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    th, tokens = self._completion_hidden(self.teacher, [item.teacher_enc] * k, item.completions)
                    sh, _ = self._completion_hidden(self.student, [item.student_enc] * k, item.completions)
                    kl = chunked_generalized_jsd(sh, s_head, th, t_head, 1.0, self.cfg.loss_chunk_size)
                total += float(kl.sum())
                count += int(tokens.numel())
        return {"eval_reverse_kl": total / max(count, 1), "eval_tokens": count}

    # the loop -------------------------------------------------------------------------
    def train(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics.truncate_after(self.state.step)
        write_json(self.out / "config.json", asdict(cfg))
        bar = tqdm(total=cfg.steps, initial=self.state.step, disable=not cfg.progress,
                   desc=cfg.mode, dynamic_ncols=True)
        try:
            while self.state.step < cfg.steps:
                record = self.train_step()
                self.state.elapsed_s += record["step_s"]
                step = self.state.step
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                if cfg.evaluates_at(step):
                    record.update(self.measure_reverse_kl())
                    if self.eval_fn is not None:
                        self.student.eval()
                        with torch.no_grad():
                            record["eval"] = self.eval_fn(self.student, self.processor, step)
                if step % cfg.log_every == 0 or step == cfg.steps or "eval_reverse_kl" in record:
                    self._log(record)
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        self.save_checkpoint()
        return export_model(self.student, self.processor, self.out / "final")

    def _log(self, record: dict[str, Any]) -> None:
        rec = {"step": self.state.step, "prompts_seen": self.state.position,
               "epoch": self.state.position / len(self.selection), "tokens_total": self.state.tokens,
               "skipped": dict(self.state.skipped), "elapsed_s": round(self.state.elapsed_s, 3)}
        self.metrics.append({**rec, **record})

    def save_checkpoint(self) -> Path:
        path = save_checkpoint(self.cfg, self.state, self.student, self.processor, self.optimizer)
        self.metrics.plot(CURVE_KEYS)
        return path


def train_opd(cfg: OPDConfig, eval_fn: Callable[[Any, Any, int], dict[str, Any]] | None = None) -> Path:
    """Distil ``cfg.teacher`` into ``cfg.student`` on-policy; returns ``output_dir/final``.

    ``eval_fn(model, processor, step) -> dict`` (e.g. held-out accuracy) runs every
    ``eval_every`` steps and at the ``eval_at`` steps, and lands in metrics.jsonl under ``eval``.
    """
    return OPDTrainer(cfg, eval_fn).train()


# --- CLI ---------------------------------------------------------------------------------
def load_config(path: str | None, overrides: list[str]) -> OPDConfig:
    """An ``OPDConfig`` from a YAML/JSON file (or its `opd:` section) plus ``key=value``
    overrides, validated against the dataclass's JSON Schema (pipeline/core/configschema.py)."""
    return load_dataclass(OPDConfig, path, overrides, section="opd")


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="deltaprompts train opd", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML or JSON file with OPDConfig fields (or an `opd:` section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set mode=va_opd --set steps=50")
    args = p.parse_args(argv)
    print(train_opd(load_config(args.config, args.overrides)))


if __name__ == "__main__":
    main()
