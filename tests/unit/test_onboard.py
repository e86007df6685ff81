"""onboard: init's files and refusals, the agent.yml it writes, and doctor's judgements that need
no network (versions, state directory, disk, unit, targets, exit codes)."""

from __future__ import annotations

import os
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.adapters.state import StateDir, write_status
from agent.config import Overrides, load_config, parse_config
from agent.core.schema import load_yaml
from agent.errors import AgentError, ConfigError
from agent.onboard.agent_yml import Answers, render_agent_yml
from agent.onboard.doctor import doctor_json, exit_code, render_doctor, run_doctor
from agent.onboard.findings import FAIL, OK, WARN, Finding
from agent.onboard.host_checks import build_target, repo_defaults
from agent.onboard.init import InitRequest, init_agent
from agent.onboard.system_checks import (
    check_service,
    check_state,
    judge_disk,
    judge_state_dir,
    judge_version,
)

KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOuTJyp2f6qP0tMyDQ4GjCPx1EHg8RQuc5bm4X5d2Ycw"
SSH_URL = "ssh://git@git.example.org:2222/ops/pets.git"


class Answer:
    """A person who answers init's questions from a script, and keeps what was asked."""

    def __init__(self, interactive: bool = False, confirm: bool = False) -> None:
        self.interactive, self._confirm, self.asked = interactive, confirm, []

    def ask(self, question: str, default: str) -> str:
        self.asked.append(question)
        return default

    def confirm(self, question: str) -> bool:
        self.asked.append(question)
        return self._confirm


def files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_init_writes_agent_yml_0600_that_loads_and_keeps_a_pet_on_a_local_repo(tmp_path: Path):
    result = init_agent(InitRequest(url="file:///srv/git/pets.git", prefix=tmp_path), Answer())

    config = tmp_path / "etc/petkeeper/agent.yml"
    assert result.config == config and result.keys == [] and result.host_keys == []
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    loaded = parse_config(load_yaml(config.read_text()), str(config), Overrides())
    assert (loaded.repo.url, loaded.repo.branch, loaded.inventory, loaded.limit) == (
        "file:///srv/git/pets.git", "main", None, None)
    assert loaded.state_dir == tmp_path / "var/lib/petkeeper"  # never the real one in a test
    assert any("separate reports repository" in note for note in result.notes)


def test_init_never_replaces_a_file_without_force_and_keeps_keys_with_it(tmp_path: Path):
    known = tmp_path / "verified_known_hosts"
    known.write_text(f"[git.example.org]:2222 ssh-ed25519 {KEY}\n")
    request = InitRequest(url=SSH_URL, known_hosts=known, prefix=tmp_path, inventory="hosts.yml")
    first = init_agent(request, Answer())
    before = files(tmp_path / "etc")

    with pytest.raises(AgentError) as refused:
        init_agent(InitRequest(url="file:///elsewhere.git", prefix=tmp_path), Answer())

    assert "agent.yml and " in str(refused.value) and "--force" in str(refused.value)
    assert files(tmp_path / "etc") == before  # byte for byte, modes too
    again = init_agent(InitRequest(url="file:///elsewhere.git", prefix=tmp_path, force=True),
                       Answer())
    after = files(tmp_path / "etc")
    assert "file:///elsewhere.git" in after["petkeeper/agent.yml"][1].decode()
    assert after["petkeeper/deploy_key"] == before["petkeeper/deploy_key"]  # kept
    assert again.keys == [] and first.keys[0][0] == "deploy key"


def test_init_with_ssh_generates_a_0600_deploy_key_and_records_the_verified_host_key(
        tmp_path: Path):
    known = tmp_path / "verified_known_hosts"
    known.write_text(f"git.example.org ssh-ed25519 {KEY}\n"
                     f"[git.example.org]:2222 ssh-ed25519 {KEY}\n")
    result = init_agent(InitRequest(url=SSH_URL, reports_url="ssh://git@git.example.org:2222/"
                                    "ops/reports.git", known_hosts=known, prefix=tmp_path),
                        Answer())

    etc = tmp_path / "etc/petkeeper"
    assert [(what, path.name) for what, path, _ in result.keys] == [
        ("deploy key", "deploy_key"), ("reports key", "reports_key")]
    for _, path, public in result.keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert public.startswith("ssh-ed25519 ") and path.with_suffix(".pub").exists()
    assert (etc / "known_hosts").read_text() == f"[git.example.org]:2222 ssh-ed25519 {KEY}\n"
    config = parse_config(load_yaml((etc / "agent.yml").read_text()), "agent.yml", Overrides())
    assert (config.repo.ssh_key, config.repo.known_hosts) == (str(etc / "deploy_key"),
                                                              str(etc / "known_hosts"))
    assert (config.reports.ssh_key, config.reports.known_hosts) == (str(etc / "reports_key"),
                                                                    str(etc / "known_hosts"))


def test_init_refuses_a_known_hosts_file_without_the_server_and_writes_nothing(tmp_path: Path):
    known = tmp_path / "verified_known_hosts"
    known.write_text(f"other.example.org ssh-ed25519 {KEY}\n")

    with pytest.raises(AgentError) as e:
        init_agent(InitRequest(url=SSH_URL, known_hosts=known, prefix=tmp_path), Answer())

    assert "no key for [git.example.org]:2222" in str(e.value)
    assert not (tmp_path / "etc").exists()


def test_init_without_a_url_asks_on_a_terminal_and_otherwise_says_which_option(
        tmp_path: Path):
    with pytest.raises(AgentError) as e:
        init_agent(InitRequest(prefix=tmp_path), Answer(interactive=False))
    assert "--url" in str(e.value) and not (tmp_path / "etc").exists()

    person = Answer(interactive=True)
    with pytest.raises(AgentError):
        init_agent(InitRequest(prefix=tmp_path), person)  # the default answer is empty
    assert person.asked[0].startswith("Git URL")


def test_init_refuses_an_answer_the_config_would_refuse_before_writing(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        init_agent(InitRequest(url="pets", inventory="../outside.yml", prefix=tmp_path),
                   Answer())

    problems = "\n".join(e.value.problems)
    assert "repo.url" in problems and "inventory" in problems
    assert not (tmp_path / "etc").exists()


def test_the_written_agent_yml_reads_back_every_answer_even_odd_ones():
    answers = Answers(url="ssh://git@host/pets.git", branch="release: 1 # x",
                      inventory="inv/hosts #1.yml", limit="web*:!db",
                      playbooks=("site.yml", "plays/a #b.yml"), reports_url=
                      "ssh://git@host/reports.git", ssh_key="/etc/petkeeper/deploy_key",
                      reports_ssh_key="/etc/petkeeper/reports_key",
                      known_hosts="/etc/petkeeper/known_hosts", state_dir="/srv/pk",
                      ansible_private_key="/root/.ssh/ansible", ansible_known_hosts="/k")
    text = render_agent_yml(answers, datetime(2026, 12, 1, tzinfo=UTC))

    config = parse_config(load_yaml(text), "agent.yml", Overrides())

    assert (config.repo.branch, config.inventory, config.limit, config.playbooks) == (
        "release: 1 # x", "inv/hosts #1.yml", "web*:!db", ("site.yml", "plays/a #b.yml"))
    assert (config.ansible.private_key_file, config.ansible.known_hosts_file) == (
        "/root/.ssh/ansible", "/k")
    assert config.state_dir == Path("/srv/pk") and config.reports_url.endswith("reports.git")
    assert text.startswith("# Petkeeper's configuration, written by `petkeeper init`")


@pytest.mark.parametrize(("version", "status"), [
    ("2.16.3", FAIL), ("2.18.9", FAIL), ("2.19.0", OK), ("2.21.0rc1", OK), ("2.22.0", FAIL),
])
def test_ansible_core_outside_the_tested_range_fails_and_says_how_to_get_a_tested_one(
        version: str, status: str):
    found = judge_version("ansible-core", version, (3, 11))

    assert found.status == status
    if status == FAIL:
        assert found.message.startswith(f"ansible-core {version} is outside the range")
        assert "pip install 'ansible-core>=2.19,<2.20'" in found.message
        assert found.message.endswith(f"(Petkeeper's own pip: {sys.prefix}/bin/pip)")


def test_ansible_runner_outside_its_tested_range_fails_too():
    assert judge_version("ansible-runner", "2.4.3", (3, 11)).status == OK
    assert judge_version("ansible-runner", "2.5.0", (3, 11)).status == FAIL


def test_the_state_directory_must_be_private_to_the_user_running_petkeeper(tmp_path: Path):
    state = tmp_path / "state"
    assert judge_state_dir(state).status == OK  # not yet there: the first cycle makes it

    state.mkdir(mode=0o700)
    assert judge_state_dir(state).status == OK
    for loose in (0o755, 0o750, 0o701):
        state.chmod(loose)
        found = judge_state_dir(state)
        assert (found.status, found.message.endswith(f"chmod 700 {state}")) == (FAIL, True)
    os.chown(state, 65534, 65534)
    state.chmod(0o700)
    found = judge_state_dir(state)
    assert found.status == FAIL and f"chown -R root: {state}" in found.message


def test_disk_space_fails_below_what_a_cycle_needs_and_warns_when_low(tmp_path: Path):
    assert judge_disk(tmp_path, free=50 << 20).status == FAIL
    assert judge_disk(tmp_path, free=500 << 20).status == WARN
    assert judge_disk(tmp_path, free=50 << 30).status == OK
    assert "df -h" in judge_disk(tmp_path, free=1).message


def staged_unit(prefix: Path, *, link: bool = True, enable: bool = True) -> None:
    units = prefix / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "petkeeper.service").write_text(
        (Path(__file__).parents[2] / "systemd/petkeeper.service").read_text())
    if link:
        binary = prefix / "usr/local/bin/petkeeper"
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    if enable:
        (units / "multi-user.target.wants").mkdir()
        (units / "multi-user.target.wants/petkeeper.service").symlink_to(
            "/etc/systemd/system/petkeeper.service")  # as `systemctl --root` links it


@pytest.mark.parametrize(("link", "enable", "status", "words"), [
    (True, True, OK, "is installed (/usr/local/bin/petkeeper) and enabled"),
    (True, False, WARN, "systemctl enable --now petkeeper"),
    (False, True, FAIL, "ln -s"),
])
def test_the_unit_must_be_installed_with_its_command_there_and_enabled(
        tmp_path: Path, link: bool, enable: bool, status: str, words: str):
    staged_unit(tmp_path, link=link, enable=enable)
    found: list[Finding] = []

    check_service(tmp_path, None, found)

    assert [(f.check, f.status) for f in found] == [("unit", status)]
    assert words in found[0].message


def test_no_unit_at_all_is_a_warning_naming_the_readme_section(tmp_path: Path):
    found: list[Finding] = []
    check_service(tmp_path, None, found)

    assert found[0].status == WARN and "Installing on a server" in found[0].message


def test_a_target_is_reached_as_ansible_would_reach_it(tmp_path: Path):
    (tmp_path / "ansible.cfg").write_text("[defaults]\nremote_user = admin\nremote_port = 2200\n")
    defaults = repo_defaults(tmp_path)

    plain = build_target("web1", {}, defaults, None)
    assert (plain.address, plain.port, plain.user, plain.key_file) == (
        "web1", "2200", "admin", None)
    set_by_vars = build_target("web1", {"ansible_host": "10.0.0.5", "ansible_port": 22,
                                        "ansible_user": "root",
                                        "ansible_ssh_private_key_file": "/k"}, defaults, "/g")
    assert (set_by_vars.address, set_by_vars.port, set_by_vars.user, set_by_vars.key_file) == (
        "10.0.0.5", "22", "root", "/k")
    assert build_target("db1", {}, {}, "/g").key_file == "/g"
    assert repo_defaults(tmp_path / "nowhere") == {}


def test_doctor_exits_1_on_any_failure_3_on_warnings_only_and_0_when_all_is_well():
    ok, warn, fail = Finding("a", OK, "x"), Finding("b", WARN, "y"), Finding("c", FAIL, "z")

    assert [exit_code(f) for f in ([ok], [ok, warn], [warn, fail, ok])] == [0, 3, 1]
    assert render_doctor([ok, fail]).splitlines() == [
        "ok    a: x", "fail  c: z", "1 ok, 0 warning(s), 1 failure(s)"]
    assert doctor_json([warn]) == {"checks": [{"check": "b", "status": "warn", "message": "y"}],
                                   "counts": {"ok": 0, "warn": 1, "fail": 0}, "exit_code": 3}


def test_doctor_on_an_invalid_config_names_each_problem_and_reaches_no_remote(tmp_path: Path):
    path = tmp_path / "agent.yml"
    path.write_text("repo:\n  branch: main\nschedule:\n  interval: soon\n")

    findings = run_doctor(path, prefix=tmp_path)

    problems = [f.message for f in findings if f.check == "config"]
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert problems == list(e.value.problems) and len(problems) >= 2
    assert {f.status for f in findings if f.check == "config"} == {FAIL}
    assert not {"source", "reports push", "hosts", "state directory"} & {f.check for f in findings}
    assert exit_code(findings) == 1 and list(tmp_path.iterdir()) == [path]


def test_the_last_cycle_warns_when_stale_or_failed_and_is_ok_when_recent(tmp_path: Path):
    config = parse_config({"repo": {"url": "file:///srv/git/pets.git"},
                           "state_dir": str(tmp_path / "state"),
                           "daemon": {"check_interval": "1h"}}, "agent.yml", Overrides())
    state = StateDir(config.state_dir)
    state.ensure()

    def last_cycle(hours_ago: float, code: int) -> Finding:
        finished = datetime.now(UTC) - timedelta(hours=hours_ago)
        write_status(state, {"last_run": {"run_id": "r1", "exit_code": code,
                                          "finished": finished.isoformat()}})
        findings: list[Finding] = []
        check_state(config, findings)
        return next(f for f in findings if f.check == "last cycle")

    assert last_cycle(0.5, 2) == Finding("last cycle", OK, "30m ago (run r1, exit 2)")
    assert last_cycle(3, 0) == Finding("last cycle", WARN, (
        "3h ago (run r1, exit 0): none for more than 2h; is the daemon running? "
        "(journalctl -u petkeeper)"))
    assert last_cycle(0.5, 1) == Finding("last cycle", WARN, (
        "30m ago (run r1, exit 1): it ended in an error; see petkeeper status"))
