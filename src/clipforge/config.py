"""Dataclass helpers shared by every config in clipforge.

Configs are frozen dataclasses. They are read from plain dicts (JSON presets, checkpoints) with
``from_dict``, which rejects unknown keys and checks types, written back with ``to_dict``, and changed
with ``replace_path`` / ``apply_overrides`` using dotted paths such as ``"vision.image_size=336"``.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and what is accepted."""


def _closest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` (converting lists to tuples and dicts to dataclasses)."""
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
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, _path=path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in (float, int, bool, str):
        return _coerce_scalar(value, tp, path)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def _coerce_scalar(value: Any, tp: type, path: str) -> Any:
    """float / int / bool / str, strictly: True is not a number, 1.5 is not an integer, 1 is not a bool."""
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], _path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        where = f"{_path}.{key}" if _path else key
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}'.{_closest(key, fields)} "
                              f"Known keys: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{_path or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain JSON-ready dict of a (nested) dataclass; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dotted_differences(old: Mapping[str, Any], new: Mapping[str, Any], _prefix: str = "") -> dict[str, Any]:
    """``{"vision.image_size": 64, ...}``: every leaf where two nested dicts (e.g. ``to_dict`` of two configs)
    differ, with ``new``'s value, in sorted key order."""
    out: dict[str, Any] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(dotted_differences(a, b, f"{_prefix}{key}."))
        elif a != b:
            out[f"{_prefix}{key}"] = b
    return out


def parse_value(text: str) -> Any:
    """Parse the right side of ``key=value``: a Python/JSON literal, else the raw string."""
    lowered = text.strip()
    if lowered in ("true", "false", "null", "none", "None"):
        return {"true": True, "false": False}.get(lowered, None)
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        return text


def _typed_value(obj: Any, name: str, value: Any, full: str) -> Any:
    return _coerce(value, _type_hints(type(obj))[name], full)


def _replace_tree(obj: T, tree: Mapping[str, Any], prefix: str) -> T:
    """Replace several fields of ``obj`` at once (one ``__post_init__`` per section, so checks that span
    fields see all the new values together)."""
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for head, value in tree.items():
        full = prefix + head
        if head not in names:
            raise ConfigError(f"unknown config key '{full}' in {type(obj).__name__}.{_closest(head, names)} "
                              f"Known keys: {', '.join(sorted(names))}")
        if isinstance(value, _Subtree):
            current = getattr(obj, head)
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"'{full}' is a value, not a section: cannot set '{full}.{next(iter(value))}'")
            changes[head] = _replace_tree(current, value, full + ".")
        else:
            changes[head] = _typed_value(obj, head, value, full)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as e:
        raise ConfigError(f"{prefix.rstrip('.') or type(obj).__name__}: {e}") from None


class _Subtree(dict):
    """Marks a nested group of overrides (as opposed to a dict-valued field)."""


def replace_path(obj: T, path: str, value: Any) -> T:
    """Return a copy of dataclass ``obj`` with the field at dotted ``path`` set to ``value`` (type-checked)."""
    return apply_overrides(obj, {path: value})


def apply_overrides(obj: T, overrides: Iterable[str] | Mapping[str, Any]) -> T:
    """Apply ``["a.b=1", ...]`` or ``{"a.b": 1}`` to a frozen dataclass, returning a new one."""
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=3e-4)")
            items.append((key.strip(), parse_value(raw)))
    tree: _Subtree = _Subtree()
    for key, value in items:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, _Subtree())
            if not isinstance(child, _Subtree):
                raise ConfigError(f"'{key}' conflicts with another override of '{part}'")
            node = child
        node[leaf] = value
    return _replace_tree(obj, tree, "") if tree else obj
