"""The schema machinery of every config section: frozen dataclasses built from plain dicts (params.yaml) with
their types checked, and the record of which params keys a caller reads.

- `from_dict(cls, data, key)` builds a section, refusing unknown keys and wrong types with the key's path; a field
  typed `Literal[...]` (or a tuple of them) accepts only its listed values, also when a section is built directly.
- A `Section` built with a key knows the params key of each field and, while `recording_reads()` is active,
  records every field read as that key (`unrecorded()` turns the recording off; `mark_read` records a section
  read as a whole): the pipeline's tests use it to prove that each DVC stage lists exactly the keys it reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import reprlib
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# While `recording_reads()` is active: the dotted params keys read so far (None: not recording).
_reads: set[str] | None = None


class Section:
    """Base of every config dataclass. Instances built by `from_dict(..., key=...)` know the params key of
    each field and, while `recording_reads()` is active, record every field read as that key.

    A field holding a nested Section (or a dict of them) is not itself recorded: the nested section records
    the fields read from it, so that reading `imp.fraction` does not count as reading all of `imp`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every section checks its Literal fields when built, directly or by from_dict (before its own
        __post_init__ checks, which may then rely on them)."""
        super().__init_subclass__(**kwargs)
        checks = cls.__dict__.get("__post_init__") or getattr(cls, "_own_checks", None)  # its own, or its parent's
        cls._own_checks = checks

        def __post_init__(self: Section) -> None:
            for name, hint in _literal_hints(type(self)).items():
                _convert(object.__getattribute__(self, name), hint, name, False)
            if checks is not None:
                checks(self)

        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if _reads is not None:
            keys = object.__getattribute__(self, "__dict__").get("_keys")
            if keys is not None and name in keys and not _holds_sections(value):
                _reads.add(keys[name])
        return value


def _holds_sections(value: Any) -> bool:
    if isinstance(value, Section):
        return True
    return isinstance(value, dict) and bool(value) and all(isinstance(v, Section) for v in value.values())


@contextlib.contextmanager
def recording_reads() -> Iterator[set[str]]:
    """Collect the dotted params keys read from key-aware sections inside the block."""
    global _reads
    outer, _reads = _reads, set()
    try:
        yield _reads
    finally:
        _reads = outer


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Reads inside the block are not recorded (building and checking configs reads every field)."""
    global _reads
    outer, _reads = _reads, None
    try:
        yield
    finally:
        _reads = outer


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 100, 100
_SHOWN.maxdict = _SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxset = 6
SHOWN_CHARS = 120  # the most of one value an error message shows


def shown(value: Any) -> str:
    """repr(value) cut short for an error message: a huge value (a megabyte list, a long string) must not make
    a megabyte message."""
    text = _SHOWN.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _set_keys(section: Section, keys: dict[str, str], own: str | None = None) -> None:
    object.__setattr__(section, "_keys", keys)  # in __dict__, not a field: eq, repr and asdict ignore it
    object.__setattr__(section, "_key", own)  # the section's own params key (None: a merged or copied section)


def mark_read(*sections: Section) -> None:
    """Record each section's own params key as read (while `recording_reads()` is active): for a stage whose
    output depends on a section as a whole (e.g. that a multi-image group exists) without reading a field of it."""
    if _reads is None:
        return
    for section in sections:
        key = object.__getattribute__(section, "__dict__").get("_key")
        if key is None:
            raise ValueError(f"{type(section).__name__} was not built from params (no key to record)")
        _reads.add(key)


def from_dict(cls: type[T], data: dict[str, Any] | None, key: str | None = None) -> T:
    """Build dataclass `cls` from a plain dict: nested sections, tuples and dicts converted, unknown keys and
    wrong types refused with the offending key.

    key: the section's own params key ("" for the root of a params file); the built sections then record
    their reads as params keys (see Section). None: a config that does not come from params (no recording).
    """
    with unrecorded():
        return _from_dict(cls, data, key)


def _from_dict(cls: type[T], data: dict[str, Any] | None, key: str | None) -> T:
    where = f"{key}." if key else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{key or cls.__name__}: expected a mapping of keys to values, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{key or cls.__name__}: unknown key(s) {[where + u for u in unknown]}; allowed keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    recorded = key is not None
    values = {name: _convert(value, hints[name], where + name, recorded) for name, value in data.items()}
    for name in set(fields) - set(values):  # absent nested sections: their defaults, key-aware too
        if isinstance(hints[name], type) and issubclass(hints[name], Section):
            values[name] = from_dict(hints[name], {}, where + name if recorded else None)
    try:
        obj = cls(**values)
    except TypeError as err:  # a required key is missing
        raise ValueError(f"{key or cls.__name__}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{key}: {err}" if key else str(err)) from err
    if isinstance(obj, Section) and key is not None:
        _set_keys(obj, {name: where + name for name in fields}, key)
    return obj


def derive(cfg: T, **changes: Any) -> T:
    """dataclasses.replace that keeps the params keys of the unchanged fields (see Section)."""
    with unrecorded():  # copying every field is not reading it; the copy records its own reads
        new = dataclasses.replace(cfg, **changes)
    own = object.__getattribute__(cfg, "__dict__")
    if own.get("_keys") is not None:
        _set_keys(new, {k: v for k, v in own["_keys"].items() if k not in changes}, own.get("_key"))
    return new


def with_keys(cfg: T, keys: dict[str, str]) -> T:
    """`cfg` whose fields are recorded as the given params keys (for a section merged from several)."""
    _set_keys(cfg, keys)
    return cfg


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _convert(value: Any, hint: Any, key: str, recorded: bool) -> Any:
    """`value` checked against (and shaped to) the type hint `hint`; errors name `key`; nested sections
    record their reads as keys under `key` if `recorded`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, key, recorded)
            except ValueError as err:  # "key: expected X, got V" -> "expected X"
                errors.append(str(err).split(": ", 1)[-1].rsplit(", got ", 1)[0].removeprefix("expected "))
        raise ValueError(f"{key}: expected {' or '.join(errors)}, got {shown(value)}")
    if origin is Literal:
        if not any(value == option and type(value) is type(option) for option in args):
            raise ValueError(f"{key}: expected one of {list(args)}, got {shown(value)}")
        return value
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{key}: expected null, got {shown(value)}")
        return None
    if isinstance(hint, type) and issubclass(hint, Section):
        if value is None:  # `fit:` with nothing under it would silently mean every default
            raise ValueError(f"{key}: expected a mapping of keys to values, got null (delete the key for defaults)")
        return from_dict(hint, value, key if recorded else None)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", recorded) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{key}: expected a list of {len(args)} values, got {shown(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]", recorded) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {shown(value)}")
        return {k: _convert(v, args[1], f"{key}.{k}", recorded) for k, v in value.items()}
    if hint in _SCALARS:
        ok = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise ValueError(f"{key}: expected {_SCALARS[hint]}, got {shown(value)}")
        if hint is float and not math.isfinite(value):  # YAML's .nan / .inf
            raise ValueError(f"{key}: expected a finite number, got {shown(value)}")
        return value
    return value


@functools.cache
def _literal_hints(cls: type) -> dict[str, Any]:
    """The fields of dataclass `cls` whose type hint holds a Literal (checked whenever a section is built)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and _holds_literal(hints[f.name])}


def _holds_literal(hint: Any) -> bool:
    return typing.get_origin(hint) is Literal or any(_holds_literal(a) for a in typing.get_args(hint))
