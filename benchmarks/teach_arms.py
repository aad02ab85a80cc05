"""The training sets of the teach experiment, from one pipeline run with stage 3 on.

Every arm is drawn from the run's own outputs: ``04-delta`` holds every measured prompt
(the seeds and the rewrite stage's synthesised prompts, each with its Δ), ``05-filter``
the prompts the pipeline keeps (Δ ≥ threshold, deduplicated). No arm reads the held-out
set: it is opened only by the evaluation, and by :func:`heldout_overlap`, which checks the
finished pools against it and changes nothing.

=============  ===========================================================================
arm            pool
=============  ===========================================================================
random         the seeds, as they come (what a team already has)
filtered       the seeds the filter keeps (filtering only)
synthesised    the rewrite stage's prompts, no Δ filter (synthesis only)
deltaprompts   everything the filter keeps, seeds and synthesised (the pipeline's product)
zero_delta     the zero-delta prompts (the control)
replay         deltaprompts plus a replay share of zero-delta prompts (the remedy)
=============  ===========================================================================

Why replay is the remedy: the forgetting measured before (micro_repro) was on skills the
student already had (extremum, counting), which the high-Δ set no longer shows it. The
zero-delta prompts are exactly those skills, and on-policy distillation on them still
pulls the student's token distribution towards the teacher's where they agree, so mixing
a share of them back anchors what the student knows while most prompts still carry a gap.
The mix is made in the pool (its share of rows), so the trainer's uniform order gives the
same share per step in expectation, with no trainer change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import shards
from pipeline.core.images import ImageError, normalize_image
from pipeline.core.schema import prompt_id

ARMS = ("random", "filtered", "synthesised", "deltaprompts", "zero_delta", "replay")
REPLAY_SHARE = 0.25  # of the replay arm's pool
COLUMNS = ["id", "source", "image", "question", "answers", "choices", "skill", "meta", "origin",
           "delta", "zero_delta", "teacher_samples", "teacher_majority"]


@dataclass
class Pools:
    table: pa.Table  # every measured prompt of the run, with a ``kept`` column
    rows: dict[str, list[int]]  # arm -> row indices into ``table``

    def sizes(self) -> dict[str, int]:
        return {arm: len(idx) for arm, idx in self.rows.items()}

    def skills(self) -> dict[str, dict[str, int]]:
        """Prompts of each skill in each arm's pool: what each arm teaches, and what it no
        longer shows the student (the measured cause of forgetting)."""
        skill = self.table.column("skill").to_pylist()
        return {arm: dict(sorted(Counter(skill[i] or "unknown" for i in idx).items()))
                for arm, idx in self.rows.items()}

    def arm_table(self, arm: str) -> pa.Table:
        return self.table.take(pa.array(self.rows[arm], pa.int64()))


def stage_rows(stage_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """The complete shards of one stage, concatenated in shard order."""
    idx = shards.complete_shards(stage_dir)
    if not idx:
        raise FileNotFoundError(f"no complete shards in {stage_dir}: run the pipeline first")
    return pa.concat_tables([pq.read_table(stage_dir / f"{shards.shard_name(i)}.parquet",
                                           columns=columns) for i in idx],
                            promote_options="default")


def measured_prompts(run: Path) -> pa.Table:
    """04-delta's prompts with a ``kept`` column (in 05-filter's output)."""
    table = stage_rows(run / "04-delta", COLUMNS)
    kept = set(stage_rows(run / "05-filter", ["id"]).column("id").to_pylist())
    return table.append_column("kept", pa.array([i in kept for i in table.column("id").to_pylist()]))


def select_pools(table: pa.Table, replay_share: float = REPLAY_SHARE, seed: int = 0) -> Pools:
    """Row indices of every arm (see the module doc). The replay arm adds
    ``round(share / (1 - share) * |deltaprompts|)`` zero-delta rows (seeded draw), or all
    of them when there are fewer."""
    if not 0.0 <= replay_share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share}")
    origin = table.column("origin").to_pylist()
    kept = table.column("kept").to_pylist()
    zero = table.column("zero_delta").to_pylist()
    seed_rows = [o == "seed" for o in origin]
    rows = {
        "random": [i for i, s in enumerate(seed_rows) if s],
        "filtered": [i for i, (s, k) in enumerate(zip(seed_rows, kept)) if s and k],
        "synthesised": [i for i, s in enumerate(seed_rows) if not s],
        "deltaprompts": [i for i, k in enumerate(kept) if k],
        "zero_delta": [i for i, z in enumerate(zero) if z],
    }
    want = round(replay_share / (1 - replay_share) * len(rows["deltaprompts"]))
    pick = np.random.default_rng(seed).permutation(len(rows["zero_delta"]))[:want]
    rows["replay"] = sorted(rows["deltaprompts"] + [rows["zero_delta"][j] for j in pick])
    return Pools(table, rows)


def pool_problems(pools: Pools, steps: int, prompts_per_step: int, max_repeats: float = 3.0,
                  arms: Iterable[str] | None = None) -> list[str]:
    """Arms (of ``arms``: those that train; default all) whose pool would repeat a prompt
    more than ``max_repeats`` times on average at ``steps`` x ``prompts_per_step`` draws
    (the experiment refuses them)."""
    need = steps * prompts_per_step / max_repeats
    return [f"{arm}: {n} prompts, {steps * prompts_per_step / max(n, 1):.1f} draws each"
            for arm, n in pools.sizes().items() if n < need and (arms is None or arm in arms)]


def _chart_key(meta: str | None, question: str) -> tuple[str, str] | None:
    try:
        chart = json.loads(meta or "{}").get("chart")
    except ValueError:
        return None
    return (chart, question.strip()) if isinstance(chart, str) else None


def heldout_overlap(pools: Pools, heldout: list[dict]) -> dict[str, int]:
    """Prompts of each arm that are also held-out questions: by prompt id (the held-out
    image normalised as ingest does) and by (chart data, question). Must be all zero."""
    ids, charts = set(), set()
    for r in heldout:
        try:
            ids.add(prompt_id(normalize_image(r["image"]), r["question"]))
        except ImageError:
            pass  # no pixels, no id: the (chart, question) key below still covers it
        if r.get("chart"):
            charts.add((r["chart"], r["question"].strip()))
    out = {}
    for arm in pools.rows:
        t = pools.arm_table(arm).select(["id", "meta", "question"]).to_pylist()
        out[arm] = sum(r["id"] in ids or _chart_key(r["meta"], r["question"]) in charts for r in t)
    return out
