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
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

EngineName = Literal["vllm", "transformers", "openai"]


@dataclass
class EngineConfig:
    """How to load one model (one per model in the run YAML)."""

    engine: EngineName = "transformers"
    model: str = ""  # local path or Hub id (required)
    dtype: str = "auto"  # auto -> bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto -> cuda when available, else cpu (transformers)
    trust_remote_code: bool = False  # off unless a config sets it explicitly
    max_pixels: int | None = None  # processor image cap (pixels); None = the model's own
    min_pixels: int | None = None
    max_model_len: int | None = None  # context cap; None = the model's max positions
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.85  # vllm
    max_num_seqs: int | None = None  # vllm
    limit_mm_per_prompt: int = 1  # vllm, images per prompt
    enforce_eager: bool = False  # vllm: skip graph capture / compilation (faster start)
    seed: int = 0  # engine-level seed (vllm); per-call seeds come through sample()
    batch_size: int = 8  # transformers: prompts per forward
    base_url: str | None = None  # openai, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (never logged)
    concurrency: int = 8  # openai: requests in flight
    timeout_s: float = 120.0  # openai, per HTTP request
    max_retries: int = 5  # openai: retries after the first attempt
    retry_backoff_s: float = 1.0  # openai: first backoff (jittered, doubles per retry)
    retry_backoff_max_s: float = 30.0  # openai: backoff (and Retry-After) cap
    extra_body: dict[str, Any] = field(default_factory=dict)  # openai: merged into payload


@dataclass
class Request:
    messages: list[dict]  # HF/OpenAI chat format; image parts {"type": "image"}
    images: list  # PIL.Image.Image or encoded bytes, in the order of the image parts
    id: str | None = None  # named in errors


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


class RequestError(ValueError):
    """A single request cannot be served (bad image, too long, ...); names the request."""


class Engine(ABC):
    """Sampling and teacher-forced scoring over one model."""

    @abstractmethod
    def sample(
        self,
        requests: list[Request],
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        stop: list[str] | None = None,
        logprobs: bool = False,
        ignore_eos: bool = False,
    ) -> list[SampleResult]:
        """n completions per request. ``temperature=0`` is greedy. ``ignore_eos`` keeps
        decoding to ``max_tokens`` (benchmarks; not every server supports it)."""

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


def user_message(question: str, n_images: int = 1) -> list[dict]:
    """The standard single-turn chat: ``n_images`` image parts, then the question."""
    content: list[dict] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


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
    """A fully decoded RGB ``PIL.Image`` from a PIL image or encoded bytes.

    Decoding eagerly (``load()``) makes a truncated or corrupt file fail here, with a
    clear message, instead of deep inside a processor or an engine worker.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, dict) and "bytes" in image:  # the HF Image struct {bytes, path}
        image = image["bytes"]
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(image)))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise RequestError(f"image is not decodable ({type(e).__name__}: {e})") from e
    elif isinstance(image, Image.Image):
        img = image
        try:
            img.load()
        except (OSError, ValueError) as e:
            raise RequestError(f"image is not decodable ({type(e).__name__}: {e})") from e
    else:
        raise RequestError(f"image must be PIL.Image or bytes, got {type(image).__name__}")
    if img.width < 1 or img.height < 1:
        raise RequestError(f"image has an empty size {img.size}")
    return img if img.mode == "RGB" else img.convert("RGB")


def prepare_images(request: Request) -> list:
    """Decode a request's images and check they match its image parts (else RequestError)."""
    expected = count_image_parts(request.messages)
    if expected != len(request.images):
        raise RequestError(
            f"{expected} image part(s) in the messages but {len(request.images)} image(s) given"
        )
    return [decode_image(im) for im in request.images]


def validate_sampling(n: int, temperature: float, top_p: float, max_tokens: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")


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
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)
