"""A job key: its type, default and rule (:class:`Field`), the rule helpers (:func:`choice`,
:func:`at_least`, :func:`within`, :func:`widths`), and the check of one value
(:func:`check_value`) with messages that read as English and stay on one line.

Pure: no MPI, no file access. :mod:`mpiml.config` builds the job schema from these.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "TEXT_BYTES",
    "Field",
    "at_least",
    "check_value",
    "choice",
    "field",
    "kind_of",
    "show",
    "widths",
    "within",
    "word",
]

TEXT_BYTES = 4096  # the longest string value


@dataclass(frozen=True)
class Field:
    """One job-file key: its type, default, and an optional rule on the value."""

    type: str  # "int", "float", "str", "bool", "int_list"
    default: Any
    rule: Callable[[Any], bool] | None = None
    allowed: str = ""  # how the rule reads in an error message
    doc: str = ""
    resumable: bool = False  # may differ between a checkpoint's job and the job resuming it
    unset: bool = False  # the default means "not set" (not a value a job may write): never serialized


def choice(*names: str) -> tuple[Callable[[Any], bool], str]:
    """A rule: the value is one of ``names`` (for :func:`field`)."""
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


class _Bounds:
    """The predicate of :func:`at_least`: says which bound a value breaks."""

    def __init__(self, lo: float, strict: bool, most: float | None) -> None:
        self.lo, self.strict, self.most = lo, strict, most

    def __call__(self, v: Any) -> bool:
        return self.broken(v) is None

    def broken(self, v: Any) -> str | None:
        """The bound ``v`` breaks, as it reads after "must be", or None."""
        if (v <= self.lo) if self.strict else (v < self.lo):
            return f"{'>' if self.strict else '>='} {_num(self.lo)}"
        if self.most is not None and v > self.most:
            return f"<= {_num(self.most)}"
        return None


def at_least(
    lo: float, strict: bool = False, *, most: float | None = None
) -> tuple[Callable[[Any], bool], str]:
    """A rule: ``v >= lo`` (``v > lo`` if ``strict``) and ``v <= most``. Every key states
    its largest sensible value (``most``), so that absurd magnitudes are refused with
    the key's name before they reach an allocation; the message names the bound broken."""
    low = f"{'>' if strict else '>='} {_num(lo)}"
    text = low if most is None else f"in {'(' if strict else '['}{_num(lo)}, {_num(most)}]"
    return _Bounds(lo, strict, most), text


def within(
    lo: float, hi: float, hi_open: bool = False, *, lo_open: bool = False
) -> tuple[Callable[[Any], bool], str]:
    """A rule: ``lo <= v <= hi`` (``lo_open``: ``lo < v``; ``hi_open``: ``v < hi``). The
    bounds read in messages as written: ints as ints, big ones with ``_`` separators."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    text = f"in {left}{_num(lo)}, {_num(hi)}{right}"

    def rule(v: Any) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return rule, text


def widths(lo: int, hi: int, most: int) -> tuple[Callable[[Any], bool], str]:
    """A rule for an ``int_list``: at most ``most`` entries, each in [lo, hi]."""
    return (
        lambda v: len(v) <= most and all(lo <= h <= hi for h in v),
        f"a list of at most {most} widths, each in [{_num(lo)}, {_num(hi)}]",
    )


def _num(v: float) -> str:
    if isinstance(v, int) and abs(v) >= 100_000:
        return f"{v:_}"
    return str(v)


def field(
    type_: str,
    default: Any,
    rule: tuple[Callable[[Any], bool], str] | None = None,
    doc: str = "",
    *,
    resumable: bool = False,
    unset: bool = False,
) -> Field:
    """A :class:`Field` from a type, a default, a rule made by :func:`choice`,
    :func:`at_least` or :func:`within` (or any (predicate, text) pair) and a doc line.
    ``unset``: the default stands for "not set" and breaks the rule on purpose (a job
    cannot write it); a job serialized with it leaves the key out."""
    if rule is None:
        return Field(type_, default, None, "", doc, resumable, unset)
    return Field(type_, default, rule[0], rule[1], doc, resumable, unset)


_KIND = {
    "str": "a string",
    "int": "an integer",
    "float": "a float",
    "bool": "a boolean",
    "list": "a list",
    "dict": "a table",
    "NoneType": "nothing",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}


def kind_of(value: Any) -> str:
    """What ``value`` is, with its article, for messages: "an integer", "a table"."""
    name = type(value).__name__
    return _KIND.get(name, ("an " if name[:1].lower() in "aeiou" else "a ") + name)


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters (a message stays
    one readable line whatever the job holds)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _control(text: str) -> str | None:
    """The first character of ``text`` that has no place in a job value (a control
    character, a lone surrogate), as its code point, or None."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            return f"U+{ord(ch):04X}"
    return None


def word(name: Any) -> str:
    """A section or key name as a message shows it: as written when it is a plain word,
    else quoted (control characters escaped), so that the message stays one line."""
    text = str(name)
    if text.isprintable() and text.strip() == text and len(text) <= 60:
        return text
    return show(text)


def check_value(name: str, field: Field, value: Any) -> Any:
    """``value`` checked against ``field`` (its type, text rules, its rule) and returned
    (an int given for a float as a float); ConfigError naming ``name`` otherwise."""
    t = field.type
    if t == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif t == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond the float range
                raise ConfigError(f"{name} must be a finite number (got {show(value)})") from None
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number (got {value})")
    elif t == "str":
        ok, want = isinstance(value, str), "a string"
        if ok:
            bad = _control(value)
            if bad is not None:
                raise ConfigError(f"{name} must not hold control characters (got {show(value)}, with {bad})")
            if len(value.encode("utf-8")) > TEXT_BYTES:
                raise ConfigError(
                    f"{name} must be at most {TEXT_BYTES} bytes long (got {len(value.encode())})"
                )
    elif t == "bool":
        ok, want = isinstance(value, bool), "true or false"
    elif t == "int_list":
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        want = "a list of integers"
    else:  # pragma: no cover - schema bug
        raise AssertionError(t)
    if not ok:
        raise ConfigError(f"{name} must be {want} (got {show(value)}, {kind_of(value)})")
    rule = field.rule
    if rule is not None and not rule(value):
        allowed = rule.broken(value) if isinstance(rule, _Bounds) else field.allowed
        raise ConfigError(f"{name} must be {allowed} (got {show(value)})")
    return value
