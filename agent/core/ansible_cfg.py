"""What a repo's own ansible.cfg may set: an allow-list, checked before Ansible reads the file.

Ansible reads ``ansible.cfg`` from the repo's root (its working directory), so the repo could
otherwise turn off host-key checking, log diffs with secrets to a file, load callbacks that see
every result, or cache facts outside the state directory. Settings a repo legitimately needs
(role and collection paths inside the repo, forks, timeouts, privilege escalation, pipelining)
stay allowed; every other key rejects the commit with one line naming the key. Pure functions.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from agent.errors import RepoError

CFG_NAME = "ansible.cfg"

# Paths (colon-separated lists) that must stay inside the repository.
PATH_KEYS = frozenset({
    "roles_path", "collections_path", "collections_paths", "library", "module_utils",
    "filter_plugins", "test_plugins", "lookup_plugins", "action_plugins", "vars_plugins",
    "inventory", "playbook_dir",
})
# Any key of [colors] is allowed too: colours only, and Petkeeper turns colour off.
ALLOWED: dict[str, frozenset[str]] = {
    "defaults": PATH_KEYS | frozenset({
        "forks", "timeout", "gathering", "gather_subset", "gather_timeout",
        "interpreter_python", "remote_user", "remote_port", "remote_tmp", "hash_behaviour",
        "any_errors_fatal", "force_handlers", "error_on_undefined_vars", "private_role_vars",
        "deprecation_warnings", "system_warnings", "nocows", "display_skipped_hosts",
        "display_ok_hosts", "internal_poll_interval", "jinja2_native", "host_key_checking",
        "retry_files_enabled", "bin_ansible_callbacks", "duplicate_dict_key",
        "inject_facts_as_vars", "allow_world_readable_tmpfiles", "max_diff_size"}),
    "privilege_escalation": frozenset({"become", "become_method", "become_user", "become_exe",
                                       "become_flags"}),
    "ssh_connection": frozenset({"pipelining", "retries", "transfer_method", "scp_if_ssh",
                                 "sftp_batch_mode", "usetty"}),
    "connection": frozenset({"pipelining"}),
    "inventory": frozenset({"enable_plugins", "ignore_extensions", "ignore_patterns",
                            "unparsed_is_failed", "any_unparsed_is_failed"}),
    "diff": frozenset({"always", "context"}),
}
# Why the most tempting forbidden keys are refused, for the error line.
REASONS = {
    "host_key_checking": "host keys are always checked",
    "log_path": "Ansible's log would hold diffs with secrets in clear",
    "callback_plugins": "callbacks see every result, secrets included",
    "callbacks_enabled": "callbacks see every result, secrets included",
    "callback_whitelist": "callbacks see every result, secrets included",
    "stdout_callback": "Petkeeper reads results through its own callback",
    "fact_caching": "facts are cached in memory only",
    "fact_caching_connection": "facts are cached in memory only",
    "ssh_args": "it could turn off host-key checking",
    "ssh_common_args": "it could turn off host-key checking",
    "ssh_extra_args": "it could turn off host-key checking",
    "control_path": "Petkeeper keeps SSH control sockets private to each run",
    "control_path_dir": "Petkeeper keeps SSH control sockets private to each run",
    "vault_password_file": "the vault password comes from the agent's config only",
    "private_key_file": "the SSH key comes from the agent's config only",
    "local_tmp": "it could write outside the state directory",
}


def check_ansible_cfg(tree: Path) -> None:
    """Raise RepoError if TREE's ansible.cfg sets anything a repo may not; no file is fine."""
    path = tree / CFG_NAME
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise RepoError(f"{CFG_NAME}: must be a regular file in the repository, not a link or "
                        "folder; commit the file itself")
    problem = find_cfg_problem(path.read_text(errors="replace"), tree)
    if problem:
        raise RepoError(f"{CFG_NAME}: {problem}")


def find_cfg_problem(text: str, tree: Path) -> str | None:
    """Given the text of a repo's ansible.cfg, return the first setting it may not make
    (with the fix), or None."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    try:
        parser.read_string(text, CFG_NAME)
    except configparser.Error as e:
        first = " ".join(str(e).split())
        return f"not a valid INI file ({first}); fix the syntax"
    for section in parser.sections():
        for key, value in parser.items(section, raw=True):
            problem = _setting_problem(section, key, value, tree)
            if problem:
                return problem
    return None


def _setting_problem(section: str, key: str, value: str, tree: Path) -> str | None:
    where = f"[{section}] {key}"
    if section == "colors":
        return None
    if key not in ALLOWED.get(section, frozenset()):
        why = REASONS.get(key, "it is not on the list of settings a repo may make")
        return (f"{where}: not allowed in a Petkeeper repo ({why}); remove it (README: "
                "Security model lists what a repo may set)")
    if key == "host_key_checking" and value.strip().lower() not in ("true", "yes", "1", "on"):
        return f"{where}: = {value.strip()}: host keys are always checked; remove the line"
    if key in PATH_KEYS:
        for item in filter(None, (v.strip() for v in value.split(os.pathsep))):
            if not _inside(tree, item):
                return (f"{where}: {item!r} is outside the repository; use a path relative to "
                        "the repository root")
    return None


def _inside(tree: Path, item: str) -> bool:
    if item.startswith(("~", "$")):
        return False
    root = os.path.realpath(tree)
    target = os.path.realpath(os.path.join(root, item))
    return os.path.commonpath([root, target]) == root
