"""The stage-4 benchmarks' pieces: run folders cut from a pool, decision comparison,
profile categories, figures (benchmarks/delta_runs.py, bench_delta.py, bench_adaptive_real.py).

Nothing here is timed: the runs themselves are `make bench`; the end-to-end path on real
(tiny) models is exercised by the GPU check's dry run (tests/benchmarks/test_gpu_check.py).
"""

from __future__ import annotations

import cProfile
import pstats

import pyarrow as pa
import pytest

from benchmarks import bench_adaptive_real, bench_delta
from benchmarks.delta_runs import INGEST, MINE, STUDENT_COLUMNS, mine_table, prepare_run
from pipeline.core import shards
from pipeline.core.answers import extract_answer
from pipeline.core.config import DeltaConfig
from pipeline.core.divergence import delta_report
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.runner.run import Manifest, input_fingerprint


def _source(tmp_path, n: int, stage: str = MINE, shard_size: int = 4):
    rows = [make_prompt_row(source="chartworld", question=f"What is value {i}?", image_bytes=None,
                            answers=[str(i)]) for i in range(n)]
    table = rows_to_table(rows)
    if stage == MINE:
        table = table.append_column("student_samples", pa.array([[f"Answer: {i}"] * 2 for i in range(n)]))
        table = table.append_column("student_answers", pa.array([[str(i)] * 2 for i in range(n)]))
    run = tmp_path / "source"
    stage_dir = run / stage
    stage_dir.mkdir(parents=True)
    man = Manifest(stage=stage, config_hash="t", input_hash="", status="complete")
    for index, start in enumerate(range(0, n, shard_size)):
        shards.write_shard(stage_dir, shards.ShardMarker(index=index, rows=0, sha256=""),
                           table.slice(start, shard_size))
        man.shards[str(index)] = {}
    man.write(stage_dir)
    return run, table


def test_prepare_run_cuts_the_first_prompts_into_a_complete_mine(tmp_path):
    source, table = _source(tmp_path, 10)
    dest = tmp_path / "runs" / "bench"
    (dest / "stale").mkdir(parents=True)  # a benchmark starts clean
    assert prepare_run(source, dest, 7, shard_size=3, drop_student=True) == 7
    assert not (dest / "stale").exists()
    # what stage 4 checks of its input: a complete manifest and hash-checked shards
    _, hashes, indices = input_fingerprint(dest / MINE)
    assert indices == [0, 1, 2] and len(hashes) == 3
    got = mine_table(dest)
    assert got.column("id").to_pylist() == table.column("id").to_pylist()[:7]
    assert not set(STUDENT_COLUMNS) & set(got.column_names)

    kept = tmp_path / "kept"
    prepare_run(source, kept, 5, shard_size=5, drop_student=False)
    assert mine_table(kept).column("student_answers").to_pylist()[4] == ["4", "4"]
    with pytest.raises(ValueError, match="has 10 prompts, 11 asked"):
        prepare_run(source, kept, 11)


def test_a_source_without_mine_gives_its_ingested_prompts(tmp_path):
    source, table = _source(tmp_path, 5, stage=INGEST)
    assert mine_table(source).column("id").to_pylist() == table.column("id").to_pylist()


def _decisions(pairs):
    return pa.table({"id": [i for i, _ in pairs], "zero_delta": [z for _, z in pairs]})


def test_compare_counts_identical_decisions_on_prompts_scored_in_both():
    full = _decisions([("a", True), ("b", False), ("c", True), ("d", False)])
    adaptive = _decisions([("b", False), ("a", False), ("c", True), ("e", True)])  # d failed, e is new
    got = bench_adaptive_real.compare(full, adaptive)
    assert got["prompts"] == 3 and got["identical"] == 2 and got["identical_fraction"] == pytest.approx(2 / 3, abs=1e-4)
    assert got["zero_in_reference_only"] == 1 and got["zero_in_other_only"] == 0


def test_adaptive_summary_saved_shares_and_target():
    runs = {
        "full": {"samples": {"teacher_drawn": 800, "student_drawn": 0}, "wall_s": 100.0, "shard_seconds": 80.0},
        "adaptive": {"samples": {"teacher_drawn": 300, "student_drawn": 0, "stopped_early": {"unanimous": 60}},
                     "wall_s": 60.0, "shard_seconds": 40.0},
    }
    decisions = {"adaptive_vs_full": {"identical_fraction": 0.985}}
    s = bench_adaptive_real.summarize(runs, decisions)
    assert s["saved_fraction"] == {"teacher": 0.625, "student": None, "total": 0.625}
    assert s["target_met"] and s["wall_saved_fraction"] == 0.4 and s["shard_seconds_saved_fraction"] == 0.5
    assert s["noise_floor_identical_fraction"] is None
    s = bench_adaptive_real.summarize(runs, {"adaptive_vs_full": {"identical_fraction": 0.97}})
    assert not s["target_met"]


def test_profile_categories_find_the_pipeline_functions():
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        extract_answer("<think>x</think> Answer: 7", None)
    delta_report(["7"] * 4, ["7", "8", "7", "7"], DeltaConfig(bootstrap=20), None)
    prof.disable()
    parts = {p["part"]: p for p in bench_delta.categorize(pstats.Stats(prof), 1.0)}
    assert parts["answer extraction"]["seconds"] > 0
    assert parts["Δ and its bootstrap interval"]["seconds"] > 0
    assert parts["vLLM generate (all of it)"]["seconds"] == 0
    assert len(parts) == len(bench_delta.CATEGORIES)


def _delta_result(cli: bool):
    pass_ = {"read_s": 0.1, "process_s": 9.0, "write_s": 0.2, "finalize_s": 0.7, "total_s": 10.0}
    r = {
        "n": 8,
        "bare": {"wall_s": 60.0, **{m: {"engine": "vllm", "load_s": 20.0, "prepare_s": 0.5, "generate_s": 4.5,
                                        "samples": 800, "tokens": 9000} for m in ("teacher", "student")}},
        "local": {"startup_s": 40.0,
                  "adaptive_false": {**pass_, "samples": {"teacher_drawn": 800, "student_drawn": 800}},
                  "adaptive_true": {**pass_, "total_s": 6.0,
                                    "samples": {"teacher_drawn": 300, "student_drawn": 350}}},
    }
    if cli:
        r["cli_adaptive_false"] = {"wall_s": 75.0, "shard_seconds": 30.0}
        r["cli_adaptive_true"] = {"wall_s": 70.0, "shard_seconds": 26.0}
    return r


def test_delta_summary_ratios_against_the_bare_engine():
    s = bench_delta.summarize(_delta_result(cli=True))
    bare, off, on = s["rows"]
    assert bare["without_startup_s"] == 10.0 and bare["samples"] == 1600 and bare["ratio_without_startup"] == 1.0
    assert off["ratio_without_startup"] == 1.0 and off["ratio_with_startup"] == 1.25 and off["samples"] == 1600
    assert off["cli_overhead_s"] == 75.0 - 40.0 - 10.0  # CLI wall - engine start-up - in-process pass
    assert on["ratio_without_startup"] == 0.6 and on["samples"] == 650 and on["samples_per_s"] == round(650 / 6, 1)
    assert s["target_adaptive_off_met"] and s["target_adaptive_on_met"]

    s = bench_delta.summarize(_delta_result(cli=False))
    assert s["rows"][1]["with_startup_s"] is None and s["rows"][1]["ratio_with_startup"] is None
    r = _delta_result(cli=False)
    r.update(summary=s, command="python -m benchmarks.bench_delta", machine={}, date="d", seconds=1.0,
             prompts=100, source_run="runs/teach", config="configs/teach.yaml", overrides=[], engine="vllm")
    md = bench_delta.render(r)
    assert "| stage 4, delta.adaptive=true | n/a | 6.00 | 650 |" in md and "**0.6x**" in md
    assert "seed per request" not in md  # results from before the seeded pass existed
    for m, (seeded, again) in (("teacher", (5.0, 4.0)), ("student", (3.0, 4.5))):
        r["bare"][m].update(generate_seeded_s=seeded, generate_again_s=again)
    md = bench_delta.render(r)
    assert "generate 9.00 s plain, **8.00 s with a seed per request**" in md and "8.50 s plain again" in md
    assert "the seeded bare generate: **1.250x**" in md  # 10.0 s in process / 8.0 s


def test_adaptive_report_reads_against_the_noise_floor():
    runs = {key: {"samples": {"teacher_drawn": t, "student_drawn": 0}, "wall_s": w, "shard_seconds": w / 2}
            for key, t, w in (("full", 800, 100.0), ("adaptive", 350, 70.0), ("full_reseeded", 800, 98.0))}
    decisions = {"adaptive_vs_full": {"prompts": 100, "identical_fraction": 0.95, "zero_in_reference_only": 3,
                                      "zero_in_other_only": 2},
                 "full_vs_full_reseeded": {"prompts": 100, "identical_fraction": 0.94}}
    r = {"runs": runs, "decisions": decisions, "summary": bench_adaptive_real.summarize(runs, decisions),
         "command": "python -m benchmarks.bench_adaptive_real", "machine": {}, "date": "d", "seconds": 1.0,
         "prompts": 100, "source_run": "runs/teach", "config": "configs/teach.yaml", "n": 8,
         "policy": {"k": 1, "step": 2, "unanimous_k": 5}, "fresh_student": False, "engine": "vllm"}
    md = bench_adaptive_real.render(r)
    assert "stage 4, vllm engine" in md and "**total 56.2%**" in md
    assert "**95.0%** of 100 prompts" in md and "agree on 94.0% of 100 prompts" in md
    # the verdict comes first (95% < 98%, whatever the floor), with the figures it judged
    assert md.splitlines()[2].startswith("**Target") and "98% identical decisions: not met**" in md.splitlines()[2]
    assert "identical 95.0%; two full-N runs with different draws agree on 94.0%" in md.splitlines()[2]
