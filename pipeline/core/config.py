"""The run config: one YAML file -> typed dataclasses, validated at load.

    cfg = load_config("configs/demo.yaml", overrides=["sampling.n=4", "run.name=try2"])

Every declaration of the run config lives here (the engine, source, sampling and Δ
blocks included), so the schema, the README's reference and the stages read one place.
Each stage reads only what it declares in ``Stage.config_keys``; the stage's config hash
covers exactly those parts, so changing the filter threshold does not invalidate the
(expensive) mine or delta shards.

Two blocks are kept apart on purpose:

* ``sampling``: how answers are drawn (n, temperature, top_p, max_tokens, seed, the
  instruction appended to every question). Mine (student) and delta (teacher) share it,
  and both hash it, so the student samples drawn in mine are reused, never drawn again.
* ``delta``: how Δ is measured from those answers (metric, threshold, the adaptive
  policy, the bootstrap). Changing it never invalidates mine's samples.

A key that moved between releases fails with a message naming its new place (MOVED_KEYS).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.configschema import (
    bounded,
    build,
    check_ranges,
    coerce_floats,
    to_dict,
    validate,
)
from pipeline.core.errors import ConfigError, SourceError
from pipeline.core.images import DEFAULT_MAX_DECODE_PIXELS, DEFAULT_MAX_PIXELS

DEFAULT_INSTRUCTION = (
    "Answer the question. Keep any reasoning short and end with a final line of the form "
    "'Answer: <value>'."
)
METRICS = ("jsd", "tv", "hellinger")
Metric = Literal["jsd", "tv", "hellinger"]


# ------------------------------------------------------------------------------ engines

EngineName = Literal["vllm", "transformers", "openai"]
# How the openai engine asks a server for JSON when a call carries a schema:
# json_schema = response_format {"type": "json_schema"} (the server enforces the schema),
# json_object = {"type": "json_object"} (any JSON object), none = no response_format.
ResponseFormat = Literal["json_schema", "json_object", "none"]


@dataclass
class EngineConfig:
    """How to load one model (one per model in the run YAML)."""

    engine: EngineName = "transformers"
    model: str = ""  # local path or Hub id (required)
    dtype: str = "auto"  # auto -> bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto -> cuda when available, else cpu (transformers)
    trust_remote_code: bool = False  # off unless a config sets it explicitly
    max_pixels: int | None = bounded(None, ge=1)  # processor image cap; None = the model's own
    min_pixels: int | None = bounded(None, ge=1)
    max_model_len: int | None = bounded(None, ge=1)  # context cap; None = the model's max positions
    tensor_parallel_size: int = bounded(1, ge=1)  # vllm
    gpu_memory_utilization: float = bounded(0.85, gt=0, le=1)  # vllm
    max_num_seqs: int | None = bounded(None, ge=1)  # vllm
    limit_mm_per_prompt: int = bounded(1, ge=1)  # vllm, images per prompt
    enforce_eager: bool = False  # vllm: skip graph capture / compilation (faster start)
    seed: int = 0  # engine-level seed (vllm); per-call seeds come through sample()
    batch_size: int = bounded(8, ge=1)  # transformers: prompts per forward
    base_url: str | None = None  # openai, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (never logged)
    concurrency: int = bounded(8, ge=1)  # openai: requests in flight
    timeout_s: float = bounded(120.0, gt=0)  # openai, per HTTP request
    max_retries: int = bounded(5, ge=0)  # openai: retries after the first attempt
    retry_backoff_s: float = bounded(1.0, ge=0)  # openai: first backoff (jittered, doubles per retry)
    retry_backoff_max_s: float = bounded(30.0, ge=0)  # openai: backoff (and Retry-After) cap
    extra_body: dict[str, Any] = field(default_factory=dict)  # openai: merged into payload
    # openai: what a call with a JSON schema sends (ResponseFormat above); when the server
    # refuses it (an HTTP 4xx), the request is sent again with each fallback in turn, and
    # the first one that works is used for the rest of the run (a warning says so).
    response_format: ResponseFormat = "json_schema"
    response_format_fallback: list[ResponseFormat] = field(
        default_factory=lambda: ["json_object", "none"]
    )

    def __post_init__(self) -> None:
        check_ranges(self, "models.*")
        if self.min_pixels is not None and self.max_pixels is not None \
                and self.min_pixels > self.max_pixels:
            raise ConfigError(f"models.*.min_pixels ({self.min_pixels}) is above max_pixels "
                              f"({self.max_pixels}): lower min_pixels or raise max_pixels")


# ------------------------------------------------------------------------------ sources

SourceFormat = Literal[
    "chartqa_m4",
    "chartqa_lmms",
    "docvqa",
    "infographicvqa",
    "cauldron",
    "mathvista",
    "ai2d",
    "chartworld",
    "generic",
]
SOURCE_FORMATS: tuple[str, ...] = SourceFormat.__args__  # type: ignore[attr-defined]

# Keys a `generic` source may map to its own column names.
GENERIC_COLUMN_KEYS = ("image", "question", "answers", "choices", "skill", "id")


@dataclass
class SourceConfig:
    """One seed source. Exactly one of ``hub_id`` / ``path`` must be set."""

    name: str = ""  # label written to each row's `source`; default: hub id or folder name
    format: SourceFormat = "generic"
    hub_id: str | None = None
    path: str | None = None
    config_name: str | None = None  # Hub config / subset (DocVQA, InfographicVQA, ai2d...)
    split: str = "train"
    revision: str | None = None  # Hub revision (branch, tag or commit)
    image_dir: str | None = None  # relative image paths resolve here (default: source folder)
    # Image paths must resolve inside image_dir / the source folder (no `..`, no absolute
    # path or symlink out of it); true reads them wherever they point.
    allow_outside: bool = False
    limit: int | None = bounded(None, ge=0)  # at most this many records (after sampling)
    sample: int | None = bounded(None, ge=0)  # random subset of this many records, drawn with `seed`
    seed: int = 0
    columns: dict[str, str] = field(default_factory=dict)  # generic: key -> column name
    meta_columns: list[str] = field(default_factory=list)  # extra columns copied into meta
    skill: str | None = None  # skill for rows whose record has none
    license: str | None = None  # recorded on the dataset card
    max_pixels: int = bounded(DEFAULT_MAX_PIXELS, ge=1)
    max_decode_pixels: int = bounded(DEFAULT_MAX_DECODE_PIXELS, ge=1)
    # the_cauldron records with several images: "skip" them (the question may refer to
    # any of the images, and a prompt carries one) or keep the "first" image.
    multi_image: Literal["skip", "first"] = "skip"

    def __post_init__(self) -> None:
        where = f"source {self.name or self.hub_id or self.path!r}"
        if (self.hub_id is None) == (self.path is None):
            raise SourceError(f"{where}: set exactly one of hub_id and path")
        if self.format not in SOURCE_FORMATS:
            raise SourceError(f"{where}: unknown format {self.format!r}; one of {SOURCE_FORMATS}")
        for key in ("limit", "sample"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise SourceError(f"{where}: {key} must be >= 0, got {value}")
        if self.max_pixels < 1 or self.max_decode_pixels < 1:
            raise SourceError(f"{where}: max_pixels and max_decode_pixels must be >= 1")
        if self.multi_image not in ("skip", "first"):
            raise SourceError(f"{where}: multi_image must be 'skip' or 'first'")
        unknown = sorted(set(self.columns) - set(GENERIC_COLUMN_KEYS))
        if unknown:
            raise SourceError(
                f"{where}: unknown keys in columns: {unknown}; allowed: {GENERIC_COLUMN_KEYS}"
            )
        if self.columns and self.format != "generic":
            raise SourceError(f"{where}: columns mapping is only used by format 'generic'")

    @property
    def label(self) -> str:
        """The `source` value of this source's rows."""
        if self.name:
            return self.name
        base = self.hub_id if self.hub_id else Path(self.path or "").name
        return f"{base}:{self.config_name}" if self.config_name else base


# ------------------------------------------------------------------- sampling and Δ


@dataclass
class SamplingConfig:
    """How answers are drawn, by mine (student) and delta (teacher) alike."""

    n: int = bounded(8, ge=1)  # samples per model (the full budget)
    temperature: float = bounded(0.7, ge=0)
    top_p: float = bounded(1.0, gt=0, le=1)
    max_tokens: int = bounded(512, ge=1)  # reasoning models need room before "Answer:"
    seed: int = 0  # per-call seeds derive from it (pipeline/sampling/draw.py)
    instruction: str = DEFAULT_INSTRUCTION  # appended to each question sent to the models

    def __post_init__(self) -> None:
        check_ranges(self, "sampling")


@dataclass
class DeltaConfig:
    """How Δ is measured from the sampled answers (pipeline/core/divergence.py)."""

    metric: Metric = "jsd"
    # zero-delta when Δ < threshold; JSD (base 2), TV and Hellinger all live in [0, 1]
    threshold: float = bounded(0.05, ge=0, le=1)
    adaptive: bool = True  # rounds of samples, stop early by unanimity or a fixed decision
    k: int = bounded(1, ge=1)  # first-round samples per model (defaults: see bench_adaptive)
    step: int = bounded(2, ge=1)  # samples per model added by each further round (>= n-k: two rounds)
    unanimous_k: int = bounded(5, ge=1)  # answers per model the unanimity stop needs (at least k, at most n)
    # No teacher samples where the prompt has gold and the student's accuracy against it
    # (mine.grading) over its n mined samples is >= this: stop_reason "student_solved",
    # Δ = 0 by definition (pipeline/sampling/policy.py). None: always ask the teacher.
    skip_solved: float | None = bounded(1.0, gt=0, le=1)
    bootstrap: int = bounded(200, ge=0)  # bootstrap resamples for the Δ interval (0: none)
    ci_level: float = bounded(0.9, gt=0, lt=1)  # two-sided coverage of the percentile interval
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"delta.metric must be one of {METRICS}, got {self.metric!r}")
        check_ranges(self, "delta")


# --------------------------------------------------------------------------- run blocks


@dataclass
class RunSection:
    name: str = field(metadata={"help": "run folder name under root"})
    root: str = "runs"
    shard_size: int = bounded(64, ge=1)  # prompts per shard = per Ray task = unit of resume
    # The sample store (pipeline/sampling/store.py), shared by runs: every completion drawn
    # is kept and served again. None: $DELTAPROMPTS_CACHE_DIR, else
    # $XDG_CACHE_HOME/deltaprompts/samples (~/.cache/deltaprompts/samples).
    cache_dir: str | None = None
    sample_store: bool = True  # false: draw everything, store nothing

    def __post_init__(self) -> None:
        check_ranges(self, "run")
        problem = run_name_problem(self.name)
        if problem:
            raise ConfigError(f"run.name {self.name!r} {problem}: it names one folder inside "
                              f"run.root ({self.root!r}), e.g. run.name=demo2; set run.root "
                              "to choose where runs live")
        if not self.root.strip():
            raise ConfigError("run.root is empty: set it to the folder that holds run folders "
                              "(default: runs)")
        scheme, sep, rest = self.root.partition("://")
        if sep and scheme == "file":  # a shared mount named as a URI
            self.root = rest if rest.startswith("/") else "/" + rest
        elif sep:
            raise ConfigError(
                f"run.root {self.root!r}: run folders on an object store ({scheme}://) are not "
                "supported yet; use a folder every node mounts at the same path (or file:///...) "
                "with execution.worker_io=true (docs/SCALING.md)")


def default_cache_dir() -> Path:
    """Where the sample store lives when ``run.cache_dir`` is not set."""
    env = os.environ.get("DELTAPROMPTS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deltaprompts" / "samples"


def cache_dir_of(run: RunSection) -> Path | None:
    """The sample store's folder for ``run``, or None when the store is off."""
    if not run.sample_store:
        return None
    return Path(run.cache_dir).expanduser() if run.cache_dir else default_cache_dir()


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a run folder name (None: it can). A run folder is one plain
    folder inside run.root, so nothing a run writes, or deletes, lands outside it."""
    if not name.strip():
        return "is empty"
    if os.path.isabs(name):
        return "is an absolute path"
    if any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep)):
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.' (a hidden folder)"
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        return "contains a control character"
    return None


@dataclass
class ExecutionConfig:
    backend: Literal["ray", "local"] = "ray"  # "local": in-process, for debugging
    # concurrent shard tasks; default: CPUs (CPU stages), 1 per GPU
    num_workers: int | None = bounded(None, ge=1)
    ray_address: str | None = None  # default: $RAY_ADDRESS, else a local Ray sized to the machine
    num_cpus: int | None = bounded(None, ge=1)  # local Ray only: CPUs to give it (default: all)
    # A shard whose worker was lost (its node died, the worker was killed) runs again on a
    # live worker up to this many times before it is reported failed (a rerun redoes it).
    max_shard_retries: int = bounded(2, ge=0)
    # How long a worker may wait for a node with the resources it asks for (a replacement
    # after a node loss, a GPU worker on a busy cluster) before it is given up.
    placement_timeout_s: float = bounded(300.0, gt=0)
    # Shared storage: each worker reads its input shards and writes its output shard itself,
    # so shard bytes never pass through the driver. run.root must be a folder every node
    # sees at the same path (a shared mount; a file:// URI names one).
    worker_io: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, "execution")


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
    # a prompt "fails" when student accuracy over its N samples < this
    fail_below: float = bounded(0.5, ge=0, le=1)
    tag_skills: bool = False  # ask the rewriter LLM for a skill where the seed has none

    def __post_init__(self) -> None:
        check_ranges(self, "mine")


@dataclass
class RewriteConfig:
    """Stage 3: synthesise new prompts aimed at the student's failures (stages/rewrite/)."""

    enabled: bool = False  # off: delta reads mine's shards directly
    # llm: an LLM writes new questions (seed-guided, then skill-guided); programmatic: the
    # chart-world rewriter renders new charts (chart-world seeds only); both: the two.
    method: Literal["llm", "programmatic", "both"] = "llm"
    # Seed selection: failed seeds (mine.fail_below) and any seed whose student accuracy
    # is below this; lowest accuracy first, at most max_seeds_per_skill per skill over the
    # run (split evenly across shards, since shards are rewritten independently).
    max_student_accuracy: float = bounded(0.75, ge=0, le=1)
    max_seeds_per_skill: int | None = bounded(100, ge=0)
    variants_per_seed: int = bounded(2, ge=1)  # k: rewrites asked per selected seed (one template each)
    seed: int = 0  # selection, template choice, chart drawing, engine seeds
    # LLM rewriter (models.rewriter, else the teacher).
    seed_templates: list[str] = field(default_factory=list)  # prompts_templates/rewrite/seed_guided; [] = all
    skill_guided: bool = True  # pass 2: accepted pass-1 skills, asked on other seed images
    skill_templates: list[str] = field(default_factory=list)  # .../skill_guided; [] = all
    images_per_skill: int = bounded(4, ge=0)  # pass 2: other images per accepted skill, per shard
    # rewriter calls per job (the first + retries with the error fed back)
    max_attempts: int = bounded(3, ge=1)
    temperature: float = bounded(0.7, ge=0)
    max_tokens: int = bounded(384, ge=1)
    # False for a text-only rewriter (e.g. SmolLM2, a large text LLM): it then reads a text
    # view of each image instead (seeds/text_view.py; seeds without one are skipped).
    send_image: bool = True
    # Constrain the rewriter's replies to the JSON schema where its engine can (vLLM,
    # OpenAI-compatible servers; transformers cannot, and relies on the retries).
    structured: bool = True
    # Pseudo-labels: the teacher answers each new prompt label_samples times (default
    # sampling.n, with the sampling.* settings); a prompt is kept when the majority's
    # share reaches min_agreement (the paper's avg@16 >= 0.5) and matches the rewriter's
    # expected answer, when it gave one.
    label_samples: int | None = bounded(None, ge=1)
    min_agreement: float = bounded(0.5, ge=0, le=1)
    # Programmatic prompts have exact answers; apply the same teacher filter to them too
    # (majority == exact answer with min_agreement)? Agreement is recorded either way.
    filter_programmatic: bool = True
    strategies: list[str] = field(default_factory=list)  # seeds.chartworld.variants.STRATEGIES; [] = all
    # The chart world the seeds were drawn from (item count, value range, image size):
    # programmatic charts stay inside it. Fields of seeds.chartworld.spec.WorldConfig to
    # override; {} = its defaults, the toy models' world. Checked before any stage runs.
    world: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ranges(self, "rewrite")


@dataclass
class FilterConfig:
    threshold: float | None = bounded(None, ge=0, le=1)  # default: delta.threshold
    dedup: bool = True  # near-identical questions on the same image
    max_per_skill: int | None = bounded(None, ge=1)
    max_per_source: int | None = bounded(None, ge=1)
    # share of teacher samples on its majority answer
    min_teacher_agreement: float = bounded(0.0, ge=0, le=1)
    # Drop prompts whose teacher is confidently wrong: its majority misses the gold answer
    # (teacher_correct false) with teacher_agreement >= this. None: keep them. Agreement is
    # over the samples drawn (adaptive: a prompt decided after one sample has 1.0).
    wrong_teacher_agreement: float | None = bounded(None, ge=0, le=1)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, "filter")


@dataclass
class AssembleConfig:
    validation_fraction: float = bounded(0.1, ge=0, le=1)
    seed: int = 0
    pretty_name: str = "DeltaPrompts"

    def __post_init__(self) -> None:
        check_ranges(self, "assemble")
    license: str | None = None  # default: the sources' licence if they agree, else "other"


@dataclass
class RefreshConfig:
    """`deltaprompts refresh` (pipeline/refresh.py): rounds of OPD on the current high-Δ set,
    the new checkpoint becoming the student, Δ of the whole pool re-measured against it."""

    # The refresh folder inside run.root (one round-NN run folder per round inside it);
    # None: "<run.name>-refresh".
    name: str | None = None
    rounds: int = bounded(3, ge=1)  # training rounds after round 0 (the base student's Δ)
    steps: int = bounded(10, ge=1)  # OPD optimizer steps per round
    train_config: str = "configs/opd.yaml"  # OPDConfig YAML (its opd: section)
    # OPDConfig fields over train_config's (e.g. {lr: 3.0e-4, loss: gjsd}); refresh sets
    # student, teacher, data, output_dir, steps, seed and instruction itself.
    train: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the OPD seed of every round (rollouts, data order)
    # Every round measures Δ at full sampling.n with no student_solved skip, so the teacher
    # draws its n samples per prompt once (round 0) and every later round is served them
    # from the sample store. false: the run's delta policy (adaptive, skip), which draws
    # more teacher samples in a later round wherever the new student needs them.
    full_n: bool = True
    # Held-out prompts (local: Parquet file/glob/folder, dataset folder) to score each round's
    # student on, greedy, graded with mine.grading; None: no held-out accuracy.
    heldout: str | None = None
    heldout_n: int | None = bounded(None, ge=1)  # the first n rows with gold
    heldout_split: str = "test"

    def __post_init__(self) -> None:
        check_ranges(self, "refresh")
        if self.name is not None and (problem := run_name_problem(self.name)):
            raise ConfigError(f"refresh.name {self.name!r} {problem}: it names one folder "
                              "inside run.root, e.g. refresh.name=demo-refresh")
        reserved = {"student", "teacher", "data", "output_dir", "steps", "seed", "instruction",
                    "init_from", "resume"}
        if taken := sorted(reserved & set(self.train)):
            raise ConfigError(f"refresh.train sets {taken}: refresh sets these itself "
                              "(per round); use refresh.steps / refresh.seed")


@dataclass
class RunConfig:
    run: RunSection
    models: ModelsConfig | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    assemble: AssembleConfig = field(default_factory=AssembleConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)

    def __post_init__(self) -> None:
        # The one check that spans two blocks: the first round cannot exceed the budget.
        if not 1 <= self.delta.k <= self.sampling.n:
            raise ConfigError(f"delta.k must be in [1, sampling.n={self.sampling.n}], got {self.delta.k}")

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run.name

    def section(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def parts_of(self, keys: list[str]) -> dict[str, Any]:
        """The named config parts as plain data, by key (what a stage's manifest records)."""
        return {k: to_dict(self.section(k)) for k in sorted(keys)}

    def hash_of(self, keys: list[str]) -> str:
        """Stable hash of the named config parts (e.g. ["models.student", "sampling"])."""
        payload = self.parts_of(keys)
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Keys that moved: the old spelling fails at load, naming the new one.
MOVED_KEYS: dict[str, str] = {
    "delta.n": "sampling.n",
    "delta.temperature": "sampling.temperature",
    "delta.top_p": "sampling.top_p",
    "delta.max_tokens": "sampling.max_tokens",
    "delta.instruction": "sampling.instruction",
    "delta.seed": "sampling.seed (sampling) and delta.bootstrap_seed (the Δ interval)",
}


def _moved(raw: dict[str, Any]) -> list[str]:
    out = []
    for old, new in MOVED_KEYS.items():
        section, _, key = old.partition(".")
        block = raw.get(section)
        if isinstance(block, dict) and key in block:
            out.append(f"{old}: moved to {new}")
    return out


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"bad override {override!r}: expected key.sub=value")
    key, _, text = override.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"bad override {override!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"bad override {override!r}: the value is not valid YAML ({problem}); "
                          "give a YAML value, and quote text that holds YAML characters "
                          "([ ] { } : # ' \")") from e
    value = json.loads(json.dumps(value, default=str))  # YAML's dates etc.: text, as in files
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
    if p.is_dir():
        raise ConfigError(f"config {p} is a folder; give a YAML file, e.g. --config configs/demo.yaml")
    if p.exists() and not p.is_file():
        raise ConfigError(f"config {p} is not a regular file; give a YAML file, e.g. --config configs/demo.yaml")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}; give a YAML file, e.g. --config configs/demo.yaml")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"config {p} cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {p} is not a text file (byte {e.start} is not UTF-8); "
                          "give a YAML file, e.g. --config configs/demo.yaml") from e
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    return config_from_dict(raw, overrides)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    # A deep copy as plain JSON data: YAML's dates and other non-JSON scalars become
    # strings, which the schema then accepts or reports like any other wrong value.
    raw = json.loads(json.dumps(raw, default=str))
    for ov in overrides or []:
        apply_override(raw, ov)
    moved = _moved(raw)
    if moved:
        raise ConfigError("invalid config:\n  " + "\n  ".join(moved))
    coerce_floats(raw, RunConfig)
    validate(raw, RunConfig)
    try:
        cfg = build(RunConfig, raw)
    except ConfigError:
        raise
    except ValueError as e:  # a section's own checks (e.g. a source with no path)
        raise ConfigError(f"invalid config: {e}") from e
    if cfg.models is not None:
        problems = [p for role in ("teacher", "student", "rewriter")
                    if (engine := getattr(cfg.models, role)) is not None
                    and (p := model_problem(engine, f"models.{role}"))]
        if problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg


# A Hub repo id: `org/name`, letters, digits, `-`, `_`, `.` (no `--` or `..`, as the Hub says).
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def model_problem(engine: EngineConfig, key: str) -> str | None:
    """Why ``engine`` cannot load its model, found at config load (not once per shard after
    a stage started): a local-model engine needs an existing folder or a Hub id
    ``org/name``; an ``openai`` engine needs ``base_url`` (its model is the served name)."""
    model = engine.model.strip()
    if engine.engine == "openai":
        if not engine.base_url:
            return (f"{key}.base_url: engine 'openai' needs the server's URL (e.g. "
                    "http://127.0.0.1:8000/v1); model is the name the server serves")
        return None if model else f"{key}.model: the name the server serves is required"
    if not model:
        return f"{key}.model: required (a local model folder, or a Hub id org/name)"
    path = Path(model).expanduser()
    if path.exists():
        return None if path.is_dir() else f"{key}.model: {model!r} is a file, not a model folder"
    looks_local = model.startswith(("/", ".", "~")) or "\\" in model or not _HUB_ID.match(model)
    if looks_local:
        return (f"{key}.model: {model!r} is neither an existing folder (looked for "
                f"{path.resolve()}) nor a Hub id of the form org/name")
    return None
