"""Config: YAML -> typed dataclasses; errors name the key path; overrides; stage hashes."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.core.config import RunConfig, apply_override, config_from_dict, load_config
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
                      "student": {"model": "s"}}), r"models\.teacher\.dtyp: unknown key"),
        (_raw(bogus=1), r"(^|\s)bogus: unknown key"),
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
