"""cycle/source: which SSH options reach the source remote and which the reports remote; a
refused source commit falls back to the last good one (issue 22, item 6; real Git, a bare repo
in tmp_path, no host)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.adapters.state import StateDir
from agent.config import Overrides, load_config, parse_config
from agent.cycle.source import open_mirror, remote_ssh, sync_source
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


def sync(remote: GitRemote, tmp_path: Path):
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump({"repo": {"url": remote.url}, "limit": "web1",
                                    "state_dir": str(tmp_path / "state")}))
    config = load_config(path)
    state = StateDir(config.state_dir)
    state.ensure()
    mirror = open_mirror(config, state)
    try:
        return sync_source(config, state, mirror), state
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
