"""OpenAI-compatible backend: chat completions over HTTP (httpx), images as data URLs.

One HTTP request per :class:`Request`, asking for ``n`` choices, with at most
``concurrency`` in flight (a thread pool). Each HTTP call has a timeout
(``timeout_s``); 429, 408, 5xx, timeouts and connection errors are retried with
jittered exponential backoff (``tenacity``), at most ``max_retries`` times. A
``Retry-After`` header is honoured and, on 429, pauses *every* worker until it has passed
(a shared throttle): without that, N workers would each hit the limit again and again (a
retry storm). Other 4xx answers (a context overflow, a bad image) are the request's fault
and are not retried. Whatever happens, a request ends with completions or with an error
that names it; nothing hangs, because every wait is bounded.

Structured outputs: a call whose ``json_schema`` is set sends ``response_format``
(``cfg.response_format``: ``json_schema``, the schema itself, strict; or ``json_object``;
or ``none``). Servers that do not know the format answer 400; the request is then sent
again with each of ``cfg.response_format_fallback`` in turn, and the first that the
server accepts becomes the engine's format for every later call (logged once), so a run
against such a server pays the refusal once, not per request.

What chat APIs do not give:

* ``score()``: a chat-completions endpoint cannot teacher-force a given completion, so it
  raises ``NotImplementedError``; score with the vllm or transformers engine.
* token ids: only servers that return them (vLLM with ``extra_body={"return_token_ids":
  true}``) fill ``Completion.token_ids``; elsewhere it is an empty list.
* a server that splits reasoning out (``reasoning_content``) gets it put back as a
  ``<think>...</think>`` block in front of the text, so answer extraction sees one text.

The API key is read from the environment variable named by ``api_key_env`` at start and is
never logged; without it no ``Authorization`` header is sent (local servers).
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt

from pipeline.core.config import EngineConfig
from pipeline.engines.base import (
    Completion,
    Engine,
    Request,
    RequestError,
    SampleParams,
    SampleResult,
    decode_image,
    request_name,
    request_seed,
)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RetryableError(Exception):
    """A failure worth another try; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ClientError(RequestError):
    """An HTTP 4xx answer (not retried as is): the request, or one of its settings, is
    refused; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The payload keys that ask for JSON in ``mode`` (config.ResponseFormat)."""
    if mode == "json_schema":
        spec = {"name": "response", "schema": schema, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    return {}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Throttle:
    """A pause shared by all workers: nobody sends before ``not_before``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_before = 0.0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)

    def wait(self) -> None:
        with self._lock:
            delay = self._not_before - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def image_data_url(image) -> str:
    """A ``data:`` URL for one image; encoded bytes are sent as they are (after a decode
    check), PIL images as PNG."""
    img = decode_image(image)  # raises RequestError on a corrupt image
    raw = image["bytes"] if isinstance(image, dict) else image
    if isinstance(raw, (bytes, bytearray, memoryview)):
        fmt = (getattr(img, "format", None) or "").lower()
        data, mime = bytes(raw), f"image/{fmt}" if fmt else "image/png"
        if fmt not in ("png", "jpeg", "webp", "gif"):  # re-encode what servers may refuse
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
    else:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def to_openai_messages(request: Request) -> list[dict]:
    """HF-style messages with ``{"type": "image"}`` parts -> OpenAI ``image_url`` parts."""
    images = iter(request.images)
    out = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    try:
                        image = next(images)
                    except StopIteration:
                        raise RequestError("more image parts than images") from None
                    parts.append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    if next(images, None) is not None:
        raise RequestError("more images than image parts")
    return out


class OpenAIEngine(Engine):
    def __init__(self, cfg: EngineConfig):
        if not cfg.base_url:
            raise ValueError("the openai engine needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.timeout = httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0))
        self.client = httpx.Client(
            headers=headers,
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=max(1, cfg.concurrency)),
        )
        self.throttle = Throttle()
        self.format_mode = cfg.response_format  # may step down the fallbacks (see module doc)
        self._format_lock = threading.Lock()

    def _wait(self, retry_state) -> float:
        """Backoff before the next attempt: the server's Retry-After when it gave one,
        else full-jitter exponential (uniform in [0, base * 2^attempt]), both capped."""
        cap = self.cfg.retry_backoff_max_s
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            return min(hint, cap) + random.uniform(0, 0.1 * self.cfg.retry_backoff_s)
        ceiling = self.cfg.retry_backoff_s * 2 ** (retry_state.attempt_number - 1)
        return random.uniform(0, min(cap, ceiling))

    def _post_once(self, payload: dict) -> dict:
        self.throttle.wait()
        try:
            response = self.client.post(self.url, json=payload)
        except httpx.TimeoutException as e:
            raise RetryableError(f"timed out after {self.cfg.timeout_s:g}s ({type(e).__name__})") from e
        except httpx.TransportError as e:  # refused, reset, DNS, protocol errors
            raise RetryableError(f"connection error ({type(e).__name__}: {e})") from e
        if response.status_code in RETRY_STATUS:
            hint = parse_retry_after(response.headers.get("retry-after"))
            if response.status_code == 429:
                self.throttle.pause(hint if hint is not None else self.cfg.retry_backoff_s)
            raise RetryableError(f"HTTP {response.status_code}: {response.text[:300]}", hint)
        if response.status_code >= 400:
            raise ClientError(
                f"HTTP {response.status_code}: {response.text[:500]}", response.status_code
            )
        try:
            return response.json()
        except ValueError as e:
            raise RetryableError(f"invalid JSON in the response: {e}") from e

    def _post(self, payload: dict) -> dict:
        attempts = self.cfg.max_retries + 1
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableError),
        )
        try:
            return retrying(self._post_once, payload)
        except RetryError as e:
            last = e.last_attempt.exception()
            raise RequestError(f"failed after {attempts} attempt(s), last error: {last}") from last

    def _formats(self, schema: dict | None) -> list[str | None]:
        """The response formats to try for one request, in order (``[None]``: no schema)."""
        if schema is None:
            return [None]
        chain = [self.cfg.response_format, *self.cfg.response_format_fallback]
        with self._format_lock:
            start = chain.index(self.format_mode) if self.format_mode in chain else 0
        return list(dict.fromkeys(chain[start:]))

    def _adopt(self, mode: str, refused: str, error: str) -> None:
        """Use ``mode`` from now on: the server refused ``refused`` and accepted ``mode``."""
        with self._format_lock:
            chain = [self.cfg.response_format, *self.cfg.response_format_fallback]
            if chain.index(mode) > chain.index(self.format_mode):
                log.warning(
                    "the server refused response_format %s (%s); using %s from now on "
                    "(models.*.response_format_fallback)", refused, error[:200], mode,
                )
                self.format_mode = mode

    def _post_formats(self, body: dict, schema: dict | None) -> dict:
        """POST ``body`` with the first response format the server accepts."""
        formats = self._formats(schema)
        for k, mode in enumerate(formats):
            extra = response_format(mode, schema) if mode is not None else {}
            try:
                data = self._post({**body, **extra})
            except ClientError as e:
                if k + 1 < len(formats):
                    last_error = str(e)
                    continue
                raise
            if k > 0:
                self._adopt(mode, formats[0], last_error)
            return data
        raise AssertionError("unreachable: the loop returns or raises")

    def _one(
        self, request: Request, index: int, payload: dict, schema: dict | None = None
    ) -> SampleResult:
        name = request_name(request, index)
        if request.seeds is not None:
            # Per-completion seeds (Request.seeds): one n=1 request per seed. A server may
            # still ignore seeds; the sample store then keeps what it returned.
            parts = [self._one(replace(request, seeds=None), index,
                               {**payload, "n": 1, "seed": s, "exact_seed": True})
                     for s in request.seeds]
            bad = next((p for p in parts if p.error), None)
            if bad is not None:
                return bad
            return SampleResult(completions=[c for p in parts for c in p.completions],
                                prompt_tokens=parts[0].prompt_tokens if parts else None)
        try:
            body = {**payload, "messages": to_openai_messages(request)}
            exact = body.pop("exact_seed", False)
            seed = payload.get("seed")
            if seed is not None and not exact:
                body["seed"] = request_seed(seed, index)
            data = self._post_formats(body, schema)
        except RequestError as e:
            return SampleResult(completions=[], error=f"{name}: {e}")
        completions = []
        for choice in sorted(data.get("choices", []), key=lambda c: c.get("index", 0)):
            message = choice.get("message") or {}
            text = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning:
                text = f"<think>{reasoning}</think>{text}"
            lps = None
            if payload.get("logprobs"):
                content = (choice.get("logprobs") or {}).get("content") or []
                lps = [float(step["logprob"]) for step in content]
            completions.append(
                Completion(
                    text=text,
                    token_ids=[int(t) for t in choice.get("token_ids") or []],
                    logprobs=lps,
                    finish_reason=choice.get("finish_reason"),
                )
            )
        if len(completions) != payload["n"]:
            return SampleResult(
                completions=[],
                error=f"{name}: the server returned {len(completions)} choices, "
                f"{payload['n']} were asked",
            )
        usage = data.get("usage") or {}
        return SampleResult(completions=completions, prompt_tokens=usage.get("prompt_tokens"))

    def _sample(self, requests: list[Request], p: SampleParams) -> list[SampleResult]:
        payload: dict = {
            "model": self.cfg.model,
            "n": p.n,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            **self.cfg.extra_body,
        }
        if p.seed is not None:
            payload["seed"] = p.seed  # replaced by a per-request seed in _one
        if p.stop:
            payload["stop"] = list(p.stop)
        if p.logprobs:
            payload["logprobs"] = True
        if p.ignore_eos:
            payload["ignore_eos"] = True  # a vLLM extension; other servers may refuse it
        workers = max(1, min(self.cfg.concurrency, len(requests)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-engine") as pool:
            futures = [
                pool.submit(self._one, r, i, payload, p.json_schema) for i, r in enumerate(requests)
            ]
            return [f.result() for f in futures]

    def score(self, requests: list[Request], completions: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError(
            "the openai engine cannot score: a chat-completions API samples, it cannot "
            "teacher-force a given completion. Score with the vllm or transformers engine."
        )

    def close(self) -> None:
        self.client.close()
