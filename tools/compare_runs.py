"""Compare two run folders stage by stage: the same prompts, the same values?

    python -m tools.compare_runs runs/demo-before runs/demo-after [--columns delta zero_delta]

For every stage folder both runs have, it reads the complete shards and reports the rows,
whether the prompt ids are the same, and, per compared column present in both, how many
prompts differ (floats within ``--atol``). Exit code 0 when everything compared is equal,
1 otherwise: a behaviour-preserving change can be checked with one command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pyarrow as pa

from pipeline.core import shards

DEFAULT_COLUMNS = ["student_answers", "student_accuracy", "teacher_answers", "delta", "delta_low",
                   "delta_high", "zero_delta",
                   "stop_reason", "teacher_majority", "student_majority"]


def stage_table(stage_dir: Path) -> pa.Table | None:
    idx = shards.complete_shards(stage_dir)
    if not idx:
        return None
    return pa.concat_tables([shards.read_shard(stage_dir, i) for i in idx], promote_options="default")


def _equal(a, b, atol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=atol) or (math.isnan(a) and math.isnan(b))
    return a == b


def compare_stage(a: pa.Table, b: pa.Table, columns: list[str], atol: float) -> dict:
    ids_a, ids_b = a.column("id").to_pylist(), b.column("id").to_pylist()
    out = {"rows": (a.num_rows, b.num_rows), "same_ids": sorted(ids_a) == sorted(ids_b),
           "columns": {}}
    common = set(ids_a) & set(ids_b)
    for col in columns:
        if col not in a.column_names or col not in b.column_names:
            continue
        va = dict(zip(ids_a, a.column(col).to_pylist()))
        vb = dict(zip(ids_b, b.column(col).to_pylist()))
        out["columns"][col] = sum(not _equal(va[i], vb[i], atol) for i in common)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.compare_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--columns", nargs="*", default=DEFAULT_COLUMNS, help="columns to compare by id")
    p.add_argument("--atol", type=float, default=0.0, help="tolerance for float columns")
    a = p.parse_args(argv)
    same = True
    stages = sorted({d.name for d in a.run_a.iterdir() if d.is_dir()}
                    & {d.name for d in a.run_b.iterdir() if d.is_dir()})
    for name in stages:
        ta, tb = stage_table(a.run_a / name), stage_table(a.run_b / name)
        if ta is None or tb is None:
            continue
        r = compare_stage(ta, tb, a.columns, a.atol)
        diffs = ", ".join(f"{c}: {n} differ" for c, n in r["columns"].items()) or "no columns compared"
        ok = r["same_ids"] and r["rows"][0] == r["rows"][1] and not any(r["columns"].values())
        same &= ok
        print(f"{name:<12} rows {r['rows'][0]} vs {r['rows'][1]}, same ids: {r['same_ids']}; {diffs}"
              f"  [{'same' if ok else 'DIFFERENT'}]")
    print("identical" if same else "runs differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
