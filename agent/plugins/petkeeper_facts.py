"""Ansible callback plugin, loaded into ansible-playbook by agent.adapters.runner.

ansible-runner's events leave out four facts that drift detection needs: why a task was
skipped (a `when:` that is false, one that names `ansible_check_mode`, a loop with no items, a
task that is `changed_when: false`, or a module that cannot run in check mode), whether a
`no_log` task changed anything (its whole result is censored), a changed or failed task's tags
(for the policy), and whether a changed command had `creates` or `removes` to predict its
outcome in check mode (results carried the module's arguments in `invocation` until
ansible-core 2.21 stopped sending them). This plugin writes exactly those facts,
one JSON object a line, to the file named by PETKEEPER_FACTS_FILE: booleans and a short reason,
never a value, an argument or any output of a task.

For `petkeeper undo`, a changed task that writes files says which (`paths`, from the same
managed_paths, and its `state` argument): what the snapshot before an apply reads.

One more fact, for the daemon's file watch (agent.daemon.watch): the paths each task manages on
its host (`path`/`dest` of file-like modules, the account files behind user and group, sudoers
and authorized keys files, the package database, unit files), and whether the host is reached
with the local connection (only then can the daemon watch them). Paths only, never content.
"""

from __future__ import annotations

import json
import os
import pwd
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: petkeeper_facts
    type: aggregate
    short_description: Records skip reasons and no_log changed flags for Petkeeper
    description: Writes JSON lines to the file named by PETKEEPER_FACTS_FILE.
    requirements: [enabled by Petkeeper through ANSIBLE_CALLBACKS_ENABLED]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "petkeeper_facts"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("PETKEEPER_FACTS_FILE")
        self._out = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._play: Any = None  # the play running: its variables say each host's connection
        self._local: dict[str, bool] = {}

    def _write(self, result, **facts) -> None:
        if self._out is None:
            return
        # A task inherits its block's, role's and import's tags: the same one may come twice.
        record = {"host": result._host.get_name(), "task_uuid": result._task._uuid,
                  "tags": sorted({str(t) for t in result._task.tags}), **facts}
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def v2_runner_on_skipped(self, result) -> None:
        res = result._result
        items = res.get("results") or []
        # The `when:` found false: the task's, or each item's (a loop skipped item by item).
        falses = [res["false_condition"]] if "false_condition" in res else \
            [i.get("false_condition") if isinstance(i, dict) else None for i in items]
        conditional = bool(falses) and None not in falses
        self._write(result, event="skipped", conditional=conditional,
                    reason=_skip_reason(result._task, res, falses if conditional else []))

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        if not ignore_errors:
            self._write(result, event="failed")

    def v2_runner_on_ok(self, result) -> None:
        if not result._task.loop:  # a loop's own result: its items were seen one by one
            self._write_paths(result)
        changed = bool(result._result.get("changed"))
        if result._task.no_log or result._result.get("_ansible_no_log"):
            self._write(result, event="hidden", changed=changed, **_touched(result))
        elif changed:
            self._write(result, event="changed", changed=True, predicted=_predicted(result),
                        **_touched(result))

    def v2_playbook_on_play_start(self, play) -> None:
        self._play, self._local = play, {}

    def v2_runner_item_on_ok(self, result) -> None:
        self._write_paths(result)  # in a loop, each item's arguments are templated here

    def _write_paths(self, result) -> None:
        res = result._result
        if self._out is None or res.get("_ansible_delegated_vars"):  # another host's files
            return
        paths = managed_paths(result._task.action, result._task.args or {}, res)
        if paths:
            self._write(result, event="paths", paths=paths, local=self._is_local(result._host))

    def _is_local(self, host) -> bool:
        name = host.get_name()
        if name not in self._local:
            try:
                hostvars = self._play.get_variable_manager().get_vars(play=self._play, host=host)
                self._local[name] = hostvars.get("ansible_connection") == "local"
            except Exception:  # unknown means not watched, never a failed run
                self._local[name] = False
        return self._local[name]

    def v2_playbook_on_stats(self, stats) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _predicted(result) -> bool:
    """Whether the task's (templated) arguments set creates or removes: a command module then
    decides in check mode whether it would run."""
    args = result._task.args or {}
    return bool(args.get("creates") or args.get("removes"))


def _skip_reason(task, res, falses) -> str:
    """Why TASK was skipped, in one word: no_items (a loop over nothing), check_mode (a false
    `when:` that names ansible_check_mode: the task is hidden from check mode), when (any other
    false `when:`), never_changes (`changed_when: false`) or module (check mode skipped it)."""
    if (task.loop is not None or task.loop_with) and not res.get("results") and not falses:
        return "no_items"
    if falses:
        return "check_mode" if any("ansible_check_mode" in str(f) for f in falses) else "when"
    if task.changed_when and all(str(c).strip().lower() in ("false", "no", "0")
                                 for c in task.changed_when):
        return "never_changes"
    return "module"


# Modules whose path argument (first key present) is the file they manage.
FILE_MODULES = {
    "file": ("path", "dest", "name"), "copy": ("dest",), "template": ("dest",),
    "lineinfile": ("path", "dest", "name", "destfile"), "blockinfile": ("path", "dest", "name"),
    "replace": ("path", "dest", "name"), "assemble": ("dest",), "ini_file": ("path", "dest"),
    "xml": ("path",), "get_url": ("dest",), "unarchive": ("dest",), "known_hosts": ("path",),
    "patch": ("dest",), "htpasswd": ("path", "dest"), "pam_limits": ("dest",),
    "sysctl": ("sysctl_file",), "mount": ("fstab",), "cron": ("cron_file",),
    "community.general.ini_file": ("path", "dest"),
}
DEFAULTS = {"pam_limits": "/etc/security/limits.conf", "sysctl": "/etc/sysctl.conf",
            "mount": "/etc/fstab", "known_hosts": "~/.ssh/known_hosts"}
ACCOUNT_FILES = {"user": ("/etc/passwd", "/etc/shadow", "/etc/group"),
                 "group": ("/etc/group", "/etc/gshadow")}
PACKAGE_MODULES = {"package", "apt", "dnf", "dnf5", "yum", "apk", "pacman", "zypper", "apt_rpm",
                   "rpm_key", "deb822_repository", "apt_repository"}
PACKAGE_DATABASES = ("/var/lib/dpkg/status", "/var/lib/rpm/rpmdb.sqlite",
                     "/var/lib/rpm/Packages", "/lib/apk/db/installed", "/var/lib/pacman/local")
SERVICE_MODULES = {"service", "systemd", "systemd_service", "sysvinit"}
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")


def managed_paths(action: str, args: dict, res: dict) -> list[str]:
    """The absolute paths a task of ACTION with (templated) ARGS and result RES manages on its
    host; [] for a module that manages no file Petkeeper knows of."""
    module = action.rsplit(".", 1)[-1]
    if module in FILE_MODULES or action in FILE_MODULES:
        keys = FILE_MODULES.get(action) or FILE_MODULES[module]
        found = next((args[k] for k in keys if isinstance(args.get(k), str) and args[k]),
                     DEFAULTS.get(module))
        if module == "cron":
            found = f"/etc/cron.d/{found}" if found and "/" not in found else found
        paths = [found] if found else []
    elif module in ACCOUNT_FILES:
        paths = list(ACCOUNT_FILES[module])
    elif module == "authorized_key":
        paths = [args.get("path") or res.get("keyfile") or _home_file(args.get("user"))]
    elif module == "sudoers":
        name = args.get("name")
        paths = [f"{args.get('sudoers_path') or '/etc/sudoers.d'}/{name}"] if name else []
    elif module in PACKAGE_MODULES:
        paths = [p for p in PACKAGE_DATABASES if os.path.exists(p)]
    elif module in SERVICE_MODULES:
        paths = _unit_files(args.get("name"))
    else:
        paths = []
    return sorted({os.path.normpath(os.path.expanduser(p)) for p in paths
                   if isinstance(p, str) and p and os.path.isabs(os.path.expanduser(p))})


def _home_file(user) -> str:
    try:
        return os.path.join(pwd.getpwnam(str(user)).pw_dir, ".ssh", "authorized_keys")
    except KeyError:
        return ""


def _unit_files(name) -> list[str]:
    """The unit's files that exist, and /etc/systemd/system's (where a local override lands)."""
    if not isinstance(name, str) or not name or "/" in name:
        return []
    unit = name if "." in name else f"{name}.service"
    found = [os.path.join(d, unit) for d in UNIT_DIRS if os.path.exists(os.path.join(d, unit))]
    return [*found, os.path.join(UNIT_DIRS[0], unit), os.path.join(UNIT_DIRS[0], unit + ".d")]


# What an undo can put back: the files of these modules (not a mount, nor an unpacked tree).
UNDO_MODULES = (set(FILE_MODULES) - {"unarchive", "mount"}) | set(ACCOUNT_FILES) | {
    "authorized_key", "sudoers"}


def _touched(result) -> dict:
    """For `petkeeper undo`: the files a changed task of UNDO_MODULES writes (a loop's items
    each name theirs) and its state argument; {} for any other module."""
    action = str(result._task.action or "")
    if action.rsplit(".", 1)[-1] not in UNDO_MODULES and action not in UNDO_MODULES:
        return {}
    args, res = result._task.args or {}, result._result
    items = [i for i in res.get("results") or () if isinstance(i, dict)]
    paths = set(managed_paths(action, args, res))
    paths |= {os.path.normpath(i[k]) for i in items for k in ("dest", "path")
              if isinstance(i.get(k), str) and i[k].startswith("/")}
    return {"paths": sorted(paths), "state": str(args.get("state") or "")}
