"""Strict dict <-> dataclass conversion for the project's JSON-serialisable configs.

Model, preprocessing and training configs travel in weight sidecars and run folders. An
unknown key means a newer or mistyped file; it is rejected (never silently ignored), since a
model must not run with a setting that differs quietly from the one it was trained with.
Every failure is a one-line :class:`~LiverTumorSegLib.errors.ConfigError`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

__all__ = ["check_known_keys", "dataclass_from_dict", "dataclass_to_dict"]


def check_known_keys(cls_or_obj: Any, d: Mapping[str, Any], what: str) -> None:
    """ConfigError naming the keys of ``d`` that are not fields of the dataclass."""
    known = {f.name for f in dataclasses.fields(cls_or_obj)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}")


def dataclass_from_dict(cls: type[T], d: Optional[Mapping[str, Any]], what: str,
                        ignore: tuple[str, ...] = ("_comment",)) -> T:
    """``cls(**d)`` after rejecting unknown keys; keys in ``ignore`` (comments) are dropped.

    Nested dataclass fields given as dicts are converted recursively. Type errors from the
    constructor (a missing or mistyped field) become ConfigError too.
    """
    data = {k: v for k, v in dict(d or {}).items() if k not in ignore}
    check_known_keys(cls, data, what)
    for f in dataclasses.fields(cls):
        ftype = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        nested = ftype if ftype is not None and dataclasses.is_dataclass(ftype) else (
            type(default) if dataclasses.is_dataclass(default) else None)
        if nested is not None and isinstance(data.get(f.name), Mapping):
            data[f.name] = dataclass_from_dict(nested, data[f.name], f"{what} {f.name}", ignore)
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"invalid {what}: {exc}") from None


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` with tuples turned into lists (plain JSON types only)."""
    return _plain(dataclasses.asdict(obj))
