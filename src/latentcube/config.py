"""YAML <-> frozen dataclasses, strictly: unknown keys are errors that name the key and the allowed ones.

Used for training configs (``configs/*.yaml``) and for rebuilding models from checkpoints. Dataclasses
declare the valid range of their numbers with :func:`check_ranges` in ``__post_init__``, so a batch size
of 0 or a NaN learning rate is refused when the config is read (naming the key, the file and the range),
not after minutes of indexing data.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from latentcube.errors import LatentcubeError

__all__ = ["ConfigError", "ConfigRangeError", "Range", "check_ranges", "from_dict", "load_yaml", "to_dict"]

T = TypeVar("T")


class ConfigError(LatentcubeError, ValueError):
    """A configuration file or mapping does not match its dataclass."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid values of a number: ``lo``/``hi`` bounds (None: unbounded), open with ``lo_open``/``hi_open``,
    plus single values allowed outside them (``also``, e.g. -1 for "no limit"). NaN and infinity are never
    in range."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[float, ...] = ()

    def __contains__(self, value: float) -> bool:
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        def num(v: float) -> str:
            return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"

        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {num(self.hi)}")
        text = " and ".join(parts) or "finite"
        return text + "".join(f" (or {num(a)})" for a in self.also)


class ConfigRangeError(ConfigError):
    """A value outside its :class:`Range`; :func:`from_dict` adds where it came from."""

    def __init__(self, name: str, value: Any, valid: Range) -> None:
        self.name, self.value, self.valid = name, value, valid
        super().__init__(self.text(name))

    def text(self, key: str) -> str:
        return (f"{key} = {self.value!r} is out of range. Fix: set {self.name} to a value {self.valid} "
                "(in the config file, or the command-line option that overrides it).")


def check_ranges(obj: Any, **ranges: Range) -> None:
    """Raise :class:`ConfigError` when a numeric field of dataclass ``obj`` lies outside its :class:`Range`
    (call it from ``__post_init__``). Booleans and None are left alone (None means "default")."""
    for name, valid in ranges.items():
        value = getattr(obj, name)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, int | float) or value not in valid:
            raise ConfigRangeError(name, value, valid)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars, safe for YAML, JSON and ``torch.load(weights_only=True)``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for candidate in non_none:
            try:
                return _convert(candidate, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin in (tuple,):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args or [Any] * len(value), value, strict=True)))
    if origin in (list,):
        return [_convert(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (int, float) and isinstance(value, str):
        try:
            return tp(float(value)) if tp is float else int(value)
        except ValueError as err:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from err
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is str and not isinstance(value, str):
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigRangeError as err:
        raise ConfigError(err.text(f"{where}.{err.name}")) from None
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into dataclass ``cls`` (strict)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return from_dict(cls, data, where=path.name)
