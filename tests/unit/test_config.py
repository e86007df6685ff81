"""agent.config: one loader, frozen dataclasses, every problem at once with file, key and fix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (
    Config,
    Overrides,
    UndoConfig,
    load_config,
    parse_config,
    parse_extra_var,
)
from agent.errors import ConfigError, StalledError

SOURCE = "/etc/petkeeper/agent.yml"
URL = "file:///srv/git/pets.git"
CANARY = "hunter2-canary"


def parse(data: Any, overrides: Overrides | None = None) -> Config:
    return parse_config(data, SOURCE, overrides or Overrides())


def problems(data: Any, overrides: Overrides | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(data, overrides)
    assert str(e.value) == "\n".join(e.value.problems)
    return e.value.problems


def minimal(**extra: Any) -> dict[str, Any]:
    return {"repo": {"url": URL}, **extra}


# --- a valid file ----------------------------------------------------------------------------

def test_minimal_config_takes_the_documented_defaults():
    config = parse(minimal())

    assert config.repo.url == URL and config.repo.branch == "main"
    assert config.repo.timeout == 120.0
    assert config.reports.branch == "petkeeper/reports"
    assert config.reports_url == URL  # reports go to the source repo unless told otherwise
    assert config.reports.heartbeat == 86400.0 and config.reports.push is True
    assert config.state_dir == Path("/var/lib/petkeeper")
    assert config.ansible.timeout == 1800.0 and config.ansible.forks == 5
    assert (config.playbooks, config.tags, config.extra_vars) == ((), (), ())
    assert config.path == SOURCE


def test_full_config_is_read_into_typed_fields():
    config = parse({
        "repo": {"url": "ssh://git@git.example.com/ops/pets.git", "branch": "prod",
                 "timeout": "2m"},
        "playbooks": ["site.yml", "plays/web.yml"], "inventory": "inventories/prod.yml",
        "limit": "web*", "tags": "base,ssh", "skip_tags": ["slow"],
        "extra_vars": ["env=prod", '{"region": "eu"}', "@vars/prod.yml"],
        "vault_password_file": "/etc/petkeeper/vault-pass",
        "reports": {"branch": "pk/reports", "url": "https://git.example.com/ops/reports.git",
                    "heartbeat": "12h", "push": False, "author_name": "Pet",
                    "author_email": "pet@example.com"},
        "state_dir": "/srv/petkeeper",
        "ansible": {"timeout": 600, "forks": 10, "private_key_file": "/root/.ssh/id_ed25519",
                    "known_hosts_file": "/etc/petkeeper/known_hosts", "artifacts_keep": 2},
    })

    assert config.repo.branch == "prod" and config.repo.timeout == 120.0
    assert config.playbooks == ("site.yml", "plays/web.yml")
    assert config.inventory == "inventories/prod.yml" and config.limit == "web*"
    assert config.tags == ("base", "ssh") and config.skip_tags == ("slow",)
    assert config.extra_vars == ("env=prod", '{"region": "eu"}', "@vars/prod.yml")
    assert config.reports.heartbeat == 43200.0 and config.reports.push is False
    assert config.reports_url == "https://git.example.com/ops/reports.git"
    assert config.state_dir == Path("/srv/petkeeper")
    assert (config.ansible.timeout, config.ansible.forks, config.ansible.artifacts_keep) == (
        600.0, 10, 2)
    assert config.ansible.known_hosts_file == "/etc/petkeeper/known_hosts"


def test_a_separate_reports_repository_takes_its_own_deploy_key_and_known_hosts():
    config = parse({"repo": {"url": "ssh://git@git.example.com/ops/pets.git",
                             "ssh_key": "/etc/petkeeper/deploy_key"},
                    "reports": {"url": "ssh://git@git.example.com/ops/reports.git",
                                "ssh_key": "/etc/petkeeper/reports_key",
                                "known_hosts": "/etc/petkeeper/known_hosts"}})

    assert (config.reports.ssh_key, config.reports.known_hosts) == (
        "/etc/petkeeper/reports_key", "/etc/petkeeper/known_hosts")
    assert (parse(minimal()).reports.ssh_key, parse(minimal()).reports.known_hosts) == (
        None, None)


def test_undo_keeps_30_days_within_256_mib_by_default_and_reads_sizes_and_off():
    assert parse(minimal()).undo == UndoConfig(keep=30 * 86400.0, max_bytes=256 * 1024**2,
                                               max_file=16 * 1024**2, etckeeper="auto")
    undo = parse(minimal(undo={"keep": "7d", "max_bytes": "1 GiB", "max_file": "10MB",
                               "etckeeper": False})).undo  # YAML reads a bare off as false
    assert undo == UndoConfig(keep=7 * 86400.0, max_bytes=1024**3, max_file=10 * 1000**2,
                              etckeeper="off")


def test_config_is_frozen():
    config = parse(minimal())

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limit = "all"  # type: ignore[misc]


@pytest.mark.parametrize("url", [
    "file:///srv/git/pets.git", "ssh://git@host/pets.git", "https://host/pets.git",
    "git@github.com:ops/pets.git", "/srv/git/pets.git"])
def test_git_urls_of_every_kind_are_accepted(url: str):
    assert parse({"repo": {"url": url}}).repo.url == url


# --- errors: file, key path and fix, all at once ---------------------------------------------

LINE = re.compile(rf"^{re.escape(SOURCE)}: (?P<key>[^:]+): (?P<problem>.+); (?P<fix>.+)$")


@pytest.mark.parametrize(("data", "key", "fix"), [
    ({}, "repo", "set repo"),
    ({"repo": {}}, "repo.url", "set repo.url"),
    ({"repo": "file:///srv/git/pets.git"}, "repo", "write repo as nested keys"),
    ({"repo": {"url": "pets"}}, "repo.url", "write the full URL"),
    (minimal(repo={"url": URL, "branch": ""}), "repo.branch", "set a value or remove"),
    (minimal(repo={"url": URL, "timeout": "soon"}), "repo.timeout", '"90s", "15m", "24h"'),
    (minimal(ansible={"forks": 0}), "ansible.forks", "set ansible.forks to e.g. 5"),
    (minimal(ansible={"forks": "many"}), "ansible.forks", "set ansible.forks to e.g. 5"),
    (minimal(ansible={"forks": True}), "ansible.forks", "set ansible.forks to e.g. 5"),
    (minimal(reports={"push": "yes please"}), "reports.push", "true or false"),
    (minimal(tags={"a": 1}), "tags", "write tags as [a, b] or 'a,b'"),
    (minimal(playbooks=[["site.yml"]]), "playbooks", "write playbooks as [a, b]"),
    (minimal(limit=["web1"]), "limit", "write limit as a single value"),
    (minimal(state_dir="var/lib/petkeeper"), "state_dir", "absolute path"),
    (minimal(schedule={"interval": "15m"}), "schedule", "remove it (known keys:"),
    (minimal(undo={"keep": "forever"}), "undo.keep", '"90s", "15m", "24h"'),
    (minimal(undo={"max_bytes": "lots"}), "undo.max_bytes", "B, KiB, MiB, GiB"),
    (minimal(undo={"max_file": -1}), "undo.max_file", "B, KiB, MiB, GiB"),
    (minimal(undo={"etckeeper": "sometimes"}), "undo.etckeeper", "auto commits /etc"),
])
def test_each_error_names_the_file_the_key_path_and_a_fix(data: Any, key: str, fix: str):
    lines = problems(data)

    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    [m] = [m for m in matches if m and m["key"] == key]
    assert fix in m["fix"]


def test_a_config_with_three_problems_yields_three_lines():
    data = {"repo": {"url": URL, "branch": "main", "timout": "2m"},
            "ansible": {"forks": -1}, "state_dir": "relative/state"}

    lines = problems(data)

    assert len(lines) == 3
    assert [LINE.match(ln)["key"] for ln in lines] == [  # type: ignore[index]
        "repo.timout", "ansible.forks", "state_dir"]


def test_errors_in_every_section_are_all_reported_not_just_the_first():
    data = {"repo": {"url": "nope"}, "reports": {"heartbeat": "often"},
            "ansible": {"timeout": "forever", "artifacts_keep": 0},
            "playbooks": ["../outside.yml"], "extra_vars": ["junk"], "unknown": 1}

    keys = {LINE.match(ln)["key"] for ln in problems(data)}  # type: ignore[index]

    assert keys == {"repo.url", "reports.heartbeat", "ansible.timeout", "ansible.artifacts_keep",
                    "playbooks[0]", "extra_vars[0]", "unknown"}


@pytest.mark.parametrize(("data", "hint"), [
    ({"repo": {"url": URL}, "playbook": ["site.yml"]}, "did you mean playbooks?"),
    ({"repo": {"url": URL}, "reports": {"brnach": "pk"}}, "did you mean reports.branch?"),
    ({"repo": {"url": URL, "branh": "main"}}, "did you mean repo.branch?"),
    ({"repo": {"url": URL}, "ansible": {"fork": 3}}, "did you mean ansible.forks?"),
])
def test_unknown_key_gets_a_did_you_mean_hint(data: dict[str, Any], hint: str):
    [line] = problems(data)

    assert "unknown key" in line
    assert line.endswith(hint)


def test_unknown_key_with_a_line_break_stays_one_line_starting_with_the_file():
    with pytest.raises(ConfigError) as e:
        parse(minimal(**{"state_dir\nrepo.url": "x"}))

    lines = str(e.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{SOURCE}: ")


def test_a_non_mapping_file_is_one_clear_line():
    [line] = problems(["repo", "url"])

    assert line.startswith(f"{SOURCE}: expected a mapping of settings at the top level")
    assert "got a list" in line


def test_empty_document_means_defaults_and_reports_the_missing_repo():
    # The missing section and its one required key are both named.
    assert problems(None) == [f"{SOURCE}: repo: missing; set repo",
                              f"{SOURCE}: repo.url: missing; set repo.url"]


# --- durations -------------------------------------------------------------------------------

def test_bad_duration_in_the_file_shows_the_value_and_the_expected_form():
    [line] = problems(minimal(reports={"heartbeat": "soon"}))

    assert line == (f'{SOURCE}: reports.heartbeat: expected a duration like "15m", got '
                     "'soon'; use a number with s, m, h or d, e.g. \"90s\", \"15m\", \"24h\"")


def test_a_huge_integer_duration_is_a_config_error_not_a_crash():
    lines = problems(minimal(ansible={"timeout": 10 ** 400}))

    assert [LINE.match(ln)["key"] for ln in lines] == ["ansible.timeout"]  # type: ignore[index]


# --- paths inside the repository --------------------------------------------------------------

@pytest.mark.parametrize("data, key", [
    (minimal(playbooks=["../site.yml"]), "playbooks[0]"),
    (minimal(playbooks=["site.yml", "/etc/ansible/site.yml"]), "playbooks[1]"),
    (minimal(playbooks="plays/../../x.yml"), "playbooks[0]"),
    (minimal(inventory="../inventory.yml"), "inventory"),
    (minimal(inventory="/etc/ansible/hosts"), "inventory"),
])
def test_repo_paths_that_leave_the_repository_are_rejected(data: dict[str, Any], key: str):
    [line] = problems(data)

    m = LINE.match(line)
    assert m and m["key"] == key
    assert "leaves the repository" in line and "without '..'" in line


def test_command_line_playbook_outside_the_repository_is_blamed_on_the_command_line():
    [line] = problems(minimal(), Overrides(playbooks=("site.yml", "../../etc/x.yml")))

    assert line == ("command line: PLAYBOOK #2: '../../etc/x.yml' leaves the repository; give "
                    "a path relative to the repository root, without '..'")


@pytest.mark.parametrize("path", ["site.yml", "plays/web.yml", "a..b.yml", "./site.yml"])
def test_repo_paths_inside_the_repository_are_accepted(path: str):
    assert parse(minimal(playbooks=[path], inventory=path)).playbooks == (path,)


# --- the reports branch ----------------------------------------------------------------------

def test_reports_branch_equal_to_repo_branch_is_rejected():
    [line] = problems({"repo": {"url": URL, "branch": "prod"}, "reports": {"branch": "prod"}})

    assert line.startswith(f"{SOURCE}: reports.branch: must differ from repo.branch ('prod')")


def test_reports_branch_equal_to_repo_branch_is_allowed_in_another_repository():
    config = parse({"repo": {"url": URL}, "reports": {"branch": "main",
                                                      "url": "file:///srv/git/reports.git"}})

    assert config.reports.branch == "main"


def test_reports_branch_equal_to_repo_branch_is_rejected_when_reports_url_is_the_source():
    [line] = problems({"repo": {"url": URL}, "reports": {"branch": "main", "url": URL}})

    assert "reports.branch: must differ from repo.branch" in line


# --- extra vars ------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "parsed"), [
    ("env=prod", {"env": "prod"}), ("a=1 b='two words'", {"a": "1", "b": "two words"}),
    ('{"region": "eu", "n": 3}', {"region": "eu", "n": 3}), ("  x=  ", {"x": ""})])
def test_extra_vars_key_value_and_json_are_parsed(value: str, parsed: dict[str, Any]):
    assert parse_extra_var(value) == parsed


@pytest.mark.parametrize("value", ["env=prod", "a=1 b=2", '{"token": "x"}', "@vars.yml",
                                   "@/etc/petkeeper/vars.yml"])
def test_extra_vars_key_value_json_and_file_are_accepted(value: str):
    assert parse(minimal(extra_vars=[value])).extra_vars == (value,)


@pytest.mark.parametrize("value", [
    CANARY, f"password {CANARY}", f"password={CANARY} {CANARY}", f'{{"token": "{CANARY}"',
    f'["{CANARY}"]', f"pass-word={CANARY}", f"'{CANARY}", f"{{{CANARY}}}"])
def test_junk_extra_vars_are_rejected_without_echoing_the_value(value: str):
    for data, overrides, key in (
            (minimal(extra_vars=[value]), Overrides(), "extra_vars[0]"),
            (minimal(), Overrides(extra_vars=("ok=1", value)), "-e #2")):
        with pytest.raises(ConfigError) as e:
            parse(data, overrides)

        [line] = e.value.problems
        where = SOURCE if key.startswith("extra_vars") else "command line"
        assert line.startswith(f"{where}: {key}: is neither key=value pairs nor a JSON object")
        assert "@file" in line
        assert CANARY not in str(e.value) and CANARY not in repr(e.value)


def test_bare_at_sign_names_no_file():
    [line] = problems(minimal(extra_vars=["@"]))

    assert line == f"{SOURCE}: extra_vars[0]: '@' names no file; write @path/to/vars.yml"


def test_one_json_extra_var_written_as_a_string_is_one_value():
    value = '{"region": "eu", "tier": "web"}'

    assert parse(minimal(extra_vars=value)).extra_vars == (value,)


# --- command-line overrides ------------------------------------------------------------------

FILE = minimal(playbooks=["site.yml"], limit="web1", tags=["base"], skip_tags=["slow"],
               extra_vars=["env=prod"], vault_password_file="/etc/petkeeper/vault")


def test_without_overrides_the_file_values_stand():
    config = parse(FILE)

    assert (config.playbooks, config.limit, config.tags, config.skip_tags, config.extra_vars,
            config.vault_password_file) == (("site.yml",), "web1", ("base",), ("slow",),
                                            ("env=prod",), "/etc/petkeeper/vault")


def test_command_line_replaces_file_values_and_extends_extra_vars():
    config = parse(FILE, Overrides(playbooks=("web.yml",), limit="db1", tags=("ssh",),
                                   skip_tags=("pkg",), extra_vars=("debug=1",),
                                   vault_password_file="/run/vault"))

    assert config.playbooks == ("web.yml",)
    assert config.limit == "db1"
    assert config.tags == ("ssh",) and config.skip_tags == ("pkg",)
    assert config.extra_vars == ("env=prod", "debug=1")  # later -e wins in Ansible
    assert config.vault_password_file == "/run/vault"


def test_command_line_empty_limit_still_replaces_the_file_limit():
    assert parse(FILE, Overrides(limit="")).limit == ""


# --- load_config: the file itself ------------------------------------------------------------

def test_load_config_reads_the_file_and_names_it(tmp_path: Path):
    path = tmp_path / "agent.yml"
    path.write_text(f"repo:\n  url: {URL}\nlimit: web1\n")

    config = load_config(path, Overrides(tags=("ssh",)))

    assert config.path == str(path) and config.limit == "web1" and config.tags == ("ssh",)


def test_missing_file_is_one_line_naming_it_and_the_fix(tmp_path: Path):
    path = tmp_path / "agent.yml"

    with pytest.raises(ConfigError) as e:
        load_config(path)

    assert e.value.problems == [f"{path}: file not found; create it (see README: Configuration)"
                                " or pass --config FILE"]
    assert isinstance(e.value, StalledError)  # retrying will not help


def test_invalid_yaml_is_one_line_with_its_position(tmp_path: Path):
    path = tmp_path / "agent.yml"
    path.write_text(f"repo:\n  url: {URL}\n  branch: [main\n")

    with pytest.raises(ConfigError) as e:
        load_config(path)

    [line] = e.value.problems
    assert line.startswith(f"{path}: not valid YAML at line ")
    assert line.endswith("; fix the syntax")
    assert re.search(r"line \d+, column \d+", line)


def test_a_directory_in_place_of_the_file_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)

    [line] = e.value.problems
    assert line.startswith(f"{tmp_path}: cannot read: ") and "permissions" in line


def test_errors_from_a_file_carry_its_path(tmp_path: Path):
    path = tmp_path / "agent.yml"
    path.write_text("repo:\n  url: pets\nansible:\n  forks: 0\n")

    with pytest.raises(ConfigError) as e:
        load_config(path)

    assert [ln.split(": ")[0] for ln in e.value.problems] == [str(path), str(path)]


# --- properties ------------------------------------------------------------------------------

KNOWN = ["repo", "url", "branch", "timeout", "playbooks", "inventory", "limit", "tags",
         "skip_tags", "extra_vars", "vault_password_file", "reports", "heartbeat", "push",
         "author_name", "author_email", "state_dir", "ansible", "forks", "private_key_file",
         "known_hosts_file", "artifacts_keep"]
# 64-bit integers: a larger one is covered by its own test above.
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20)
           | st.sampled_from(["15m", "site.yml", "../x", "/abs", URL, "k=v", "@", "{", "main"]))
# No line breaks in keys: those have their own test above.
keys = (st.sampled_from(KNOWN) | st.integers(-5, 5) | st.booleans()
        | st.text(st.characters(exclude_categories=("Cc", "Zl", "Zp")), max_size=10))
yaml_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(keys, inner, max_size=5), max_leaves=25)
sections = st.fixed_dictionaries({}, optional={
    "repo": st.fixed_dictionaries({}, optional={"url": yaml_like, "branch": yaml_like,
                                                "timeout": yaml_like}) | yaml_like,
    "reports": st.dictionaries(st.sampled_from(["branch", "url", "heartbeat", "push"]),
                               yaml_like, max_size=4) | yaml_like,
    "ansible": st.dictionaries(st.sampled_from(["timeout", "forks", "artifacts_keep"]),
                               yaml_like, max_size=3) | yaml_like,
    **{k: yaml_like for k in ("playbooks", "inventory", "limit", "tags", "extra_vars",
                               "state_dir", "vault_password_file")}})


# deadline/too_slow off: the suite may share a busy machine; no database: nothing written outside.
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def assert_config_or_clean_error(data: Any, overrides: Overrides) -> None:
    try:
        config = parse_config(data, "agent.yml", overrides)
    except ConfigError as e:
        assert e.problems
        assert all(line.startswith(("agent.yml: ", "command line: "))
                   for line in str(e).splitlines()), e.problems
    else:
        assert isinstance(config, Config)


@PROPERTY
@given(yaml_like)
def test_any_yaml_like_data_gives_a_config_or_a_config_error(data: Any):
    assert_config_or_clean_error(data, Overrides())


@PROPERTY
@given(sections, st.lists(st.text(max_size=15), max_size=3))
def test_any_settings_shaped_data_gives_a_config_or_a_config_error(data: Any, cli: list[str]):
    assert_config_or_clean_error(data, Overrides(extra_vars=tuple(cli), playbooks=tuple(cli)))


@settings(PROPERTY, max_examples=100)
@given(st.lists(st.text(max_size=12).map(lambda s: s + CANARY + s[::-1]), min_size=1,
                max_size=3))
def test_extra_vars_never_echo_their_values_in_errors(values: list[str]):
    try:
        parse(minimal(extra_vars=values), Overrides(extra_vars=tuple(values)))
    except ConfigError as e:
        assert CANARY not in str(e)


@settings(PROPERTY, max_examples=50)
@given(yaml_like)
def test_yaml_text_of_any_data_loads_to_a_config_or_a_config_error(data: Any):
    text = yaml.safe_dump(data)
    assert_config_or_clean_error(yaml.safe_load(text), Overrides())


# -- source trust -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["head", "all"])
def test_signature_verification_modes_need_a_trust_list(mode: str):
    assert problems({"repo": {"url": "file:///r.git", "verify": mode}}) == [
        f"{SOURCE}: repo.verify: is {mode!r}, but no key may sign the source; set "
        "repo.allowed_signers (SSH) or repo.gpg_home (OpenPGP), or verify: off"]
    config = parse({"repo": {"url": "file:///r.git", "verify": mode,
                             "allowed_signers": "/etc/petkeeper/allowed_signers"}})
    assert config.repo.verify == mode


@pytest.mark.parametrize("value", [False, "off"])
def test_verification_off_may_be_written_bare_or_quoted(value: Any):
    assert parse({"repo": {"url": "file:///r.git", "verify": value}}).repo.verify == "off"


@pytest.mark.parametrize("value", ["yes", True, "signed", ["head"]])
def test_unknown_verification_mode_is_rejected_with_the_choices(value: Any):
    [problem] = problems({"repo": {"url": "file:///r.git", "verify": value}})
    assert problem.startswith(f"{SOURCE}: repo.verify: expected one of off, head, all, got ")


def test_verify_since_must_be_a_commit_id():
    [problem] = problems({"repo": {"url": "file:///r.git", "verify": "all", "gpg_home": "/k",
                                   "verify_since": "main~3"}})
    assert problem.startswith(f"{SOURCE}: repo.verify_since: expected a commit id, got 'main~3'")


@pytest.mark.parametrize("key", ["repo", "reports"])
def test_credentials_in_a_plain_http_url_are_refused(key: str):
    url = "http://deploy:hunter22@git.example.org/pets.git"
    data: dict[str, Any] = {"repo": {"url": "https://git.example.org/pets.git"}}
    data.setdefault(key, {})["url"] = url
    [problem] = problems(data)
    assert problem.startswith(f"{SOURCE}: {key}.url: has credentials in a plain http:// URL")
    assert "hunter22" not in problem
    assert parse({"repo": {"url": "http://git.example.org/pets.git"}}).repo.url.startswith(
        "http://")


# --- notify and metrics ------------------------------------------------------------------------

HOOK_TOKEN = "PKCANARY-hook-77c1"


def test_notify_targets_take_the_default_events_and_format():
    config = parse(minimal(notify={"timeout": "5s", "targets": [
        {"url": "mailto://ops@example.org"},
        {"url": f"https://hooks.example.org/{HOOK_TOKEN}", "format": "cloudevents",
         "events": ["drift.detected", "drift.resolved"]}]}))
    mail, hook = config.notify.targets
    assert config.notify.timeout == 5.0 and config.notify.outbox_max == 1000
    assert mail.format == "apprise" and "drift.resolved" not in mail.events
    assert len(mail.events) == 9 and mail.key == "notify.targets[0]"
    assert hook.events == ("drift.detected", "drift.resolved") and hook.label == \
        "notify.targets[1] (https)"
    assert HOOK_TOKEN not in repr(config)


@pytest.mark.parametrize(("target", "key", "fix"), [
    ({"url": "mailto://a@b.test", "events": ["drift.detectd"]}, "notify.targets[0].events[0]",
     "did you mean drift.detected?"),
    ({"url": "mailto://a@b.test", "events": ["everything"]}, "notify.targets[0].events[0]",
     "use some of drift.detected"),
    ({"url": f"hooks.example.org/{HOOK_TOKEN}"}, "notify.targets[0].url",
     "write an Apprise URL"),
    ({"url": f"slack://{HOOK_TOKEN}", "format": "cloudevents"}, "notify.targets[0].url",
     "give the webhook's https:// URL"),
    ({"url": "https://h.test/x", "format": "json"}, "notify.targets[0].format",
     "use apprise (a digest for people) or cloudevents"),
    ({"events": ["drift.detected"]}, "notify.targets[0].url", "set notify.targets[0].url"),
    ({"url": "https://h.test/x", "evnts": []}, "notify.targets[0].evnts",
     "did you mean notify.targets[0].events?"),
])
def test_a_bad_notify_target_is_one_line_naming_its_key_never_its_url(target, key, fix):
    [problem] = problems(minimal(notify={"targets": [target]}))
    assert problem.startswith(f"{SOURCE}: {key}: ") and fix in problem, problem
    assert HOOK_TOKEN not in problem


def test_notify_targets_must_be_a_list_of_mappings():
    assert problems(minimal(notify={"targets": "mailto://a@b.test"})) == [
        f"{SOURCE}: notify.targets: expected a list of targets, got a string; write each "
        "target as a list item with a url"]
    [problem] = problems(minimal(notify={"targets": ["mailto://a@b.test"]}))
    assert problem.startswith(f"{SOURCE}: notify.targets[0]: expected a mapping with a url")


@pytest.mark.parametrize(("listen", "normal"), [
    ("127.0.0.1:9551", "127.0.0.1:9551"), ("9551", "127.0.0.1:9551"),
    (":9551", "127.0.0.1:9551"), ("[::1]:9551", "[::1]:9551"), (9551, "127.0.0.1:9551"),
    ("0.0.0.0:9551", "0.0.0.0:9551"), ("pet1.example.org:80", "pet1.example.org:80")])
def test_metrics_listen_defaults_to_loopback(listen, normal):
    assert parse(minimal(metrics={"listen": listen})).metrics.listen == normal


@pytest.mark.parametrize(("metrics", "key"), [
    ({"listen": "127.0.0.1:99999"}, "metrics.listen"), ({"listen": "localhost"}, "metrics.listen"),
    ({"listen": "a b:80"}, "metrics.listen"), ({"textfile": "petkeeper.prom"}, "metrics.textfile"),
    ({"textfile": "/var/lib/node/petkeeper.txt"}, "metrics.textfile"),
    ({"textfle": "/x.prom"}, "metrics.textfle")])
def test_bad_metrics_settings_name_their_key(metrics, key):
    [problem] = problems(minimal(metrics=metrics))
    assert problem.startswith(f"{SOURCE}: {key}: "), problem
