"""What a repo's own ansible.cfg may set: an allow-list, checked before Ansible reads the file.

Ansible reads ``ansible.cfg`` from the repo's root (its working directory), so the repo could
otherwise turn off host-key checking, log diffs with secrets to a file, load callbacks that see
every result, or cache facts outside the state directory. Settings that cannot change what runs
on the agent or leak stay allowed (role and collection paths inside the repo or among Ansible's
own defaults, forks, timeouts, privilege escalation, pipelining, warnings); every other key
rejects the commit, all such keys named in one line. Pure functions.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from agent.errors import RepoError

CFG_NAME = "ansible.cfg"
FIX = "docs/security.md lists what a repo may set"

# Ansible's own default search paths per path setting (ANSIBLE_HOME is ~/.ansible): naming
# them searches where Ansible looks when the key is unset, so they change nothing.
_PLUGINS = {"library": "modules", "module_utils": "module_utils", "filter_plugins": "filter",
            "test_plugins": "test", "lookup_plugins": "lookup", "action_plugins": "action",
            "vars_plugins": "vars"}
DEFAULT_PATHS: dict[str, frozenset[str]] = {
    "roles_path": frozenset({"~/.ansible/roles", "/usr/share/ansible/roles",
                             "/etc/ansible/roles"}),
    "collections_path": frozenset({"~/.ansible/collections",
                                   "/usr/share/ansible/collections"}),
    **{key: frozenset({f"~/.ansible/plugins/{sub}", f"/usr/share/ansible/plugins/{sub}"})
       for key, sub in _PLUGINS.items()},
}
DEFAULT_PATHS["collections_paths"] = DEFAULT_PATHS["collections_path"]
# Paths (colon-separated lists) that must stay inside the repository (or be a default above).
PATH_KEYS = frozenset({*DEFAULT_PATHS, "inventory", "playbook_dir"})
# Switches that make Ansible prompt: allowed off only (nothing answers a prompt).
PROMPTS = frozenset({"ask_pass", "become_ask_pass", "ask_vault_pass"})
# Any key of [colors] is allowed too: colours only, and Petkeeper turns colour off.
ALLOWED: dict[str, frozenset[str]] = {
    "defaults": PATH_KEYS | frozenset({
        "forks", "timeout", "gathering", "gather_subset", "gather_timeout",
        "interpreter_python", "remote_user", "remote_port", "remote_tmp", "hash_behaviour",
        "any_errors_fatal", "force_handlers", "error_on_undefined_vars", "private_role_vars",
        "deprecation_warnings", "system_warnings", "nocows", "display_skipped_hosts",
        "display_ok_hosts", "internal_poll_interval", "jinja2_native", "host_key_checking",
        "retry_files_enabled", "bin_ansible_callbacks", "duplicate_dict_key",
        "inject_facts_as_vars", "allow_world_readable_tmpfiles", "max_diff_size",
        "ansible_managed", "inventory_ignore_extensions", "localhost_warning",
        "command_warnings", "action_warnings", "devel_warning",
        "collections_on_ansible_version_mismatch", "ask_pass", "ask_vault_pass"}),
    "privilege_escalation": frozenset({"become", "become_method", "become_user", "become_exe",
                                       "become_flags", "become_ask_pass"}),
    "ssh_connection": frozenset({"pipelining", "retries", "transfer_method", "scp_if_ssh",
                                 "sftp_batch_mode", "usetty"}),
    "connection": frozenset({"pipelining"}),
    "inventory": frozenset({"enable_plugins", "ignore_extensions", "ignore_patterns",
                            "unparsed_is_failed", "any_unparsed_is_failed"}),
    "diff": frozenset({"always", "context"}),
    "galaxy": frozenset({"server_list"}),
}
# Why the most tempting forbidden keys are refused, for the error line.
REASONS = {
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
TRUE = ("true", "yes", "1", "on")


def check_ansible_cfg(tree: Path) -> None:
    """Raise RepoError naming every setting TREE's ansible.cfg may not make; no file is fine."""
    path = tree / CFG_NAME
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise RepoError(f"{CFG_NAME}: must be a regular file in the repository, not a link or "
                        "folder; commit the file itself")
    problems = find_cfg_problems(path.read_text(errors="replace"), tree)
    if problems:
        raise RepoError(f"{CFG_NAME}: {'; '.join(problems)} ({FIX})")


def find_cfg_problems(text: str, tree: Path) -> list[str]:
    """Given the text of a repo's ansible.cfg, return every setting it may not make, each with
    its fix, in file order ([] when all are allowed)."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    try:
        parser.read_string(text, CFG_NAME)
    except configparser.Error as e:
        first = " ".join(str(e).split())
        return [f"not a valid INI file ({first}); fix the syntax"]
    return [problem for section in parser.sections()
            for key, value in parser.items(section, raw=True)
            if (problem := _setting_problem(section, key, value, tree))]


def repo_paths(tree: Path, key: str) -> list[str] | None:
    """The search path that TREE's ansible.cfg gives KEY (roles_path, collections_path), each
    entry resolved as Ansible does (relative to the file's folder); None when it sets none.
    The file has passed check_ansible_cfg."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    try:
        parser.read(tree / CFG_NAME)
    except configparser.Error:
        return None
    keys = (key, "collections_paths") if key == "collections_path" else (key,)
    for name in keys:
        if parser.has_option("defaults", name):
            value = parser.get("defaults", name, raw=True)
            return [item if _is_default(name, item) else os.path.normpath(tree / item)
                    for item in _entries(value)]
    return None


def _setting_problem(section: str, key: str, value: str, tree: Path) -> str | None:
    where = f"[{section}] {key}"
    if section == "colors":
        return None
    if key not in ALLOWED.get(section, frozenset()):
        why = REASONS.get(key, "it is not on the list of settings a repo may make")
        return f"{where}: not allowed in a Petkeeper repo ({why}); remove it"
    if key == "host_key_checking" and value.strip().lower() not in TRUE:
        return f"{where} = {value.strip()}: host keys are always checked; remove the line"
    if key in PROMPTS and value.strip().lower() in TRUE:
        return (f"{where} = {value.strip()}: Petkeeper runs unattended and nothing answers a "
                "prompt; remove the line")
    if key in PATH_KEYS:
        outside = [item for item in _entries(value)
                   if not _is_default(key, item) and not _inside(tree, item)]
        if outside:
            return (f"{where}: {', '.join(map(repr, outside))} outside the repository; use "
                    "paths relative to the repository root")
    return None


def _entries(value: str) -> list[str]:
    return [v for v in (v.strip() for v in value.split(os.pathsep)) if v]


def _is_default(key: str, item: str) -> bool:
    return item.rstrip("/") in DEFAULT_PATHS.get(key, frozenset())


def _inside(tree: Path, item: str) -> bool:
    if item.startswith(("~", "$")):
        return False
    root = os.path.realpath(tree)
    target = os.path.realpath(os.path.join(root, item))
    return os.path.commonpath([root, target]) == root
