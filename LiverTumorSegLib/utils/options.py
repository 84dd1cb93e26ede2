"""Options declared once: dataclass fields whose ``metadata`` also make the command line.

An option is ONE dataclass field. Its snake_case name is the same in the library, the Slicer
job and the JSON report; its command-line flag and help come from the field's ``metadata``,
read by :func:`add_arguments` (argparse), :func:`from_args` (parsed arguments -> options) and
:func:`to_cli_args` (options -> the argument list a child process gets). Adding an option is
adding one field, e.g. in ``SegmentOptions`` or ``PostprocessOptions``::

    tumour_threshold: Optional[float] = field(default=None, metadata={
        "cli": "--tumour-threshold",
        "help": "tumour where its probability is above this (default: argmax)"})

Metadata keys:

- ``cli``: the flag. A field without ``cli`` is a library-only option (not on the command line;
  :func:`to_cli_args` refuses a non-default value for it rather than dropping it silently).
- ``help``: the help text (argparse's ``%(default)s`` may be used in it).
- ``type``, ``metavar``, ``choices``, ``nargs``: passed to argparse. Without ``type`` the value
  is parsed as the annotated type (``Optional[...]`` unwrapped; ``float`` must be finite).
  ``type`` callables that validate (``positive_int``, ``unit_interval``, ``non_negative``
  below) give argparse's usage error (exit 2) before any work starts.

Bool fields are switches without a value: the flag sets the opposite of the default (``--fast``
for a False default, ``--no-fill-holes`` for a True default). A field whose type is itself an
options dataclass (``postprocess: PostprocessOptions``) contributes its fields; names are
unique across the whole tree, so :func:`with_overrides` and the flags address them by name.
Values are checked by the dataclasses themselves (``__post_init__`` -> ConfigError).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Iterator, Optional, Sequence

from ..errors import ConfigError

__all__ = ["OptionField", "option_fields", "option_names", "add_arguments", "from_args", "to_cli_args",
           "with_overrides", "changed_options", "positive_int", "unit_interval", "non_negative", "finite_float"]


# ------------------------------------------------------------------ argparse value types
def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None


def positive_int(text: str) -> int:
    v = _number(text, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def finite_float(text: str) -> float:
    v = _number(text, float)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def unit_interval(text: str) -> float:
    """A number in [0, 1) (window overlap)."""
    v = _number(text, float)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def non_negative(text: str) -> float:
    v = _number(text, float)
    if not v >= 0.0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


_DEFAULT_TYPES = {int: int, float: finite_float, str: str}


# ------------------------------------------------------------------ the declaration
@dataclasses.dataclass(frozen=True)
class OptionField:
    """One leaf option: its name, where it lies (``("postprocess", "fill_holes")``), its field."""

    name: str
    path: tuple[str, ...]
    field: dataclasses.Field
    type: Any  # the resolved annotation, Optional unwrapped

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]

    @property
    def cli(self) -> Optional[str]:
        return self.field.metadata.get("cli")


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _walk(cls: type, prefix: tuple[str, ...]) -> Iterator[OptionField]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints.get(f.name, Any))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _walk(tp, prefix + (f.name,))
        else:
            yield OptionField(f.name, prefix + (f.name,), f, tp)


def option_fields(cls_or_obj: Any) -> dict[str, OptionField]:
    """Every leaf option of an options dataclass (nested ones included), by name."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    out: dict[str, OptionField] = {}
    for o in _walk(cls, ()):
        if o.name in out:
            raise TypeError(f"option name {o.name!r} is declared twice in {cls.__name__}")
        out[o.name] = o
    return out


def option_names(cls_or_obj: Any) -> list[str]:
    return list(option_fields(cls_or_obj))


def _get(obj: Any, path: Sequence[str]) -> Any:
    for p in path:
        obj = getattr(obj, p)
    return obj


def changed_options(obj: Any) -> dict[str, Any]:
    """``{name: value}`` of the options (nested included) that differ from their defaults: what
    a batch manifest keys on and a worker process needs to rebuild ``obj`` with :func:`with_overrides`."""
    return {o.name: v for o in option_fields(obj).values() if (v := _get(obj, o.path)) != o.default}


def with_overrides(obj: Any, **overrides: Any) -> Any:
    """A copy of the options ``obj`` with the named (leaf) options replaced, nested ones too.

    Unknown names raise ConfigError; the dataclasses validate the new values.
    """
    fields = option_fields(obj)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {type(obj).__name__} option(s): {', '.join(unknown)}")
    return _replace(obj, {fields[k].path: v for k, v in overrides.items()})


def _replace(obj: Any, changes: dict[tuple[str, ...], Any]) -> Any:
    direct = {p[0]: v for p, v in changes.items() if len(p) == 1}
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    for p, v in changes.items():
        if len(p) > 1:
            nested.setdefault(p[0], {})[p[1:]] = v
    for name, sub in nested.items():
        direct[name] = _replace(getattr(obj, name), sub)
    try:
        return dataclasses.replace(obj, **direct)
    except TypeError as exc:
        raise ConfigError(f"invalid {type(obj).__name__}: {exc}") from None


# ------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argparse option per field of ``cls`` (nested too) that declares ``cli``."""
    for o in option_fields(cls).values():
        if not o.cli:
            continue
        md = o.field.metadata
        kw: dict[str, Any] = {"dest": o.name, "help": md.get("help")}
        if o.type is bool:
            kw.update(action="store_const", const=not o.default, default=o.default)
        else:
            kw["default"] = o.default
            nargs = md.get("nargs")
            elem = o.type
            if nargs is not None:
                kw["nargs"] = nargs
                args = typing.get_args(o.type)
                elem = args[0] if args else str
            kw["type"] = md.get("type") or _DEFAULT_TYPES.get(elem, str)
            for key in ("metavar", "choices"):
                if key in md:
                    kw[key] = md[key]
        parser.add_argument(o.cli, **kw)


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The options ``cls`` from parsed arguments (fields without a flag keep their defaults)."""
    values = {o.name: getattr(args, o.name) for o in option_fields(cls).values()
              if o.cli and hasattr(args, o.name)}
    return with_overrides(cls(), **{**values, **extra})


def _render(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _render(v)]
    if isinstance(value, float):
        return [repr(value)]
    return [str(value)]


def to_cli_args(obj: Any) -> list[str]:
    """The flags that make the command line build ``obj``: one per option that differs from
    its default. ConfigError when such an option has no flag (it could not reach the child)."""
    out: list[str] = []
    for o in option_fields(obj).values():
        value = _get(obj, o.path)
        if value == o.default or (isinstance(value, (list, tuple)) and isinstance(o.default, (list, tuple))
                                  and list(value) == list(o.default)):
            continue
        if not o.cli:
            raise ConfigError(f"option {o.name} has no command-line flag; it cannot be passed to the child process")
        if o.type is bool:
            out.append(o.cli)
        elif value is not None:
            out += [o.cli] + _render(value)
    return out
