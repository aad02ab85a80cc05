"""Stage 3, rewrite: new prompts aimed at the student's failures (optional: rewrite.enabled).

Seeds are the mine stage's rows. Those the student fails or barely passes are selected
(lowest accuracy first, per-skill quotas, seeded) and rewritten k times each:

1. *seed-guided* (LLM): a new question on the same image as a failed seed, one template
   (= failure mode / strategy, prompts_templates/rewrite/seed_guided/) per variant;
2. *skill-guided* (LLM): the skills named by pass 1's ACCEPTED rewrites, asked on OTHER
   seed images (prompts_templates/rewrite/skill_guided/);
3. *programmatic* (chart world): new charts rendered to target the failing skill
   (seeds/chartworld/rewrite.py), with exact answers.

Every new prompt is deduplicated against the seeds and the other new prompts (normalised
question text per image), then pseudo-labelled: the teacher answers it N times and the
prompt is kept only if the majority's share reaches rewrite.min_agreement and the majority
matches the rewriter's expected answer (when it gave one; for programmatic prompts, the
exact answer, if rewrite.filter_programmatic).

Why per shard: pass 2 needs the skills pass 1 accepted, i.e. a view wider than one row.
A single task over the whole run would give the global view but no parallelism and one
giant unit of resume, so each input shard is one task that runs both passes on its own
rows: pass 2 reads the skills accepted in that shard and asks them on that shard's other
images. The result is a deterministic function of (config, shard), which is what resume
and the config hash need; per-skill quotas are divided evenly over the shards (plan()
passes the shard count) so the run-wide quota still holds.

Output = the seed rows unchanged (origin "seed", lineage null, their student_* columns)
followed by the new rows (canonical prompt rows, parent_id = the seed's id, student_*
null so the delta stage samples the student for them).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.stage import ShardOutput, ShardTask, Stage
from stages.common import SAMPLING_KEYS, add_columns, draw, engine_resources

COLUMNS = {
    "origin": "where the prompt comes from: seed | seed_guided | skill_guided | programmatic",
    "template": "LLM template or chart-world strategy that made the prompt; null for seeds",
    "rewriter": "the rewriter's model (path or id) or chartworld-programmatic; null for seeds",
    "attempts": "rewriter calls until a valid reply (1 = first try); null for seeds",
    "pseudo_label_agreement": "share of teacher answers in its majority class; null for seeds",
}
LINEAGE_FIELDS = [
    pa.field("origin", pa.string()),
    pa.field("template", pa.string()),
    pa.field("rewriter", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("pseudo_label_agreement", pa.float64()),
]
PROGRAMMATIC = "chartworld-programmatic"
ORIGINS = ("seed", "seed_guided", "skill_guided", "programmatic")
EXAMPLES_PER_SKILL = 3  # pass-1 questions shown to the skill-guided rewriter


# ------------------------------------------------------------------------ pure helpers


def question_key(image: dict | None, question: str) -> tuple[bytes, str]:
    """Dedup key: the image's bytes + the question lowercased, punctuation and spacing
    dropped ("What is A's value?" == "what is a s value")."""
    data = (image or {}).get("bytes") or b""
    text = re.sub(r"[^0-9a-z]+", " ", question.lower()).strip()
    return data, text


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
    from pipeline.answers import answers_match
    from pipeline.delta import NO_ANSWER, answer_class

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
        skill = rows[i].get("skill") or "unknown"
        if per_skill is not None and taken[skill] >= per_skill:
            continue
        taken[skill] += 1
        out.append(i)
    return out


def wrong_answers(row: dict, match_mode: str) -> list[str]:
    """The student's distinct answers that miss the gold (shown to the rewriter)."""
    from pipeline.answers import answers_match

    gold = row.get("answers") or []
    seen: dict[str, None] = {}
    for a in row.get("student_answers") or []:
        if a is not None and not (gold and answers_match(a, gold, mode=match_mode)):
            seen.setdefault(a.strip(), None)
    return list(seen)[:5]


# ------------------------------------------------------------------------------ stage


@dataclass
class Candidate:
    row: dict[str, Any]  # canonical prompt row (make_prompt_row) + lineage columns
    expected: str | None  # answer the teacher's majority must match (None: none proposed)
    exact: bool = False  # programmatic: the answer is known, not proposed


class _Engines:
    """Teacher (pseudo-labels) and rewriter, loaded on first use; one engine when the
    rewriter is the teacher."""

    def __init__(self, cfg, teacher=None, rewriter=None):
        # Engines may be handed in (tests, a caller that already holds them); else built.
        self.cfg = cfg
        self._teacher = teacher
        self._rewriter = rewriter

    def teacher(self):
        if self._teacher is None:
            from pipeline.engines import build_engine

            self._teacher = build_engine(self.cfg.models.teacher)
        return self._teacher

    def rewriter(self):
        rcfg = self.cfg.models.rewriter
        if self._rewriter is None and (rcfg is None or rcfg == self.cfg.models.teacher):
            return self.teacher()
        if self._rewriter is None:
            from pipeline.engines import build_engine

            self._rewriter = build_engine(rcfg)
        return self._rewriter

    def rewriter_name(self) -> str:
        return (self.cfg.models.rewriter or self.cfg.models.teacher).model

    def close(self):
        for e in {id(e): e for e in (self._teacher, self._rewriter) if e is not None}.values():
            e.close()


class RewriteStage(Stage):
    number = 3
    name = "rewrite"
    input_stage = "mine"
    config_keys: ClassVar[list[str]] = [
        "models.teacher",
        "models.rewriter",
        "rewrite",
        "mine.grading",
        *SAMPLING_KEYS,
    ]
    uses_models = True

    def enabled(self, cfg) -> bool:
        return cfg.rewrite.enabled

    def resources(self, cfg):
        return engine_resources(cfg.models.teacher, cfg.models.rewriter)

    def plan(self, cfg, input_indices):
        # The shard count sets each shard's share of the run-wide per-skill quota.
        return [
            ShardTask(index=i, input_shards=[i], payload={"n_shards": len(input_indices)})
            for i in input_indices
        ]

    def setup(self, cfg):
        return _Engines(cfg)

    def process(self, cfg, state, task, table):
        return ShardRewrite(cfg, state, task, table).run()

    def finalize(self, cfg, stage_dir, tables):
        table = pa.concat_tables(tables, promote_options="default")
        summary = rewrite_summary(table)
        (stage_dir / "rewrite_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return {
            "seeds": summary["by_origin"].get("seed", {}).get("rows", 0),
            "synthesised": summary["synthesised"],
        }


def rewrite_summary(table: pa.Table) -> dict:
    """Rows, mean teacher agreement and templates per origin."""
    rows = table.select(["origin", "template", "pseudo_label_agreement", "skill"]).to_pylist()
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["origin"]].append(r)
    out = {}
    for origin, rs in sorted(by.items()):
        agree = [r["pseudo_label_agreement"] for r in rs if r["pseudo_label_agreement"] is not None]
        out[origin] = {
            "rows": len(rs),
            "mean_teacher_agreement": round(sum(agree) / len(agree), 4) if agree else None,
            "templates": dict(sorted(Counter(r["template"] for r in rs if r["template"]).items())),
            "skills": dict(sorted(Counter(r["skill"] or "unknown" for r in rs).items())),
        }
    return {"synthesised": sum(v["rows"] for k, v in out.items() if k != "seed"), "by_origin": out}


@dataclass
class ShardRewrite:
    """One shard's rewrite: select, rewrite (passes), dedup, pseudo-label, assemble."""

    cfg: Any
    engines: _Engines
    task: ShardTask
    table: pa.Table
    skipped: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self):
        rc = self.cfg.rewrite
        for col in ("student_accuracy", "student_failed"):
            if col not in self.table.column_names:
                have = self.table.column_names
                raise ValueError(f"rewrite needs the mine stage's {col!r} column; input has {have}")
        self.rc = rc
        self.rng = random.Random(f"rewrite:{rc.seed}:{self.task.index}")
        self.rows = self.table.to_pylist()
        self.seen = {question_key(r["image"], r["question"]) for r in self.rows}
        self.seen_ids = {r["id"] for r in self.rows}
        self.engine_seed = rc.seed * 1_000_003 + self.task.index * 101

    # -- driver --------------------------------------------------------------------------

    def run(self) -> ShardOutput:
        rc = self.rc
        n_shards = max(1, int(self.task.payload.get("n_shards", 1)))
        quota = (
            None if rc.max_seeds_per_skill is None else math.ceil(rc.max_seeds_per_skill / n_shards)
        )
        selected = select_seeds(
            self.rows, max_accuracy=rc.max_student_accuracy, per_skill=quota, rng=self.rng
        )
        self.stats["seeds"] = len(self.rows)
        self.stats["seeds_selected"] = len(selected)
        kept: list[Candidate] = []
        first: list[Candidate] = []
        if rc.method in ("llm", "both"):
            first += self.seed_guided(selected)
        if rc.method in ("programmatic", "both"):
            first += self.programmatic(selected)
        accepted_first = self.label(first, pass_no=1)
        kept += accepted_first
        if rc.method in ("llm", "both") and rc.skill_guided:
            pass1 = [c for c in accepted_first if c.row["origin"] == "seed_guided"]
            kept += self.label(self.skill_guided(pass1, selected), pass_no=2)
        for c in kept:
            self.stats[f"accepted_{c.row['origin']}"] += 1
        skipped = {k: v for k, v in self.skipped.items() if v}
        return ShardOutput(self.assemble(kept), skipped=skipped, stats=dict(self.stats))

    # -- passes --------------------------------------------------------------------------

    def _templates(self, kind: str, wanted: list[str]) -> list[str]:
        from pipeline.rewriter import list_templates

        have = list_templates(kind)
        missing = sorted(set(wanted) - set(have))
        if missing:
            raise ValueError(f"rewrite: no {kind} template(s) {missing}; have {have}")
        names = [t for t in have if not wanted or t in wanted]
        if not names:
            raise ValueError(f"rewrite: no {kind} templates found")
        return names

    def _run_rewriter(self, jobs, pass_no: int):
        from pipeline.rewriter import rewrite

        if not jobs:
            return []
        rc = self.rc
        results = rewrite(
            self.engines.rewriter(),
            jobs,
            max_attempts=rc.max_attempts,
            temperature=rc.temperature,
            max_tokens=rc.max_tokens,
            seed=self.engine_seed + pass_no,
        )
        for r in results:
            self.stats["rewriter_calls"] += r.attempts
            if r.proposal is None:
                self.skipped[r.rejected] += 1
        return results

    def seed_guided(self, selected: list[int]) -> list[Candidate]:
        from pipeline.rewriter import RewriteJob, render_template

        rc = self.rc
        names = self._templates("seed_guided", rc.seed_templates)
        jobs, meta = [], {}
        for i in selected:
            seed = self.rows[i]
            order = list(names)
            self.rng.shuffle(order)
            for v in range(rc.variants_per_seed):
                tpl = order[v % len(order)]
                ctx = {
                    "question": seed["question"],
                    "gold_answers": seed["answers"] or [],
                    "wrong_answers": wrong_answers(seed, self.cfg.mine.grading),
                    "skill": seed["skill"],
                    "student_accuracy": seed["student_accuracy"],
                }
                key = f"{seed['id']}:{v}"
                jobs.append(
                    RewriteJob(key, render_template("seed_guided", tpl, ctx), self._image_for(seed))
                )
                meta[key] = (seed, tpl)
        out = []
        for res in self._run_rewriter(jobs, 1):
            if res.proposal is not None:
                seed, tpl = meta[res.key]
                out.extend(self._llm_candidate(seed, seed, res, "seed_guided", tpl))
        return out

    def skill_guided(self, pass1: list[Candidate], selected: list[int]) -> list[Candidate]:
        """Pass 2: every skill pass 1 accepted, asked on other seed images of the shard."""
        from pipeline.rewriter import RewriteJob, render_template

        rc = self.rc
        names = self._templates("skill_guided", rc.skill_templates)
        self.rng.shuffle(names)  # then used in turn, so every template gets its share
        by_skill: dict[str, list[Candidate]] = defaultdict(list)
        for c in pass1:
            by_skill[c.row["skill"]].append(c)
        parents = {self.rows[i]["id"] for i in selected}
        jobs, meta = [], {}
        for skill in sorted(by_skill):
            # Other images: never the images this skill came from; seeds that were not
            # rewritten in pass 1 first (new ground), then the rest, each in seeded order.
            sources = {c.row["parent_id"] for c in by_skill[skill]}
            fresh = [r for r in self.rows if r["id"] not in parents]
            used = [r for r in self.rows if r["id"] in parents and r["id"] not in sources]
            self.rng.shuffle(fresh)
            self.rng.shuffle(used)
            images, seen_img = [], {self._image_hash(r) for r in self.rows if r["id"] in sources}
            for r in fresh + used:
                if len(images) >= rc.images_per_skill:
                    break
                h = self._image_hash(r)
                if h not in seen_img:
                    seen_img.add(h)
                    images.append(r)
            examples = [c.row["question"] for c in by_skill[skill][:EXAMPLES_PER_SKILL]]
            for target in images:
                tpl = names[len(jobs) % len(names)]
                ctx = {
                    "skill": skill,
                    "examples": examples,
                    "existing_question": target["question"],
                }
                key = f"{skill}:{target['id']}"
                jobs.append(
                    RewriteJob(
                        key, render_template("skill_guided", tpl, ctx), self._image_for(target)
                    )
                )
                meta[key] = (target, tpl, by_skill[skill][0])
        out = []
        for res in self._run_rewriter(jobs, 2):
            if res.proposal is not None:
                target, tpl, origin_c = meta[res.key]
                # parent_id: the seed whose failure led here (lineage of the skill), the
                # image is the target's.
                parent = next(r for r in self.rows if r["id"] == origin_c.row["parent_id"])
                out.extend(self._llm_candidate(parent, target, res, "skill_guided", tpl))
        return out

    def programmatic(self, selected: list[int]) -> list[Candidate]:
        from pipeline.images import normalize_image
        from pipeline.schema import make_prompt_row
        from seeds.chartworld.rewrite import rewrite_variants

        rc = self.rc
        world = rc.world_config()
        out = []
        for i in selected:
            seed = self.rows[i]
            chart = _chart_of(seed)
            if chart is None:
                self.skipped["programmatic_not_chartworld"] += 1
                continue
            if not seed.get("skill"):
                self.skipped["programmatic_no_skill"] += 1
                continue
            img = (seed["image"] or {}).get("bytes")
            variants = rewrite_variants(
                seed["skill"],
                rc.variants_per_seed,
                world,
                self.rng,
                parent=chart,
                parent_image=img,
                parent_question=seed["question"],
                strategies=rc.strategies or None,
            )
            self.skipped["programmatic_unaskable"] += rc.variants_per_seed - len(variants)
            for v in variants:
                image = img if v.style_seed is None else normalize_image(v.image)
                row = make_prompt_row(
                    source=seed["source"],
                    question=v.qa.question,
                    image_bytes=image,
                    answers=[v.qa.answer],
                    split=seed["split"],
                    skill=v.qa.skill,
                    parent_id=seed["id"],
                    meta={
                        "chart": v.chart.to_json(),
                        "family": v.qa.family,
                        "reasoning": v.qa.reasoning,
                        "strategy": v.strategy,
                        "style_seed": v.style_seed,
                        "pass": "programmatic",
                    },
                    image_path=(seed["image"] or {}).get("path") if v.style_seed is None else None,
                )
                if v.style_seed is not None:  # a new picture gets a name of its own
                    row["image"]["path"] = f"chartworld-rewrite-{row['id']}.png"
                row.update(
                    origin="programmatic", template=v.strategy, rewriter=PROGRAMMATIC, attempts=1
                )
                out.extend(self._dedup(Candidate(row, v.qa.answer, exact=True)))
        return out

    # -- shared steps ---------------------------------------------------------------------

    def _image_for(self, row: dict) -> bytes | None:
        return (row["image"] or {}).get("bytes") if self.rc.send_image else None

    @staticmethod
    def _image_hash(row: dict) -> bytes:
        import hashlib

        return hashlib.sha256((row["image"] or {}).get("bytes") or b"").digest()

    def _llm_candidate(
        self, parent: dict, target: dict, res, origin: str, tpl: str
    ) -> list[Candidate]:
        from pipeline.schema import make_prompt_row

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
        row.update(
            origin=origin,
            template=tpl,
            rewriter=self.engines.rewriter_name(),
            attempts=res.attempts,
        )
        return self._dedup(Candidate(row, p["expected_answer"]))

    def _dedup(self, c: Candidate) -> list[Candidate]:
        key = question_key(c.row["image"], c.row["question"])
        if key in self.seen or c.row["id"] in self.seen_ids:
            self.skipped["duplicate"] += 1
            return []
        self.seen.add(key)
        self.seen_ids.add(c.row["id"])
        return [c]

    def label(self, cands: list[Candidate], pass_no: int) -> list[Candidate]:
        """Pseudo-label with the teacher (one batched call); the kept candidates."""
        from pipeline.schema import rows_to_table

        if not cands:
            return []
        rc = self.rc
        n = rc.label_samples or self.cfg.delta.n
        sub = rows_to_table([c.row for c in cands])
        got = draw(
            self.engines.teacher(), sub, self.cfg, [n] * len(cands), "teacher", round_=100 + pass_no
        )
        self.stats["teacher_label_samples"] += n * len(cands)
        kept = []
        for c, answers, error in zip(cands, got.answers, got.errors):
            if error:
                self.skipped["teacher_engine_error"] += 1
                continue
            v = pseudo_label(
                answers,
                min_agreement=rc.min_agreement,
                expected=c.expected,
                match_mode=self.cfg.mine.grading,
                require=not c.exact or rc.filter_programmatic,
            )
            if not v.keep:
                self.skipped[v.reason] += 1
                continue
            c.row["pseudo_label_agreement"] = v.agreement
            meta = json.loads(c.row["meta"])
            meta["teacher_majority"] = v.majority
            c.row["meta"] = json.dumps(meta, sort_keys=True, default=str)
            if not c.row["answers"] and v.majority is not None:
                c.row["answers"] = [
                    v.majority
                ]  # no proposed answer: the teacher's majority is the label
            kept.append(c)
        return kept

    def assemble(self, kept: list[Candidate]) -> pa.Table:
        n = self.table.num_rows
        seeds = add_columns(
            self.table,
            {
                "origin": (pa.string(), ["seed"] * n),
                "template": (pa.string(), [None] * n),
                "rewriter": (pa.string(), [None] * n),
                "attempts": (pa.int32(), [None] * n),
                "pseudo_label_agreement": (pa.float64(), [None] * n),
            },
        )
        if not kept:
            return seeds
        # New rows take the seeds' exact schema: columns they lack (student_*, anything
        # ingest added) are null, so the delta stage knows to sample the student.
        new = pa.Table.from_pylist([c.row for c in kept], schema=seeds.schema)
        return pa.concat_tables([seeds, new])


def _chart_of(row: dict):
    """The chart-world data behind a seed (its meta "chart"), or None for other sources."""
    from seeds.chartworld.spec import Chart

    try:
        meta = json.loads(row.get("meta") or "{}")
        text = meta.get("chart")
        return Chart.from_json(text) if isinstance(text, str) else None
    except (ValueError, TypeError):
        return None
