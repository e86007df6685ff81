"""Typed reads from parsed YAML, every problem collected with its key path (pure).

The configuration, the policy and approval files are read with it, so each problem reads
``FILE: key.path: what is wrong; how to fix it``.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

import yaml

from agent.errors import ConfigError

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_DURATION = 3650 * 86400.0  # ten years: a longer one is a typo, and dates would overflow


def parse_duration(value: Any) -> float | None:
    """Given "90s", "15m", "24h", "2d" or a number of seconds, return seconds (None if invalid)."""
    seconds = None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := DURATION.match(value)):
            seconds = float(m.group(1)) * UNITS[m.group(2)]
    except OverflowError:
        return None
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
        return None
    return seconds


class Problems:
    """Every problem of one file, raised together as one ConfigError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, problem: str, fix: str) -> None:
        self.items.append(f"{self.source}: {key}: {problem}; {fix}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


class Section:
    """Typed reads from one mapping of the file; unknown keys become problems."""

    def __init__(self, p: Problems, data: dict[str, Any], prefix: str, known: set[str]) -> None:
        self.p, self.data, self.prefix = p, data, prefix
        for key in data:
            if key not in known:
                hint = closest_key(str(key), known)
                fix = f"did you mean {prefix}{hint}?" if hint else \
                    f"remove it (known keys: {', '.join(sorted(known))})"
                p.add(prefix + printable_key(key), "unknown key", fix)

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            self.p.add(self.prefix + key, "missing", f"set {self.prefix}{key}")
        return value

    def mapping(self, key: str, required: bool = False) -> dict[str, Any]:
        value = self._get(key, required)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.p.add(self.prefix + key, f"expected a mapping, got {kind_of(value)}",
                       f"write {self.prefix}{key} as nested keys")
            return {}
        return value

    def string(self, key: str, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.p.add(self.prefix + key, f"expected a string, got {kind_of(value)}",
                       f"write {self.prefix}{key} as a single value")
            return None
        if str(value).strip() == "":
            self.p.add(self.prefix + key, "is empty", f"set a value or remove {self.prefix}{key}")
            return None
        return str(value)

    def strings(self, key: str, split: bool = True) -> list[str]:
        """A list of strings; one string is accepted too, comma-separated where SPLIT, as on
        the command line."""
        value = self._get(key, False)
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()] if split else [value]
        if isinstance(value, list) and all(isinstance(v, str | int | float) and
                                           not isinstance(v, bool) for v in value):
            return [str(v) for v in value]
        self.p.add(self.prefix + key, f"expected a list of strings, got {kind_of(value)}",
                   f"write {self.prefix}{key} as [a, b] or 'a,b'")
        return []

    def duration(self, key: str, default: float) -> float:
        value = self._get(key, False)
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None:
            self.p.add(self.prefix + key, f'expected a duration like "15m", got {value!r}',
                       'use a number with s, m, h or d, e.g. "90s", "15m", "24h"')
            return default
        return seconds

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.p.add(self.prefix + key, f"expected a whole number >= {minimum}, got {value!r}",
                       f"set {self.prefix}{key} to e.g. {default}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.p.add(self.prefix + key, f"expected true or false, got {value!r}",
                       f"set {self.prefix}{key}: true or false")
            return default
        return value


def load_yaml(text: str | bytes, fast: bool = False) -> Any:
    """yaml.safe_load, failing only with a YAMLError: PyYAML's parser recurses, and its
    constructors raise what they like for a badly tagged value (e.g. `!!bool maybe`).
    FAST: with libyaml's parser when PyYAML has it (a thousand reports at once)."""
    try:
        if fast:
            return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except Exception as e:
        raise yaml.YAMLError(f"a tagged value cannot be read ({type(e).__name__}: {e})") from e


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line saying where and why the text is not valid YAML."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).split("\n")[0] or "invalid YAML"
    return f"not valid YAML{where}: {' '.join(str(problem).split())}"


def printable_key(key: Any) -> str:
    """A key as written, or quoted when it holds what would break the one-line message."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def closest_key(key: str, known: set[str]) -> str | None:
    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
