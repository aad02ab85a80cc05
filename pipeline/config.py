"""The run config: one YAML file -> typed dataclasses, validated at load.

    cfg = load_config("configs/demo.yaml", overrides=["sampling.n=4", "run.name=try2"])

Every stage reads only its own section plus what it declares in `Stage.config_keys`; the
stage's config hash covers exactly those parts, so changing the filter threshold does not
invalidate the (expensive) mine or delta shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.configschema import ConfigError, build, to_dict, validate
from pipeline.engines.base import EngineConfig
from seeds.sources import SourceConfig


@dataclass
class RunSection:
    name: str = field(metadata={"help": "run folder name under root"})
    root: str = "runs"
    shard_size: int = 64  # prompts per shard = per Ray task = unit of resume


@dataclass
class ExecutionConfig:
    backend: Literal["ray", "local"] = "ray"  # "local": in-process, for debugging
    num_workers: int | None = None  # concurrent shard tasks; default: CPUs (CPU stages), 1 per GPU
    ray_address: str | None = None  # default: $RAY_ADDRESS, else a local Ray sized to the machine
    num_cpus: int | None = None  # local Ray only: CPUs to give it (default: all)


@dataclass
class ModelsConfig:
    teacher: EngineConfig
    student: EngineConfig
    rewriter: EngineConfig | None = None  # default: the teacher


@dataclass
class SamplingConfig:
    """How answers are drawn, shared by mine (student) and delta (teacher) so samples drawn
    in mine are reused by delta instead of drawn again."""

    n: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0
    instruction: str = "Answer with a single word or number, as: Answer: <answer>"


@dataclass
class IngestConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    max_pixels: int = 1024 * 1024  # images above are downscaled (aspect kept) once, at ingest


@dataclass
class MineConfig:
    grading: Literal["relaxed", "anls", "exact"] = "relaxed"
    fail_below: float = 0.5  # a prompt "fails" when student accuracy over its N samples < this
    tag_skills: bool = False  # ask the rewriter LLM for a skill where the seed has none


@dataclass
class DeltaStageConfig:
    metric: Literal["jsd", "tv", "hellinger"] = "jsd"
    threshold: float = 0.05  # Δ below this = zero-delta
    adaptive: bool = True  # draw k first; stop early when both models are unanimous & agree
    adaptive_k: int = 4
    bootstrap: int = 200  # resamples for the Δ uncertainty interval (0 = off)


@dataclass
class FilterConfig:
    threshold: float | None = None  # default: delta.threshold
    dedup: bool = True  # near-identical questions on the same image
    max_per_skill: int | None = None
    max_per_source: int | None = None
    min_teacher_agreement: float = 0.0  # share of teacher samples on its majority answer
    seed: int = 0


@dataclass
class AssembleConfig:
    validation_fraction: float = 0.1
    seed: int = 0
    pretty_name: str = "DeltaPrompts"
    license: str | None = None  # default: the sources' licence if they agree, else "other"


@dataclass
class RunConfig:
    run: RunSection
    models: ModelsConfig | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    delta: DeltaStageConfig = field(default_factory=DeltaStageConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    assemble: AssembleConfig = field(default_factory=AssembleConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run.name

    def section(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def hash_of(self, keys: list[str]) -> str:
        """Stable hash of the named config parts (e.g. ["models.student", "sampling"])."""
        payload = {k: to_dict(self.section(k)) for k in sorted(keys)}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"bad override {override!r}: expected key.sub=value")
    key, _, text = override.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"bad override {override!r}: empty key")
    value = yaml.safe_load(text) if text.strip() else ""
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"bad override {override!r}: {where} is not a list index")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"bad override {override!r}: {where} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"bad override {override!r}: {key} is not a list index")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"bad override {override!r}: {'.'.join(parts[:-1])} is not a section")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read, override, validate and build a RunConfig. Relative paths stay as written."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    return config_from_dict(raw, overrides)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    raw = json.loads(json.dumps(raw))  # deep copy; also rejects non-JSON values early
    for ov in overrides or []:
        apply_override(raw, ov)
    validate(raw, RunConfig)
    return build(RunConfig, raw)
