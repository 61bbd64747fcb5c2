"""Typed configuration: YAML (or a dict) plus ``a.b=value`` overrides, validated into dataclasses before any work.

Each stage has one dataclass whose fields carry their documentation in ``field(metadata={"help": ...})``. Loading
checks every key and value against the dataclass: an unknown key, a wrong type or a value outside a ``Literal``
fails with a ``ConfigError`` naming the dotted key (``sft.lr: expected a number, got 'fast'``), so a typo never runs
for an hour with a default.

Supported field types: ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``Literal[...]``, ``X | None``,
``list[X]``, ``dict[str, X]`` and nested dataclasses.

Every numeric field declares its valid range beside its help text, ``metadata={"help": ..., "range": at_least(1)}``
(:class:`Range`: :func:`at_least`, :func:`above`, :func:`between`); loading checks it (each item of a list; ``None``
of an optional field passes) and fails with the dotted key, the value found and what is allowed
(``rollouts.temperature: got -1.0, allowed >= 0``). ``describe`` lists the ranges. Rules that tie several fields
together stay in each class's ``validate()``, also run at load time.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """An invalid configuration; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: ``low`` <= x (< with ``low_open``), x <= ``high`` (< with
    ``high_open``); ``None`` is unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}"

        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {num(self.high)}"
        return "any number"

    def outside(self) -> list[float]:
        """Values just outside the range (for tests that walk every field)."""
        values = []
        if self.low is not None:
            values.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            values.append(self.high if self.high_open else self.high + 1)
        return values


def at_least(low: float) -> Range:
    return Range(low=low)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


ANY_NUMBER = Range()


def _check_range(value: Any, allowed: Range, key: str) -> None:
    if value is None or isinstance(value, bool) or dataclasses.is_dataclass(value):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_range(item, allowed, f"{key}[{i}]")
        return
    if isinstance(value, (int, float)) and value not in allowed:
        raise ConfigError(f"{key}: got {value!r}, allowed {allowed}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _kind_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, _type_name(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        # the value had the right kind for one alternative and failed inside it (a mapping for a dataclass): that
        # alternative's error names the deeper key; else none of the kinds fit
        deeper = [e for e in errors if not e.startswith(f"{key}: expected")]
        if deeper:
            raise ConfigError(deeper[0])
        kinds = " or ".join(_kind_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{key}: expected {kinds}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(item, args[0] if args else Any, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _build(cls: type[T], data: Any, prefix: str = "") -> T:
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(f"unknown key(s) {names}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _convert(value, hints[name], key)
        allowed = fields[name].metadata.get("range")
        if allowed is not None:
            _check_range(values[name], allowed, key)
    try:
        instance = cls(**values)
    except (TypeError, ValueError) as error:  # a required field is missing, or __post_init__ rejected a value
        raise ConfigError(f"{where}: {error}") from None
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    return instance


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: ``lr=1e-5``, ``tags=[a,b]``) to a nested dict."""
    result = dict(data)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r}: expected key=value")
        dotted, raw = override.split("=", 1)
        keys = dotted.strip().split(".")
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            node[key] = child
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return result


def load_config(cls: type[T], source: str | Path | dict | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Build ``cls`` from a YAML file or a dict plus overrides; every key and value is checked (``ConfigError``)."""
    if source is None:
        data: Any = {}
    elif isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return _build(cls, apply_overrides(data, overrides))


def to_dict(config: Any) -> dict:
    """The resolved config (every default filled in) as plain data, for ``config.yaml`` in a run directory."""
    return dataclasses.asdict(config)


def defaults_dict(cls: type) -> dict:
    """The defaults of a config dataclass as plain data, nested dataclasses expanded (no validation: a field
    without a default, or a config whose defaults alone are invalid, still lists what it has)."""
    result = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        result[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return result


def describe(cls: type, prefix: str = "") -> str:
    """One line per field, nested dataclasses expanded: dotted name, type, default and help text."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{name}: {f.metadata.get('help', '')}")
            lines.append(describe(hints[f.name], prefix=name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        allowed = f.metadata.get("range")
        shown = f", {allowed}" if allowed is not None and allowed != ANY_NUMBER else ""
        lines.append(f"{name} ({_type_name(hints[f.name])}{shown}, default {default!r}): "
                     f"{f.metadata.get('help', '')}")
    return "\n".join(lines)
