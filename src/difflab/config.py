"""Typed configs that round-trip through JSON.

Every config in difflab is a frozen dataclass deriving from :class:`Config`. Fields typed with
``Literal[...]`` are validated when the object is built, so a bad choice fails at the edge with a
message that lists the valid ones. ``to_dict``/``from_dict`` handle nested configs and tuples, so
the resolved config saved next to a run's weights rebuilds exactly the same objects.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import types
import typing
from pathlib import Path
from typing import Any, Literal, Self, get_args, get_origin, get_type_hints


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise ``ValueError`` naming the valid choices when ``value`` is not one of them."""
    choices = tuple(choices)
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {valid}")


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    if get_origin(tp) is Literal:
        return get_args(tp)
    if get_origin(tp) in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            found = _literal_choices(arg)
            if found is not None:
                return found + ((None,) if type(None) in get_args(tp) else ())
    return None


_SCALARS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (numbers.Integral,),
    float: (numbers.Real,),
    str: (str,),
}


def check_scalar(name: str, value: Any, tp: Any) -> None:
    """Raise ``TypeError`` when ``value`` is not of the scalar type ``tp`` (``int``, ``float``, ``str``,
    ``bool``, or one of them ``| None``); a bool is not a number here, an int is a float. Other
    types are not checked."""
    options = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    scalars = [t for t in options if t in _SCALARS]
    if len(scalars) + (type(None) in options) != len(options) or not scalars:
        return
    if value is None and type(None) in options:
        return
    for t in scalars:
        if isinstance(value, _SCALARS[t]) and (t is bool or not isinstance(value, bool)):
            return
    want = " or ".join(t.__name__ for t in scalars) + (" or None" if type(None) in options else "")
    raise TypeError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")


def _config_type(tp: Any) -> type[Config] | None:
    candidates = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Config):
            return c
    return None


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: Literal and scalar-type validation plus JSON round-trip."""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            name, value = f"{type(self).__name__}.{f.name}", getattr(self, f.name)
            choices = _literal_choices(hints[f.name])
            if choices is not None:
                check_choice(name, value, choices)
            else:
                check_scalar(name, value, hints[f.name])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            tp = hints[key]
            sub = _config_type(tp)
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list) and (
                get_origin(tp) is tuple or any(get_origin(a) is tuple for a in get_args(tp))
            ):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def choices(cls, name: str) -> tuple[Any, ...]:
        """The valid values of the ``Literal``-typed field ``name`` (for command-line choices)."""
        found = _literal_choices(get_type_hints(cls)[name])
        if found is None:
            raise TypeError(f"{cls.__name__}.{name} is not a Literal field")
        return tuple(c for c in found if c is not None)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default value of field ``name``."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Self:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))
