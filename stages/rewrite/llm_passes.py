"""The LLM passes of stage 3: templates -> question writer -> candidate rows.

1. *seed-guided*: a new question on the same image as a failed seed, one template
   (= failure mode / strategy, prompts_templates/rewrite/seed_guided/) per variant;
2. *skill-guided*: the skills named by pass 1's ACCEPTED rewrites, asked on OTHER seed
   images of the shard (prompts_templates/rewrite/skill_guided/).

The rewriter sees each image (``rewrite.send_image``), or, when it is a text-only LLM,
a text view of it (seeds/text_view.py; the template says which). A seed without a text
view is not sent to a text-only rewriter (skip ``rewriter_no_text_view``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

from pipeline.core.errors import ConfigError
from pipeline.core.schema import make_prompt_row
from pipeline.sampling.question_writer import (
    RewriteJob,
    RewriteResult,
    list_templates,
    render_template,
    rewrite,
)
from stages.rewrite.common import Candidate, PassContext
from stages.rewrite.select import wrong_answers

EXAMPLES_PER_SKILL = 3  # pass-1 questions shown to the skill-guided rewriter


def templates(kind: str, wanted: list[str]) -> list[str]:
    """The template names of ``kind`` to use: ``wanted``, or all when it is empty."""
    have = list_templates(kind)
    missing = sorted(set(wanted) - set(have))
    key = "rewrite.seed_templates" if kind == "seed_guided" else "rewrite.skill_templates"
    if missing:
        raise ConfigError(f"{key}: no {kind} template(s) {missing}; have {have}")
    names = [t for t in have if not wanted or t in wanted]
    if not names:
        raise ConfigError(f"{key}: no {kind} templates found")
    return names


REPLY_CHARS = 600  # of a rejected reply kept in skipped.jsonl (enough to see what went wrong)


def check_rewriter(ctx: PassContext) -> None:
    """Refuse to send images to a rewriter known to be text-only (before any call)."""
    if ctx.rc.send_image and ctx.engines.rewriter().takes_images is False:
        raise ConfigError(
            f"rewrite.send_image is true but the rewriter {ctx.engines.rewriter_name} is a "
            "text-only model; set rewrite.send_image: false (it then reads a text view of "
            "each image, seeds/text_view.py)"
        )


def _context(ctx: PassContext, row: dict, fields: dict) -> dict | None:
    """The template context for a job on ``row``'s image, or None (counted) when a
    text-only rewriter has no text view of that image."""
    view = ctx.view_for(row)
    if view is None and not ctx.rc.send_image:
        ctx.skipped["rewriter_no_text_view"] += 1
        return None
    return {**fields, "image_view": view}


def _run_rewriter(ctx: PassContext, jobs: list[RewriteJob], pass_no: int) -> list[RewriteResult]:
    """One pass's jobs through the rewriter; counts what happened (the shard's stats)."""
    if not jobs:
        return []
    rc = ctx.rc
    started = time.monotonic()
    results = rewrite(ctx.engines.rewriter(), jobs, max_attempts=rc.max_attempts,
                      temperature=rc.temperature, max_tokens=rc.max_tokens,
                      seed=ctx.engine_seed + pass_no, structured=rc.structured)
    ctx.stats["rewriter_ms"] += round(1000 * (time.monotonic() - started))
    for r in results:
        ctx.stats["rewriter_jobs"] += 1
        ctx.stats["rewriter_calls"] += r.attempts
        ctx.stats["rewriter_completion_tokens"] += r.completion_tokens
        ctx.stats["rewriter_valid_first_try"] += int(not r.failures)
        ctx.stats["rewriter_valid"] += int(r.proposal is not None)
        for reason in r.failures:  # every failed attempt, retried or final
            ctx.stats[f"attempt_failed_{reason}"] += 1
        if r.proposal is None:
            ctx.skipped[r.rejected] += 1
            ctx.skipped_rows.append({"id": r.key, "reason": r.rejected, "detail": json.dumps(
                {"error": r.error, "reply": (r.last_reply or "")[:REPLY_CHARS]})})
    return results


def seed_guided(ctx: PassContext, selected: list[int]) -> list[Candidate]:
    """Pass 1: ``variants_per_seed`` rewrites of each selected seed, on its own image."""
    rc = ctx.rc
    names = templates("seed_guided", rc.seed_templates)
    if selected:
        check_rewriter(ctx)
    jobs, meta = [], {}
    for i in selected:
        seed = ctx.rows[i]
        order = list(names)
        ctx.rng.shuffle(order)
        for v in range(rc.variants_per_seed):
            tpl = order[v % len(order)]
            context = _context(ctx, seed, {
                "question": seed["question"],
                "gold_answers": seed["answers"] or [],
                "wrong_answers": wrong_answers(seed, ctx.cfg.mine.grading),
                "skill": seed["skill"],
                "student_accuracy": seed["student_accuracy"],
            })
            if context is None:
                break  # no view of this image: none of its variants can be asked
            key = f"{seed['id']}:{v}"
            jobs.append(RewriteJob(key, render_template("seed_guided", tpl, context), ctx.image_for(seed)))
            meta[key] = (seed, tpl)
    out = []
    for res in _run_rewriter(ctx, jobs, 1):
        if res.proposal is not None:
            seed, tpl = meta[res.key]
            out.extend(_candidate(ctx, seed, seed, res, "seed_guided", tpl))
    return out


def skill_guided(ctx: PassContext, pass1: list[Candidate], selected: list[int]) -> list[Candidate]:
    """Pass 2: every skill pass 1 accepted, asked on other seed images of the shard."""
    rc = ctx.rc
    names = templates("skill_guided", rc.skill_templates)
    ctx.rng.shuffle(names)  # then used in turn, so every template gets its share
    by_skill: dict[str, list[Candidate]] = defaultdict(list)
    for c in pass1:
        by_skill[c.row["skill"]].append(c)
    parents = {ctx.rows[i]["id"] for i in selected}
    jobs, meta = [], {}
    for skill in sorted(by_skill):
        # Other images: never the images this skill came from; seeds that were not
        # rewritten in pass 1 first (new ground), then the rest, each in seeded order.
        sources = {c.row["parent_id"] for c in by_skill[skill]}
        fresh = [r for r in ctx.rows if r["id"] not in parents]
        used = [r for r in ctx.rows if r["id"] in parents and r["id"] not in sources]
        ctx.rng.shuffle(fresh)
        ctx.rng.shuffle(used)
        images, seen_img = [], {ctx.image_hash(r) for r in ctx.rows if r["id"] in sources}
        for r in fresh + used:
            if len(images) >= rc.images_per_skill:
                break
            h = ctx.image_hash(r)
            if h not in seen_img:
                seen_img.add(h)
                images.append(r)
        examples = [c.row["question"] for c in by_skill[skill][:EXAMPLES_PER_SKILL]]
        for target in images:
            tpl = names[len(jobs) % len(names)]
            context = _context(ctx, target, {"skill": skill, "examples": examples,
                                             "existing_question": target["question"]})
            if context is None:
                continue
            key = f"{skill}:{target['id']}"
            jobs.append(RewriteJob(key, render_template("skill_guided", tpl, context),
                                   ctx.image_for(target)))
            meta[key] = (target, tpl, by_skill[skill][0])
    out = []
    for res in _run_rewriter(ctx, jobs, 2):
        if res.proposal is not None:
            target, tpl, origin_c = meta[res.key]
            # parent_id: the seed whose failure led here (lineage of the skill), the
            # image is the target's.
            parent = next(r for r in ctx.rows if r["id"] == origin_c.row["parent_id"])
            out.extend(_candidate(ctx, parent, target, res, "skill_guided", tpl))
    return out


def _candidate(ctx: PassContext, parent: dict, target: dict, res: RewriteResult, origin: str,
               tpl: str) -> list[Candidate]:
    p = res.proposal
    image = target["image"] or {}
    row = make_prompt_row(
        source=target["source"],
        question=p["question"],
        image_bytes=image.get("bytes"),
        answers=[p["expected_answer"]] if p["expected_answer"] else [],
        split=target["split"],
        skill=p["skill"],
        parent_id=parent["id"],
        meta={
            "answer_type": p["answer_type"],
            "rationale": p["rationale"],
            "expected_answer": p["expected_answer"],
            "pass": origin,
            "image_of": target["id"],
        },
        image_path=image.get("path"),
    )
    row.update(origin=origin, template=tpl, rewriter=ctx.engines.rewriter_name,
               attempts=res.attempts)
    return ctx.dedup(Candidate(row, p["expected_answer"]))
