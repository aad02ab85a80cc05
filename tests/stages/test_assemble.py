"""Stage 6, assemble: the seeded, stable train/validation split (fast, no models)."""

from __future__ import annotations

import pyarrow as pa

from pipeline.core.config import config_from_dict
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.runner.stage import ShardTask
from stages.assemble import SPLIT_COLUMN, AssembleStage, assign_split


def test_split_is_a_pure_function_of_id_fraction_and_seed():
    ids = [f"{i:016x}" for i in range(2000)]
    a = [assign_split(i, 0.1, 0) for i in ids]
    assert a == [assign_split(i, 0.1, 0) for i in ids]  # stable on rerun
    assert 150 < a.count("validation") < 250  # about 10%
    assert a != [assign_split(i, 0.1, 1) for i in ids]  # the seed reshuffles
    assert set(assign_split(i, 0.0, 0) for i in ids) == {"train"}
    assert set(assign_split(i, 1.0, 0) for i in ids) == {"validation"}


def test_adding_rows_never_moves_an_existing_prompt_between_splits():
    ids = [f"{i:016x}" for i in range(500)]
    before = {i: assign_split(i, 0.2, 3) for i in ids[:300]}
    after = {i: assign_split(i, 0.2, 3) for i in ids}
    assert all(after[i] == s for i, s in before.items())


def test_the_stage_adds_the_split_column():
    rows = [make_prompt_row(source="s", question=f"Q{i}?", image_bytes=b"%d" % i) for i in range(50)]
    table = rows_to_table(rows)
    cfg = config_from_dict({"run": {"name": "t"}, "assemble": {"validation_fraction": 0.5, "seed": 2}})
    out = AssembleStage().process(cfg, None, ShardTask(0, [0]), table)
    col = out.table.column(SPLIT_COLUMN).to_pylist()
    assert col == [assign_split(i, 0.5, 2) for i in table.column("id").to_pylist()]
    assert set(col) == {"train", "validation"} and out.table.schema.field(SPLIT_COLUMN).type == pa.string()
