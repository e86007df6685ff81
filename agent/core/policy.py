"""Decide: which drift may be corrected, how, and when. Pure functions over plain data.

The policy lives in the GitOps repo (default ``petkeeper/policy.yml``), so it is reviewed like
everything else::

    default: approve            # auto | approve | report
    rules:
      - name: self-heal the web tier
        groups: [frontend]
        mode: auto
      - name: hands off the database
        hosts: [db1]
        mode: report
      - tags: [motd]
        mode: auto
    windows:
      - name: nightly
        start: "0 2 * * *"      # cron: minute hour day month weekday
        duration: 2h
        timezone: Europe/Paris
        groups: [backend]       # optional: hosts, groups; none means every host

A rule matches a change when every selector it has matches (host name, one of the host's groups,
one of the task's tags). The narrowest matching rule decides: hosts beat groups beat tags; among
equally narrow rules the most careful mode wins (report, then approve, then auto). A host is
corrected only when every one of its changes may be. Windows gate corrections only, never
detection: a host that some window names is corrected only while one of its windows is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.core.cron import next_start, parse_cron
from agent.core.schema import parse_duration, printable_key
from agent.errors import RepoError

AUTO, APPROVE, REPORT = "auto", "approve", "report"
MODES = (AUTO, APPROVE, REPORT)
CARE = {AUTO: 0, APPROVE: 1, REPORT: 2}  # how careful a mode is
DEFAULT_PATH = "petkeeper/policy.yml"


@dataclass(frozen=True)
class Rule:
    mode: str
    name: str
    hosts: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    @property
    def narrowness(self) -> tuple[bool, bool, bool]:
        return (bool(self.hosts), bool(self.groups), bool(self.tags))

    def matches(self, host: str, groups: Iterable[str], tags: Iterable[str]) -> bool:
        return ((not self.hosts or host in self.hosts) and
                (not self.groups or bool(self.groups & set(groups))) and
                (not self.tags or bool(self.tags & set(tags))))


@dataclass(frozen=True)
class Window:
    name: str
    start: str  # cron expression
    duration: float  # seconds
    timezone: str = "UTC"
    hosts: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def covers(self, host: str, groups: Iterable[str]) -> bool:
        if not self.hosts and not self.groups:
            return True
        return host in self.hosts or bool(self.groups & set(groups))

    def open_until(self, now: datetime) -> datetime | None:
        """The end of the opening that contains NOW, or None when closed (an opening ends
        before its last instant: [start, start + duration))."""
        span = timedelta(seconds=self.duration)
        start = next_start(self.start, self.timezone, now - span + timedelta(microseconds=1))
        if start is None or start > now:
            return None
        # Real elapsed time, not wall-clock arithmetic, across a DST change.
        end = (start.astimezone(UTC) + span).astimezone(start.tzinfo)
        return end if end > now else None

    def opens_at(self, now: datetime) -> datetime | None:
        return next_start(self.start, self.timezone, now)


@dataclass(frozen=True)
class Policy:
    default: str = APPROVE
    rules: tuple[Rule, ...] = ()
    windows: tuple[Window, ...] = ()
    source: str = "(no policy file: every correction waits for an approval)"


@dataclass(frozen=True)
class Decision:
    mode: str
    rule: str  # which rule decided, for `petkeeper plan`


@dataclass(frozen=True)
class Gate:
    """Whether a host may be corrected now, and if not, until when it waits."""

    open: bool
    reason: str
    opens_at: datetime | None = None


def decide_change(policy: Policy, host: str, groups: Sequence[str],
                  tags: Sequence[str]) -> Decision:
    """The narrowest matching rule's mode for one change (the default when none matches)."""
    matching = [r for r in policy.rules if r.matches(host, groups, tags)]
    if not matching:
        return Decision(policy.default, "default")
    best = max(matching, key=lambda r: (r.narrowness, CARE[r.mode]))
    return Decision(best.mode, best.name)


def decide_host(decisions: Iterable[Decision]) -> Decision | None:
    """A host's mode: the most careful of its changes' (None for a host without changes)."""
    found = list(decisions)
    return max(found, key=lambda d: CARE[d.mode]) if found else None


def window_gate(policy: Policy, host: str, groups: Sequence[str], now: datetime) -> Gate:
    """Whether maintenance windows let HOST be corrected at NOW."""
    mine = [w for w in policy.windows if w.covers(host, groups)]
    if not mine:
        return Gate(True, "no maintenance window applies")
    for w in mine:
        end = w.open_until(now)
        if end is not None:
            return Gate(True, f"window {w.name!r} open until {end.isoformat()}")
    starts = [(s, w) for w in mine if (s := w.opens_at(now)) is not None]
    if not starts:
        return Gate(False, "no maintenance window will open")
    start, w = min(starts, key=lambda sw: sw[0])
    return Gate(False, f"outside maintenance windows; {w.name!r} opens {start.isoformat()}",
                opens_at=start)


def parse_policy(data: Any, source: str) -> Policy:
    """Given the parsed YAML of the policy file SOURCE, return a Policy or raise RepoError
    listing every problem."""
    problems: list[str] = []

    def bad(key: str, problem: str, fix: str) -> None:
        problems.append(f"{source}: {key}: {problem}; {fix}")

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RepoError(f"{source}: expected a mapping with default, rules, windows; got "
                        f"{type(data).__name__}; see the policy example in the README")
    for key in data:
        if key not in ("default", "rules", "windows"):
            bad(printable_key(key), "unknown key", "use default, rules or windows")
    default = data.get("default", APPROVE)
    if default not in MODES:
        bad("default", f"expected one of {', '.join(MODES)}, got {default!r}", "fix the mode")
        default = APPROVE
    rules = [r for i, item in enumerate(_list(data, "rules", bad))
             if (r := _rule(item, f"rules[{i}]", bad))]
    windows = [w for i, item in enumerate(_list(data, "windows", bad))
               if (w := _window(item, f"windows[{i}]", bad))]
    if problems:
        raise RepoError("\n".join(problems))
    return Policy(default, tuple(rules), tuple(windows), source)


def _list(data: Mapping[str, Any], key: str, bad: Any) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        bad(key, "expected a list", f"write {key} as a list of mappings")
        return []
    return value


def _names(item: Mapping[str, Any], key: str, where: str, bad: Any) -> frozenset[str]:
    value = item.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        bad(f"{where}.{key}", "expected a list of names", f"write {key}: [name1, name2]")
        return frozenset()
    return frozenset(value)


def _rule(item: Any, where: str, bad: Any) -> Rule | None:
    if not isinstance(item, dict):
        bad(where, "expected a mapping", "write mode: and hosts/groups/tags")
        return None
    for key in item:
        if key not in ("name", "mode", "hosts", "groups", "tags"):
            bad(f"{where}.{printable_key(key)}", "unknown key",
                "use name, mode, hosts, groups or tags")
    mode = item.get("mode")
    if mode not in MODES:
        bad(f"{where}.mode", f"expected one of {', '.join(MODES)}, got {mode!r}", "set a mode")
        return None
    return Rule(mode, str(item.get("name") or where), _names(item, "hosts", where, bad),
                _names(item, "groups", where, bad), _names(item, "tags", where, bad))


def _window(item: Any, where: str, bad: Any) -> Window | None:
    """One window; every problem in it is reported, not only the first."""
    if not isinstance(item, dict):
        bad(where, "expected a mapping", "write start:, duration: and timezone:")
        return None
    for key in item:
        if key not in ("name", "start", "duration", "timezone", "hosts", "groups"):
            bad(f"{where}.{printable_key(key)}", "unknown key",
                "use name, start, duration, timezone, hosts or groups")
    ok = True
    tz = str(item.get("timezone") or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        bad(f"{where}.timezone", f"unknown time zone {tz!r}", "use e.g. Europe/Paris or UTC")
        tz, ok = "UTC", False
    start = str(item.get("start") or "")
    problem = parse_cron(start, tz)
    if problem:
        bad(f"{where}.start", f"not a cron expression ({problem})", 'write e.g. "0 2 * * *"')
        ok = False
    duration = parse_duration(item.get("duration"))
    if not duration:
        bad(f"{where}.duration", f"expected a duration like 2h, got {item.get('duration')!r}",
            "set how long the window stays open")
        ok = False
    hosts, groups = _names(item, "hosts", where, bad), _names(item, "groups", where, bad)
    if not ok or duration is None:
        return None
    return Window(str(item.get("name") or where), start, duration, tz, hosts, groups)
