"""A tiny validator that turns plain YAML data into frozen dataclasses.

Why not a library: we need every error to read `file: key.path: expected ..., got ...` and to reject
unknown keys, and the rules fit in field metadata (`gt`, `ge`, `lt`, `le`, `choices`).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from common.errors import RecipeError

_MISSING = dataclasses.MISSING


def bounds(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> dict[str, float]:
    """Field metadata for numeric bounds; use as `field(default=..., metadata=bounds(gt=0))`."""
    return {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le).items() if v is not None}


def tagged(options: dict[str, type], *, nonempty: bool = False) -> dict[str, Any]:
    """Field metadata for a list whose items are one-key mappings, the key naming the item's dataclass
    (`- kd: {weight: 0.9}`), as recipe stages are written."""
    return {"tagged": dict(options), **({"nonempty": True} if nonempty else {})}


def parse(cls: type, data: Any, source: str, path: str) -> Any:
    """Validate `data` against dataclass `cls`; raise RecipeError naming `source` and `path` on the first problem."""
    if not isinstance(data, dict):
        raise RecipeError(source, path, f"a mapping with keys {_keys(cls)}", data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise RecipeError(source, _join(path, str(key)), f"one of the keys {_keys(cls)} (unknown key)",
                              has_got=False)
    values = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in data:
            values[name] = convert(hints[name], data[name], source, sub, f.metadata)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise RecipeError(source, sub, f"a value ({describe(hints[name])}); the key is required",
                              has_got=False)
    return cls(**values)


def convert(tp: Any, value: Any, source: str, path: str, meta: typing.Mapping[str, Any] | None = None) -> Any:
    """Check one value against a type hint and its bounds; return it in its canonical Python form."""
    meta = meta or {}
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(options[0], value, source, path, meta)
        for option in options:
            try:
                return convert(option, value, source, path, meta)
            except RecipeError:
                continue
        raise RecipeError(source, path, describe(tp), value)
    if origin is Literal:
        if value not in args:
            raise RecipeError(source, path, "one of " + ", ".join(repr(a) for a in args), value)
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, source, path)
    if origin in (tuple, list) and "tagged" in meta:
        return _tagged_list(meta["tagged"], value, source, path, meta)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(source, path, describe(tp), value)
        item = args[0] if args else Any
        out = tuple(convert(item, v, source, f"{path}[{i}]", meta) for i, v in enumerate(value))
        if meta.get("nonempty") and not out:
            raise RecipeError(source, path, "a non-empty list", value)
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(source, path, describe(tp), value)
        kt, vt = args
        return {convert(kt, k, source, path): convert(vt, v, source, _join(path, str(k))) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(source, path, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(source, path, _numeric("an integer", meta), value)
        _check_bounds(value, source, path, "an integer", meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(source, path, _numeric("a number", meta), value)
        try:
            as_float = float(value)
        except OverflowError:  # an integer beyond float range
            raise RecipeError(source, path, _numeric("a finite number", meta), value) from None
        if not math.isfinite(as_float):  # no setting means anything at inf or nan
            raise RecipeError(source, path, _numeric("a finite number", meta), value)
        _check_bounds(as_float, source, path, "a number", meta)
        return as_float
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(source, path, "a string", value)
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise RecipeError(source, path, "one of " + ", ".join(sorted(choices)), value)
        return value
    raise TypeError(f"schema: unsupported type {tp!r} at {path}")  # a bug in our dataclasses, not user input


def _tagged_list(options: dict[str, type], value: Any, source: str, path: str,
                 meta: typing.Mapping[str, Any]) -> tuple:
    names = ", ".join(options)
    if not isinstance(value, (list, tuple)):
        raise RecipeError(source, path, f"a list of one-key mappings, each key one of {names}", value)
    if meta.get("nonempty") and not value:
        raise RecipeError(source, path, "a non-empty list", value)
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        key, body = one_key_item(item, options, source, where, f"a mapping with one key among {names}",
                                 f"one of {names}")
        out.append(parse(options[key], {} if body is None else body, source, f"{where}.{key}"))
    return tuple(out)


def one_key_item(item: Any, keys: typing.Container[str], source: str, path: str, expected_item: str,
                 expected_key: str) -> tuple[str, Any]:
    """(key, body) of a list item written as a one-key mapping (a stage, a loss term), the key among `keys`."""
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(source, path, expected_item, item)
    (key, body), = item.items()
    if key not in keys:
        raise RecipeError(source, f"{path}.{key}", expected_key, has_got=False)
    return key, body


def describe(tp: Any) -> str:
    """Human wording of a type hint, used in error messages."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin is dict:
        return f"a mapping of {describe(args[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {_keys(tp)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _check_bounds(v: float, source: str, path: str, what: str, meta: typing.Mapping[str, Any]) -> None:
    ok = (("gt" not in meta or v > meta["gt"]) and ("ge" not in meta or v >= meta["ge"])
          and ("lt" not in meta or v < meta["lt"]) and ("le" not in meta or v <= meta["le"]))
    if not ok:
        raise RecipeError(source, path, _numeric(what, meta), v)


def _numeric(what: str, meta: typing.Mapping[str, Any]) -> str:
    parts = [f"{op} {meta[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in meta]
    return what + (" " + " and ".join(parts) if parts else "")


def _keys(cls: type) -> str:
    return "[" + ", ".join(f.name for f in dataclasses.fields(cls) if f.init) + "]"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
