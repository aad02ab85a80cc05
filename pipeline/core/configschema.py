"""Typed dataclasses <-> JSON Schema: one source of truth for config validation.

Config sections are plain dataclasses. From them we derive a JSON Schema (unknown keys
rejected, types and Literal choices enforced, fields without defaults required), validate
the raw YAML with jsonschema, then build the dataclass tree. Errors name the key path
(`models.teacher.dtype`) and what was expected, which is what a user fixing a YAML file
needs, rather than a Python traceback from deep inside a stage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import jsonschema
import yaml

from pipeline.core.errors import ConfigError

# JSON Schema's range keywords, as a field declares them (``bounded``) and as errors say them.
RANGE_KEYS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A config field with a value range, declared once: the schema checks it at load
    (naming the key path) and ``check_ranges`` checks a dataclass built in code.

        temperature: float = bounded(0.7, ge=0)
        top_p: float = bounded(1.0, gt=0, le=1)
    """
    rng = {k: v for k, v in (("minimum", ge), ("exclusiveMinimum", gt), ("maximum", le),
                             ("exclusiveMaximum", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"range": rng})


def range_text(rng: dict[str, float]) -> str:
    """``{"minimum": 0, "maximum": 1}`` -> "in [0, 1]"; ``{"minimum": 1}`` -> ">= 1"."""
    lo = ("[", rng["minimum"]) if "minimum" in rng else ("(", rng.get("exclusiveMinimum"))
    hi = ("]", rng["maximum"]) if "maximum" in rng else (")", rng.get("exclusiveMaximum"))
    if lo[1] is not None and hi[1] is not None:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo[1] is not None:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"


def _in_range(value: float, rng: dict[str, float]) -> bool:
    return not (("minimum" in rng and value < rng["minimum"])
                or ("exclusiveMinimum" in rng and value <= rng["exclusiveMinimum"])
                or ("maximum" in rng and value > rng["maximum"])
                or ("exclusiveMaximum" in rng and value >= rng["exclusiveMaximum"]))


def check_ranges(obj: Any, prefix: str) -> None:
    """Raise ConfigError for a field of the dataclass ``obj`` outside its declared range
    (the same ranges the schema checks at load; this covers objects built in code)."""
    bad = []
    for f in dataclasses.fields(obj):
        rng, value = f.metadata.get("range"), getattr(obj, f.name)
        if rng and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not _in_range(value, rng):
            bad.append(f"{prefix}.{f.name} must be {range_text(rng)}, got {value!r}")
    if bad:
        raise ConfigError("invalid config:\n  " + "\n  ".join(bad))


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def type_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema of one annotated type."""
    optional, inner = _is_optional(tp)
    if optional:
        return {"anyOf": [type_schema(inner), {"type": "null"}]}
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        _, val = typing.get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": type_schema(val)}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is Any:
        return {}
    raise TypeError(f"unsupported config field type: {tp!r}")


def dataclass_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        props[f.name] = {**type_schema(hints[f.name]), **f.metadata.get("range", {})}
        if f.metadata.get("help"):
            props[f.name]["description"] = f.metadata["help"]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


def _describe(err: jsonschema.ValidationError) -> str:
    v = err.validator
    where = _path(err)
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        prefix = "" if where == "<root>" else where + "."
        return "; ".join(
            f"{prefix}{k}: unknown key (allowed here: {', '.join(allowed)})" for k in extra
        )
    if v in RANGE_KEYS:
        rng = {k: err.schema[k] for k in RANGE_KEYS if k in err.schema}
        return f"{where} must be {range_text(rng)}, got {err.instance!r}"
    if v == "required":
        return f"{where}: {err.message}"
    if v == "enum":
        return f"{where}: expected one of {err.validator_value}, got {err.instance!r}"
    if v == "type":
        return f"{where}: expected {err.validator_value}, got {type(err.instance).__name__} {err.instance!r}"
    if v == "anyOf" and err.instance is not None and err.context:
        # Optional[X] given a non-null value: the errors of the X branch are the real ones.
        inner = [e for e in err.context if e.validator_value != "null"]
        if inner and all(e.validator != "type" or e.absolute_path != err.absolute_path for e in inner):
            return "; ".join(_describe(e) for e in inner)
    if v == "anyOf":
        # Optional[X] of a scalar: report the non-null branch's expectation.
        kinds = [s.get("type") or s.get("enum") or "object" for s in err.validator_value]
        return f"{where}: expected one of {kinds}, got {type(err.instance).__name__} {err.instance!r}"
    return f"{where}: {err.message}"


def validate(raw: Any, cls: type) -> None:
    """Raise ConfigError listing every violation (with key paths) of `raw` against `cls`."""
    validator = jsonschema.Draft202012Validator(dataclass_schema(cls))
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_describe(e) for e in errors))


def build(cls: type, raw: dict[str, Any]) -> Any:
    """Instantiate a (validated) dataclass tree from plain dicts/lists."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _build_value(hints[f.name], raw[f.name])
    return cls(**kwargs)


def _build_value(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    _, tp = _is_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_build_value(item, v) for v in value]
    if origin is dict:
        _, val = typing.get_args(tp) or (str, Any)
        return {k: _build_value(val, v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain data (for hashing, manifests and the dataset card)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def load_dataclass(cls: type, path: str | None, overrides: list[str], section: str | None = None) -> Any:
    """A dataclass from a YAML/JSON file (optionally its `section:`) plus `key=value`
    overrides (values parsed as YAML), validated against the dataclass's schema."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
        if section and section in data:
            data = data[section]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        data[key.strip()] = yaml.safe_load(value)
    coerce_floats(data, cls)
    validate(data, cls)
    return build(cls, data)


def coerce_floats(raw: Any, cls: type) -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: turn such strings into numbers, in
    place, wherever ``cls`` (a dataclass tree) expects a float; others are left for the
    validator to report."""
    if not isinstance(raw, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        _, tp = _is_optional(hints[f.name])
        value = raw[f.name]
        if tp is float and isinstance(value, str):
            try:
                raw[f.name] = float(value)
            except ValueError:
                pass
        elif dataclasses.is_dataclass(tp):
            coerce_floats(value, tp)
        elif typing.get_origin(tp) is list and isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            for v in value:
                coerce_floats(v, item)
