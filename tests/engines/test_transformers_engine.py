"""transformers engine: prefill-once sampling, scoring, faults (tiny Qwen3-VL on the CPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pipeline.engines import EngineConfig, Request, build_engine
from pipeline.engines.transformers_engine import sample_tokens
from pipeline.sampling.prompts import user_message
from tests.engine_fixtures import image_bytes, make_image, make_requests

pytestmark = pytest.mark.slow

SCORE_TOL = 1e-4  # float32 on both sides; observed differences are ~1e-6


@pytest.fixture(scope="module")
def engine(tiny_models):
    torch.set_num_threads(1)
    eng = build_engine(EngineConfig(engine="transformers", model=str(tiny_models[0]), batch_size=2))
    yield eng
    eng.close()


def _ids(results):
    return [[c.token_ids for c in r.completions] for r in results]


def test_n_completions_per_request(engine):
    requests = make_requests(3)
    results = engine.sample(requests, n=4, temperature=1.0, max_tokens=6, seed=0)
    assert len(results) == 3
    for r in results:
        assert r.error is None and len(r.completions) == 4
        for c in r.completions:
            assert 1 <= len(c.token_ids) <= 6
            assert c.finish_reason in ("stop", "length")
            assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    # samples of one prompt are not all copies of each other
    assert len({tuple(c.token_ids) for c in results[0].completions}) > 1


def test_fixed_seed_repeats_and_other_seed_differs(engine):
    requests = make_requests(3, as_bytes=True)
    kw = {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 8}
    first = engine.sample(requests, seed=123, **kw)
    again = engine.sample(requests, seed=123, **kw)
    other = engine.sample(requests, seed=124, **kw)
    assert _ids(first) == _ids(again)
    assert _ids(first) != _ids(other)


def test_greedy_matches_model_generate(engine):
    """The prefill-once path (batched, left-padded, cache repeated n times, our own
    M-RoPE positions) must decode exactly what transformers' own generate decodes."""
    requests = make_requests(3)  # three image sizes -> three prompt lengths -> padding
    ours = engine.sample(requests, n=2, temperature=0, max_tokens=12)
    for i, request in enumerate(requests):
        item = engine.prepare(request, i)
        out = engine.model.generate(**item.inputs, max_new_tokens=12, do_sample=False)
        reference = out[0, item.length :].tolist()
        for c in ours[i].completions:
            assert c.token_ids == reference


def test_sampled_logprobs_match_teacher_forced_score(engine):
    """Logprobs seen while decoding from the expanded cache equal a fresh teacher-forced
    forward over prompt + completion: the cache expansion and positions are right."""
    requests = make_requests(3)
    results = engine.sample(requests, n=3, temperature=1.0, max_tokens=10, seed=7, logprobs=True)
    flat_requests = [r for r, res in zip(requests, results) for _ in res.completions]
    flat = [c for res in results for c in res.completions]
    scores = engine.score(flat_requests, [c.token_ids for c in flat])
    for c, s in zip(flat, scores):
        assert len(s) == len(c.logprobs) == len(c.token_ids)
        assert max(abs(a - b) for a, b in zip(s, c.logprobs)) < SCORE_TOL
        assert all(v <= 0 for v in s)


def test_score_empty_and_mismatched(engine):
    requests = make_requests(2)
    assert engine.score(requests, [[], [10, 11]])[0] == []
    with pytest.raises(ValueError, match="2 requests but 1"):
        engine.score(requests, [[1]])
    with pytest.raises(ValueError, match="q0.*outside the vocabulary"):
        engine.score(requests[:1], [[10**6]])


def test_stop_string_cuts_text(engine):
    requests = make_requests(1)
    free = engine.sample(requests, n=1, temperature=0, max_tokens=12)[0].completions[0]
    assert len(free.text) > 4
    stop = free.text[2:4]  # greedy is deterministic: this string will come up
    cut = engine.sample(requests, n=1, temperature=0, max_tokens=12, stop=[stop])[0].completions[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_ignore_eos_decodes_exactly_max_tokens(engine):
    results = engine.sample(
        make_requests(2), n=2, temperature=1.0, max_tokens=9, seed=1, ignore_eos=True
    )
    assert all(
        len(c.token_ids) == 9 and c.finish_reason == "length"
        for r in results
        for c in r.completions
    )


def test_bad_requests_fail_alone(engine):
    good = make_requests(2)
    corrupt = Request(messages=user_message("What?"), images=[b"\x89PNG not really"], id="bad-img")
    truncated = Request(
        messages=user_message("What?"),
        images=[image_bytes(make_image(3), "JPEG")[:200]],
        id="cut-jpeg",
    )
    missing = Request(
        messages=user_message("What?", n_images=2), images=[make_image(1)], id="one-short"
    )
    results = engine.sample(
        [good[0], corrupt, truncated, missing, good[1]], n=2, max_tokens=4, seed=0
    )
    assert results[0].error is None and len(results[0].completions) == 2
    assert results[4].error is None and len(results[4].completions) == 2
    assert "'bad-img'" in results[1].error and "not decodable" in results[1].error
    assert "'cut-jpeg'" in results[2].error and "not decodable" in results[2].error
    assert "'one-short'" in results[3].error and "2 image part(s)" in results[3].error
    assert all(r.completions == [] for r in results[1:4])


def test_context_limit_fails_alone_and_caps_generation(tiny_models):
    eng = build_engine(
        EngineConfig(engine="transformers", model=str(tiny_models[1]), max_model_len=100)
    )
    short = make_requests(1, size=(64, 64))[0]
    long = Request(
        messages=user_message("What is the value? " * 40), images=[make_image(0)], id="too-long"
    )
    results = eng.sample([long, short], n=2, max_tokens=500, seed=0, ignore_eos=True)
    assert "'too-long'" in results[0].error and "max_model_len" in results[0].error
    room = 100 - results[1].prompt_tokens
    assert all(
        len(c.token_ids) == room and c.finish_reason == "length" for c in results[1].completions
    )
    with pytest.raises(ValueError, match="'too-long'"):
        eng.score([long], [[10]])


def test_max_pixels_caps_image_tokens(tiny_models):
    eng = build_engine(
        EngineConfig(engine="transformers", model=str(tiny_models[1]), max_pixels=64 * 64)
    )
    request = make_requests(1)[0]  # 224x224 -> 49 image tokens by default
    capped = eng.prepare(request, 0)
    n_image = int((capped.inputs["input_ids"] == eng.model.config.image_token_id).sum())
    assert n_image == 4  # 64x64 / (32x32 per merged token)


def test_sample_tokens_top_p_and_greedy():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0]] * 200)
    assert sample_tokens(logits, 0.0, 1.0, g).tolist() == [1] * 200
    # top_p small enough keeps only the most likely token, at any temperature
    assert set(sample_tokens(logits, 5.0, 0.05, g).tolist()) == {1}
    # top_p covering the two best tokens never yields the other two
    drawn = set(sample_tokens(logits, 1.0, 0.9, g).tolist())
    probs = logits[0].softmax(-1).sort(descending=True).values  # .83 .11 .04 .02
    assert probs[:2].sum() > 0.9 > probs[0]
    assert drawn == {1, 2}


def test_text_only_and_image_requests_share_a_batch(engine):
    text_only = Request(
        messages=[{"role": "user", "content": "What is 2+2?"}], images=[], id="text"
    )
    image = make_requests(1, size=(64, 64))[0]
    results = engine.sample([text_only, image], n=2, temperature=0, max_tokens=8)  # one batch
    for i, request in enumerate([text_only, image]):
        item = engine.prepare(request, i)
        out = engine.model.generate(**item.inputs, max_new_tokens=8, do_sample=False)
        assert results[i].completions[0].token_ids == out[0, item.length :].tolist()


def test_vllm_config_falls_back_to_transformers_without_vllm(tiny_models, monkeypatch):
    import pipeline.engines as engines
    from pipeline.engines.transformers_engine import TransformersEngine

    monkeypatch.setattr(engines, "vllm_available", lambda: False)
    teacher, _ = tiny_models
    with engines.build_engine(engines.EngineConfig(engine="vllm", model=str(teacher))) as eng:
        assert isinstance(eng, TransformersEngine)


def test_per_completion_seeds_do_not_depend_on_the_batch(engine):
    """Request.seeds: completion j is fixed by seeds[j], whatever else shares the batch (the
    sample store serves samples 0..3 and has 4..7 drawn later, alone or with others)."""
    reqs = make_requests(3, as_bytes=True)
    kw = {"temperature": 1.0, "max_tokens": 6}
    whole = engine.sample([replace(r, seeds=(1, 2, 3, 4)) for r in reqs], n=4, seed=0, **kw)
    tail = engine.sample([replace(reqs[1], seeds=(3, 4))], n=2, seed=99, **kw)
    assert _ids(tail)[0] == _ids(whole)[1][2:]
    assert len({tuple(c) for c in _ids(whole)[0]}) > 1  # four seeds, not one sample
    with pytest.raises(ValueError, match="seeds for n=4"):
        engine.sample([replace(reqs[0], seeds=(1, 2))], n=4, **kw)
