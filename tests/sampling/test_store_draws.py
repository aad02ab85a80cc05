"""Draws through the sample store on a real engine (transformers, the committed chart-world
student): a cached, a partly cached and an uncached run give identical rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import DeltaConfig, EngineConfig, SamplingConfig
from pipeline.engines import build_engine
from pipeline.sampling.draw import PromptSamples, draw_answers, sample_adaptive
from pipeline.sampling.fingerprint import model_identity
from pipeline.sampling.policy import AdaptivePolicy
from pipeline.sampling.store import SampleStore
from tests.engine_fixtures import make_requests
from tests.fakes import record_calls

pytestmark = pytest.mark.slow

MODEL = Path(__file__).resolve().parents[2] / "models" / "chartworld" / "student"
SAMPLING = SamplingConfig(n=8, max_tokens=12, temperature=1.0, instruction="")


@pytest.fixture(scope="module")
def engine():
    cfg = EngineConfig(engine="transformers", model=str(MODEL), device="cpu", batch_size=8)
    with build_engine(cfg) as e:
        e.identity = model_identity(cfg)
        yield e


@pytest.fixture(scope="module")
def teacher():
    cfg = EngineConfig(engine="transformers", model=str(MODEL.parent / "teacher"), device="cpu",
                       batch_size=8)
    with build_engine(cfg) as e:
        e.identity = model_identity(cfg)
        yield e


def _draw(engine, requests, counts, store=None, starts=None):
    return draw_answers(engine, requests, counts, SAMPLING, [None] * len(requests),
                        model="student", round_=0, starts=starts, store=store)


def test_hit_miss_and_extension_give_the_rows_of_an_uncached_run(engine, tmp_path):
    requests = make_requests(3)
    plain = _draw(engine, requests, [8, 8, 8])  # no store at all
    assert len({t for texts in plain.texts for t in texts}) > 3  # real sampling, not one reply

    store = SampleStore(tmp_path).model(engine.identity)
    # extension: 0..3 first (a miss), then 4..7 on top (a miss again, drawn with their seeds)
    first = _draw(engine, requests, [4, 4, 4], store)
    assert (first.served, first.drawn) == (0, 12)
    ext = _draw(engine, requests, [8, 8, 8], store)
    assert (ext.served, ext.drawn) == (12, 12)
    assert ext.texts == plain.texts and ext.answers == plain.answers

    # a hit: a fresh process's view of the store serves everything, the engine is not asked
    calls = record_calls(engine)
    warm = _draw(engine, requests, [8, 8, 8], SampleStore(tmp_path).model(engine.identity))
    assert (warm.served, warm.drawn) == (24, 0) and calls == []
    assert warm.texts == plain.texts and warm.truncated == plain.truncated

    # without an engine at all, a full hit still works (what lets stage 4 skip a teacher load)
    none = _draw(None, requests, [8, 8, 8], SampleStore(tmp_path).model(engine.identity))
    assert none.texts == plain.texts


@pytest.mark.parametrize("adaptive,stored", [(True, 2), (False, 4)])
def test_draws_extend_what_is_cached(engine, teacher, tmp_path, adaptive, stored):
    requests = make_requests(3)
    delta = DeltaConfig(k=2, step=2, unanimous_k=8, bootstrap=0, adaptive=adaptive)
    policy = AdaptivePolicy.of(SAMPLING, delta, "relaxed")
    choices = [None] * 3
    # the student's 0..3 are held (mine's samples), as stage 4 gets them
    mined = _draw(engine, requests, [4, 4, 4])
    held = [PromptSamples(student=a, student_texts=t) for a, t in zip(mined.answers, mined.texts)]
    plain = sample_adaptive(teacher, engine, requests, choices, SAMPLING, policy, held=held)

    store = SampleStore(tmp_path)
    stores = {"teacher": store.model(teacher.identity), "student": store.model(engine.identity)}
    # the teacher's first samples are in the store (an earlier run drew them in one call)
    _draw(teacher, requests, [stored] * 3, stores["teacher"])
    teacher_calls = record_calls(teacher)
    got = sample_adaptive(teacher, engine, requests, choices, SAMPLING, policy, held=held,
                          stores=stores)
    for p, q in zip(got.prompts, plain.prompts):
        assert p.student_texts == q.student_texts and p.teacher_texts == q.teacher_texts
        assert p.stop_reason == q.stop_reason
    n_teacher = sum(len(p.teacher) for p in got.prompts)
    n_student = sum(len(p.student) for p in got.prompts)
    assert n_teacher > 3 * stored  # past what was stored: e.g. 5..8 drawn, 1..4 served
    assert got.served["teacher"] == 3 * stored and got.served["student"] == 0
    assert got.drawn == {"teacher": n_teacher - 3 * stored, "student": n_student - 12}
    # the teacher is asked only for what the store lacked, each sample with its own seed
    assert sum(len(r.seeds) for c in teacher_calls for r in c.requests) == got.drawn["teacher"]
