"""LLM rewriting (pipeline/sampling/question_writer.py): templates, reply parsing, bounded retry with the
error fed back, rejection counts — through the shared scripted fake engine and a real engine
(tiny random Qwen3-VL through the transformers engine, which writes no valid JSON)."""

from __future__ import annotations

import json
import shutil

import jinja2
import pytest
import torch

from pipeline.core.config import EngineConfig
from pipeline.engines import build_engine
from pipeline.sampling.question_writer import (
    REJECT_ENGINE_ERROR,
    REJECT_INVALID_JSON,
    REJECT_SCHEMA_INVALID,
    TEMPLATE_DIR,
    TEMPLATE_KINDS,
    ResponseError,
    RewriteJob,
    list_templates,
    parse_response,
    render_template,
    rewrite,
)
from seeds.text_view import TextView
from tests.engine_fixtures import image_bytes, make_image
from tests.fakes import ScriptedEngine, record_calls

SEED_CTX = {
    "question": "What is the sum of A and C?",
    "gold_answers": ["12"],
    "wrong_answers": ["9", "15"],
    "skill": "arithmetic",
    "student_accuracy": 0.125,
    "image_view": None,  # a VLM rewriter: it sees the image
}
SKILL_CTX = {
    "skill": "arithmetic",
    "examples": ["What is the sum of B and D?", "What is C minus A?"],
    "existing_question": "Which label has the highest value?",
    "image_view": None,
}
VALID = {
    "question": "What is the sum of all the values?",
    "expected_answer": "17",
    "answer_type": "number",
    "skill": "arithmetic",
    "rationale": "needs every value read right",
}


def user_texts(request) -> list[str]:
    return [
        p["text"]
        for m in request.messages
        if m["role"] == "user"
        for p in m["content"]
        if p["type"] == "text"
    ]


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_every_template_renders_with_its_context_and_the_json_instruction(kind):
    names = list_templates(kind)
    assert names, f"no {kind} templates"
    ctx = SEED_CTX if kind == "seed_guided" else SKILL_CTX
    texts = {}
    for name in names:
        text = render_template(kind, name, ctx)
        assert '"expected_answer"' in text and "JSON object" in text  # the shared instruction
        assert ctx["skill"] in text
        if kind == "seed_guided":
            assert SEED_CTX["question"] in text and "12" in text and "9, 15" in text
        else:
            assert SKILL_CTX["examples"][0] in text
        texts[name] = text
    assert len(set(texts.values())) == len(texts), "two templates render the same prompt"


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_a_text_only_rewriter_is_told_what_it_sees(kind):
    view = TextView("the chart's data table", "label | value\nA | 3\nB | 9")
    ctx = {**(SEED_CTX if kind == "seed_guided" else SKILL_CTX), "image_view": view}
    for name in list_templates(kind):
        text = render_template(kind, name, ctx)
        assert "cannot see the image" in text and view.kind in text and "B | 9" in text
        seen = render_template(kind, name, {**ctx, "image_view": None})
        assert "cannot see" not in seen and "B | 9" not in seen


def test_seed_guided_templates_cover_the_failure_modes():
    assert {
        "other_element",
        "extra_hop",
        "combine_arithmetic",
        "change_answer_type",
        "compare_or_trend",
    } <= set(list_templates("seed_guided"))


def test_a_missing_variable_fails_loudly():
    ctx = dict(SEED_CTX)
    del ctx["question"]
    with pytest.raises(jinja2.UndefinedError):
        render_template("seed_guided", "extra_hop", ctx)


def test_adding_a_template_file_needs_no_code(tmp_path):
    root = tmp_path / "rewrite"
    shutil.copytree(TEMPLATE_DIR, root)
    (root / "seed_guided" / "swap_axes.j2").write_text(
        '{% include "_seed_context.j2" %}\nAsk it the other way round.\n'
        '{% include "_json_output.j2" %}'
    )
    assert "swap_axes" in list_templates("seed_guided", root)
    text = render_template("seed_guided", "swap_axes", SEED_CTX, root=root)
    assert "other way round" in text and SEED_CTX["question"] in text
    with pytest.raises(ValueError, match="no template"):
        render_template("seed_guided", "nope", SEED_CTX, root=root)


# ------------------------------------------------------------------------------- parsing


def test_parse_accepts_valid_json_with_noise_around_it():
    reply = (
        "<think>the answer is {maybe}</think>Here:\n```json\n"
        + json.dumps({**VALID, "expected_answer": 17.0, "skill": "  Arithmetic   Reasoning "})
        + "\n```"
    )
    got = parse_response(reply)
    assert got["expected_answer"] == "17" and got["skill"] == "arithmetic reasoning"
    assert parse_response(json.dumps({**VALID, "expected_answer": None}))["expected_answer"] is None


@pytest.mark.parametrize(
    "reply,reason,needle",
    [
        ("I would ask about the bars.", REJECT_INVALID_JSON, "no JSON object"),
        ('{"question": "What is A?", "expected_answer": ', REJECT_INVALID_JSON, "does not parse"),
        (
            json.dumps({k: v for k, v in VALID.items() if k != "skill"}),
            REJECT_SCHEMA_INVALID,
            "'skill' is a required",
        ),
        (json.dumps({**VALID, "answer_type": "float"}), REJECT_SCHEMA_INVALID, "answer_type"),
        (json.dumps({**VALID, "confidence": 0.9}), REJECT_SCHEMA_INVALID, "confidence"),
        (json.dumps({**VALID, "question": "?"}), REJECT_SCHEMA_INVALID, "question"),
        ("[1, 2]", REJECT_INVALID_JSON, "no JSON object"),
        (json.dumps({**VALID, "expected_answer": True}), REJECT_SCHEMA_INVALID, "expected_answer"),
    ],
)
def test_parse_rejects_with_a_stable_reason_and_a_precise_message(reply, reason, needle):
    with pytest.raises(ResponseError) as e:
        parse_response(reply)
    assert e.value.reason == reason
    assert needle in str(e.value)


# ------------------------------------------------------------------------------ rewriting


def test_non_json_is_retried_then_rejected_and_counted():
    engine = ScriptedEngine.from_script({"a": ["no json here"], "b": ["still prose"]}, repeat_last=True)
    jobs = [RewriteJob("a", "prompt a"), RewriteJob("b", "prompt b")]
    res = rewrite(engine, jobs, max_attempts=3)
    assert [r.rejected for r in res] == [REJECT_INVALID_JSON] * 2
    assert [r.attempts for r in res] == [3, 3] and all(r.proposal is None for r in res)
    assert len(engine.calls) == 3 and all(len(c.requests) == 2 for c in engine.calls)  # batched rounds


def test_schema_invalid_reply_gets_the_error_fed_back_and_can_recover():
    bad = json.dumps({**VALID, "answer_type": "float"})
    engine = ScriptedEngine.from_script({"fix": [bad, json.dumps(VALID)], "ok": [json.dumps(VALID)], "never": [bad]}, repeat_last=True)
    jobs = [RewriteJob("fix", "p1"), RewriteJob("ok", "p2"), RewriteJob("never", "p3")]
    res = {r.key: r for r in rewrite(engine, jobs, max_attempts=2)}
    assert res["ok"].proposal == VALID and res["ok"].attempts == 1
    assert res["fix"].proposal == VALID and res["fix"].attempts == 2
    assert res["never"].proposal is None and res["never"].rejected == REJECT_SCHEMA_INVALID
    assert res["never"].attempts == 2
    # Round 2 resent only the invalid ones, each with its last reply and the error.
    second = {r.id: r for r in engine.calls[1].requests}
    assert set(second) == {"fix", "never"}
    roles = [m["role"] for m in second["fix"].messages]
    assert roles == ["user", "assistant", "user"]
    assert second["fix"].messages[1]["content"][0]["text"] == bad
    assert (
        "answer_type" in user_texts(second["fix"])[-1]
        and "'float'" in user_texts(second["fix"])[-1]
    )


def test_engine_errors_are_rejected_without_retry():
    engine = ScriptedEngine.from_script({"long": [None], "fine": [json.dumps(VALID)]}, repeat_last=True)
    res = rewrite(engine, [RewriteJob("long", "p"), RewriteJob("fine", "q")], max_attempts=3)
    assert (
        res[0].rejected == REJECT_ENGINE_ERROR
        and res[0].attempts == 1
        and "scripted failure" in res[0].error
    )
    assert res[1].proposal == VALID
    assert len(engine.calls) == 1


def test_the_image_is_sent_when_given():
    engine = ScriptedEngine.from_script({"i": [json.dumps(VALID)], "t": [json.dumps(VALID)]}, repeat_last=True)
    png = image_bytes(make_image(0, (64, 64)))
    rewrite(engine, [RewriteJob("i", "p", png), RewriteJob("t", "p", None)])
    by = {r.id: r for r in engine.calls[0].requests}
    assert by["i"].images == [png] and by["i"].messages[0]["content"][0] == {"type": "image"}
    assert by["t"].images == [] and all(p["type"] == "text" for p in by["t"].messages[0]["content"])


@pytest.mark.slow
def test_a_real_tiny_model_goes_through_parse_retry_and_reject(tiny_models):
    """Random weights write no JSON: every job must end rejected after max_attempts, with
    the parse error fed back in round 2; a reply that did parse would have to be valid."""
    torch.set_num_threads(1)
    teacher, _ = tiny_models
    engine = build_engine(EngineConfig(engine="transformers", model=str(teacher), device="cpu"))
    calls = record_calls(engine)
    png = image_bytes(make_image(1, (64, 64)))
    jobs = [
        RewriteJob(f"j{i}", render_template("seed_guided", name, SEED_CTX), png)
        for i, name in enumerate(list_templates("seed_guided")[:2])
    ]
    try:
        res = rewrite(engine, jobs, max_attempts=2, max_tokens=24, seed=3)
    finally:
        engine.close()
    for r in res:
        if r.proposal is None:
            assert r.rejected in (REJECT_INVALID_JSON, REJECT_SCHEMA_INVALID) and r.attempts == 2
            assert r.last_reply is not None  # the model did answer; the reply was unusable
        else:  # vanishingly unlikely from random weights, but then it must be valid
            assert parse_response(r.last_reply) == r.proposal
    retried = list(calls[1].requests) if len(calls) > 1 else []
    assert {q.id for q in retried} == {r.key for r in res if r.attempts == 2}
    for q in retried:
        assert [m["role"] for m in q.messages] == ["user", "assistant", "user"]
        assert "could not be used" in user_texts(q)[-1]
