"""Batched drawing of answers: one engine call per model per round, under the adaptive policy.

    drawn = draw_answers(engine, requests, counts, sampling, choices, model="student", round_=0)
    got = sample_adaptive(teacher, student, requests, choices, sampling, policy, held=held)
    got.prompts[i].teacher   # extracted answers; .teacher_texts, .stop_reason, .error ...

Sampling is batched: one engine call per model per round and per distinct sample count
(engines take one ``n`` per call), handed to the engine together (``Engine.sample_many``:
vLLM runs a round's counts in one ``generate``, one decoding sweep); rounds go on until
every prompt has stopped (either rule of pipeline/sampling/policy.py) or holds ``n``. Each call gets its own seed derived
from the run seed, the round, the count and the model, so a later round never replays an
earlier round's draws (engines derive per-request seeds from the call's seed and the
request's position).

A request the engine rejects (corrupt image, prompt over the context) fails alone: its
prompt carries the error and is not sampled again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.answers import extract_answer
from pipeline.core.config import SamplingConfig
from pipeline.core.divergence import Answer
from pipeline.engines.base import Engine, Request, SampleParams
from pipeline.sampling.policy import AdaptivePolicy, first_round_draws, further_draws, stop_reason

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


def draw_answers(
    engine: Engine,
    requests: Sequence[Request],
    counts: Sequence[int],
    sampling: SamplingConfig,
    choices: Sequence[Sequence[str] | None],
    *,
    model: str,
    round_: int,
) -> Drawn:
    """Draw ``counts[i]`` samples for request i; one engine call per distinct count.

    Returns, per request, the raw texts, the extracted answers, the number of truncated
    outputs and an error (or None). A request with count 0 is not sent.
    """
    answers: list[list[Answer]] = [[] for _ in requests]
    texts: list[list[str]] = [[] for _ in requests]
    truncated = [0] * len(requests)
    errors: list[str | None] = [None] * len(requests)
    by_count: dict[int, list[int]] = {}
    for i, c in enumerate(counts):
        if c > 0:
            by_count.setdefault(c, []).append(i)
    groups = sorted(by_count.items())
    calls = [([requests[i] for i in idx],
              SampleParams(n=count, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_tokens,
                           seed=call_seed(sampling.seed, round_, count, model)))
             for count, idx in groups]
    got = engine.sample_many(calls) if calls else []
    if len(got) != len(calls):
        raise RuntimeError(f"{model} engine returned {len(got)} result lists for {len(calls)} calls")
    for (_, idx), results in zip(groups, got):
        if len(results) != len(idx):
            raise RuntimeError(
                f"{model} engine returned {len(results)} results for {len(idx)} requests"
            )
        for i, res in zip(idx, results):
            if res.error is not None:
                errors[i] = f"{model}: {res.error}"
                continue
            for comp in res.completions:
                cut = comp.finish_reason == "length"
                truncated[i] += int(cut)
                texts[i].append(comp.text)
                answers[i].append(extract_answer(comp.text, choices[i], truncated=cut))
    return Drawn(answers, texts, truncated, errors)


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
    drawn: dict[str, int]  # samples drawn in this call, per model


def sample_adaptive(
    teacher: Engine | None,
    student: Engine | None,
    requests: Sequence[Request],
    choices: Sequence[Sequence[str] | None],
    sampling: SamplingConfig,
    policy: AdaptivePolicy,
    held: Sequence[PromptSamples] | None = None,
) -> AdaptiveDraw:
    """Both models' answers per request under the adaptive policy, in batched rounds.

    Round 1 draws :func:`~pipeline.sampling.policy.first_round_draws` for every request;
    each later round draws :func:`~pipeline.sampling.policy.further_draws` for the
    requests still open (not stopped by either rule, not failed, short of ``n``), until
    none is. Each round is one :func:`draw_answers` per model.

    ``held`` gives what each prompt already holds (the student's answers from ``mine``, a
    failure): kept, and topped up only if short of what the policy needs; ``student`` may
    then be None. ``stop_reason`` of each result names the rule that stopped it short of
    ``n``, or is None.
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
    drawn = {"teacher": 0, "student": 0}
    plan = [first_round_draws(len(p.teacher), len(p.student), policy) for p in prompts]
    round_ = 1
    while True:
        for col, model in enumerate(MODELS):
            counts = [0 if p.error else plan[i][col] for i, p in enumerate(prompts)]
            if not any(counts):
                continue
            engine = engines[model]
            if engine is None:
                raise ValueError(
                    f"the {model} engine is needed: {sum(1 for c in counts if c)} prompts lack samples"
                )
            got = draw_answers(engine, requests, counts, sampling, choices, model=model,
                               round_=round_)
            for i, p in enumerate(prompts):
                p.error = p.error or got.errors[i]
                p.extend(model, got.answers[i], got.texts[i], got.truncated[i])
                drawn[model] += len(got.answers[i])
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
    return AdaptiveDraw(prompts, drawn)
