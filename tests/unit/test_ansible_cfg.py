"""The allow-list for a repo's own ansible.cfg."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.adapters.runner import PlaybookRun, build_env
from agent.core.ansible_cfg import check_ansible_cfg, find_cfg_problems, repo_paths
from agent.errors import RepoError


def test_settings_a_repo_needs_are_allowed(tmp_path: Path):
    (tmp_path / "roles").mkdir()
    text = """\
[defaults]
roles_path = roles:./more_roles
collections_path = collections
forks = 10
timeout = 30
interpreter_python = auto_silent
host_key_checking = True   ; the default anyway
[privilege_escalation]
become = true
become_user = root
[ssh_connection]
pipelining = True
retries = 3
[colors]
changed = yellow
"""
    assert find_cfg_problems(text, tmp_path) == []


def test_settings_that_cannot_change_what_runs_or_leak_are_allowed(tmp_path: Path):
    """What the dev-sec hardening collection's users set (issue 22, item 8)."""
    text = """\
[defaults]
ansible_managed = Ansible managed: do not edit
inventory_ignore_extensions = .orig, .cfg, .retry
localhost_warning = False
command_warnings = False
collections_on_ansible_version_mismatch = ignore
ask_pass = False
collections_path = ./collections:~/.ansible/collections:/usr/share/ansible/collections/
roles_path = roles:/etc/ansible/roles:~/.ansible/roles
library = ~/.ansible/plugins/modules
[privilege_escalation]
become_ask_pass = False
[galaxy]
server_list = release_galaxy
"""
    assert find_cfg_problems(text, tmp_path) == []


def test_every_refused_setting_is_named_at_once_in_one_line(tmp_path: Path):
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nlog_path = /tmp/a.log\nforks = 5\nroles_path = roles:/opt/roles\n"
        "ask_pass = True\n[galaxy_server.private]\ntoken = abc\n")
    with pytest.raises(RepoError) as e:
        check_ansible_cfg(tmp_path)
    assert str(e.value) == (
        "ansible.cfg: [defaults] log_path: not allowed in a Petkeeper repo (Ansible's log "
        "would hold diffs with secrets in clear); remove it; [defaults] roles_path: '/opt/roles' "
        "outside the repository; use paths relative to the repository root; [defaults] ask_pass "
        "= True: Petkeeper runs unattended and nothing answers a prompt; remove the line; "
        "[galaxy_server.private] token: not allowed in a Petkeeper repo (it is not on the list "
        "of settings a repo may make); remove it (docs/security.md lists what a repo may set)")
    assert "\n" not in str(e.value)


def test_the_repo_paths_resolve_inside_the_tree_and_keep_the_defaults(tmp_path: Path):
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\ncollections_path = ./collections:~/.ansible/collections\n")
    assert repo_paths(tmp_path, "collections_path") == [
        str(tmp_path / "collections"), "~/.ansible/collections"]
    assert repo_paths(tmp_path, "roles_path") is None
    (tmp_path / "ansible.cfg").write_text("[defaults]\ncollections_paths = a/b/../c\n")
    assert repo_paths(tmp_path, "collections_path") == [str(tmp_path / "a" / "c")]


@pytest.mark.parametrize(("text", "expected"), [
    ("[defaults]\nlog_path = /tmp/ansible.log\n",
     ["[defaults] log_path: not allowed in a Petkeeper repo (Ansible's log would hold diffs "
      "with secrets in clear); remove it"]),
    ("[defaults]\nhost_key_checking = False\n",
     ["[defaults] host_key_checking = False: host keys are always checked; remove the line"]),
    ("[defaults]\ncallback_plugins = plugins\ncallbacks_enabled = tee\n",
     ["[defaults] callback_plugins: not allowed in a Petkeeper repo (callbacks see every "
      "result, secrets included); remove it",
      "[defaults] callbacks_enabled: not allowed in a Petkeeper repo (callbacks see every "
      "result, secrets included); remove it"]),
    ("[defaults]\nfact_caching = jsonfile\n",
     ["[defaults] fact_caching: not allowed in a Petkeeper repo (facts are cached in memory "
      "only); remove it"]),
    ("[ssh_connection]\nssh_args = -o StrictHostKeyChecking=no\n",
     ["[ssh_connection] ssh_args: not allowed in a Petkeeper repo (it could turn off host-key "
      "checking); remove it"]),
    ("[defaults]\nroles_path = roles:/etc/roles:/etc/ansible/roles\n",
     ["[defaults] roles_path: '/etc/roles' outside the repository; use paths relative to the "
      "repository root"]),
    ("[defaults]\ncollections_path = /etc/ansible/roles\n",  # a default, but not of this key
     ["[defaults] collections_path: '/etc/ansible/roles' outside the repository; use paths "
      "relative to the repository root"]),
    ("[defaults]\nlibrary = ../../lib\n",
     ["[defaults] library: '../../lib' outside the repository; use paths relative to the "
      "repository root"]),
    ("[defaults]\nroles_path = ~/roles\n",
     ["[defaults] roles_path: '~/roles' outside the repository; use paths relative to the "
      "repository root"]),
    ("[galaxy]\nserver = https://galaxy.example.org\n",
     ["[galaxy] server: not allowed in a Petkeeper repo (it is not on the list of settings a "
      "repo may make); remove it"]),
    ("[privilege_escalation]\nbecome_ask_pass = yes\n",
     ["[privilege_escalation] become_ask_pass = yes: Petkeeper runs unattended and nothing "
      "answers a prompt; remove the line"]),
    ("[DEFAULT]\nlog_path = /tmp/x\n[defaults]\nforks = 2\n",
     ["[defaults] log_path: not allowed in a Petkeeper repo (Ansible's log would hold diffs "
      "with secrets in clear); remove it"]),
])
def test_settings_that_escape_the_sandbox_are_refused_with_the_key_and_the_fix(
        tmp_path: Path, text: str, expected: list[str]):
    assert find_cfg_problems(text, tmp_path) == expected


def test_a_symlink_leaving_the_repo_through_a_path_setting_is_refused(tmp_path: Path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "roles").symlink_to("/etc")
    assert "'roles' outside the repository" in find_cfg_problems(
        "[defaults]\nroles_path = roles\n", tree)[0]


def test_broken_ini_is_one_line():
    [problem] = find_cfg_problems("[defaults\nforks=1\n", Path("/nonexistent"))
    assert "\n" not in problem
    assert problem.startswith("not a valid INI file (") and problem.endswith("fix the syntax")


def test_check_names_the_file_and_accepts_a_repo_without_one(tmp_path: Path):
    check_ansible_cfg(tmp_path)
    (tmp_path / "ansible.cfg").write_text("[defaults]\nlog_path = /tmp/a.log\n")
    with pytest.raises(RepoError, match=r"^ansible.cfg: \[defaults\] log_path: not allowed"):
        check_ansible_cfg(tmp_path)


def test_a_symlinked_ansible_cfg_is_refused(tmp_path: Path):
    (tmp_path / "ansible.cfg").symlink_to("/etc/ansible/ansible.cfg")
    with pytest.raises(RepoError, match="must be a regular file"):
        check_ansible_cfg(tmp_path)


def test_the_environment_pins_what_no_config_file_may_change(tmp_path: Path):
    env = build_env(PlaybookRun(tree=tmp_path, playbook="site.yml", inventory=None, limit=None,
                                check=True, ident="t"))
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    assert env["ANSIBLE_LOG_PATH"] == "/dev/null"
    assert env["ANSIBLE_CACHE_PLUGIN"] == "memory"
    assert env["ANSIBLE_NO_TARGET_SYSLOG"] == "True"
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == "petkeeper_facts"
    assert "StrictHostKeyChecking=yes" in env["ANSIBLE_SSH_COMMON_ARGS"]
