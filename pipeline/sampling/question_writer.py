"""An LLM writes a new question as JSON: template -> engine -> JSON -> schema check ->
bounded retry -> accept/reject (the LLM method of stage 3, stages/rewrite/).

    prompt = render_template("seed_guided", "extra_hop", ctx)
    results = rewrite(engine, [RewriteJob(key="a", prompt=prompt, image=png)], max_attempts=3)
    results[0].proposal  # {"question", "expected_answer", "answer_type", "skill", "rationale"}
    results[0].rejected  # None, or rewriter_invalid_json / _schema_invalid / _engine_error

Templates are data: ``prompts_templates/rewrite/<kind>/<name>.j2`` (kinds: ``seed_guided``,
``skill_guided``); files whose name starts with ``_`` are shared partials (the JSON-output
instruction, the retry feedback). Adding a strategy is adding a file.

Invalid output is retried with the validation error fed back to the model, in batched
rounds: every job still invalid after round r goes into round r+1 together, so an engine
sees one call per round, not one per job. The conversation of a retry holds the original
prompt, the model's *last* reply and the feedback (not the whole history), which keeps the
context bounded whatever ``max_attempts`` is. After ``max_attempts`` the job is rejected
with the reason of its last failure and nothing of it is written.

``structured=True`` (the default) also hands RESPONSE_SCHEMA to the engine as a
structured-output constraint: vLLM and OpenAI-compatible servers then decode only JSON of
that schema, and transformers ignores it (engines/base.py). The reply is parsed and
validated the same way in every case, so a constraint the backend lacks or a reply cut
by ``max_tokens`` still ends in a counted retry, never in a bad row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import tenacity

from pipeline.engines.base import Engine, Request
from pipeline.sampling.prompts import user_message
from prompts_templates import TEMPLATE_ROOT

TEMPLATE_DIR = TEMPLATE_ROOT / "rewrite"
TEMPLATE_KINDS = ("seed_guided", "skill_guided")
FEEDBACK_TEMPLATE = "_retry_feedback.j2"

ANSWER_TYPES = ["number", "text", "yes_no", "label"]

# What the rewriter must return. Strict on purpose (no extra keys, bounded lengths): a
# precise error message is what lets the retry fix the reply.
RESPONSE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["question", "expected_answer", "answer_type", "skill", "rationale"],
    "additionalProperties": False,
    "properties": {
        "question": {"type": "string", "minLength": 8, "maxLength": 400, "pattern": r"[A-Za-z]"},
        # LLMs often write numbers as JSON numbers; null = "I cannot tell" (the teacher's
        # majority then becomes the label).
        "expected_answer": {"type": ["string", "number", "null"], "maxLength": 64},
        "answer_type": {"enum": ANSWER_TYPES},
        "skill": {"type": "string", "minLength": 2, "maxLength": 48},
        "rationale": {"type": "string", "maxLength": 400},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(RESPONSE_SCHEMA)

REJECT_INVALID_JSON = "rewriter_invalid_json"
REJECT_SCHEMA_INVALID = "rewriter_schema_invalid"
REJECT_ENGINE_ERROR = "rewriter_engine_error"


# ----------------------------------------------------------------------------- templates


def template_env(root: str | Path = TEMPLATE_DIR) -> jinja2.Environment:
    # StrictUndefined: a template naming a variable the stage does not provide fails loudly
    # at render time instead of sending the model an empty hole.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def list_templates(kind: str, root: str | Path = TEMPLATE_DIR) -> list[str]:
    """Template names (file stems) of one kind, sorted; partials (``_*``) excluded."""
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"unknown template kind {kind!r}; one of {TEMPLATE_KINDS}")
    folder = Path(root) / kind
    return sorted(p.stem for p in folder.glob("*.j2") if not p.name.startswith("_"))


def render_template(
    kind: str,
    name: str,
    context: dict[str, Any],
    root: str | Path = TEMPLATE_DIR,
    env: jinja2.Environment | None = None,
) -> str:
    env = env or template_env(root)
    try:
        return env.get_template(f"{kind}/{name}.j2").render(**context).strip()
    except jinja2.TemplateNotFound:
        raise ValueError(
            f"no template {kind}/{name}.j2 under {root}; have {list_templates(kind, root)}"
        ) from None


def feedback_text(error: str, env: jinja2.Environment | None = None) -> str:
    env = env or template_env()
    return env.get_template(FEEDBACK_TEMPLATE).render(error=error).strip()


# ------------------------------------------------------------------------------- parsing


class ResponseError(ValueError):
    """A rewriter reply that cannot be used; ``reason`` is a stable REJECT_* key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def parse_response(text: str) -> dict[str, Any]:
    """The reply's JSON object, validated against RESPONSE_SCHEMA and tidied.

    A ``<think>`` block and text around the object (a code fence, a preamble) are
    tolerated: they cost nothing to skip, and reasoning models emit them regardless.
    """
    body = _THINK.sub("", text or "")
    start = body.find("{")
    if start < 0:
        raise ResponseError(REJECT_INVALID_JSON, "the reply contains no JSON object (no '{')")
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError as e:
        raise ResponseError(
            REJECT_INVALID_JSON, f"the JSON object does not parse: {e.msg} at character {e.pos}"
        ) from None
    errors = sorted(_VALIDATOR.iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        parts = []
        for e in errors[:3]:
            where = "/".join(str(p) for p in e.absolute_path) or "the object"
            parts.append(f"{where}: {e.message}")
        raise ResponseError(
            REJECT_SCHEMA_INVALID, "the JSON does not match the schema: " + "; ".join(parts)
        )
    return _tidy(obj)


def _tidy(obj: dict[str, Any]) -> dict[str, Any]:
    ans = obj["expected_answer"]
    if isinstance(ans, float) and ans.is_integer():
        ans = int(ans)
    ans = None if ans is None else str(ans).strip() or None
    return {
        "question": " ".join(obj["question"].split()),
        "expected_answer": ans,
        "answer_type": obj["answer_type"],
        "skill": " ".join(obj["skill"].lower().split()),
        "rationale": " ".join(obj["rationale"].split()),
    }


# ------------------------------------------------------------------------------ rewriting


@dataclass
class RewriteJob:
    key: str  # the caller's handle, returned on the result
    prompt: str  # the rendered template
    image: bytes | None = None  # sent when not None (the rewriter "sees" the image)


@dataclass
class RewriteResult:
    key: str
    proposal: dict[str, Any] | None  # the tidied JSON when accepted
    attempts: int  # engine calls made for this job
    rejected: str | None = None  # REJECT_* reason when proposal is None
    error: str | None = None  # the last failure's message
    last_reply: str | None = None  # raw text of the last reply (diagnostics; never written)
    failures: list[str] = field(default_factory=list)  # REJECT_* reason of each failed attempt
    completion_tokens: int = 0  # tokens the rewriter wrote for this job, all attempts


class _StillInvalid(Exception):
    """Raised inside a tenacity attempt while some jobs remain invalid."""


def _request(
    job: RewriteJob, reply: str | None, error: str | None, env: jinja2.Environment
) -> Request:
    messages = user_message(job.prompt, n_images=1 if job.image is not None else 0)
    if reply is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        messages.append(
            {"role": "user", "content": [{"type": "text", "text": feedback_text(error or "", env)}]}
        )
    return Request(
        messages=messages, images=[job.image] if job.image is not None else [], id=job.key
    )


def rewrite(
    engine: Engine,
    jobs: list[RewriteJob],
    *,
    max_attempts: int = 3,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 384,
    seed: int = 0,
    structured: bool = True,
    env: jinja2.Environment | None = None,
) -> list[RewriteResult]:
    """Run every job through ``engine`` with up to ``max_attempts`` batched rounds.

    ``structured``: ask the engine to constrain replies to RESPONSE_SCHEMA (module doc).

    An engine error for a request (corrupt image, prompt over the context) rejects that
    job at once: resending the same request would fail the same way.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    env = env or template_env()
    results = [RewriteResult(key=j.key, proposal=None, attempts=0) for j in jobs]
    pending = list(range(len(jobs)))

    def one_round(round_no: int) -> None:
        nonlocal pending
        reqs = [_request(jobs[i], results[i].last_reply, results[i].error, env) for i in pending]
        # A new seed per round: the same prompt must not replay the same invalid draw.
        outs = engine.sample(
            reqs,
            n=1,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed + 7919 * round_no,
            json_schema=RESPONSE_SCHEMA if structured else None,
        )
        still = []
        for i, out in zip(pending, outs):
            r = results[i]
            r.attempts += 1
            if out.error or not out.completions:
                r.rejected, r.error = REJECT_ENGINE_ERROR, out.error or "no completion"
                r.failures.append(REJECT_ENGINE_ERROR)
                continue
            r.last_reply = out.completions[0].text
            r.completion_tokens += len(out.completions[0].token_ids)
            try:
                r.proposal = parse_response(r.last_reply)
                r.rejected = r.error = None
            except ResponseError as e:
                r.rejected, r.error = e.reason, str(e)
                r.failures.append(e.reason)
                still.append(i)
        pending = still
        if pending:
            raise _StillInvalid(f"{len(pending)} replies invalid after round {round_no}")

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_attempts),
        retry=tenacity.retry_if_exception_type(_StillInvalid),
        wait=tenacity.wait_none(),
        reraise=False,
    )
    if pending:
        try:
            for attempt in retrying:
                with attempt:
                    one_round(attempt.retry_state.attempt_number)
        except tenacity.RetryError:
            pass  # the jobs still pending keep their last rejection reason
    return results
