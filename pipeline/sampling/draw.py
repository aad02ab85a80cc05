"""Batched drawing of answers: one engine call per model per round, under the adaptive policy.

    drawn = draw_answers(engine, requests, counts, sampling, choices, model="student", round_=0)
    got = sample_adaptive(teacher, student, requests, choices, sampling, policy, held=held)
    got.prompts[i].teacher   # extracted answers; .teacher_texts, .stop_reason, .error ...

Sampling is batched: one engine call per model per round and per distinct sample count
(engines take one ``n`` per call), handed to the engine together (``Engine.sample_many``:
vLLM runs a round's counts in one ``generate``, one decoding sweep); rounds go on until
every prompt has stopped (either rule of pipeline/sampling/policy.py) or holds ``n``.

Every sample has its own seed, from the run seed, the rendered request and the sample's
index (``Request.seeds``, pipeline/sampling/store.py's ``sample_seed``): sample j of a prompt
is the same whichever round, batch or run drew it. That is what lets the sample store serve
what it holds and draw only the rest (samples 5..8 when 1..4 are stored), with rows
identical to an uncached run. (Each call also carries a seed derived from the run seed, the
round, the count and the model, for backends that ignore per-sample seeds.)

A request the engine rejects (corrupt image, prompt over the context) fails alone: its
prompt carries the error and is not sampled again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.core.answers import extract_answer
from pipeline.core.config import SamplingConfig
from pipeline.core.divergence import Answer
from pipeline.engines.base import Engine, Request, SampleParams
from pipeline.sampling.policy import AdaptivePolicy, first_round_draws, further_draws, stop_reason
from pipeline.sampling.store import ModelSamples, request_key, sample_seed

MODELS = ("teacher", "student")


def call_seed(seed: int, round_: int, count: int, model: str) -> int:
    """The seed of one batched engine call (see the module doc)."""
    salt = 0 if model == "teacher" else 1
    return int(
        np.random.SeedSequence([seed, round_, count, salt]).generate_state(1)[0] & 0x7FFFFFFF
    )


@dataclass
class Drawn:
    """What :func:`draw_answers` drew, one entry per request."""

    answers: list[list[Answer]]
    texts: list[list[str]]
    truncated: list[int]
    errors: list[str | None]
    served: int = 0  # samples served from the store
    drawn: int = 0  # samples the engine drew


def draw_answers(
    engine: Engine | None,
    requests: Sequence[Request],
    counts: Sequence[int],
    sampling: SamplingConfig,
    choices: Sequence[Sequence[str] | None],
    *,
    model: str,
    round_: int,
    starts: Sequence[int] | None = None,
    store: ModelSamples | None = None,
    keys: Sequence[str] | None = None,
) -> Drawn:
    """Samples ``starts[i] .. starts[i] + counts[i] - 1`` of request i (starts: 0).

    Sample j of a request is drawn with its own seed (:func:`~pipeline.sampling.store.
    sample_seed`), so it is the same whatever else is drawn with it. With a ``store``, the
    samples it holds are served and only the missing ones drawn (then stored): one engine
    call per distinct count of missing samples, all handed over together. ``keys`` are the
    requests' :func:`~pipeline.sampling.store.request_key` when the caller has them.

    Returns, per request, the raw texts, the extracted answers (in index order), the
    number of truncated outputs and an error (or None). A request with count 0 is not sent.
    """
    n = len(requests)
    starts = [0] * n if starts is None else list(starts)
    answers: list[list[Answer]] = [[] for _ in requests]
    texts: list[list[str]] = [[] for _ in requests]
    truncated = [0] * n
    errors: list[str | None] = [None] * n
    wanted = [range(starts[i], starts[i] + counts[i]) for i in range(n)]
    keys = [request_key(r) if counts[i] > 0 else "" for i, r in enumerate(requests)] \
        if keys is None else list(keys)
    seeds = [[sample_seed(sampling.seed, keys[i], j) for j in wanted[i]] for i in range(n)]
    got: list[dict[int, tuple[str, str | None]]] = [{} for _ in requests]  # index -> text, finish
    if store is not None:
        hits = store.get([(keys[i], j) for i in range(n) for j in wanted[i]], sampling)
        for i in range(n):
            for j in wanted[i]:
                hit = hits.get((keys[i], j))
                if hit is not None:
                    got[i][j] = (hit.text, hit.finish_reason)
    served = sum(len(g) for g in got)
    missing = [[j for j in wanted[i] if j not in got[i]] for i in range(n)]
    by_count: dict[int, list[int]] = {}
    for i, m in enumerate(missing):
        if m:
            by_count.setdefault(len(m), []).append(i)
    groups = sorted(by_count.items())
    seed_of = [dict(zip(wanted[i], seeds[i])) for i in range(n)]
    calls = [([replace(requests[i], seeds=tuple(seed_of[i][j] for j in missing[i])) for i in idx],
              SampleParams(n=count, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_tokens,
                           seed=call_seed(sampling.seed, round_, count, model)))
             for count, idx in groups]
    if calls and engine is None:
        raise ValueError(f"the {model} engine is needed: {sum(map(len, missing))} samples "
                         "are neither held nor stored")
    results = engine.sample_many(calls) if calls else []
    if len(results) != len(calls):
        raise RuntimeError(f"{model} engine returned {len(results)} result lists for {len(calls)} calls")
    new: list[tuple[str, int, int, str, list[int], str | None]] = []
    for (_, idx), res_list in zip(groups, results):
        if len(res_list) != len(idx):
            raise RuntimeError(
                f"{model} engine returned {len(res_list)} results for {len(idx)} requests"
            )
        for i, res in zip(idx, res_list):
            if res.error is not None:
                errors[i] = f"{model}: {res.error}"
                continue
            for j, comp in zip(missing[i], res.completions):
                got[i][j] = (comp.text, comp.finish_reason)
                new.append((keys[i], j, seed_of[i][j], comp.text, comp.token_ids,
                            comp.finish_reason))
    if store is not None and new:
        store.put(new, sampling)
    for i in range(n):
        if errors[i] is not None:
            continue
        for j in wanted[i]:
            if j not in got[i]:
                continue
            text, finish = got[i][j]
            cut = finish == "length"
            truncated[i] += int(cut)
            texts[i].append(text)
            answers[i].append(extract_answer(text, choices[i], truncated=cut))
    return Drawn(answers, texts, truncated, errors, served=served, drawn=len(new))


@dataclass
class PromptSamples:
    """Both models' samples of one prompt, and how sampling ended for it."""

    teacher: list[Answer] = field(default_factory=list)  # extracted answers
    student: list[Answer] = field(default_factory=list)
    teacher_texts: list[str] = field(default_factory=list)  # raw outputs
    student_texts: list[str] = field(default_factory=list)
    teacher_truncated: int = 0  # outputs cut by max_tokens
    student_truncated: int = 0
    error: str | None = None  # the request failed: not sampled again, not scored
    stop_reason: str | None = None  # "unanimous" | "decided": stopped short of n

    def answers(self, model: str) -> list[Answer]:
        return self.teacher if model == "teacher" else self.student

    def extend(self, model: str, answers: list[Answer], texts: list[str], truncated: int) -> None:
        self.answers(model).extend(answers)
        (self.teacher_texts if model == "teacher" else self.student_texts).extend(texts)
        if model == "teacher":
            self.teacher_truncated += truncated
        else:
            self.student_truncated += truncated

    @property
    def scored(self) -> bool:
        """Whether Δ can be computed: no error, at least one answer a side."""
        return self.error is None and bool(self.teacher) and bool(self.student)


@dataclass
class AdaptiveDraw:
    """:func:`sample_adaptive`'s result: one :class:`PromptSamples` per request."""

    prompts: list[PromptSamples]
    drawn: dict[str, int]  # samples the engines drew in this call, per model
    served: dict[str, int] = field(default_factory=lambda: {"teacher": 0, "student": 0})


def sample_adaptive(
    teacher: Engine | None,
    student: Engine | None,
    requests: Sequence[Request],
    choices: Sequence[Sequence[str] | None],
    sampling: SamplingConfig,
    policy: AdaptivePolicy,
    held: Sequence[PromptSamples] | None = None,
    stores: dict[str, ModelSamples] | None = None,
) -> AdaptiveDraw:
    """Both models' answers per request under the adaptive policy, in batched rounds.

    Round 1 draws :func:`~pipeline.sampling.policy.first_round_draws` for every request;
    each later round draws :func:`~pipeline.sampling.policy.further_draws` for the
    requests still open (not stopped by either rule, not failed, short of ``n``), until
    none is. Each round is one :func:`draw_answers` per model.

    ``held`` gives what each prompt already holds (the student's answers from ``mine``, a
    failure): kept, and topped up only if short of what the policy needs; ``student`` may
    then be None. ``stop_reason`` of each result names the rule that stopped it short of
    ``n``, or is None. ``stores`` (per model) serve what they hold: a held prompt with
    samples 0..3 asks for 4.. (the store's or freshly drawn), never redraws 0..3.
    """
    n = len(requests)
    prompts = [PromptSamples() for _ in range(n)] if held is None else [
        PromptSamples(list(h.teacher), list(h.student), list(h.teacher_texts),
                      list(h.student_texts), h.teacher_truncated, h.student_truncated, h.error)
        for h in held
    ]
    if len(prompts) != n:
        raise ValueError(f"held has {len(prompts)} entries for {n} requests")
    engines = {"teacher": teacher, "student": student}
    stores = stores or {}
    drawn = {"teacher": 0, "student": 0}
    served = {"teacher": 0, "student": 0}
    keys = [request_key(r) for r in requests]
    plan = [first_round_draws(len(p.teacher), len(p.student), policy) for p in prompts]
    round_ = 1
    while True:
        for col, model in enumerate(MODELS):
            counts = [0 if p.error else plan[i][col] for i, p in enumerate(prompts)]
            if not any(counts):
                continue
            got = draw_answers(engines[model], requests, counts, sampling, choices, model=model,
                               round_=round_, starts=[len(p.answers(model)) for p in prompts],
                               store=stores.get(model), keys=keys)
            for i, p in enumerate(prompts):
                p.error = p.error or got.errors[i]
                p.extend(model, got.answers[i], got.texts[i], got.truncated[i])
            drawn[model] += got.drawn
            served[model] += got.served
        # Only a request that was just sampled can change its verdict; the others have
        # stopped, failed or been full since an earlier round.
        open_ = [i for i, p in enumerate(prompts) if (round_ == 1 or any(plan[i])) and not p.error]
        plan = [(0, 0)] * n
        for i in open_:
            p = prompts[i]
            p.stop_reason = stop_reason(p.teacher, p.student, policy, choices[i])
            if p.stop_reason is None:
                plan[i] = further_draws(p.teacher, p.student, policy, choices[i])
        if not any(any(x) for x in plan):
            break
        round_ += 1
    return AdaptiveDraw(prompts, drawn, served)
