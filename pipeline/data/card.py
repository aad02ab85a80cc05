"""The dataset card (README.md) of an assembled DeltaPrompts dataset.

    text = render_card(CardInfo(teacher=..., student=..., ...))   # or render_card({...})
    write_text(dataset_dir / "README.md", text)   # pipeline/core/reports.py: atomic

The YAML front matter is built as a Python dict and dumped with `yaml.safe_dump` (never
templated as text), so a model name or licence with a colon or quote cannot break it; the
Markdown body comes from `prompts_templates/dataset_card.md.j2`. Everything the card says
is passed in: nothing here reads run folders, so the card can only show the counts the
caller measured.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from pipeline.core.schema import PROMPT_COLUMNS
from prompts_templates import TEMPLATE_ROOT

TEMPLATE_PATH = TEMPLATE_ROOT / "dataset_card.md.j2"

TASK_CATEGORIES = ["visual-question-answering"]
BASE_TAGS = ["distillation", "vlm", "deltaprompts"]

# One line per canonical prompt column (pipeline/schema.py); the card refuses a dataset
# that lacks one, since the schema promises they are never dropped downstream.
PROMPT_COLUMN_DOCS: dict[str, str] = {
    "id": "Content id of the prompt: sha256 of image bytes + question (16 hex chars); "
    "stable from ingest to the Hub.",
    "source": "Seed dataset the prompt (or its parent) came from.",
    "split": "Split of the seed dataset the prompt was taken from (not this dataset's split).",
    "image": "The image, decoded by `datasets` as a PIL image.",
    "question": "The question asked about the image.",
    "answers": "Gold answers (several where the seed lists several; empty when there is "
    "no gold, e.g. synthesised prompts).",
    "choices": "Answer options for multiple-choice prompts; empty otherwise.",
    "skill": "Skill the prompt exercises (from seed metadata or tagged by an LLM).",
    "parent_id": "Lineage: id of the prompt this one was rewritten from; null for seed prompts.",
    "meta": "JSON object of source-specific extras, kept verbatim from the seed.",
}

# Descriptions for per-stage columns whose names the stages are known to use; a caller's
# `column_docs` overrides these. Any other column must be described by the caller.
KNOWN_STAGE_COLUMN_DOCS: dict[str, str] = {
    "template": "Lineage: name of the rewriting template that produced the prompt.",
    "rewriter": "Lineage: model that rewrote the prompt.",
    "rewrite_pass": "Lineage: synthesis pass (seed-guided or skill-guided).",
    "delta": "Answer divergence Δ between teacher and student answer distributions.",
    "teacher_answers": "Normalised final answers extracted from the teacher's samples.",
    "student_answers": "Normalised final answers extracted from the student's samples.",
    "student_accuracy": "Share of the student's samples that match a gold answer.",
    "failed": "True when the student's accuracy is below the mining threshold.",
}

# Licence ids the Hub accepts in `license:` (the common ones). A source licence outside
# this list makes the dataset licence "other"; the body still names it verbatim.
HUB_LICENSES = {
    "apache-2.0",
    "mit",
    "openrail",
    "bigscience-openrail-m",
    "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m",
    "afl-3.0",
    "artistic-2.0",
    "bsl-1.0",
    "bsd",
    "bsd-2-clause",
    "bsd-3-clause",
    "bsd-3-clause-clear",
    "c-uda",
    "cc",
    "cc0-1.0",
    "cc-by-2.0",
    "cc-by-2.5",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0",
    "cdla-permissive-1.0",
    "cdla-permissive-2.0",
    "wtfpl",
    "ecl-2.0",
    "epl-1.0",
    "epl-2.0",
    "etalab-2.0",
    "eupl-1.1",
    "eupl-1.2",
    "agpl-3.0",
    "gfdl",
    "gpl",
    "gpl-2.0",
    "gpl-3.0",
    "lgpl",
    "lgpl-2.1",
    "lgpl-3.0",
    "isc",
    "lppl-1.3c",
    "ms-pl",
    "mpl-2.0",
    "odc-by",
    "odbl",
    "openrail++",
    "osl-3.0",
    "postgresql",
    "ofl-1.1",
    "ncsa",
    "unlicense",
    "zlib",
    "pddl",
    "lgpl-lr",
    "deepfloyd-if-license",
    "llama2",
    "llama3",
    "llama3.1",
    "llama3.2",
    "llama3.3",
    "gemma",
    "unknown",
    "other",
}

# Config keys whose values must never reach a public card (an openai-compatible engine
# config may carry an API key). Values elsewhere go through public_text.
# The secret word must end the key: `hf_token`, `api_key`, `password` match; `max_tokens`
# and `api_key_env` (the *name* of a variable) do not.
_SECRET_KEY = re.compile(
    r"(?:^|[_-])(?:token|secret|password|passwd|api[_-]?key|apikey|(?:secret|private|access)"
    r"[_-]?key|authorization|auth|credentials?|cookie)$", re.IGNORECASE)


@dataclass
class StageCount:
    """Rows a stage read and wrote, and why the missing ones were skipped."""

    stage: str
    rows_in: int
    rows_out: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows


@dataclass
class SourceInfo:
    """One seed source and the licence its data is under."""

    name: str
    license: str  # Hub licence id where there is one ("cc-by-4.0"), else free text
    origin: str = ""  # Hub dataset id or local path it was read from
    rows: int | None = None  # prompts from this source in the final dataset


@dataclass
class CardInfo:
    """Everything `render_card` needs; the keys of the dict `render_card` also accepts.

    `features` is the `datasets` features JSON of the final table, as
    `pipeline.core.schema.hf_features(schema)` returns it; the card's `dataset_info` and its
    column list are built from it, so they always match the files.
    """

    teacher: str  # model id or path
    student: str
    split_rows: dict[str, int]  # split -> rows, e.g. {"train": 900, "validation": 100}
    features: dict[str, Any]
    stage_counts: list[StageCount]
    sources: list[SourceInfo]
    # per-stage column -> one line; entries for columns not in `features` are ignored, so
    # callers may pass every stage's docs at once
    column_docs: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # config parts as plain data (by stage, from manifests)
    pretty_name: str = "DeltaPrompts"
    repo_id: str | None = None  # for the load_dataset example
    license: str | None = None  # default: the sources' licence when they agree, else "other"
    delta_metric: str = "jsd"
    delta_threshold: float = 0.05
    measured_prompts: int | None = None  # prompts whose Δ was measured
    zero_delta_prompts: int | None = None  # of those, prompts with Δ below the threshold
    delta_histogram: str | None = None  # PNG path relative to the dataset folder
    data_files: dict[str, str] = field(
        default_factory=dict
    )  # split -> glob; default data/<split>-*
    # split -> bytes of its Arrow table (datasets' num_bytes); without it datasets drops the
    # card's split sizes ("`splits` field in YAML is malformed") and never checks row counts
    split_bytes: dict[str, int] = field(default_factory=dict)
    languages: list[str] = field(default_factory=lambda: ["en"])
    extra_tags: list[str] = field(default_factory=list)
    description: str = ""  # a paragraph of the caller's own, shown under the title
    versions: dict[str, str] = field(default_factory=dict)  # package -> version

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CardInfo:
        """Build from plain data; unknown or missing keys give one clear error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"card info: unknown key(s) {unknown}; valid keys: {names}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in raw]
        if missing:
            raise ValueError(f"card info: missing required key(s) {missing}")
        data = dict(raw)
        data["stage_counts"] = [_as(StageCount, s, "stage_counts") for s in data["stage_counts"]]
        data["sources"] = [_as(SourceInfo, s, "sources") for s in data["sources"]]
        return cls(**data)


def _as(cls: type, value: Any, where: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        # ValueError, as for every other card-info problem: callers catch one type.
        raise ValueError(f"card info: {where} items must be dicts or {cls.__name__}")  # noqa: TRY004
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"card info: {where} item has unknown key(s) {unknown}")
    try:
        return cls(**value)
    except TypeError as e:  # a missing required field
        raise ValueError(f"card info: {where} item {value!r}: {e}") from None


def render_card(info: CardInfo | dict[str, Any], template_path: Path | None = None) -> str:
    """The README.md text: YAML front matter + the Markdown body."""
    if isinstance(info, dict):
        info = CardInfo.from_dict(info)
    _check(info)
    # What reaches the card is public: model paths and source origins may be local paths
    # or URLs with credentials, like any config value.
    info = dataclasses.replace(
        info,
        teacher=public_text(info.teacher),
        student=public_text(info.student),
        sources=[dataclasses.replace(s, origin=public_text(s.origin)) for s in info.sources],
    )
    license_id = dataset_license(info)
    total = sum(info.split_rows.values())
    data_files = {s: info.data_files.get(s, f"data/{s}-*") for s in info.split_rows}
    front = {
        "pretty_name": info.pretty_name,
        "license": license_id,
        "language": list(info.languages),
        "task_categories": list(TASK_CATEGORIES),
        "tags": list(dict.fromkeys(BASE_TAGS + list(info.extra_tags))),
        "size_categories": [size_category(total)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": p} for s, p in data_files.items()],
            }
        ],
        "dataset_info": {
            "features": features_to_yaml(info.features),
            "splits": [{"name": s, "num_examples": int(n)}
                       | ({"num_bytes": int(info.split_bytes[s])} if s in info.split_bytes else {})
                       for s, n in info.split_rows.items()],
        },
    }
    columns = [
        {
            "name": name,
            "type": feature_type_name(feat),
            "doc": _column_doc(info, name),
            "prompt": name in PROMPT_COLUMNS,
        }
        for name, feat in info.features.items()
    ]
    zero_fraction = None
    if info.measured_prompts and info.zero_delta_prompts is not None:
        zero_fraction = info.zero_delta_prompts / info.measured_prompts
    licences = sorted({s.license for s in info.sources})
    context = {
        "info": info,
        "front_matter": _dump(front).rstrip("\n"),
        "license_id": license_id,
        "licences_differ": len(licences) > 1,
        "total_rows": total,
        "data_files": data_files,
        "columns": columns,
        "zero_fraction": zero_fraction,
        "config_yaml": _dump(redact(info.config))
        if info.config
        else "",
        "repo_id": info.repo_id or "<user>/<dataset-name>",
    }
    path = template_path or TEMPLATE_PATH
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails loudly, not blank
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Markdown, not HTML; table cells go through md_cell
    )
    env.filters["md_cell"] = md_cell
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    return env.get_template(path.name).render(**context)


class _CardDumper(yaml.SafeDumper):
    """safe_dump, except that a string holding a character YAML reads as a line break
    (NEL, LS, PS) is double-quoted, where it is escaped: plain or single-quoted, it came
    back as a space (a pretty_name of "\\x85" read as " ")."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CardDumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_CardDumper, sort_keys=False, allow_unicode=True)


def _check(info: CardInfo) -> None:
    if not info.split_rows:
        raise ValueError("card info: split_rows is empty (no split to describe)")
    for split, n in info.split_rows.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"card info: split_rows[{split!r}] must be an int >= 0, got {n!r}")
    for split, n in info.split_bytes.items():
        if split not in info.split_rows or not isinstance(n, int) or n < 0:
            raise ValueError(f"card info: split_bytes[{split!r}] must be an int >= 0 for a split "
                             f"in split_rows, got {n!r}")
    missing = [c for c in PROMPT_COLUMNS if c not in info.features]
    if missing:
        raise ValueError(
            f"card info: features lack the prompt column(s) {missing}; pipeline/schema.py "
            "promises they are never dropped downstream"
        )
    undocumented = [c for c in info.features if _column_doc(info, c) is None]
    if undocumented:
        raise ValueError(
            f"card info: no description for column(s) {undocumented}; pass them in column_docs"
        )
    # rows_out may exceed rows_in (rewrite adds prompts), so only signs are checked.
    for s in info.stage_counts:
        if s.rows_in < 0 or s.rows_out < 0 or any(v < 0 for v in s.skipped.values()):
            raise ValueError(f"card info: negative count in stage {s.stage!r}")
    zero, measured = info.zero_delta_prompts, info.measured_prompts
    if zero is not None and measured is not None and not 0 <= zero <= measured:
        raise ValueError(
            "card info: zero_delta_prompts must lie between 0 and measured_prompts, got "
            f"{zero} of {measured}"
        )
    if info.delta_histogram is not None:
        p = PurePosixPath(info.delta_histogram)
        if p.is_absolute() or ".." in p.parts or "\\" in info.delta_histogram:
            raise ValueError(
                "card info: delta_histogram must be a relative path inside the dataset folder "
                f"(the card is read on the Hub), got {info.delta_histogram!r}"
            )
    if not info.sources:
        raise ValueError("card info: sources is empty (the card must state the licences)")


def _column_doc(info: CardInfo, name: str) -> str | None:
    return (
        info.column_docs.get(name)
        or PROMPT_COLUMN_DOCS.get(name)
        or KNOWN_STAGE_COLUMN_DOCS.get(name)
    )


def dataset_license(info: CardInfo) -> str:
    """The `license:` id: explicit, else the sources' shared Hub licence, else "other"."""
    if info.license:
        lic = info.license.strip().lower()
        return lic if lic in HUB_LICENSES else "other"
    licences = {s.license.strip().lower() for s in info.sources}
    if len(licences) == 1:
        (lic,) = licences
        if lic in HUB_LICENSES:
            return lic
    return "other"


def size_category(n: int) -> str:
    """The Hub's size bucket for n rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1B"


# Arrow type names as `pipeline.core.schema._value_dtype` writes them -> `datasets` dtype names.
_DTYPE_ALIASES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def features_to_yaml(features: dict[str, Any]) -> list[dict[str, Any]]:
    """`datasets` features JSON -> the list form the card's `dataset_info.features` uses."""
    return [{"name": name, **_feature_yaml(feat, name)} for name, feat in features.items()]


def _feature_yaml(feat: Any, where: str) -> dict[str, Any]:
    if isinstance(feat, dict) and "_type" in feat:
        kind = feat["_type"]
        if kind == "Value":
            return {"dtype": _DTYPE_ALIASES.get(feat["dtype"], feat["dtype"])}
        if kind == "Image":
            return {"dtype": "image"}
        if kind in ("List", "Sequence", "LargeList"):
            inner = _feature_yaml(feat["feature"], where)
            # `datasets` writes `list: <dtype>` for a list of scalars, `list: <inner>` else.
            return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
        raise ValueError(
            f"card: column {where!r} has a feature type the card cannot describe: {kind}"
        )
    if isinstance(feat, dict):  # struct
        return {
            "struct": [{"name": k, **_feature_yaml(v, f"{where}.{k}")} for k, v in feat.items()]
        }
    raise ValueError(f"card: column {where!r} has a malformed feature: {feat!r}")


def feature_type_name(feat: Any) -> str:
    """A short human type for the columns table: string, image, list<string>, struct{...}."""
    if isinstance(feat, dict) and "_type" in feat:
        kind = feat["_type"]
        if kind == "Value":
            return _DTYPE_ALIASES.get(feat["dtype"], feat["dtype"])
        if kind == "Image":
            return "image"
        if kind in ("List", "Sequence", "LargeList"):
            return f"list<{feature_type_name(feat['feature'])}>"
    if isinstance(feat, dict):
        return "struct{" + ", ".join(f"{k}: {feature_type_name(v)}" for k, v in feat.items()) + "}"
    return str(feat)


def redact(obj: Any) -> Any:
    """A copy of plain config data fit for a public card: values of secret-looking keys
    replaced, and every string through :func:`public_text` (credentials in URLs, tokens,
    inline ``api_key=...``, local absolute paths)."""
    if isinstance(obj, dict):
        return {
            k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return public_text(obj)
    return obj


REDACTED = "<redacted>"
# scheme://user:password@host -> the userinfo goes (it is a credential whatever its shape).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
# ?api_key=...&token=... in a URL's query
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;][^=&#\s]*(?:token|secret|password|passwd|api[_-]?key|key|auth|signature|sig)"
    r"[^=&#\s]*=)[^&#\s]+", re.IGNORECASE)
# api_key=..., token: ..., password = ... written inline in a free-text value
_INLINE_SECRET = re.compile(
    r"(?P<key>\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd)"
    r"\s*[:=]\s*)(?P<q>[\"']?)[^\s\"',;&]+", re.IGNORECASE)
# Well-known token shapes: Hugging Face, OpenAI, GitHub, Slack, AWS keys, JWTs, Bearer.
_TOKEN_SHAPES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?<=Bearer )[A-Za-z0-9._~+/-]{8,}=*")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")


def public_text(text: str, base: Path | None = None) -> str:
    """``text`` as it may appear on a public card.

    Credentials go: the user:password of a URL, secret-named query parameters, inline
    ``api_key=...`` / ``token: ...``, and strings shaped like well-known tokens. A local
    absolute path (``/home/me/models/teacher``) is shown relative to ``base`` (default:
    the working directory) when it lies inside it, else as its last part (``teacher``).
    """
    out = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    out = _SECRET_PARAM.sub(lambda m: f"{m['key']}{REDACTED}", out)
    out = _INLINE_SECRET.sub(lambda m: f"{m['key']}{m['q']}{REDACTED}", out)
    out = _TOKEN_SHAPES.sub(REDACTED, out)
    if "\n" in out or "://" in out:
        return out
    if _WINDOWS_ABS.match(out) or out.startswith("\\\\"):
        return PurePosixPath(out.replace("\\", "/")).name or "<local path>"
    if out.startswith(("/", "~")):
        path = Path(out).expanduser()
        root = (base or Path.cwd()).resolve()
        try:
            if root == Path(root.anchor):  # relative to "/" would be the whole path
                raise ValueError(root)
            rel = path.resolve().relative_to(root)
        except (ValueError, OSError):
            return PurePosixPath(out.replace("\\", "/")).name or "<local path>"
        return rel.as_posix() if rel.parts else "."
    return out


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines flattened."""
    text = " ".join(str(value).splitlines())  # every line break, not only \n
    return text.replace("\\", "\\\\").replace("|", "\\|")
