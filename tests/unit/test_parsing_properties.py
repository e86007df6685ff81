"""Property-based tests (Hypothesis) over everything Petkeeper parses: the policy file, approvals
(in Git and on the host), the configuration and Ansible's inventory listing.

One property throughout: for every input the parser returns a valid object or raises an
AgentError whose message names the file (and key), one line per problem; never another
exception, so the CLI never prints a traceback for bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.adapters.inventory import parse_inventory_list
from agent.adapters.state import StateDir
from agent.config import (
    Config,
    Overrides,
    RepoConfig,
    load_config,
    parse_config,
    parse_extra_var,
)
from agent.core.approval import Approval, expiry, parse_git_approval, plan_id, void_reason
from agent.core.policy import Policy, decide_change, decide_host, parse_policy, window_gate
from agent.core.schema import parse_duration
from agent.cycle.decide import (
    approve_plan,
    git_approvals,
    host_approvals,
    load_policy,
    used_approvals,
)
from agent.cycle.source import Source
from agent.errors import AgentError, ConfigError, RepoError, StalledError

# Reproducible in CI: examples are derived from each test's name, and nothing is stored.
PROPERTY = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])
FILES = settings(PROPERTY, max_examples=50)  # each example writes a file: fewer of them
NOW = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
# The YAML and JSON parsers recurse: nesting this deep must not crash them.
DEEP, DEEP_JSON = "[" * 700 + "]" * 700, "[" * 1200 + "]" * 1200

# What yaml.safe_load can produce, and strings that mean something to our parsers.
MEANINGFUL = ["auto", "approve", "report", "0 2 * * *", "*/0 * * * *", "61 25 * * *", "2h",
              "0s", "15m", "99999999999999d", "1e400", "8h", "-4h", "Europe/Paris", "UTC",
              "Europe/", "../x", "/abs", "", " ", "\n", "a\nb", "\x00", "@", "{", "[", "k=v",
              "2026-11-26T08:00:00+01:00", "2026-11-26T08:00:00", "9999-12-31T23:59:59-14:00",
              "0001-01-01T00:00:00+14:00", "0123456789abcdef", "file:///srv/git/pets.git",
              "site.yml", "main", "true", "null"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=20) | st.binary(max_size=8) | st.sampled_from(MEANINGFUL)
           | st.dates() | st.datetimes() | st.datetimes(timezones=st.timezones()))
keys = (st.text(max_size=10) | st.integers(-3, 3) | st.booleans() | st.none() | st.dates()
        | st.sampled_from(["default", "rules", "windows", "name", "mode", "hosts", "groups",
                           "tags", "start", "duration", "timezone", "host", "plan",
                           "fingerprint", "source", "expires", "comment", "repo", "url"]))
yaml_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(keys, inner, max_size=5), max_leaves=20)


def shaped(fields: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings with some of FIELDS (each with its own strategy or any data) and stray keys."""
    known = st.fixed_dictionaries({}, optional={k: v | yaml_like for k, v in fields.items()})
    return st.tuples(known, st.dictionaries(keys, yaml_like, max_size=2)).map(
        lambda kv: {**kv[1], **kv[0]})


# Text as a person might commit it: YAML of any data, YAML-ish token soup, or any text at all.
TOKENS = ["a", "b", ":", ": ", "- ", "-", "\n", "  ", "\t", "[", "]", "{", "}", ",", "'", '"',
          "#", "&x ", "*x", "!!str ", "!!binary ", "!!python/object:os.system ", "? ", "|",
          ">", "%YAML 1.1\n", "---\n", "...\n", "\\", "\x00", "\ufeff", "é", "mode: auto",
          "rules:", "windows:", "host: db1", "expires: 8h", "plan: 0123456789abcdef"]
yaml_text = (yaml_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
             | st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)
             | st.text(max_size=60))


def assert_problem_lines(error: AgentError, *prefixes: str) -> None:
    """ERROR says what is wrong in lines that each start with one of PREFIXES (the file,
    quoted when its name has characters that would break the line, or the command line)."""
    lines = str(error).split("\n")
    assert lines and all(line.lstrip("'\"").startswith(prefixes) and line.strip() == line
                         for line in lines), lines
    assert all(line.isprintable() for line in lines), lines


def assert_one_line(error: AgentError, prefix: str) -> None:
    assert "\n" not in str(error), str(error)
    assert_problem_lines(error, prefix)


# --- the policy ------------------------------------------------------------------------------

POLICY = "petkeeper/policy.yml"
items = st.lists(shaped({"name": scalars, "mode": st.sampled_from(["auto", "approve", "report"]),
                         "hosts": st.lists(st.text(max_size=5), max_size=2),
                         "groups": scalars, "tags": scalars,
                         "start": st.sampled_from(MEANINGFUL[:6]),
                         "duration": st.sampled_from(MEANINGFUL[6:15]) | st.floats(),
                         "timezone": st.sampled_from(MEANINGFUL[13:16]) | st.timezone_keys()}),
                 max_size=3)
policy_data = shaped({"default": st.sampled_from(["auto", "approve", "report"]),
                      "rules": items, "windows": items})


@PROPERTY
@given(policy_data | yaml_like, st.text(max_size=5), st.lists(st.text(max_size=5), max_size=2),
       st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.just(UTC)))
@example({"windows": [{"start": "0 2 * * *", "duration": "99999999999d"}]}, "h", [], NOW)
@example({"windows": [{"start": "0 2 * * *", "duration": 1e300}]}, "h", [], NOW)
@example({"windows": [{"start": "0 2 * * *", "duration": "3650d"}]}, "h", [],
         datetime(1970, 1, 1, tzinfo=UTC))
def test_any_policy_data_gives_a_usable_policy_or_one_line_per_problem(
        data: Any, host: str, groups: list[str], now: datetime):
    try:
        policy = parse_policy(data, POLICY)
    except RepoError as e:
        assert_problem_lines(e, f"{POLICY}: ")
        return
    assert isinstance(policy, Policy)
    # What parse_policy accepts, deciding must be able to use: rules, and windows at any time.
    decision = decide_host([decide_change(policy, host, groups, groups)])
    assert decision is not None and decision.mode in ("auto", "approve", "report")
    assert isinstance(window_gate(policy, host, groups, now).open, bool)


def load_policy_text(tree: Path, text: str | bytes) -> Policy:
    path = tree / POLICY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    config = Config(repo=RepoConfig("file:///srv/git/pets.git"))
    return load_policy(config, Source("0" * 40, tree))


@FILES
@given(yaml_text | st.binary(max_size=40))
@example(DEEP)
@example("rules: [" * 3000)
@example(b"\xff\xfe rules")
@example("default: !!python/object/apply:os.system ['true']\n")
def test_any_text_as_the_policy_file_gives_a_policy_or_an_error_naming_it(tmp_path_factory,
                                                                       text: str | bytes):
    tree = tmp_path_factory.mktemp("tree", numbered=True)
    try:
        policy = load_policy_text(tree, text)
    except RepoError as e:
        assert_problem_lines(e, f"{POLICY}: ")
    else:
        assert isinstance(policy, Policy)


# --- approvals in Git ------------------------------------------------------------------------

SRC = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
FP = "a547283f08a3a78e1f2887dd23ac2248b5ccdbed8f51b937fbfc8aa81f3fa1e4"
COMMIT = "5d41402abc4b2a76b9719d911017c592ae3f1c2d"
PID = plan_id("db1", SRC, FP)
PLANS = {PID: ("db1", SRC, FP), "0123456789012345": ("web1", SRC, FP)}
odd_expiry = (st.sampled_from(MEANINGFUL) | st.integers() | st.floats() | st.dates()
              | st.datetimes() | st.datetimes(timezones=st.timezones())
              | st.from_regex(r"\A\d{1,20}(\.\d{0,3})?[smhd]?\Z")
              | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?([+-]\d\d:\d\d|Z)?\Z"))
approval_data = shaped({"host": st.sampled_from(["db1", "web1", ""]) | scalars,
                        "plan": st.sampled_from([PID, "0123456789012345", 123456789012345])
                        | scalars,
                        "fingerprint": st.just(FP) | scalars, "source": st.just(SRC) | scalars,
                        "expires": odd_expiry, "comment": scalars})


@PROPERTY
@given(approval_data | yaml_like, st.text(max_size=12))
@example({"host": "db1", "plan": PID, "expires": "99999999999d"}, "db1.yml")
@example({"host": "db1", "plan": PID, "expires": "9999-12-31T23:59:59-14:00"}, "db1.yml")
@example({"host": "db1", "plan": PID, "expires": "8h"}, "a\nb.yml")
def test_any_git_approval_data_gives_a_usable_approval_or_one_line_naming_the_file(
        data: Any, name: str):
    path = f"approvals/{name}"
    try:
        a = parse_git_approval(data, path, COMMIT, "Alice <a@example.com>", NOW, PLANS)
    except RepoError as e:
        assert_one_line(e, "approvals/")
        assert f"(commit {COMMIT[:12]}): " in str(e)
        return
    assert isinstance(a, Approval) and a.host and a.plan_id
    assert Approval.from_dict(a.as_dict()) == a
    why = void_reason(a, "db1", SRC, FP, NOW)
    assert why is None or isinstance(why, str)


class FakeMirror:
    """What git_approvals reads from the mirror: the files under approvals/ and their commit."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = files

    def files_under(self, commit: str, folder: str) -> Mapping[str, bytes]:
        return self.files

    def last_commit_touching(self, commit: str, path: str) -> str:
        return COMMIT

    def commit_message(self, commit: str) -> tuple[str, str]:
        return "Approve", NOW.isoformat()

    def commit_author(self, commit: str) -> str:
        return "Alice <a@example.com>"


@PROPERTY
@given(yaml_text | st.binary(max_size=40), st.text(max_size=8))
@example(DEEP, "db1")
@example("host: [", "db1")
@example(b"\xff\xfe host: db1", "db1")
@example("host: db1\nplan: 0123456789012345\nexpires: 8h\n", "new\nline")
def test_any_text_as_a_git_approval_file_gives_approvals_or_one_line_naming_it(
        text: str | bytes, name: str):
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    mirror = FakeMirror({f"approvals/{name}.yml": blob})
    config = Config(repo=RepoConfig("file:///srv/git/pets.git"))
    try:
        found = git_approvals(config, mirror, COMMIT, PLANS)  # type: ignore[arg-type]
    except RepoError as e:
        assert_one_line(e, "approvals/")
    else:
        assert all(isinstance(a, Approval) and problem is None for a, problem in found)


# --- approvals on the host -------------------------------------------------------------------

json_like = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                         | st.text(max_size=12),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                         max_leaves=12)
host_approval = st.fixed_dictionaries({}, optional={k: st.just("db1") | json_like for k in (
    "host", "plan_id", "source_sha", "fingerprint", "approver", "how", "approved_at",
    "expires_at", "comment", "origin")})
state_text = (json_like | host_approval).map(json.dumps) | st.text(max_size=30)


@FILES
@given(st.lists(state_text, min_size=1, max_size=3), state_text)
@example(['{"host": "db1", "expires_at": "2026-11-26T00:00:00"}'], "[]")
@example(["[]"], "[]")
@example(["{}"], "5")
@example(["{}"], "[[1]]")
@example([DEEP_JSON], DEEP_JSON)
def test_any_host_approval_files_give_approvals_or_an_error_naming_the_file(
        tmp_path_factory, files: list[str], used: str):
    state = StateDir(tmp_path_factory.mktemp("state", numbered=True))
    state.approvals.mkdir()
    for i, text in enumerate(files):
        (state.approvals / f"{i}.json").write_text(text, errors="surrogatepass")
    state.used_approvals_file.write_text(used, errors="surrogatepass")
    try:
        found = host_approvals(state, "db1")
        spent = used_approvals(state)
    except StalledError as e:
        assert_one_line(e, str(state.root))
        return
    assert all(isinstance(a, Approval) and a.host == "db1" for a in found)
    assert all(isinstance(key, str) for key in spent)
    for a in found:
        why = void_reason(a, "db1", SRC, FP, NOW)
        assert why is None or isinstance(why, str)


@PROPERTY
@given(st.text(max_size=20) | st.sampled_from(MEANINGFUL))
@example("99999999999999d")
@example("1e400")
@example("106751991167300d")
def test_any_expiry_on_the_command_line_is_a_time_or_a_clear_value_error(value: str):
    try:
        when = expiry(NOW, value)
    except ValueError as e:
        assert str(e).startswith("expected a duration like 4h, got ") and "\n" not in str(e)
    else:
        assert when > NOW


@FILES
@given(st.text(max_size=20) | st.sampled_from([PID, PID.upper(), f" {PID}", PID[:8]]),
       json_like.map(json.dumps) | st.just(json.dumps({"db1": {
           "plan_id": PID, "source_sha": SRC, "fingerprint": FP, "action": "wait",
           "mode": "approve", "rule": "default", "reason": "awaiting approval"}})))
@example(PID, json.dumps({"db1": {"plan_id": PID, "action": "wait"}}))
@example(PID, json.dumps({"db1": 5}))
@example(PID, json.dumps([PID]))
def test_any_plan_id_given_to_approve_is_approved_or_refused_in_one_line(
        tmp_path_factory, pid: str, plans: str):
    state = StateDir(tmp_path_factory.mktemp("state", numbered=True))
    state.plans_file.write_text(plans)
    config = Config(repo=RepoConfig("file:///srv/git/pets.git"), state_dir=state.root)
    try:
        a = approve_plan(config, state, None, pid, "alice", NOW,  # type: ignore[arg-type]
                         NOW + timedelta(hours=4), "")
    except StalledError as e:
        assert_one_line(e, "plan " if isinstance(e, RepoError) else str(state.plans_file))
    else:
        assert a.plan_id == pid == PID
        assert host_approvals(state, "db1") == [a]


# --- the configuration -----------------------------------------------------------------------

SETTINGS: dict[str, dict[str, Any] | None] = {
    "repo": {"url": st.sampled_from(["file:///srv/git/pets.git", "git@host:pets.git", "pets"]),
             "branch": scalars, "timeout": odd_expiry, "verify": scalars,
             "allowed_signers": scalars, "gpg_home": scalars, "verify_since": scalars},
    "reports": {"branch": scalars, "url": scalars, "heartbeat": odd_expiry, "push": scalars,
                "author_name": scalars, "author_email": scalars},
    "ansible": {"timeout": odd_expiry, "forks": scalars, "private_key_file": scalars,
                "known_hosts_file": scalars, "artifacts_keep": scalars},
    "approvals": {"verify": scalars, "allowed_signers": scalars, "gpg_home": scalars,
                  "expires": odd_expiry},
    "daemon": {k: odd_expiry for k in ("fetch_interval", "check_interval", "splay",
                                       "backoff_max")},
    **{k: None for k in ("playbooks", "inventory", "limit", "tags", "skip_tags", "extra_vars",
                         "vault_password_file", "state_dir", "policy", "post_apply_tests",
                         "requirements")},
}
config_data = shaped({k: shaped(v) if v else scalars for k, v in SETTINGS.items()})
DURATIONS = ("repo.timeout", "reports.heartbeat", "ansible.timeout", "approvals.expires",
             "daemon.fetch_interval", "daemon.check_interval", "daemon.splay",
             "daemon.backoff_max")


def assert_config_or_problems(data: Any, overrides: Overrides) -> Config | None:
    try:
        config = parse_config(data, "agent.yml", overrides)
    except ConfigError as e:
        assert e.problems and str(e) == "\n".join(e.problems)
        assert_problem_lines(e, "agent.yml: ", "command line: ")
        return None
    assert isinstance(config, Config)
    return config


@PROPERTY
@given(config_data, st.lists(st.text(max_size=12) | st.sampled_from(MEANINGFUL), max_size=2))
@example({"repo": {"url": "file:///x"}, "approvals": {"expires": "99999999999999d"}}, [])
@example({"repo": {"url": "file:///x"}, "daemon": {"fetch_interval": "9999999999999d",
                                                   "check_interval": "9999999999999d"}}, [])
@example({"repo": {"url": "file:///x"}, "extra_vars": ['{"a":' * 3000]}, [])
def test_any_settings_give_a_config_whose_durations_are_usable_or_one_line_per_problem(
        data: Any, cli: list[str]):
    config = assert_config_or_problems(data, Overrides(extra_vars=tuple(cli),
                                                       playbooks=tuple(cli)))
    if config is None:
        return
    for key in DURATIONS:
        section, _, name = key.partition(".")
        seconds = getattr(getattr(config, section), name)
        assert math.isfinite(seconds) and seconds >= 0, key
        assert NOW + timedelta(seconds=seconds) > NOW - timedelta(seconds=1), key


@FILES
@given(yaml_text | st.binary(max_size=40))
@example(DEEP)
@example(b"repo:\n  url: \xff\xfe\n")
@example("repo: {url: file:///x}\nextra_vars: ['" + '{"a":' * 3000 + "']\n")
def test_any_text_as_the_config_file_gives_a_config_or_one_line_per_problem(
        tmp_path_factory, text: str | bytes):
    path = tmp_path_factory.mktemp("etc", numbered=True) / "agent.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        config = load_config(path)
    except ConfigError as e:
        assert_problem_lines(e, f"{path}: ")
    else:
        assert isinstance(config, Config)


@PROPERTY
@given(scalars | st.from_regex(r"\A\s*\d{1,30}(\.\d{0,30})?\s*[smhdw]?\s*\Z"))
@example("99999999999999999999999d")
@example(10 ** 400)
@example(float("inf"))
def test_any_duration_is_a_usable_number_of_seconds_or_none(value: Any):
    seconds = parse_duration(value)
    if seconds is not None:
        assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0
        assert NOW + timedelta(seconds=seconds) >= NOW


@PROPERTY
@given(st.text(max_size=30) | st.lists(st.sampled_from(
    ["a", "=", "b", " ", "'", '"', "{", "}", ":", ",", "[", "]", "1", "\\", "\n", "é"]),
    max_size=20).map("".join))
@example('{"a":' * 3000)
@example("[" * 3000)
def test_any_extra_var_is_variables_or_a_value_error(value: str):
    try:
        parsed = parse_extra_var(value)
    except ValueError:
        return
    assert isinstance(parsed, dict) and all(isinstance(k, str) for k in parsed)


# --- the inventory: ansible-inventory --list ---------------------------------------------------

groups = st.dictionaries(
    st.text(max_size=6) | st.sampled_from(["all", "ungrouped", "_meta", "web", "db"]),
    shaped({"hosts": st.lists(st.sampled_from(["web1", "db1"]) | st.text(max_size=4),
                              max_size=3) | json_like,
            "children": st.lists(st.sampled_from(["web", "db", "all"]), max_size=2) | json_like,
            "vars": json_like}) | json_like, max_size=4)
listing = st.tuples(groups, st.dictionaries(st.text(max_size=6), json_like, max_size=3)
                    | json_like).map(lambda g: {**g[0], "_meta": {"hostvars": g[1]}})


@PROPERTY
@given(listing | groups | json_like)
@example({"_meta": {"hostvars": {"web1": {}}}, "web": {"children": ["web"]}})
@example({"_meta": {"hostvars": {"web1": {}}}, "web": {"hosts": 5}})
@example({"_meta": []})
@example([])
def test_any_inventory_listing_gives_hosts_with_groups_or_one_line(data: Any):
    try:
        hosts = parse_inventory_list(data)
    except RepoError as e:
        assert_one_line(e, "ansible-inventory --list: ")
        return
    assert all(isinstance(h, str) and isinstance(g, tuple) and all(isinstance(x, str) for x in g)
               and "all" not in g and "ungrouped" not in g for h, g in hosts.items())


def test_a_nested_group_listing_is_read_with_every_group_of_each_host():
    data = {"_meta": {"hostvars": {"db1": {"x": 1}}},  # web1 has no variables: not listed here
            "all": {"children": ["ungrouped", "pets"]}, "pets": {"children": ["web", "db"]},
            "web": {"hosts": ["web1"]}, "db": {"hosts": ["db1"]}, "ungrouped": {}}

    assert parse_inventory_list(data) == {"db1": ("db", "pets"), "web1": ("pets", "web")}


@pytest.mark.parametrize("when", [date(2026, 11, 26), datetime(2026, 11, 26, 8, 0)])
def test_a_yaml_date_or_naive_time_as_expiry_is_refused_in_one_line(when: date):
    with pytest.raises(RepoError) as e:
        parse_git_approval({"host": "db1", "plan": PID, "expires": when}, "approvals/db1.yml",
                           COMMIT, "Alice", NOW, PLANS)
    assert_one_line(e.value, "approvals/db1.yml (commit ")
