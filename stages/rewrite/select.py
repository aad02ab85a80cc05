"""Which seeds to rewrite, and which new prompts to keep (the teacher's pseudo-label)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from pipeline.core.answers import answers_match
from pipeline.core.divergence import NO_ANSWER, answer_class
from pipeline.core.skills import UNKNOWN


@dataclass
class Verdict:
    keep: bool
    reason: str | None  # skip reason when not kept
    agreement: float | None  # share of teacher answers in the majority class
    majority: str | None  # the majority's raw answer text (first sample in that class)


def pseudo_label(
    teacher_answers: list[str | None],
    *,
    min_agreement: float,
    expected: str | None,
    match_mode: str = "relaxed",
    require: bool = True,
) -> Verdict:
    """The teacher-consistency decision for one new prompt.

    ``expected``: the rewriter's (or the chart's exact) answer, checked against the
    teacher's majority; ``require=False`` records agreement but never rejects (the
    programmatic filter switched off).
    """
    if not teacher_answers:
        return Verdict(not require, "pseudo_label_no_samples" if require else None, None, None)
    classes = [answer_class(a) for a in teacher_answers]
    counts = Counter(classes)  # first-seen order breaks ties deterministically
    major, c = counts.most_common(1)[0]
    agreement = c / len(classes)
    raw = next((a for a, k in zip(teacher_answers, classes) if k == major and a is not None), None)
    reason = None
    if major == NO_ANSWER or raw is None:
        reason = "pseudo_label_no_answer"
    elif agreement < min_agreement:
        reason = "pseudo_label_low_agreement"
    elif expected is not None and not answers_match(raw, [expected], mode=match_mode):
        reason = "pseudo_label_disagrees"
    if not require:
        return Verdict(True, None, agreement, raw)
    return Verdict(reason is None, reason, agreement, raw)


def select_seeds(
    rows: list[dict], *, max_accuracy: float, per_skill: int | None, rng: random.Random
) -> list[int]:
    """Indices of the seeds to rewrite: failed or below ``max_accuracy``, lowest accuracy
    first (seeded order among equals), at most ``per_skill`` per skill."""
    cands = [
        i
        for i, r in enumerate(rows)
        if r.get("student_failed")
        or (r.get("student_accuracy") is not None and r["student_accuracy"] < max_accuracy)
    ]
    rng.shuffle(cands)
    cands.sort(
        key=lambda i: (
            rows[i]["student_accuracy"] if rows[i].get("student_accuracy") is not None else 0.0
        )
    )
    taken: Counter = Counter()
    out = []
    for i in cands:
        skill = rows[i].get("skill") or UNKNOWN
        if per_skill is not None and taken[skill] >= per_skill:
            continue
        taken[skill] += 1
        out.append(i)
    return out


def wrong_answers(row: dict, match_mode: str) -> list[str]:
    """The student's distinct answers that miss the gold (shown to the rewriter)."""
    gold = row.get("answers") or []
    seen: dict[str, None] = {}
    for a in row.get("student_answers") or []:
        if a is not None and not (gold and answers_match(a, gold, mode=match_mode)):
            seen.setdefault(a.strip(), None)
    return list(seen)[:5]
