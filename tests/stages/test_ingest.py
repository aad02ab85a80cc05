"""Stage 1, ingest: an empty source fails at plan, naming it; skipped rows are written
with their reason and detail, and `status` points to them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tests.fixtures_datasets as fx
from pipeline.cli import main as cli
from pipeline.core.config import config_from_dict
from pipeline.core.errors import RunError
from pipeline.runner.run import run_stages
from stages import REGISTRY
from stages.ingest import IngestStage


def _cfg(tmp_path, **source):
    return config_from_dict({
        "run": {"name": "r", "root": str(tmp_path / "runs"), "shard_size": 3},
        "execution": {"backend": "local"},
        "ingest": {"sources": [{"name": "charts", "format": "chartqa_lmms", "split": "train",
                                **source}]},
    })


@pytest.mark.parametrize("case", ["limit 0", "empty table"])
def test_an_empty_source_is_an_error_naming_it(tmp_path, case):
    if case == "limit 0":
        path = fx.write_jsonl(fx.chartqa_lmms_records(3), tmp_path / "src")
        cfg, expect = _cfg(tmp_path, path=str(path), limit=0), "after sample=None/limit=0"
    else:  # a Parquet file with the right columns and no rows
        path = tmp_path / "empty.parquet"
        pq.write_table(pa.table({"image": pa.array([], pa.binary()), "question": pa.array([], pa.string()),
                                 "answer": pa.array([], pa.string())}), path)
        cfg, expect = _cfg(tmp_path, path=str(path)), "has no records in split 'train'"
    with pytest.raises(RunError, match="source 'charts'") as err:
        IngestStage().plan(cfg, [])
    assert expect in str(err.value)
    # A run fails the same way, before any shard: stage 1 is never marked complete.
    with pytest.raises(RunError):
        run_stages(cfg, [1], REGISTRY, progress=False)
    man = cfg.run_dir / "01-ingest" / "manifest.json"
    assert not man.exists() or json.loads(man.read_text())["status"] != "complete"


def test_skipped_rows_are_written_with_their_details(tmp_path, capsys):
    recs = fx.chartqa_lmms_records(7)
    recs[1]["image"] = "images/gone.png"
    recs[4] = dict(recs[0])  # the same prompt twice: a duplicate in another shard
    recs[5]["question"] = "  "
    path = fx.write_jsonl(recs, tmp_path / "src")
    cfg = _cfg(tmp_path, path=str(path))
    run_stages(cfg, [1], REGISTRY, progress=False)
    stage_dir = cfg.run_dir / "01-ingest"
    skipped = [json.loads(x) for x in (stage_dir / "skipped.jsonl").read_text().splitlines()]
    by_reason = {s["reason"]: s for s in skipped}
    assert sorted(by_reason) == ["duplicate_id", "empty_question", "missing_image"]
    assert by_reason["missing_image"]["id"] == "charts#1"
    assert "images/gone.png" in by_reason["missing_image"]["detail"]
    assert by_reason["duplicate_id"]["shard"] == 1 and "earlier shard" in by_reason["duplicate_id"]["detail"]
    man = json.loads((stage_dir / "manifest.json").read_text())
    assert sum(man["skipped"].values()) == len(skipped) == 3

    capsys.readouterr()
    assert cli(["status", "--run", str(cfg.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"rows and details: {stage_dir / 'skipped.jsonl'}" in out
