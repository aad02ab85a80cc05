"""transformers backend: batched sampling that prefills each prompt once.

``generate(num_return_sequences=n)`` copies every prompt n times *before* the forward, so
the image encoder and the prompt prefill run n times. Here a batch of prompts is
prefilled once, then the KV cache (and the last logits) are repeated n times along the
batch and decoding continues with our own sampling loop (temperature, top-p, a seeded
``torch.Generator``, stop strings, EOS). Finished rows are dropped from the cache so the
batch shrinks as samples end.

Qwen-VL models use M-RoPE: text tokens after an image sit at ``index + rope_delta``
rather than at their index. The model keeps that delta as hidden state on
``model.model.rope_deltas``, which would go stale once we reshape the batch, so this
engine computes every position id itself (prefill: the model's ``get_rope_index``;
decode: ``real_length + step + delta``) and always passes them explicitly.

A text-only model (a plain LLM such as the SmolLM2 rewriter: its "processor" is the
tokenizer) loads as ``AutoModelForCausalLM`` and gets text-only messages
(base.text_messages). ``SampleParams.json_schema`` is not enforced here: decoding is
unconstrained, and the caller's validation and retries deal with what comes out.

Batches are prompts sorted by token length (longest first, so memory trouble shows at
once) and left-padded, which keeps padding small and lets every row's next token sit in
the last column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pipeline.core.config import EngineConfig
from pipeline.core.lazy import lazy
from pipeline.engines.attention import register as register_gqa_sdpa
from pipeline.engines.base import (
    Completion,
    Engine,
    Request,
    RequestError,
    SampleParams,
    SampleResult,
    prepare_images,
    request_name,
    text_messages,
    truncate_at_stop,
)

torch = lazy("torch")
transformers = lazy("transformers")

log = logging.getLogger(__name__)

# 1-D per-token inputs that are left-padded; every other processor tensor (pixel values,
# image grids) is concatenated along dim 0 in batch order.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return names[dtype]


@dataclass
class Prepared:
    """One request after chat template + processor, ready to be collated."""

    index: int  # position in the caller's list
    inputs: dict  # processor outputs for this one request (batch dim of 1)
    length: int  # prompt tokens, image tokens included
    seeds: tuple[int, ...] | None = None  # the request's per-completion seeds


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """Next tokens (R,) from float32 logits (R, V): greedy at T=0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p (the top one stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, order, sorted_logits)
    probs = scaled.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_rows(
    logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """:func:`sample_tokens` with one generator per row: a row's draw depends only on its
    own generator, never on which other rows share the batch (per-completion seeds)."""
    if temperature == 0 or len(generators) == 0:
        return logits.argmax(dim=-1)
    return torch.cat([sample_tokens(logits[r : r + 1], temperature, top_p, g)
                      for r, g in enumerate(generators)])


class TransformersEngine(Engine):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.processor = transformers.AutoProcessor.from_pretrained(
            cfg.model, trust_remote_code=cfg.trust_remote_code
        )
        self._apply_pixel_limits()
        self.takes_images = hasattr(self.processor, "image_processor")
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        auto = (
            transformers.AutoModelForImageTextToText
            if self.takes_images
            else transformers.AutoModelForCausalLM
        )
        self.model = auto.from_pretrained(
            cfg.model,
            dtype=self.dtype,
            attn_implementation=register_gqa_sdpa(),  # sdpa without KV-head copies
            trust_remote_code=cfg.trust_remote_code,
        ).to(self.device)
        self.model.eval()
        text_cfg = self.model.config.get_text_config()
        self.vocab_size = int(text_cfg.vocab_size)
        self.max_len = int(cfg.max_model_len or text_cfg.max_position_embeddings)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        # M-RoPE models (Qwen2/2.5/3-VL) expose get_rope_index; others use 1-D positions.
        self._rope_index = getattr(getattr(self.model, "model", None), "get_rope_index", None)

    def _apply_pixel_limits(self) -> None:
        ip = getattr(self.processor, "image_processor", None)
        if ip is None or (self.cfg.max_pixels is None and self.cfg.min_pixels is None):
            return
        size = dict(ip.size or {})
        if self.cfg.max_pixels is not None:
            size["longest_edge"] = self.cfg.max_pixels
        if self.cfg.min_pixels is not None:
            size["shortest_edge"] = self.cfg.min_pixels
        ip.size = size

    # --- preparing and collating ---------------------------------------------------

    def prepare(self, request: Request, index: int, extra_ids: list[int] | None = None) -> Prepared:
        """Chat template + processor for one request (RequestError on a bad one).

        ``extra_ids`` (a completion, for scoring) is appended after the prompt.
        """
        images = prepare_images(request)
        messages = request.messages if self.takes_images else text_messages(request)
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        try:
            if self.takes_images:
                inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
            else:  # the chat template already wrote every special token
                inputs = self.tokenizer([text], add_special_tokens=False, return_tensors="pt")
        except (ValueError, RuntimeError) as e:  # e.g. an image too small for the patches
            raise RequestError(f"processor failed: {e}") from e
        inputs = dict(inputs)
        inputs.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
        if extra_ids:
            bad = [t for t in extra_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise RequestError(f"completion token ids outside the vocabulary: {bad[:5]}")
            extra = torch.tensor([extra_ids], dtype=inputs["input_ids"].dtype)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
            inputs["attention_mask"] = torch.cat(
                [inputs["attention_mask"], torch.ones_like(extra)], dim=1
            )
            if "mm_token_type_ids" in inputs:  # completion tokens are text (type 0)
                types = inputs["mm_token_type_ids"]
                inputs["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(extra)], dim=1)
        length = int(inputs["input_ids"].shape[1])
        return Prepared(index=index, inputs=inputs, length=length, seeds=request.seeds)

    def collate(self, items: list[Prepared]) -> dict:
        """Left-pad the sequence inputs, concatenate the image inputs, move to device."""
        width = max(p.length for p in items)
        batch: dict = {}
        keys = dict.fromkeys(k for p in items for k in p.inputs)  # text-only rows lack images
        for key in keys:
            values = [p.inputs[key] for p in items if key in p.inputs]
            if key in _SEQUENCE_KEYS:
                fill = self.pad_id if key == "input_ids" else 0
                rows = [
                    torch.cat([torch.full((1, width - v.shape[1]), fill, dtype=v.dtype), v], dim=1)
                    for v in values
                ]
                batch[key] = torch.cat(rows, dim=0)
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.cat(values, dim=0)
        for key, value in batch.items():
            if key == "pixel_values":
                value = value.to(self.dtype)
            batch[key] = value.to(self.device)
        return batch

    def positions(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Position ids for a left-padded batch, plus what decoding needs to continue.

        Returns ``(position_ids, real_lengths, rope_delta)``. For M-RoPE models
        ``position_ids`` is (4, B, L): row 0 the plain text positions (used for the causal
        mask), rows 1-3 the temporal/height/width positions; otherwise (B, L).
        """
        mask = batch["attention_mask"]
        text_pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        real_lengths = mask.long().sum(-1)
        if self._rope_index is None:
            return text_pos, real_lengths, torch.zeros_like(real_lengths)
        kwargs = {k: batch[k] for k in ("mm_token_type_ids", "image_grid_thw") if k in batch}
        if "mm_token_type_ids" not in kwargs:
            kwargs["mm_token_type_ids"] = torch.zeros_like(batch["input_ids"])
        mrope, delta = self._rope_index(batch["input_ids"], attention_mask=mask, **kwargs)
        position_ids = torch.cat([text_pos[None], mrope.to(text_pos.device)], dim=0)
        return position_ids, real_lengths, delta.reshape(-1).to(real_lengths.device)

    def _step_positions(self, real_lengths: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Position ids (4|1, R, 1) of the token at index ``real_lengths`` of each row."""
        text = real_lengths[:, None]
        if self._rope_index is None:
            return text
        mrope = (text + delta[:, None])[None].expand(3, -1, -1)
        return torch.cat([text[None], mrope], dim=0)

    def prepare_all(
        self, requests: list[Request], extra: list[list[int]] | None = None
    ) -> tuple[list[Prepared], dict[int, str]]:
        """Prepared items and per-request errors (index -> message naming the request)."""
        prepared, errors = [], {}
        for i, request in enumerate(requests):
            try:
                item = self.prepare(request, i, extra[i] if extra is not None else None)
            except RequestError as e:
                errors[i] = f"{request_name(request, i)}: {e}"
                continue
            prepared.append(item)
        return prepared, errors

    def batches(self, items: list[Prepared]) -> list[list[Prepared]]:
        """Length-sorted (longest first) groups of ``batch_size`` prompts."""
        ordered = sorted(items, key=lambda p: -p.length)
        size = max(1, self.cfg.batch_size)
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    # --- sampling ------------------------------------------------------------------

    def _sample(self, requests: list[Request], p: SampleParams) -> list[SampleResult]:
        with torch.inference_mode():
            return self._sample_all(requests, p)

    def _sample_all(self, requests: list[Request], p: SampleParams) -> list[SampleResult]:
        prepared, errors = self.prepare_all(requests)
        results: list[SampleResult | None] = [None] * len(requests)
        for i, message in errors.items():
            results[i] = SampleResult(completions=[], error=message)
        ok = []
        for item in prepared:
            if item.length >= self.max_len:
                name = request_name(requests[item.index], item.index)
                results[item.index] = SampleResult(
                    completions=[],
                    error=f"{name}: prompt is {item.length} tokens, the context is "
                    f"{self.max_len} (max_model_len): no room to generate",
                )
            else:
                ok.append(item)
        generator = torch.Generator(device=self.device)
        if p.seed is None:
            generator.seed()
        else:
            generator.manual_seed(p.seed)
        for batch_items in self.batches(ok):
            outs = self._sample_batch(batch_items, p, generator)
            for item, completions in zip(batch_items, outs):
                results[item.index] = SampleResult(
                    completions=completions, prompt_tokens=item.length
                )
        return results  # type: ignore[return-value]

    def _sample_batch(self, items, p: SampleParams, generator) -> list[list[Completion]]:
        n, want_logprobs = p.n, p.logprobs
        batch = self.collate(items)
        position_ids, real_lengths, delta = self.positions(batch)
        out = self.model(**batch, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        # Prefill done once per prompt; now fan out to n rows per prompt.
        cache = out.past_key_values
        if n > 1:
            cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
        mask = batch["attention_mask"].repeat_interleave(n, dim=0)
        real_lengths = real_lengths.repeat_interleave(n)
        delta = delta.repeat_interleave(n)
        # per-row generation cap: what is asked, within the context
        caps = [min(p.max_tokens, self.max_len - it.length) for it in items for _ in range(n)]

        rows = len(caps)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        lps: list[list[float]] = [[] for _ in range(rows)]
        finish: list[str | None] = [None] * rows
        active = torch.arange(rows, device=self.device)  # global row of each cache row
        eos = set() if p.ignore_eos else self.eos_ids
        stop = [s for s in (p.stop or ()) if s]
        window = 2 * max((len(s) for s in stop), default=0) + 8  # tokens to re-decode

        # Requests with per-completion seeds get a generator per row (see Request.seeds).
        row_gens = None
        if any(requests_seeds := [it.seeds for it in items]):
            row_gens = []
            for seeds in requests_seeds:
                for j in range(n):
                    if seeds is None:
                        row_gens.append(generator)
                    else:
                        g = torch.Generator(device=self.device)
                        g.manual_seed(int(seeds[j]))
                        row_gens.append(g)

        while True:
            if row_gens is None:
                next_tokens = sample_tokens(logits, p.temperature, p.top_p, generator)
            else:
                next_tokens = sample_rows(logits, p.temperature, p.top_p,
                                          [row_gens[r] for r in active.tolist()])
            if want_logprobs:
                chosen = logits.log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0].tolist()
            keep: list[int] = []
            for j, (row, tok) in enumerate(zip(active.tolist(), next_tokens.tolist())):
                tokens[row].append(tok)
                if want_logprobs:
                    lps[row].append(chosen[j])
                if tok in eos or (stop and self._ends_in_stop(tokens[row], stop, window)):
                    finish[row] = "stop"
                elif len(tokens[row]) >= caps[row]:
                    finish[row] = "length"
                else:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(next_tokens):  # drop finished rows from the batch
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                active, next_tokens = active[sel], next_tokens[sel]
                mask, real_lengths, delta = mask[sel], real_lengths[sel], delta[sel]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=mask,
                position_ids=self._step_positions(real_lengths, delta),
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            real_lengths = real_lengths + 1
            logits = out.logits[:, -1, :].float()

        results: list[list[Completion]] = []
        for k in range(len(items)):
            completions = []
            for row in range(k * n, (k + 1) * n):
                text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
                text, _ = truncate_at_stop(text, stop)
                completions.append(
                    Completion(
                        text=text,
                        token_ids=tokens[row],
                        logprobs=lps[row] if want_logprobs else None,
                        finish_reason=finish[row],
                    )
                )
            results.append(completions)
        return results

    def _ends_in_stop(self, ids: list[int], stop: list[str], window: int) -> bool:
        """Whether a stop string shows up in the text of the last ``window`` tokens
        (re-decoding only the tail keeps the check O(1) per step)."""
        tail = self.tokenizer.decode(ids[-window:], skip_special_tokens=True)
        return truncate_at_stop(tail, stop)[1]

    # --- scoring -------------------------------------------------------------------

    def score(self, requests: list[Request], completions: list[list[int]]) -> list[list[float]]:
        with torch.inference_mode():
            return self._score(requests, completions)

    def _score(self, requests: list[Request], completions: list[list[int]]) -> list[list[float]]:
        if len(requests) != len(completions):
            raise ValueError(f"{len(requests)} requests but {len(completions)} completions")
        completions = [list(map(int, c)) for c in completions]
        prepared, errors = self.prepare_all(requests, completions)
        if errors:
            raise RequestError("; ".join(errors.values()))
        for item in prepared:
            if item.length > self.max_len:
                name = request_name(requests[item.index], item.index)
                raise RequestError(
                    f"{name}: prompt + completion is {item.length} tokens, over the "
                    f"context of {self.max_len} (max_model_len)"
                )
        scores: list[list[float]] = [[] for _ in requests]
        for batch_items in self.batches([p for p in prepared if completions[p.index]]):
            batch = self.collate(batch_items)
            position_ids, _, _ = self.positions(batch)
            longest = max(len(completions[p.index]) for p in batch_items)
            # logits only for the positions that predict completion tokens (all rows end
            # in the last column thanks to left padding)
            out = self.model(
                **batch, position_ids=position_ids, use_cache=False, logits_to_keep=longest + 1
            )
            logp = out.logits.float().log_softmax(-1)
            for row, p in enumerate(batch_items):
                ids = completions[p.index]
                span = logp[row, -(len(ids) + 1) : -1]
                target = torch.tensor(ids, device=span.device)[:, None]
                scores[p.index] = span.gather(-1, target)[:, 0].tolist()
        return scores

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
