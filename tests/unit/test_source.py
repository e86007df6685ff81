"""cycle/source: which SSH options reach the source remote and which the reports remote; a
refused source commit falls back to the last good one (issue 22, item 6; real Git, a bare repo
in tmp_path, no host)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.adapters.state import StateDir
from agent.config import Overrides, load_config, parse_config
from agent.cycle.source import (
    Refusal,
    mark_content_ok,
    open_mirror,
    remote_ssh,
    sync_source,
)
from agent.cycle.steps import EXIT_ERROR, Cycle, Stage, fetch_step, run_cycle
from agent.errors import RepoError
from tests.conftest import GitRemote

KEY = ("-o", "IdentityFile=/etc/petkeeper/deploy_key", "-o", "IdentitiesOnly=yes")
KNOWN = ("-o", "UserKnownHostsFile=/etc/petkeeper/known_hosts")


def config(reports: dict[str, str]):
    return parse_config({"repo": {"url": "ssh://git@git.example.org/ops/pets.git",
                                  "ssh_key": "/etc/petkeeper/deploy_key",
                                  "known_hosts": "/etc/petkeeper/known_hosts"},
                         "reports": reports}, "agent.yml", Overrides())


def test_reports_use_the_source_key_and_known_hosts_unless_they_have_their_own():
    assert remote_ssh(config({})) == (KEY + KNOWN, KEY + KNOWN)

    source, reports = remote_ssh(config({"url": "ssh://git@git.example.org/ops/reports.git",
                                         "ssh_key": "/etc/petkeeper/reports_key"}))

    assert source == KEY + KNOWN
    assert reports == ("-o", "IdentityFile=/etc/petkeeper/reports_key", "-o",
                       "IdentitiesOnly=yes", *KNOWN)


def test_a_reports_known_hosts_file_replaces_the_source_one_for_the_reports_only():
    source, reports = remote_ssh(config({"url": "ssh://git@reports.example.org/r.git",
                                         "known_hosts": "/etc/petkeeper/reports_known_hosts"}))

    assert source == KEY + KNOWN
    assert reports == (*KEY, "-o", "UserKnownHostsFile=/etc/petkeeper/reports_known_hosts")


REFUSED = "[defaults]\nlog_path = /tmp/ansible.log\n"


def agent_yml(remote: GitRemote, tmp_path: Path) -> Path:
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump({"repo": {"url": remote.url}, "limit": "web1",
                                    "state_dir": str(tmp_path / "state")}))
    return path


def sync(remote: GitRemote, tmp_path: Path, refused: Refusal | None = None,
         passed: bool = True):
    """sync_source, then (PASSED) what the decide step does when the commit passed every
    check."""
    config = load_config(agent_yml(remote, tmp_path))
    state = StateDir(config.state_dir)
    state.ensure()
    mirror = open_mirror(config, state)
    try:
        source = sync_source(config, state, mirror, refused)
        if passed:
            mark_content_ok(state, source)
        return source, state
    finally:
        mirror.close()


def test_a_refused_ansible_cfg_checks_the_last_good_commit_and_says_why(
        remote: GitRemote, tmp_path: Path):
    good = remote.commit({"site.yml": "- hosts: all\n"})
    first, state = sync(remote, tmp_path)
    assert (first.sha, first.rejected) == (good, None)

    bad = remote.commit({"ansible.cfg": REFUSED})
    source, _ = sync(remote, tmp_path)

    assert source.sha == good and source.tree == state.trees / good
    assert source.rejected.startswith(
        f"source commit {bad[:12]} refused: ansible.cfg: [defaults] log_path: not allowed")
    assert source.hold == f"{source.rejected}; checking the last good commit {good[:12]}, " \
                          "applying nothing"
    assert not (state.trees / bad).exists() and not (source.tree / "ansible.cfg").exists()

    fixed = remote.commit({"ansible.cfg": "[defaults]\nforks = 2\n"})
    again, _ = sync(remote, tmp_path)
    assert (again.sha, again.rejected, again.hold) == (fixed, None, None)


def test_with_no_good_commit_yet_a_refused_one_is_an_error(remote: GitRemote, tmp_path: Path):
    remote.commit({"site.yml": "- hosts: all\n", "ansible.cfg": REFUSED})
    with pytest.raises(RepoError, match=r"^ansible.cfg: \[defaults\] log_path: not allowed"):
        sync(remote, tmp_path)


INVENTORY_ERROR = "inventory/hosts.yml: Ansible cannot parse it: line 1; fix the inventory"


def test_a_head_a_later_step_refused_gives_way_to_the_last_good_commit(
        remote: GitRemote, tmp_path: Path):
    good = remote.commit({"site.yml": "- hosts: all\n"})
    sync(remote, tmp_path)
    bad = remote.commit({"inventory/hosts.yml": "all: [\n"})
    first, _ = sync(remote, tmp_path, passed=False)  # the first pass: a later step refuses
    assert first.sha == bad

    source, state = sync(remote, tmp_path, Refusal(bad, RepoError(INVENTORY_ERROR)))

    assert source.sha == good and source.rejected == \
        f"source commit {bad[:12]} refused: {INVENTORY_ERROR}"
    assert not (state.trees / bad).exists()
    assert source.hold and source.hold.endswith(f"checking the last good commit {good[:12]}, "
                                                "applying nothing")


def refuse_broken(c: Cycle) -> None:
    """A step after the pull that refuses a commit's content, as the inventory does."""
    assert c.source is not None
    if (c.source.tree / "inventory/hosts.yml").read_text() != "all: {}\n":
        raise RepoError(INVENTORY_ERROR)
    c.advance(Stage.TARGETED)


def decided(c: Cycle) -> None:
    """What decide_step records once a commit passed every check."""
    assert c.source is not None
    mark_content_ok(c.state, c.source)
    c.advance(Stage.DECIDED)


STEPS = (fetch_step, refuse_broken, decided)


def test_a_cycle_whose_head_a_step_refuses_checks_the_last_good_commit_instead(
        remote: GitRemote, tmp_path: Path):
    config = load_config(agent_yml(remote, tmp_path))
    bad = remote.commit({"inventory/hosts.yml": "all: [\n"})
    with pytest.raises(RepoError, match=r"^inventory/hosts\.yml: Ansible cannot parse it"):
        run_cycle(config, STEPS, "check")  # no good commit yet: the error, as before

    good = remote.commit({"inventory/hosts.yml": "all: {}\n"})
    first = run_cycle(config, STEPS, "check").source
    assert first is not None and first.sha == good
    bad = remote.commit({"inventory/hosts.yml": "all: [\n"})
    cycle = run_cycle(config, STEPS, "check")

    assert cycle.source is not None and cycle.source.sha == good
    assert cycle.source.rejected == f"source commit {bad[:12]} refused: {INVENTORY_ERROR}"
    assert cycle.refused is not None and cycle.refused.head == bad
    assert cycle.exit_code == EXIT_ERROR and cycle.stage == Stage.DECIDED
    assert not (config.state_dir / "trees" / bad).exists()


def test_when_the_last_good_commit_is_refused_too_the_heads_error_stands(
        remote: GitRemote, tmp_path: Path):
    config = load_config(agent_yml(remote, tmp_path))
    remote.commit({"inventory/hosts.yml": "all: {}\n"})
    run_cycle(config, STEPS, "check")
    remote.commit({"inventory/hosts.yml": "all: [\n"})

    def refuse_all(c: Cycle) -> None:
        raise RepoError(f"limit: matches nothing at {c.source.sha[:12] if c.source else ''}")

    with pytest.raises(RepoError, match=r"^limit: matches nothing at ") as raised:
        run_cycle(config, (fetch_step, refuse_all), "check")
    assert remote.rev("main")[:12] in str(raised.value)  # the head's, not the good one's
