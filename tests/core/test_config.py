"""Config: YAML -> typed dataclasses; errors name the key path; overrides; stage hashes."""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing

import pytest
import yaml

from pipeline.core.config import (
    DeltaConfig,
    RunConfig,
    SamplingConfig,
    apply_override,
    config_from_dict,
    load_config,
)
from pipeline.core.errors import ConfigError

BASE = {
    "run": {"name": "t"},
    "models": {
        "teacher": {"engine": "vllm", "model": "models/teacher"},
        "student": {"engine": "transformers", "model": "models/student"},
    },
}


def _raw(**sections):
    raw = copy.deepcopy(BASE)
    raw.update(sections)
    return raw


def test_valid_config_builds_typed_dataclasses():
    cfg = config_from_dict(_raw(sampling={"n": 4, "temperature": 1}))
    assert isinstance(cfg, RunConfig)
    assert cfg.sampling.n == 4 and isinstance(cfg.sampling.temperature, float)
    assert cfg.models.teacher.engine == "vllm"
    assert cfg.models.teacher.trust_remote_code is False  # off unless set explicitly
    assert cfg.delta.threshold == 0.05 and cfg.delta.metric == "jsd"


@pytest.mark.parametrize(
    "raw, message",
    [
        (_raw(sampling={"nn": 4}), r"sampling\.nn: unknown key \(allowed here: .*\bn\b"),
        (_raw(sampling={"n": "eight"}), r"sampling\.n: expected integer, got str 'eight'"),
        (_raw(delta={"metric": "kl"}), r"delta\.metric: expected one of \['jsd', 'tv', 'hellinger'\]"),
        ({"models": BASE["models"]}, r"<root>: 'run' is a required property"),
        (_raw(models={"teacher": {"engine": "vllm", "model": "m", "dtyp": "x"},
                      "student": {"model": "org/s"}}), r"models\.teacher\.dtyp: unknown key"),
        (_raw(bogus=1), r"(^|\s)bogus: unknown key"),
        (_raw(delta={"skip_solved": 0}), r"delta\.skip_solved must be in \(0, 1\], got 0"),
        (_raw(filter={"wrong_teacher_agreement": 2}), r"filter\.wrong_teacher_agreement must be in \[0, 1\]"),
    ],
)
def test_config_errors_name_the_key_path(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(sampling={"n": "x", "top_p": "y"}))
    assert "sampling.n" in str(err.value) and "sampling.top_p" in str(err.value)


def test_overrides_apply_and_are_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    cfg = load_config(p, ["sampling.n=3", "run.name=other", "filter.max_per_skill=10",
                          "models.teacher.max_pixels=50176"])
    assert (cfg.sampling.n, cfg.run.name, cfg.filter.max_per_skill) == (3, "other", 10)
    assert cfg.models.teacher.max_pixels == 50176
    with pytest.raises(ConfigError, match=r"sampling\.n: expected integer"):
        load_config(p, ["sampling.n=abc"])
    with pytest.raises(ConfigError, match=r"delta\.nope: unknown key"):
        load_config(p, ["delta.nope=1"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(p, ["sampling.n"])


@pytest.mark.parametrize("old, new", [("delta.n=4", "sampling.n"),
                                      ("delta.instruction=x", "sampling.instruction"),
                                      ("delta.max_tokens=9", "sampling.max_tokens"),
                                      ("delta.seed=1", "sampling.seed")])
def test_a_moved_key_fails_naming_its_new_place(tmp_path, old, new):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match=rf"{old.split('=')[0]}: moved to {new}"):
        load_config(p, [old])
    with pytest.raises(ConfigError, match=r"delta\.n: moved to sampling\.n"):
        config_from_dict(_raw(delta={"n": 8}))


def test_override_into_a_list_and_a_scalar():
    raw = {"a": [{"b": 1}], "c": 2}
    apply_override(raw, "a.0.b=5")
    assert raw["a"][0]["b"] == 5
    with pytest.raises(ConfigError, match="not a list index"):
        apply_override(raw, "a.3.b=1")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override(raw, "c.d=1")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_stage_hash_covers_only_its_parts():
    a = config_from_dict(_raw(sampling={"n": 8}, filter={"max_per_skill": 5}))
    b = config_from_dict(_raw(sampling={"n": 8}, filter={"max_per_skill": 9}, delta={"threshold": 0.2}))
    c = config_from_dict(_raw(sampling={"n": 4}))
    mine_keys = ["models.student", "sampling", "mine"]
    assert a.hash_of(mine_keys) == b.hash_of(mine_keys)  # filter change: mine still valid
    assert a.hash_of(mine_keys) != c.hash_of(mine_keys)
    assert a.hash_of(["filter"]) != b.hash_of(["filter"])
    assert a.hash_of(mine_keys) == config_from_dict(_raw(sampling={"n": 8})).hash_of(mine_keys)
    assert a.hash_of(["delta"]) != b.hash_of(["delta"])  # a new threshold: delta redone, mine kept


def test_k_above_the_sampling_budget_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"delta\.k must be in \[1, sampling\.n=4\]"):
        config_from_dict(_raw(sampling={"n": 4}, delta={"k": 5}))


# ------------------------------------------------------------------------ value ranges


def _bounded_fields(cls, prefix=""):
    """(key path, range) of every field declared with a range, through the whole tree
    (the first element of a list, the teacher for every engine block)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if typing.get_origin(tp) in (list, typing.Union, types.UnionType) and args else tp
        path = f"{prefix}{f.name}"
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(inner):
            yield from _bounded_fields(inner, f"{path}.0.")
        elif dataclasses.is_dataclass(inner):
            yield from _bounded_fields(inner, f"{path}.")
        elif f.metadata.get("range"):
            yield path, f.metadata["range"]


def _outside(rng):
    if "minimum" in rng:
        return rng["minimum"] - 1
    if "exclusiveMinimum" in rng:
        return rng["exclusiveMinimum"]
    return rng.get("maximum", rng.get("exclusiveMaximum")) + 1


BOUNDED = sorted((k, r) for k, r in _bounded_fields(RunConfig)
                 if not k.startswith(("models.student.", "models.rewriter.")))  # = teacher's
FULL = _raw(ingest={"sources": [{"format": "chartworld", "path": "seeds"}]})


def test_the_schema_declares_a_range_for_every_count_fraction_and_threshold():
    keys = {k for k, _ in BOUNDED}
    assert {"run.shard_size", "sampling.temperature", "sampling.top_p", "delta.threshold",
            "filter.threshold", "filter.min_teacher_agreement", "mine.fail_below",
            "rewrite.min_agreement", "assemble.validation_fraction",
            "models.teacher.gpu_memory_utilization", "execution.num_workers",
            "ingest.sources.0.limit"} <= keys
    assert len(keys) >= 35


@pytest.mark.parametrize("key, rng", BOUNDED, ids=[k for k, _ in BOUNDED])
def test_a_value_outside_its_range_is_refused_at_load_naming_the_key(key, rng, tmp_path):
    bad = _outside(rng)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(FULL))
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} must be .*, got {re.escape(repr(bad))}"):
        load_config(p, [f"{key}={bad}"])
    edge = rng.get("minimum", rng.get("maximum"))
    if edge is not None and key != "delta.k":  # the bound itself is allowed (k: also <= n)
        load_config(p, [f"{key}={edge}"])


def test_ranges_hold_for_sections_built_in_code_too():
    with pytest.raises(ConfigError, match=r"sampling\.temperature must be >= 0, got -1"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ConfigError, match=r"delta\.threshold must be in \[0, 1\], got 1\.5"):
        DeltaConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="min_pixels .* is above max_pixels"):
        config_from_dict(_raw(models={"teacher": {"model": "org/t", "min_pixels": 9, "max_pixels": 4},
                                      "student": {"model": "org/s"}}))


@pytest.mark.parametrize("name, problem", [
    ("", "is empty"), ("  ", "is empty"), ("/abs/run", "is an absolute path"),
    ("~/run", "contains a path separator"), ("a/b", "contains a path separator"),
    ("..\\\\up", "contains a path separator"), ("../up", "contains a path separator"),
    ("..", "contains '..'"), ("v1..2", "contains '..'"), (".", "starts with '.'"),
    (".hidden", "starts with '.'"), ("tab\there", "control character"),
])
def test_run_name_is_one_folder_inside_run_root(name, problem):
    with pytest.raises(ConfigError, match=rf"run\.name .* {re.escape(problem)}"):
        config_from_dict(_raw(run={"name": name}))


def test_good_run_names_and_override_values_that_are_not_json():
    assert config_from_dict(_raw(run={"name": "demo-2_v1.3"})).run_dir.name == "demo-2_v1.3"
    raw = copy.deepcopy(BASE)
    apply_override(raw, "run.name=2024-01-01")  # YAML reads a date: kept as its text
    assert config_from_dict(raw).run.name == "2024-01-01"
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_override(raw, "sampling.n=[1")


def test_a_number_yaml_reads_as_text_is_taken_where_a_number_is_expected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run: {name: t}\ndelta: {threshold: 1e-3}\nmodels:\n  teacher: {model: org/t, timeout_s: 5e1}\n"
                 "  student: {model: org/s}\n")
    cfg = load_config(p, ["filter.threshold=2e-2"])
    assert (cfg.delta.threshold, cfg.filter.threshold, cfg.models.teacher.timeout_s) == (1e-3, 2e-2, 50.0)
    assert load_config(p, ["run.name=1e-3"]).run.name == "1e-3"  # text where text is expected
    with pytest.raises(ConfigError, match=r"delta\.threshold: expected number, got str 'low'"):
        load_config(p, ["delta.threshold=low"])


def test_model_paths_are_checked_when_the_config_loads(tmp_path):
    local = tmp_path / "my-model"
    local.mkdir()
    ok = config_from_dict(_raw(models={"teacher": {"model": str(local)},
                                       "student": {"model": "Qwen/Qwen3-VL-2B-Instruct"}}))
    assert ok.models.teacher.model == str(local)
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(models={
            "teacher": {"model": str(tmp_path / "not-there")},
            "student": {"model": "./models/student-v2"},
            "rewriter": {"model": "not a hub id/with spaces"},
        }))
    msg = str(err.value)
    # One error naming every bad key at once, before any stage (or shard) starts.
    assert "models.teacher.model" in msg and str(tmp_path / "not-there") in msg
    assert "models.student.model" in msg and "models.rewriter.model" in msg
    assert msg.count("neither an existing folder") == 3
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match=r"models\.teacher\.model: .* is a file"):
        config_from_dict(_raw(models={"teacher": {"model": str(tmp_path / "a-file")},
                                      "student": {"model": "org/name"}}))


def test_an_openai_engine_needs_base_url_not_a_local_path():
    served = {"engine": "openai", "model": "Qwen/Qwen3-VL-8B-Instruct"}
    with pytest.raises(ConfigError, match=r"models\.teacher\.base_url: engine 'openai' needs"):
        config_from_dict(_raw(models={"teacher": served, "student": {"model": "org/s"}}))
    # The served name is the server's business: no local path is looked for.
    cfg = config_from_dict(_raw(models={
        "teacher": {**served, "model": "whatever-the-server-calls-it",
                    "base_url": "http://127.0.0.1:8000/v1"},
        "student": {"model": "org/s"}}))
    assert cfg.models.teacher.base_url == "http://127.0.0.1:8000/v1"
