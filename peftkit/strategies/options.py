"""Rules for strategy options: the type and range each option takes, stated next to its default.

A strategy lists its defaults in ``options`` and, under the same names, one rule per option in
``rules``. `Strategy.resolve_options` checks every value given against its rule before anything is
built, so a bad value fails with one message naming the strategy, the option and a good value::

    lora option r=0: must be an integer >= 1 (e.g. r=8)
    lora option r='8': must be an integer >= 1, not a str (e.g. r=8)

Values from YAML or ``--option key=value`` arrive typed (``yaml.safe_load``): ``8`` is an int,
``true`` a bool, ``0.1`` a float. An int is accepted where a number is expected; a bool is never
taken for a number, and a string never for a number or a flag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


class Rule:
    """What one option accepts. ``describe`` completes "must be ..."."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def wrong_type(self, value: Any) -> bool:
        """True when the value's type, not its size, is what is wrong (the message then names the type)."""
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Integer(Rule):
    """An int (not a bool, not a float) of at least ``minimum``."""

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum

    def describe(self) -> str:
        return f"an integer >= {self.minimum}"

    def wrong_type(self, value: Any) -> bool:
        return not isinstance(value, int) or isinstance(value, bool)


class Number(Rule):
    """A finite int or float above ``low`` (or at it when ``low_closed``) and below ``high``."""

    def __init__(self, low: float, high: float | None = None, low_closed: bool = True):
        self.low, self.high, self.low_closed = low, high, low_closed

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or not math.isfinite(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        return above and (self.high is None or value < self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"a number {'>=' if self.low_closed else '>'} {self.low:g}"
        return f"a number in {'[' if self.low_closed else '('}{self.low:g}, {self.high:g})"

    def wrong_type(self, value: Any) -> bool:
        return not _is_number(value)


class Flag(Rule):
    """True or False (YAML's true/false arrive as such; the strings "true" or "1" do not count)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"

    def wrong_type(self, value: Any) -> bool:
        return not isinstance(value, bool)


class Choice(Rule):
    """One of ``values`` (strings, or True/False), or a string matching one of ``patterns``
    (regular expressions, shown as ``shown``)."""

    def __init__(self, values: Sequence[Any], patterns: Sequence[str] = (), shown: Sequence[str] = ()):
        self.values, self.patterns, self.shown = tuple(values), tuple(patterns), tuple(shown)

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, str):
            return any(value is v for v in self.values)  # True must not match 1, nor 1 True
        return value in self.values or any(re.fullmatch(p, value) for p in self.patterns)

    def describe(self) -> str:
        names = [repr(v) for v in self.values] + list(self.shown)
        return f"one of {', '.join(names)}"

    def wrong_type(self, value: Any) -> bool:
        return not isinstance(value, tuple({type(v) for v in self.values} | ({str} if self.patterns else set())))


class Modules(Rule):
    """Module names: one of ``keywords`` ("auto", ...), a non-empty list of names, None when
    ``optional``, and any other string when ``pattern`` (PEFT reads it as a regular expression)."""

    def __init__(self, keywords: Sequence[str] = ("auto",), optional: bool = False, pattern: bool = False):
        self.keywords, self.optional, self.pattern = tuple(keywords), optional, pattern

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str):
            return value in self.keywords or (self.pattern and _is_regex(value))
        if isinstance(value, (list, tuple)):
            return (bool(value) or self.optional) and all(isinstance(v, str) and v for v in value)
        return False

    def describe(self) -> str:
        parts = [repr(k) for k in self.keywords] + ["a list of module names"]
        if self.pattern:
            parts.append("a regular expression over full module names")
        if self.optional:
            parts.append("None")
        return " or ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else parts[0]

    def wrong_type(self, value: Any) -> bool:
        return not (value is None or isinstance(value, (str, list, tuple)))


def _is_regex(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return bool(text)


def check(strategy: str, name: str, value: Any, rule: Rule, example: Any) -> None:
    """Raise a ValueError naming ``strategy``, the option and a good value unless ``rule`` accepts ``value``."""
    if rule.accepts(value):
        return
    kind = type(value).__name__
    got = f", not {'an' if kind[0] in 'aeiou' else 'a'} {kind}" if rule.wrong_type(value) else ""
    raise ValueError(f"{strategy} option {name}={value!r}: must be {rule.describe()}{got} (e.g. {name}={example!r})")
