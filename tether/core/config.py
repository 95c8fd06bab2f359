"""Dataclass configs that load from YAML/TOML, take `key.sub=value` overrides, and save themselves.

Every part of tether describes its settings as a plain dataclass. This module turns files and
command-line overrides into those dataclasses with strict checking: an unknown key or a value of
the wrong type raises ConfigError naming the dotted key and the expected type, because a typo in
a robot config should stop a session, not be silently ignored. No code is ever evaluated from a
config file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tether.core.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "apply_overrides",
    "from_dict",
    "load_config",
    "load_mapping",
    "save_config",
    "to_dict",
]


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build `cls` from an optional YAML/TOML/JSON file, then apply `key.sub=value` overrides."""
    data: dict[str, Any] = load_mapping(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict; the format is chosen by the file suffix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}. Check the path or create the file.")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"Config file {path} has suffix '{suffix}'; use .yaml, .yml, .toml or .json."
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Config file {path} could not be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at the top level.")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` override applied (value parsed as YAML)."""
    result = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like key.sub=value (for example arm.fps=50).")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        if not dotted:
            raise ConfigError(f"Override '{item}' has an empty key.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"Override '{item}': value could not be parsed: {exc}") from exc
        node = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking every key and value type."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"'{prefix or cls.__name__}' must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(prefix, unknown[0])
        raise ConfigError(
            f"Unknown config key '{key}'. Known keys here: {', '.join(sorted(fields)) or '(none)'}."
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(prefix, name))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid config for '{prefix or cls.__name__}': {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Turn a (nested) dataclass into plain dicts/lists suitable for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    return obj


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config beside a dataset or checkpoint (YAML, or JSON by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(obj)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# YAML 1.1 (PyYAML) reads `1e-4`, `3E5` and even `1.0e5` as strings: its floats need a dot and a
# signed exponent (`1.0e-4`). Scientific notation is how people write learning rates, so a string
# that is exactly a number in scientific notation is accepted wherever the field is numeric (an
# int field only if the value is whole: `steps: 1e5`). Nothing else is converted.
_SCIENTIFIC = re.compile(r"[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+")


def _number_from_text(value: Any) -> float | None:
    """`value` as a float if it is a string spelling a number in scientific notation, else None."""
    if not isinstance(value, str) or not _SCIENTIFIC.fullmatch(value.strip()):
        return None
    return float(value.strip().replace("_", ""))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against annotation `tp`, converting only where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"Config key '{key}' expects {_type_name(tp)}, got {value!r}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"Config key '{key}' must be one of {list(args)}, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key '{key}' expects a list, got {value!r}.")
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"Config key '{key}' expects {len(args)} items, got {len(value)}.")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key '{key}' expects a mapping, got {value!r}.")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"Config key '{key}' expects bool (true/false), got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number_from_text(value)
        if number is not None and number.is_integer():  # `steps: 1e5`
            return int(number)
        raise ConfigError(f"Config key '{key}' expects int, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = _number_from_text(value)
        if number is not None:
            return number
        raise ConfigError(f"Config key '{key}' expects float (for example 3e-4 or 0.0003), got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"Config key '{key}' expects str, got {value!r}.")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"Config key '{key}' expects a path, got {value!r}.")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"Config key '{key}' expects {_type_name(tp)}, got {value!r}.")
