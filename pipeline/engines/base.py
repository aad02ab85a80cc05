"""One sampling + scoring interface over vLLM, transformers and OpenAI-compatible servers.

Every stage and the trainer talk to models through :class:`Engine`. A :class:`Request` is
chat messages (HF/OpenAI format, image parts as ``{"type": "image"}``) plus the images, in
the order of their parts; the engine applies the model's own chat template and processor,
so image tokens are never built by hand.

Conventions shared by all backends (tests hold each backend to them):

* ``sample`` returns one :class:`SampleResult` per request, in request order. A bad request
  (undecodable image, wrong image count, prompt longer than the context) fails *alone*:
  its result carries ``error`` naming the request and no completions; the rest succeed.
* ``Completion.logprobs`` are log-probabilities of the sampled tokens under the model at
  temperature 1 (raw logits, before temperature / top-p), the same quantity ``score``
  returns, so the two can be compared or mixed.
* ``token_ids`` include a final end-of-sequence token when the model emitted one; ``text``
  is decoded without special tokens but keeps ``<think>`` blocks. A stop string ends the
  text just before it (``finish_reason="stop"``).
* Generation is capped by the context: ``max_tokens`` is lowered to what fits after the
  prompt (then ``finish_reason="length"``); only a prompt that leaves no room is an error.
* ``SampleParams.json_schema`` asks for replies that match a JSON schema. Where the
  backend can constrain decoding it does (vLLM: structured outputs; OpenAI-compatible
  servers: ``response_format``); transformers samples unconstrained. Callers validate the
  reply either way: the constraint raises the valid share, it does not replace the check.
* A text-only model (no image processor) gets each message's text parts joined into one
  string, the form plain LLM chat templates expect; a request with an image fails alone.
  ``Engine.takes_images`` says which kind is loaded (None: unknown, e.g. a remote server).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.images import ImageError
from pipeline.core.images import decode_image as _decode


@dataclass
class Request:
    messages: list[dict]  # HF/OpenAI chat format; image parts {"type": "image"}
    images: list  # PIL.Image.Image or encoded bytes, in the order of the image parts
    id: str | None = None  # named in errors
    # One seed per completion (len == n): completion j is drawn with seeds[j] whatever else
    # is in the batch, so a sample is fixed by its seed (the sample store relies on it).
    # None: per-request seeds derived from the call's seed and the position (request_seed).
    seeds: tuple[int, ...] | None = None


@dataclass
class Completion:
    text: str  # raw decoded text (a <think> block is kept)
    token_ids: list[int]
    logprobs: list[float] | None = None  # per sampled token at T=1, when asked
    finish_reason: str | None = None  # "stop" | "length"


@dataclass
class SampleResult:
    completions: list[Completion]  # n of them, empty when error is set
    error: str | None = None  # a bad request (corrupt image, over context) fails alone, named
    prompt_tokens: int | None = None  # prompt length with image tokens, when known


@dataclass(frozen=True)
class SampleParams:
    """Sampling settings of one call (vLLM's ``SamplingParams`` in spirit).

    ``temperature=0`` is greedy. ``seed`` seeds the call: each request derives its own
    seed from it and its position (:func:`request_seed`). ``logprobs`` asks for the
    sampled tokens' log-probabilities at T=1; ``ignore_eos`` keeps decoding to
    ``max_tokens`` (benchmarks; not every server supports it). ``json_schema``: replies
    should be one JSON value matching it (see the module docstring for which backends
    enforce it).
    """

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    logprobs: bool = False
    ignore_eos: bool = False
    json_schema: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.stop is not None and not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))


class RequestError(ValueError):
    """A single request cannot be served (bad image, too long, ...); names the request."""


class Engine(ABC):
    """Sampling and teacher-forced scoring over one model."""

    # Whether the loaded model takes images: True (a VLM), False (a text-only LLM), None
    # (not known here, e.g. a model behind an OpenAI-compatible server).
    takes_images: bool | None = None

    def sample(
        self,
        requests: list[Request],
        params: SampleParams | None = None,
        **settings: Any,
    ) -> list[SampleResult]:
        """``params.n`` completions per request, one :class:`SampleResult` each, in order.

        Settings come as a :class:`SampleParams` or as its fields by name
        (``engine.sample(reqs, n=8, temperature=0.7, seed=3)``); they are checked here,
        once, for every backend.
        """
        if params is None:
            params = SampleParams(**settings)
        elif settings:
            raise TypeError("give either a SampleParams or its fields by name, not both")
        if not requests:
            return []
        check_seeds(requests, params)
        return self._sample(list(requests), params)

    def sample_many(
        self, calls: Sequence[tuple[Sequence[Request], SampleParams]]
    ) -> list[list[SampleResult]]:
        """Several independent :meth:`sample` calls, one result list per call.

        The same requests with the same parameters and seeds as calling them one by one; a
        backend may run them together (vLLM: one ``generate``, one decoding sweep).
        """
        return [self.sample(list(requests), params) for requests, params in calls]

    @abstractmethod
    def _sample(self, requests: list[Request], params: SampleParams) -> list[SampleResult]:
        """The backend's sampling; ``params`` are already validated."""

    @abstractmethod
    def score(self, requests: list[Request], completions: list[list[int]]) -> list[list[float]]:
        """per-token log p(completion token | prompt, previous tokens) under the model, T=1"""

    def close(self) -> None:  # noqa: B027 - optional hook: engines without resources keep it
        """Free the model / connections. Idempotent."""

    def __enter__(self):  # -> the engine itself
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- helpers shared by the backends -------------------------------------------------


def request_name(request: Request, index: int) -> str:
    """How errors name a request: its id, else its position in the batch."""
    return f"request {request.id!r}" if request.id is not None else f"request #{index}"


def count_image_parts(messages: list[dict]) -> int:
    n = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            n += sum(1 for part in content if part.get("type") in ("image", "image_url"))
    return n


def decode_image(image: Any):
    """A decoded RGB ``PIL.Image`` (pipeline/core/images.py), or :class:`RequestError`."""
    try:
        return _decode(image)
    except ImageError as e:
        raise RequestError(str(e)) from e


def prepare_images(request: Request) -> list:
    """Decode a request's images and check they match its image parts (else RequestError)."""
    expected = count_image_parts(request.messages)
    if expected != len(request.images):
        raise RequestError(
            f"{expected} image part(s) in the messages but {len(request.images)} image(s) given"
        )
    return [decode_image(im) for im in request.images]


def text_messages(request: Request) -> list[dict]:
    """The request's messages for a text-only model: text parts joined into one string.

    Plain LLM chat templates (SmolLM2's, Llama's) concatenate ``message['content']`` as a
    string and fail on a list of parts. A request with an image part is refused, since a
    text-only model would answer it without seeing the image.
    """
    if request.images or count_image_parts(request.messages):
        raise RequestError("the model is text-only: it cannot take an image")
    out = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
        out.append({**message, "content": content})
    return out


def truncate_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Cut ``text`` just before the earliest stop string; say whether one was found."""
    if not stop:
        return text, False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def request_seed(seed: int | None, index: int) -> int | None:
    """A per-request seed derived from the call's seed, so requests are not correlated
    (same seed for every request would give identical samples for identical prompts)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def check_seeds(requests: Sequence[Request], params: SampleParams) -> None:
    """A request's per-completion seeds, when given, are one per completion."""
    for i, r in enumerate(requests):
        if r.seeds is not None and len(r.seeds) != params.n:
            raise ValueError(f"{request_name(r, i)} has {len(r.seeds)} seeds for n={params.n}")
