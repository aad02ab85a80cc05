"""A user's mistake gets one line and exit code 2, never a traceback; `-v` adds the
traceback; a hostile run name writes nothing outside run.root.

Every case goes through `deltaprompts` exactly as typed (pipeline.cli.main), on a real
chart-world source and real files; none of them gets as far as loading a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main as cli
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A workspace: a chart-world source, a valid config, and files of every bad kind."""
    root = tmp_path_factory.mktemp("user-errors")
    write_seed_set(root / "cw", WorldConfig(), 6, seed=1, split="test")
    cfg = {
        "run": {"name": "u", "root": str(root / "runs"), "shard_size": 3},
        "execution": {"backend": "local"},
        "models": {"teacher": {"model": "models/chartworld/teacher"},
                   "student": {"model": "models/chartworld/student"}},
        "ingest": {"sources": [{"name": "cw", "format": "chartworld", "path": str(root / "cw"),
                                "split": "test"}]},
    }
    (root / "ok.yaml").write_text(yaml.safe_dump(cfg))
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "broken.yaml").write_text("run: {name: x\n")
    (root / "empty.parquet").write_bytes(b"")
    (root / "text.parquet").write_text("this is not parquet\n" * 20)
    (root / "a-file").write_text("x")
    (root / "bad.jsonl").write_bytes(b'{"question": "q", "image": "x.png"}\n\xff\xfe not utf-8\n')
    (root / "no-data").mkdir()
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), root / "no-rows.parquet")
    (root / "run-dirs" / "r1" / "01-ingest").mkdir(parents=True)
    (root / "run-dirs" / "r1" / "01-ingest" / "manifest.json").write_text("{not json")
    return {"root": root, "cfg": root / "ok.yaml"}


def _cases():
    # (id, argv with {root} / {cfg} placeholders, a phrase the one line must hold)
    run = ["run", "--config", "{cfg}"]
    one = run + ["--stages", "1"]
    src = "ingest.sources.0."
    return [
        # --stages
        ("stages-9", run + ["--stages", "9"], "no stage 9"),
        ("stages-0", run + ["--stages", "0"], "no stage 0"),
        ("stages-abc", run + ["--stages", "abc"], "'abc' is not a stage number"),
        ("stages-backwards", run + ["--stages", "3-1"], "runs backwards"),
        ("stages-empty", run + ["--stages", ""], "is not a stage number"),
        ("stages-half-range", run + ["--stages", "2-"], "is not a stage number"),
        ("stage-9", ["stage", "9", "--config", "{cfg}"], "invalid choice: 9"),
        # the command line itself
        ("no-command", [], "required: COMMAND"),
        ("unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
        ("no-config", ["run"], "required: --config"),
        ("unknown-option", run + ["--frob"], "unrecognized arguments: --frob"),
        ("override-without-value", one + ["sampling.n"], "expected key.sub=value"),
        ("override-not-yaml", one + ["sampling.n=[1"], "not valid YAML"),
        ("override-unknown-key", one + ["sampling.nn=3"], "sampling.nn: unknown key"),
        ("override-moved-key", one + ["delta.n=3"], "moved to sampling.n"),
        ("override-bad-index", one + [src.replace("0.", "3.") + "path=x"], "not a list index"),
        # the config file
        ("config-missing", ["run", "--config", "{root}/nope.yaml"], "config file not found"),
        ("config-folder", ["run", "--config", "{root}"], "is a folder"),
        ("config-binary", ["run", "--config", "{root}/binary.yaml"], "not a text file"),
        ("config-list", ["run", "--config", "{root}/list.yaml"], "top level must be a mapping"),
        ("config-device", ["run", "--config", "/dev/null"], "is not a regular file"),
        ("config-broken-yaml", ["run", "--config", "{root}/broken.yaml"], "not valid YAML at line"),
        # values
        ("shard-size-0", one + ["run.shard_size=0"], "run.shard_size must be >= 1"),
        ("filter-threshold-negative", one + ["filter.threshold=-1"], "filter.threshold must be in [0, 1]"),
        ("delta-threshold-above-1", one + ["delta.threshold=1.5"], "delta.threshold must be in [0, 1]"),
        ("temperature-negative", one + ["sampling.temperature=-1"], "sampling.temperature must be >= 0"),
        ("top-p-zero", one + ["sampling.top_p=0"], "sampling.top_p must be in (0, 1]"),
        ("n-as-text", one + ["sampling.n=eight"], "sampling.n: expected integer"),
        ("shard-size-float", one + ["run.shard_size=2.5"], "run.shard_size: expected integer"),
        ("workers-0", one + ["execution.num_workers=0"], "execution.num_workers must be >= 1"),
        ("ci-level-1", one + ["delta.ci_level=1"], "delta.ci_level must be in (0, 1)"),
        ("validation-fraction", one + ["assemble.validation_fraction=1.2"], "validation_fraction"),
        ("source-limit-negative", one + [src + "limit=-1"], "ingest.sources.0.limit must be >= 0"),
        ("no-sources", one + ["ingest.sources=[]"], "ingest.sources is empty"),
        ("unknown-backend", one + ["execution.backend=gpu"], "execution.backend: expected one of"),
        ("root-empty", one + ["run.root="], "run.root is empty"),
        ("gpu-memory", one + ["models.teacher.gpu_memory_utilization=2"], "gpu_memory_utilization"),
        ("k-above-n", one + ["sampling.n=2", "delta.k=3"], "delta.k must be in [1, sampling.n=2]"),
        # run.name and run.root
        ("name-empty", one + ["run.name="], "run.name '' is empty"),
        ("name-absolute", one + ["run.name=/tmp/elsewhere"], "is an absolute path"),
        ("name-dotdot", one + ["run.name=../../escape"], "contains a path separator"),
        ("name-bare-dotdot", one + ["run.name=.."], "contains '..'"),
        ("root-is-a-file", one + ["run.root={root}/a-file"], "is a file, not a folder"),
        ("root-under-a-file", one + ["run.root={root}/a-file/runs"], "cannot create the run folder"),
        # sources
        ("source-missing", one + [src + "path={root}/nowhere"], "does not exist"),
        ("source-missing-column", one + [src + "format=generic",
                                         src + "columns={{question: nope, image: image, answers: answer}}"],
         "missing column(s) ['nope']"),
        ("source-no-such-split", one + [src + "split=validation"], "no split 'validation'"),
        ("source-empty-parquet", one + [src + "path={root}/empty.parquet", src + "format=chartqa_lmms"],
         "is empty (0 bytes)"),
        ("source-not-parquet", one + [src + "path={root}/text.parquet", src + "format=chartqa_lmms"],
         "is not a readable Parquet file"),
        ("source-unknown-format", one + [src + "format=chartqa"], "expected one of"),
        ("source-jsonl-not-utf8", one + [src + "path={root}/bad.jsonl", src + "format=generic"],
         "cannot read"),
        # stages out of order, run folders
        ("stage-before-its-input", ["stage", "2", "--config", "{cfg}", "run.name=fresh"],
         "input stage 01-ingest is not complete"),
        ("status-no-run", ["status", "--run", "nope", "--root", "{root}/runs"], "no run folder 'nope'"),
        ("report-no-run", ["report", "--run", "nope", "--root", "{root}/runs"], "no run folder 'nope'"),
        ("report-sample-0", ["report", "--run", "{root}/run-dirs/r1", "--sample", "0"], "--sample 0"),
        ("corrupt-manifest-missing-shards", ["stage", "2", "--config", "{cfg}",
                                             "run.root={root}/run-dirs", "run.name=r1"],
         "was unreadable and 2 of its 2 shards are missing"),
        # audit
        ("audit-missing-data", ["audit", "--config", "{cfg}", "--data", "{root}/nowhere"], "does not exist"),
        ("audit-empty-folder", ["audit", "--config", "{cfg}", "--data", "{root}/no-data"], "holds no Parquet"),
        ("audit-not-parquet", ["audit", "--config", "{cfg}", "--data", "{root}/text.parquet"],
         "not readable as Parquet"),
        ("audit-no-run-data", ["audit", "--config", "{cfg}", "run.name=empty"], "no --data given"),
        ("audit-zero-rows", ["audit", "--config", "{cfg}", "--data", "{root}/no-rows.parquet"],
         "holds no prompts (0 rows)"),
        ("audit-limit-0", ["audit", "--config", "{cfg}", "--data", "{root}/cw", "--limit", "0"], "--limit 0"),
        # push (no dataset), train and eval arguments
        ("push-no-dataset", ["push", "--run", "{root}/run-dirs/r1", "--repo-id", "me/x"], "does not exist"),
        ("train-unknown-kind", ["train", "magic"], "invalid choice: 'magic'"),
        ("train-sft-no-data", ["train", "sft"], "required: --data"),
        ("train-opd-no-config-file", ["train", "opd", "--config", "{root}/nope.yaml"], "cannot read"),
        ("train-opd-bad-values", ["train", "opd", "--set", "steps=-1"], "steps must be >= 1"),
        ("train-sft-missing-data", ["train", "sft", "--data", "{root}/nope.parquet"], "does not exist"),
        ("train-sft-not-parquet", ["train", "sft", "--data", "{root}/text.parquet"], "not readable as Parquet"),
        # refresh: no base run, bad rounds / steps, a bad refresh folder name
        ("refresh-no-base-run", ["refresh", "--config", "{cfg}", "run.name=never-run"], "no base run"),
        ("refresh-unfinished-base", ["refresh", "--config", "{cfg}", "run.name=r1",
                                     "run.root={root}/run-dirs"], "stages 1-5 are complete"),
        ("refresh-no-heldout", ["refresh", "--config", "{cfg}", "--heldout", "{root}/nowhere"],
         "does not exist"),
        ("refresh-no-train-config", ["refresh", "--config", "{cfg}", "--train-config", "{root}/nope.yaml"],
         "does not exist"),
        ("refresh-rounds-0", ["refresh", "--config", "{cfg}", "--rounds", "0"], "refresh.rounds must be >= 1"),
        ("refresh-steps-0", ["refresh", "--config", "{cfg}", "--steps", "0"], "refresh.steps must be >= 1"),
        ("refresh-rounds-text", ["refresh", "--config", "{cfg}", "--rounds", "many"], "invalid int value"),
        ("refresh-bad-name", ["refresh", "--config", "{cfg}", "--name", "../out"], "refresh.name"),
        ("refresh-train-sets-steps", ["refresh", "--config", "{cfg}", "refresh.train.steps=3"],
         "refresh sets these itself"),
        ("eval-no-model", ["eval", "--data", "{root}/cw"], "required: --model"),
        ("eval-missing-data", ["eval", "--model", "models/chartworld/student", "--data", "{root}/nowhere"],
         "does not exist"),
        ("eval-missing-model", ["eval", "--model", "after={root}/no-model", "--data", "{root}/cw"],
         "no such model folder"),
    ]


CASES = _cases()
REPO = Path(__file__).resolve().parents[2]


def _argv(argv: list[str], world: dict[str, Path]) -> list[str]:
    return [a.format(root=world["root"], cfg=world["cfg"]) for a in argv]


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_error_is_one_line_and_exit_code_2(argv, phrase, world, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = cli(_argv(argv, world))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err


def test_minus_v_adds_the_traceback(world, capsys):
    code = cli(["-v", "run", "--config", str(world["cfg"]), "--stages", "1", "run.shard_size=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: run.shard_size") is False
    assert err.strip().splitlines()[-1] == "error: invalid config: run.shard_size must be >= 1, got 0"


def _tree(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


@pytest.mark.parametrize("name", ["../escape", "../../escape", "/tmp/abs-run", "a/b", "..", ".",
                                  "", " ", ".hidden", "x/../../escape", "bad\x00name"])
def test_a_hostile_run_name_writes_nothing_outside_run_root(name, tmp_path, capsys):
    root = tmp_path / "area" / "runs"
    root.mkdir(parents=True)
    write_seed_set(tmp_path / "area" / "cw", WorldConfig(), 3, seed=1, split="test")
    cfg = {"run": {"name": "ok", "root": str(root)}, "execution": {"backend": "local"},
           "ingest": {"sources": [{"format": "chartworld", "path": str(tmp_path / "area" / "cw"),
                                   "split": "test"}]}}
    (tmp_path / "area" / "c.yaml").write_text(yaml.safe_dump(cfg))
    before = _tree(tmp_path)
    abs_before = os.path.exists("/tmp/abs-run")
    code = cli(["run", "--config", str(tmp_path / "area" / "c.yaml"), "--stages", "1",
                f"run.name={json.dumps(name)}"])
    err = capsys.readouterr().err
    assert code == 2 and "run.name" in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before  # nothing new anywhere: not in root, not beside it
    assert os.path.exists("/tmp/abs-run") == abs_before


def test_a_run_folder_linked_outside_run_root_is_refused(tmp_path, capsys):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside)
    write_seed_set(tmp_path / "cw", WorldConfig(), 3, seed=1, split="test")
    cfg = {"run": {"name": "linked", "root": str(root)}, "execution": {"backend": "local"},
           "ingest": {"sources": [{"format": "chartworld", "path": str(tmp_path / "cw"), "split": "test"}]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "outside run.root" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
