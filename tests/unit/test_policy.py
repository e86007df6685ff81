"""agent.core.policy: which rule decides a change, when windows let a host be corrected, and the
policy file's loader (every problem at once, with key path and fix)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.policy import (
    APPROVE,
    AUTO,
    REPORT,
    Decision,
    Gate,
    Policy,
    Rule,
    Window,
    decide_change,
    decide_host,
    parse_policy,
    window_gate,
)
from agent.errors import RepoError

SOURCE = "petkeeper/policy.yml"
HOUR = 3600.0


def rule(mode: str, name: str, hosts: tuple[str, ...] = (), groups: tuple[str, ...] = (),
         tags: tuple[str, ...] = ()) -> Rule:
    return Rule(mode, name, frozenset(hosts), frozenset(groups), frozenset(tags))


def window(name: str = "nightly", start: str = "0 2 * * *", hours: float = 2,
           timezone: str = "UTC", hosts: tuple[str, ...] = (),
           groups: tuple[str, ...] = ()) -> Window:
    return Window(name, start, hours * HOUR, timezone, frozenset(hosts), frozenset(groups))


def decide(*rules: Rule, host: str = "db1", groups: tuple[str, ...] = ("backend",),
           tags: tuple[str, ...] = ("motd",), default: str = APPROVE) -> Decision:
    return decide_change(Policy(default, rules), host, groups, tags)


# --- decide_change ---------------------------------------------------------------------------

def test_a_host_rule_beats_a_group_rule_and_a_group_rule_beats_a_tag_rule():
    by_tag = rule(AUTO, "motd heals itself", tags=("motd",))
    by_group = rule(REPORT, "backend is hands off", groups=("backend",))
    by_host = rule(AUTO, "db1 heals itself", hosts=("db1",))

    assert decide(by_tag, by_group, by_host) == Decision(AUTO, "db1 heals itself")
    assert decide(by_host, by_group, by_tag) == Decision(AUTO, "db1 heals itself")
    assert decide(by_tag, by_group) == Decision(REPORT, "backend is hands off")
    assert decide(by_tag) == Decision(AUTO, "motd heals itself")


def test_a_host_and_tag_rule_beats_a_host_rule():
    by_host = rule(REPORT, "hands off db1", hosts=("db1",))
    by_host_and_tag = rule(AUTO, "db1's motd heals itself", hosts=("db1",), tags=("motd",))

    assert decide(by_host, by_host_and_tag) == Decision(AUTO, "db1's motd heals itself")
    assert decide(by_host, by_host_and_tag, tags=("conf",)) == Decision(REPORT, "hands off db1")


@pytest.mark.parametrize(("modes", "wins"), [
    ((AUTO, APPROVE), APPROVE), ((APPROVE, AUTO), APPROVE), ((AUTO, REPORT), REPORT),
    ((REPORT, APPROVE, AUTO), REPORT), ((AUTO, AUTO), AUTO)])
def test_among_equally_narrow_rules_the_most_careful_mode_wins(modes: tuple[str, ...],
                                                                 wins: str):
    rules = [rule(m, f"{m} #{i}", groups=("backend",)) for i, m in enumerate(modes)]

    assert decide(*rules).mode == wins


def test_a_rule_matches_only_when_every_selector_it_has_matches():
    web_motd = rule(AUTO, "web motd", groups=("frontend",), tags=("motd",))

    assert decide(web_motd) == Decision(APPROVE, "default")  # db1 is in backend
    assert decide(web_motd, groups=("frontend",)) == Decision(AUTO, "web motd")
    assert decide(web_motd, groups=("frontend",), tags=("conf",)) == Decision(APPROVE, "default")


@pytest.mark.parametrize("default", [AUTO, APPROVE, REPORT])
def test_a_change_no_rule_matches_gets_the_default(default: str):
    other = rule(AUTO, "web1 heals itself", hosts=("web1",))

    assert decide(other, default=default) == Decision(default, "default")


def test_a_rule_without_selectors_matches_everything_and_overrides_the_default():
    assert decide(rule(AUTO, "heal all"), default=REPORT) == Decision(AUTO, "heal all")


# --- decide_host -----------------------------------------------------------------------------

def test_a_host_takes_the_most_careful_of_its_changes_modes():
    auto, approve, report = (Decision(AUTO, "a"), Decision(APPROVE, "b"),
                             Decision(REPORT, "c"))

    assert decide_host([auto, approve, auto]) == approve
    assert decide_host([auto, report, approve]) == report
    assert decide_host([auto]) == auto


def test_a_host_without_changes_has_no_decision():
    assert decide_host([]) is None


# --- window_gate -----------------------------------------------------------------------------

def gate(*windows: Window, now: datetime, host: str = "db1",
         groups: tuple[str, ...] = ("backend",)) -> Gate:
    return window_gate(Policy(windows=windows), host, groups, now)


def test_without_windows_every_host_may_be_corrected_at_any_time():
    assert gate(now=datetime(2026, 11, 25, 13, 37, tzinfo=UTC)) == \
        Gate(True, "no maintenance window applies")


def test_a_window_is_open_from_its_start_for_its_duration():
    start = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)

    for now in (start, start + timedelta(minutes=1), start + timedelta(hours=2, seconds=-1)):
        g = gate(window(), now=now)
        assert g == Gate(True, "window 'nightly' open until 2026-11-26T04:00:00+00:00"), now


@pytest.mark.parametrize("now", [datetime(2026, 11, 26, 1, 59, 59, tzinfo=UTC),
                                 datetime(2026, 11, 25, 4, 0, 1, tzinfo=UTC),
                                 datetime(2026, 11, 25, 13, 0, tzinfo=UTC)])
def test_outside_its_window_a_host_waits_until_the_next_start(now: datetime):
    g = gate(window(), now=now)

    assert not g.open
    assert g.opens_at == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert g.reason == "outside maintenance windows; 'nightly' opens 2026-11-26T02:00:00+00:00"


def test_a_window_is_closed_at_the_instant_it_ends():
    g = gate(window(), now=datetime(2026, 11, 26, 4, 0, tzinfo=UTC))

    assert not g.open
    assert g.opens_at == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def test_a_window_opens_at_its_local_time_across_the_spring_dst_change():
    paris = window(start="0 3 * * *", timezone="Europe/Paris")
    utc_0130 = (datetime(2026, 3, 28, 1, 30, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC))

    before, after = (gate(paris, now=now) for now in utc_0130)

    # 01:30 UTC is 02:30 CET on Saturday (closed) but 03:30 CEST on Sunday (open).
    assert not before.open and before.opens_at == datetime(2026, 3, 28, 2, 0, tzinfo=UTC)
    assert after == Gate(True, "window 'nightly' open until 2026-03-29T05:00:00+02:00")


def test_a_window_starting_in_the_skipped_hour_opens_when_the_clocks_jump():
    # 2026-03-29 02:00 does not exist in Paris: the clocks go from 02:00 CET to 03:00 CEST.
    paris = window(start="0 2 * * *", timezone="Europe/Paris")
    jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)

    before = gate(paris, now=jump - timedelta(minutes=1))
    at_jump = gate(paris, now=jump)
    after = gate(paris, now=jump + timedelta(hours=2, minutes=1))

    assert not before.open and utc(before.opens_at) == jump
    assert at_jump.open
    assert not after.open and utc(after.opens_at) == datetime(2026, 3, 30, 0, 0, tzinfo=UTC)


def utc(when: datetime | None) -> datetime | None:
    # A start in the skipped hour never compares equal across zones (PEP 495): convert first.
    return when.astimezone(UTC) if when else None


@pytest.mark.parametrize(("start", "hours", "now", "end"), [
    # spring: 02:00 (skipped, = 03:00 CEST) + 2h elapsed; the gate is open at 04:30 CEST
    ("0 2 * * *", 2, datetime(2026, 3, 29, 2, 30, tzinfo=UTC), "2026-03-29T05:00:00+02:00"),
    # spring: 01:00 CET + 3h elapsed = 05:00 CEST
    ("0 1 * * *", 3, datetime(2026, 3, 29, 2, 30, tzinfo=UTC), "2026-03-29T05:00:00+02:00"),
    # autumn: 01:00 CEST + 3h elapsed = 03:00 CET, when the gate does close
    ("0 1 * * *", 3, datetime(2026, 10, 25, 1, 55, tzinfo=UTC), "2026-10-25T03:00:00+01:00"),
])
def test_an_open_windows_announced_end_is_its_start_plus_the_elapsed_duration_across_dst(
        start: str, hours: float, now: datetime, end: str):
    g = gate(window(start=start, hours=hours, timezone="Europe/Paris"), now=now)

    assert g == Gate(True, f"window 'nightly' open until {end}")


def test_a_window_scoped_to_hosts_or_groups_gates_only_those_hosts():
    backend = window("backend nightly", groups=("backend",))
    db2 = window("db2 only", hosts=("db2",))
    noon = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    assert gate(backend, db2, now=noon, host="web1", groups=("frontend",)) == \
        Gate(True, "no maintenance window applies")
    assert not gate(backend, db2, now=noon, host="db1", groups=("backend",)).open
    assert not gate(backend, db2, now=noon, host="db2", groups=()).open


def test_a_host_with_several_windows_is_open_when_any_is_and_waits_for_the_soonest():
    nightly = window("nightly", start="0 2 * * *")
    lunch = window("lunch", start="0 12 * * *", hours=1)

    at_lunch = gate(nightly, lunch, now=datetime(2026, 11, 25, 12, 30, tzinfo=UTC))
    evening = gate(nightly, lunch, now=datetime(2026, 11, 25, 20, 0, tzinfo=UTC))
    morning = gate(nightly, lunch, now=datetime(2026, 11, 25, 9, 0, tzinfo=UTC))

    assert at_lunch == Gate(True, "window 'lunch' open until 2026-11-25T13:00:00+00:00")
    assert evening.opens_at == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert "'nightly' opens" in evening.reason
    assert morning.opens_at == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert "'lunch' opens" in morning.reason


def test_a_window_that_never_opens_keeps_the_host_waiting_and_says_so():
    never = window("february 31st", start="0 0 31 2 *")

    assert gate(never, now=datetime(2026, 11, 25, tzinfo=UTC)) == \
        Gate(False, "no maintenance window will open")


# --- parse_policy ----------------------------------------------------------------------------

def problems(data: Any) -> list[str]:
    with pytest.raises(RepoError) as e:
        parse_policy(data, SOURCE)
    return str(e.value).splitlines()


def test_the_documented_example_gives_its_rules_and_windows():
    data = {"default": "approve",
            "rules": [{"name": "self-heal the web tier", "groups": ["frontend"], "mode": "auto"},
                      {"name": "hands off the database", "hosts": ["db1"], "mode": "report"},
                      {"tags": ["motd"], "mode": "auto"}],
            "windows": [{"name": "nightly", "start": "0 2 * * *", "duration": "2h",
                         "timezone": "Europe/Paris", "groups": ["backend"]}]}

    assert parse_policy(data, SOURCE) == Policy(
        APPROVE,
        (rule(AUTO, "self-heal the web tier", groups=("frontend",)),
         rule(REPORT, "hands off the database", hosts=("db1",)),
         rule(AUTO, "rules[2]", tags=("motd",))),
        (window("nightly", timezone="Europe/Paris", groups=("backend",)),),
        SOURCE)


def test_an_empty_policy_file_makes_every_correction_wait_for_approval():
    assert parse_policy(None, SOURCE) == Policy(APPROVE, (), (), SOURCE)
    assert parse_policy({}, SOURCE) == Policy(APPROVE, (), (), SOURCE)


def test_a_single_name_is_read_as_a_list_and_a_window_defaults_to_utc():
    policy = parse_policy({"rules": [{"mode": "auto", "hosts": "web1"}],
                           "windows": [{"start": "0 2 * * *", "duration": 90}]}, SOURCE)

    assert policy.rules == (rule(AUTO, "rules[0]", hosts=("web1",)),)
    assert policy.windows == (Window("windows[0]", "0 2 * * *", 90.0, "UTC"),)


def test_every_problem_is_reported_at_once_with_its_key_path_and_a_fix():
    data = {"default": "yolo", "rulez": [],
            "rules": [{"mode": "sometimes", "hosts": ["db1"]}, "web1",
                      {"mode": "auto", "tags": [1], "when": "always"}],
            "windows": [{"start": "0 2 * *", "duration": "2h"},
                        {"start": "0 2 * * *", "duration": 0},
                        {"start": "0 2 * * *", "timezone": "Mars/Olympus", "duration": "2h"},
                        {"start": "0 2 * * *"},
                        {"start": "0 2 * * *", "duration": "2h", "days": "weekend"}]}

    found = problems(data)

    assert found == [
        f"{SOURCE}: rulez: unknown key; use default, rules or windows",
        f"{SOURCE}: default: expected one of auto, approve, report, got 'yolo'; fix the mode",
        f"{SOURCE}: rules[0].mode: expected one of auto, approve, report, got 'sometimes'; "
        "set a mode",
        f"{SOURCE}: rules[1]: expected a mapping; write mode: and hosts/groups/tags",
        f"{SOURCE}: rules[2].when: unknown key; use name, mode, hosts, groups or tags",
        f"{SOURCE}: rules[2].tags: expected a list of names; write tags: [name1, name2]",
        f"{SOURCE}: windows[0].start: not a cron expression (Wrong number of fields; got 4, "
        'expected 5); write e.g. "0 2 * * *"',
        f"{SOURCE}: windows[1].duration: expected a duration like 2h, got 0; set how long the "
        "window stays open",
        f"{SOURCE}: windows[2].timezone: unknown time zone 'Mars/Olympus'; use e.g. "
        "Europe/Paris or UTC",
        f"{SOURCE}: windows[3].duration: expected a duration like 2h, got None; set how long "
        "the window stays open",
        f"{SOURCE}: windows[4].days: unknown key; use name, start, duration, timezone, hosts "
        "or groups",
    ]
    assert all(re.fullmatch(rf"{re.escape(SOURCE)}: [\w.\[\]]+: [^;]+(; .+)?; .+", line)
               for line in found), found


@pytest.mark.parametrize(("data", "line"), [
    ({"rules": {"mode": "auto"}}, "rules: expected a list; write rules as a list of mappings"),
    ({"windows": "nightly"}, "windows: expected a list; write windows as a list of mappings"),
    ({"windows": [{"start": "0 2 * * *", "duration": "2h", "hosts": {"db1": 1}}]},
     "windows[0].hosts: expected a list of names; write hosts: [name1, name2]"),
    ({"windows": [{"start": "0 2 * * *", "duration": "-2h"}]},
     "windows[0].duration: expected a duration like 2h, got '-2h'; set how long the window "
     "stays open"),
    ({"windows": [{"start": "0 2 * * *", "duration": "2h", "timezone": "../etc/passwd"}]},
     "windows[0].timezone: unknown time zone '../etc/passwd'; use e.g. Europe/Paris or UTC"),
    ({"windows": [{"duration": "2h"}]},
     "windows[0].start: not a cron expression (Wrong number of fields; got 0, expected 5); "
     'write e.g. "0 2 * * *"'),
])
def test_a_misshapen_section_is_one_problem_naming_its_key(data: dict[str, Any], line: str):
    assert problems(data) == [f"{SOURCE}: {line}"]


@pytest.mark.parametrize("data", [["auto"], "auto", 3, True])
def test_a_policy_file_that_is_not_a_mapping_is_rejected(data: Any):
    assert problems(data) == [f"{SOURCE}: expected a mapping with default, rules, windows; got "
                              f"{type(data).__name__}; see the policy example in the README"]


def test_a_window_with_a_bad_start_and_no_duration_reports_both():
    assert problems({"windows": [{"start": "02:00", "duration": "2 hours"}]}) == [
        f"{SOURCE}: windows[0].start: not a cron expression (Wrong number of fields; got 1, "
        'expected 5); write e.g. "0 2 * * *"',
        f"{SOURCE}: windows[0].duration: expected a duration like 2h, got '2 hours'; set how "
        "long the window stays open"]


def test_an_unknown_key_with_a_line_break_stays_on_one_problem_line():
    found = problems({"rules": [{"mode": "auto", "host\nnames": ["db1"]}]})

    assert len(found) == 1 and found[0].startswith(f"{SOURCE}: rules[0].")


# --- parse_policy on any data ----------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20)
           | st.sampled_from([AUTO, APPROVE, REPORT, "0 2 * * *", "*/0 * * * *", "2h", "0s",
                              "Europe/Paris", "UTC", "Europe/", "../x", ""]))
# No line breaks in keys: those have their own test above.
keys = (st.sampled_from(["default", "rules", "windows", "name", "mode", "hosts", "groups",
                         "tags", "start", "duration", "timezone"])
        | st.integers(-3, 3) | st.booleans()
        | st.text(st.characters(exclude_categories=("Cc", "Zl", "Zp")), max_size=8))
yaml_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(keys, inner, max_size=5), max_leaves=25)
items = st.lists(st.dictionaries(keys, yaml_like, max_size=6) | yaml_like, max_size=3)
policy_shaped = st.fixed_dictionaries({}, optional={"default": yaml_like, "rules": items,
                                                    "windows": items})


@PROPERTY
@given(yaml_like | policy_shaped)
def test_any_yaml_like_data_gives_a_policy_or_a_repo_error_naming_the_file(data: Any):
    try:
        policy = parse_policy(data, SOURCE)
    except RepoError as e:
        lines = str(e).splitlines()
        assert lines and all(line.startswith(f"{SOURCE}: ") for line in lines), lines
    else:
        assert isinstance(policy, Policy)
