"""The LLM rewriting path with a real instruct model: SmolLM2-135M-Instruct
(``make rewriter-model``; the session fixture ``rewriter_model`` builds it once).

Three engine paths, each on real chart-world seeds shown as their data tables (SmolLM2
is text-only), through the real templates and ``question_writer.rewrite``:

* vLLM offline with the schema as a structured-output constraint: every request's first
  reply is schema-valid JSON;
* transformers, unconstrained: the model's real malformed output drives the
  retry-with-feedback loop (asserted on the counted reasons and on the retry requests,
  never on the model's wording);
* the OpenAI-compatible engine against a real ``vllm serve`` of the same checkpoint, with
  ``response_format`` json_schema: every reply schema-valid.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from pipeline.engines import Engine, EngineConfig, build_engine
from pipeline.sampling.question_writer import (
    REJECT_INVALID_JSON,
    REJECT_SCHEMA_INVALID,
    RESPONSE_SCHEMA,
    RewriteJob,
    list_templates,
    render_template,
    rewrite,
)
from seeds.chartworld.generator import generate
from seeds.chartworld.spec import WorldConfig
from seeds.text_view import TextView
from tests.engine_fixtures import VLLMServer

pytestmark = pytest.mark.slow

# Room for the longest object the schema allows (its strings are bounded: about 900
# characters in all, and a degenerate reply such as "1.1.1.1..." costs a token per one or
# two characters). Under the constraint a reply is cut only by max_tokens, so with this
# budget every reply must close; at 384 a repetitive question was cut mid-string.
MAX_TOKENS = 1024


def chart_jobs(k: int, seed: int = 3) -> list[RewriteJob]:
    """``k`` seed-guided rewrite prompts over real chart-world seeds, templates in turn."""
    names = list_templates("seed_guided")
    jobs = []
    for i, ex in enumerate(generate(WorldConfig(), k, seed=seed)):
        context = {
            "question": ex.qa.question,
            "gold_answers": [ex.qa.answer],
            "wrong_answers": ["0"],
            "skill": ex.qa.skill,
            "student_accuracy": 0.0,
            "image_view": TextView("the chart's data table", ex.chart.as_table()),
        }
        jobs.append(RewriteJob(f"j{i}", render_template("seed_guided", names[i % len(names)],
                                                        context)))
    return jobs


def assert_schema_valid(reply: str) -> None:
    """The raw reply itself is one JSON object of the schema (no prose to skip)."""
    jsonschema.validate(json.loads(reply), RESPONSE_SCHEMA)


def test_vllm_structured_outputs_give_schema_valid_json_for_every_request(rewriter_model):
    engine = build_engine(EngineConfig(engine="vllm", model=str(rewriter_model),
                                       max_model_len=2048, enforce_eager=True))
    try:
        assert engine.takes_images is False
        results = rewrite(engine, chart_jobs(8), max_attempts=1, max_tokens=MAX_TOKENS,
                          structured=True, seed=1)
    finally:
        engine.close()
    for r in results:
        assert r.failures == [] and r.proposal is not None, (r.error, r.last_reply)
        assert_schema_valid(r.last_reply)
        assert r.completion_tokens > 0


class Recording(Engine):
    """The real engine, with every request it is sent kept (a spy, not a fake)."""

    def __init__(self, inner: Engine):
        self.inner, self.calls = inner, []

    def _sample(self, requests, params):
        self.calls.append(list(requests))
        return self.inner._sample(requests, params)

    def score(self, requests, completions):
        return self.inner.score(requests, completions)


def test_transformers_unconstrained_output_drives_the_retry_loop(rewriter_model):
    # One thread: two OpenMP threads on two cores shared with another busy process stall
    # on each other (this test took 435 s so; a similar run on the idle machine, 39 s).
    torch.set_num_threads(1)
    inner = build_engine(EngineConfig(engine="transformers", model=str(rewriter_model),
                                      device="cpu", batch_size=4))
    engine = Recording(inner)
    jobs = chart_jobs(4, seed=4)
    try:
        # 128 tokens: the prose SmolLM2 writes unconstrained fails well within them (a JSON
        # object cut by the cap fails too, as "does not parse"); it keeps the test short.
        results = rewrite(engine, jobs, max_attempts=2, max_tokens=128, structured=False,
                          seed=2)
    finally:
        inner.close()
    failures = [reason for r in results for reason in r.failures]
    assert failures, "the unconstrained model wrote valid JSON for every job on every try"
    assert set(failures) <= {REJECT_INVALID_JSON, REJECT_SCHEMA_INVALID}
    for r in results:  # each job's count adds up: failed attempts + the valid one
        assert r.attempts == len(r.failures) + (r.proposal is not None)
        assert r.rejected == (r.failures[-1] if r.proposal is None else None)

    # Round 2 resent exactly the jobs whose first reply failed, each with its own first
    # reply and the validation error of it.
    first_failed = [r.key for r in results if r.failures and r.attempts == 2]
    assert len(engine.calls) == 2 and [q.id for q in engine.calls[1]] == first_failed
    by_key = {r.key: r for r in results}
    for q in engine.calls[1]:
        prompt, reply, feedback = q.messages
        job = next(j for j in jobs if j.key == q.id)
        assert prompt["content"][-1]["text"] == job.prompt and reply["role"] == "assistant"
        assert reply["content"][-1]["text"].strip()  # the model's own first reply, resent
        text = feedback["content"][-1]["text"]
        assert "could not be used" in text
        # the error fed back is the one the first reply got (its counted reason)
        if by_key[q.id].failures[0] == REJECT_SCHEMA_INVALID:
            assert "does not match the schema" in text
        else:
            assert "no JSON object" in text or "does not parse" in text


def test_openai_engine_against_vllm_serve_with_response_format(rewriter_model, tmp_path):
    server = VLLMServer(rewriter_model, tmp_path / "serve.log", max_model_len=2048,
                        images=False)
    try:
        engine = build_engine(EngineConfig(engine="openai", model=str(rewriter_model),
                                           base_url=server.base_url, timeout_s=300,
                                           concurrency=4))
        results = rewrite(engine, chart_jobs(6, seed=5), max_attempts=1,
                          max_tokens=MAX_TOKENS, structured=True, seed=3)
        assert engine.format_mode == "json_schema"  # the server took the schema as sent
        engine.close()
    finally:
        server.stop()
    for r in results:
        assert r.failures == [] and r.proposal is not None, (r.error, r.last_reply)
        assert_schema_valid(r.last_reply)
