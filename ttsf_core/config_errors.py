"""Validation errors as people read them: one `dotted.field: received X, allowed: Y` line per bad field,
Y in plain words built from the field's type and constraints (never pydantic's own wording), with a
"did you mean" for a misplaced or misspelled key. Below the config (it imports nothing of ttsf)."""

from __future__ import annotations

import difflib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


def format_validation_error(error: ValidationError, root: type[BaseModel]) -> str:
    """One `dotted.field: received X, allowed: Y` line per bad field; Y in plain words, built from
    the field's type and constraints, never pydantic's own wording."""
    lines: dict[str, str] = {}
    for item in error.errors():
        field, line = _problem(item, root)
        lines.setdefault(field, line)  # a union field fails once per member: one line for it
    return "\n".join(lines.values())


def _problem(item: dict[str, Any], root: type[BaseModel]) -> tuple[str, str]:
    field, info, model = _locate(item["loc"], root)
    if item["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        hint = did_you_mean(str(item["loc"][-1]), field.rpartition(".")[0], root)
        return field, f"{field}: received unknown field {item['loc'][-1]!r}{hint}, allowed: {allowed}"
    own = str(item.get("ctx", {}).get("error", "")) if item["type"] == "value_error" else ""
    sub, _, rest = own.partition(": ")
    if rest.startswith("received "):  # a model validator naming its own field: "sub.field: received ..."
        field = ".".join(filter(None, (field, sub)))
        return field, f"{field}: {rest}"
    allowed = own.removeprefix("allowed: ") or _allowed(info, item.get("ctx"))
    return field, f"{field or 'config'}: received {shown(item['input'])}, allowed: {allowed}"


def did_you_mean(name: str, where: str, root: type[BaseModel]) -> str:
    """" (did you mean search_args.search_rounds?)" for a field given at the wrong level or misspelled,
    from every field of RunConfig (the closest by spelling, the same level first); "" when none is close."""
    paths = _field_paths(root)
    here = {path.rpartition(".")[2]: path for path in paths if path.rpartition(".")[0] == where}
    anywhere = {path.rpartition(".")[2]: path for path in reversed(paths)}
    found = ([path for path in paths if path.rpartition(".")[2] == name]  # the right name at another level
             or [here[leaf] for leaf in difflib.get_close_matches(name, here, n=1, cutoff=0.7)]
             or [path for leaf, path in here.items() if name and (leaf.startswith(name) or name.startswith(leaf))]
             or [anywhere[leaf] for leaf in difflib.get_close_matches(name, anywhere, n=1, cutoff=0.8)])
    return f" (did you mean {found[0]}?)" if found else ""


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        found.append(path)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += _field_paths(info.annotation, path + ".")
    return found


def shown(value: Any, limit: int = 80) -> str:
    """A received value as an error line shows it: its repr, cut short when long (a 1 MB prompt)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def _locate(loc: tuple, root: type[BaseModel]) -> tuple[str, FieldInfo | None, type[BaseModel]]:
    """The dotted field `loc` names, its FieldInfo, and the model holding it (pydantic's union-member
    parts of a loc, like 'int' or "literal['all']", are dropped)."""
    model: type[BaseModel] = root
    names: list[str] = []
    info = None
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        names.append(str(part))
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info else None
        if get_origin(annotation) is dict and parts:  # {name: Model}: the key, then the model's fields
            names.append(str(parts.pop(0)))
            annotation = get_args(annotation)[1]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return ".".join(names), info, model


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a text", Path: "a path",
          dict: "a mapping of names to values"}


def _allowed(info: FieldInfo | None, ctx: dict[str, Any] | None) -> str:
    """E.g. "an integer >= 1 and <= 16": the field's type, then every bound it has."""
    limits = {key: value for key, value in (ctx or {}).items() if key in _BOUNDS}
    for constraint in info.metadata if info else ():
        limits |= {key: getattr(constraint, key) for key in _BOUNDS if hasattr(constraint, key)}
    bounds = " and ".join(f"{_BOUNDS[key]} {limits[key]}" for key in _BOUNDS if key in limits)
    return " ".join(filter(None, (_kind(info.annotation) if info else "a valid value", bounds)))


def _kind(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return f"one of {', '.join(map(str, args))}" if len(args) > 1 else repr(args[0])
    if origin in (Union, UnionType):
        return " or ".join(_kind(arg) for arg in args if arg is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping of {', '.join(annotation.model_fields)}"
    return _KINDS.get(origin or annotation, "a valid value")


def _leaf_types(annotation: Any) -> set:
    args = get_args(annotation)
    return set().union(*(_leaf_types(arg) for arg in args)) if args else {annotation}
