"""Settings files and flags into settings dataclasses: :func:`build`, :func:`pick`,
:func:`read_settings_file`, :func:`to_dict`, and the :class:`ConfigError` they raise."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from robustar_ls.errors import RobustarError


class ConfigError(RobustarError, ValueError):
    """A settings file or value is wrong; the message says which and how to fix it."""


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML settings file into a plain dict of sections."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read settings file {path}: {err.strerror}") from err
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"settings file {path} is not valid: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping of sections")
    return data


def build(cls: type, *sources: Mapping[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from mappings, later ones overriding; ``None`` values are skipped.

    A field holding a config dataclass takes a mapping of its own fields (merged key by key
    across sources); ``cls.ALIASES`` maps flat names onto such nested fields, ``cls.RENAMED``
    old field names onto new ones. Unknown keys are an error (a typo in a settings file should
    not be silently ignored).
    """
    known = {f.name: f for f in fields(cls)}
    aliases: dict[str, tuple[str, str]] = getattr(cls, "ALIASES", {})
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    values: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for source in sources:
        for key, value in (source or {}).items():
            key = key.replace("-", "_")
            key = renamed.get(key, key)
            if key in aliases:
                outer, inner = aliases[key]
                if value is not None:
                    nested.setdefault(outer, {})[inner] = value
                continue
            if key not in known:
                names = [*known, *aliases]
                raise ConfigError(
                    f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(names)}"
                )
            if isinstance(value, Mapping) and _nested_type(known[key]) is not None:
                nested.setdefault(key, {}).update(value)
            elif value is not None:
                values[key] = _checked_value(cls, known[key], value)
    for key, mapping in nested.items():
        base = values.get(key)
        values[key] = build(_nested_type(known[key]), to_dict(base) if base else None, mapping)
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"bad settings for {cls.__name__}: {err}") from err


_KINDS = {  # annotation → (accepts, what to say)
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: isinstance(v, str), "a string"),
    "tuple[str, ...]": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) for x in v),
        "a list of strings",
    ),
}


def _checked_value(cls: type, f: dataclasses.Field, value: Any) -> Any:
    """``value`` if it has the field's type (an int is a float too); ConfigError otherwise."""
    kind = _KINDS.get(str(f.type))
    if kind is None:
        return value
    accepts, noun = kind
    if not accepts(value):
        raise ConfigError(
            f"setting {f.name!r} of {cls.__name__} must be {noun}, not {value!r}"[:300]
        )
    if str(f.type) == "float":
        return float(value)
    if str(f.type).startswith("tuple"):
        return tuple(value)
    return value


def _nested_type(f: dataclasses.Field) -> type | None:
    """The config dataclass a field holds (by its default factory), or None."""
    if f.default_factory is dataclasses.MISSING:
        return None
    default = f.default_factory()
    return type(default) if dataclasses.is_dataclass(default) else None


def pick(namespace: Any, cls: type) -> dict[str, Any]:
    """The attributes of an argparse namespace that are fields of ``cls`` (None = not given)."""
    names = [*(f.name for f in fields(cls)), *getattr(cls, "ALIASES", {})]
    return {name: getattr(namespace, name, None) for name in names}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for saving next to outputs)."""
    return dataclasses.asdict(obj)
