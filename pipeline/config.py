"""The run config: one YAML file -> typed dataclasses, validated at load.

    cfg = load_config("configs/demo.yaml", overrides=["delta.n=4", "run.name=try2"])

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
from pipeline.delta import DeltaConfig
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
class IngestConfig:
    sources: list[SourceConfig] = field(default_factory=list)


@dataclass
class MineConfig:
    grading: Literal["relaxed", "anls", "exact"] = "relaxed"
    fail_below: float = 0.5  # a prompt "fails" when student accuracy over its N samples < this
    tag_skills: bool = False  # ask the rewriter LLM for a skill where the seed has none


@dataclass
class RewriteConfig:
    """Stage 3: synthesise new prompts aimed at the student's failures (stages/rewrite.py)."""

    enabled: bool = False  # off: delta reads mine's shards directly
    # llm: an LLM writes new questions (seed-guided, then skill-guided); programmatic: the
    # chart-world rewriter renders new charts (chart-world seeds only); both: the two.
    method: Literal["llm", "programmatic", "both"] = "llm"
    # Seed selection: failed seeds (mine.fail_below) and any seed whose student accuracy
    # is below this; lowest accuracy first, at most max_seeds_per_skill per skill over the
    # run (split evenly across shards, since shards are rewritten independently).
    max_student_accuracy: float = 0.75
    max_seeds_per_skill: int | None = 100
    variants_per_seed: int = 2  # k: rewrites asked per selected seed (one template each)
    seed: int = 0  # selection, template choice, chart drawing, engine seeds
    # LLM rewriter (models.rewriter, else the teacher).
    seed_templates: list[str] = field(default_factory=list)  # prompts_templates/rewrite/seed_guided; [] = all
    skill_guided: bool = True  # pass 2: accepted pass-1 skills, asked on other seed images
    skill_templates: list[str] = field(default_factory=list)  # .../skill_guided; [] = all
    images_per_skill: int = 4  # pass 2: other images per accepted skill, per shard
    max_attempts: int = 3  # rewriter calls per job (the first + retries with the error fed back)
    temperature: float = 0.7
    max_tokens: int = 384
    send_image: bool = True  # False for a text-only rewriter (e.g. a large text LLM)
    # Pseudo-labels: the teacher answers each new prompt label_samples times (default
    # delta.n, with the delta.* sampling settings); a prompt is kept when the majority's
    # share reaches min_agreement (the paper's avg@16 >= 0.5) and matches the rewriter's
    # expected answer, when it gave one.
    label_samples: int | None = None
    min_agreement: float = 0.5
    # Programmatic prompts have exact answers; apply the same teacher filter to them too
    # (majority == exact answer with min_agreement)? Agreement is recorded either way.
    filter_programmatic: bool = True
    strategies: list[str] = field(default_factory=list)  # seeds.chartworld.rewrite.STRATEGIES; [] = all
    # The chart world the seeds were drawn from (item count, value range, image size):
    # programmatic charts stay inside it. Fields of seeds.chartworld.spec.WorldConfig to
    # override; {} = its defaults, the toy models' world.
    world: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variants_per_seed < 1:
            raise ValueError(f"rewrite.variants_per_seed must be >= 1, got {self.variants_per_seed}")
        if self.max_attempts < 1:
            raise ValueError(f"rewrite.max_attempts must be >= 1, got {self.max_attempts}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"rewrite.min_agreement must be in [0, 1], got {self.min_agreement}")
        if self.label_samples is not None and self.label_samples < 1:
            raise ValueError(f"rewrite.label_samples must be >= 1, got {self.label_samples}")
        if self.max_seeds_per_skill is not None and self.max_seeds_per_skill < 0:
            raise ValueError(f"rewrite.max_seeds_per_skill must be >= 0, got {self.max_seeds_per_skill}")
        self.world_config()  # a bad world fails at load, naming the field

    def world_config(self):
        """The programmatic rewriter's seeds.chartworld.spec.WorldConfig."""
        from seeds.chartworld.spec import WorldConfig

        try:
            world = WorldConfig(**self.world)
        except TypeError as e:
            raise ValueError(f"rewrite.world: {e}") from None
        try:
            world.validate()
        except ValueError as e:
            raise ValueError(f"rewrite.world: {e}") from None
        return world


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
    ingest: IngestConfig = field(default_factory=IngestConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    # Sampling (n, temperature, ...) lives here and is shared by mine (student) and delta
    # (teacher), so the student samples drawn in mine are reused, never drawn again.
    delta: DeltaConfig = field(default_factory=DeltaConfig)
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
        """Stable hash of the named config parts (e.g. ["models.student", "delta.n"])."""
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
    try:
        return build(RunConfig, raw)
    except ValueError as e:  # a section's own checks (e.g. a source with no path)
        raise ConfigError(f"invalid config: {e}") from e
