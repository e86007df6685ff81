"""What converge.yml leaves on each host, checked from inside the host over SSH (testinfra).

Expectations come from the scenario's inventory (group_vars/all.yml, through
``host.ansible.get_variables()``), so these tests follow the variables the roles were given.
Each config file is also judged by the tool that reads it: ``sshd -t``/``sshd -T`` and
``visudo -c``. Every remote command costs a round trip on a busy machine: ownership and
modes are read with one ``stat`` per test rather than one command per attribute.
"""

from __future__ import annotations

from typing import Any

import pytest

SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-petkeeper.conf"
SUDOERS_DROPIN = "/etc/sudoers.d/petkeeper-admins"
CRON_FILE = "/etc/cron.d/petkeeper-backup"
BACKUP_SCRIPT = "/usr/local/sbin/petkeeper-backup"
TOKEN_FILE = "/etc/petkeeper-backup/token"
# The test hosts' sshd runs with a key of its own; sshd -t and -T load the image's keys too.
HOST_KEY = "/etc/ssh/petkeeper_test_host_key"


@pytest.fixture
def inventory_vars(host: Any) -> dict[str, Any]:
    return dict(host.ansible.get_variables())


def stat(host: Any, *paths: str) -> dict[str, str]:
    """Each of PATHS as "type owner group octal-mode" (e.g. "file root root 644")."""
    out = host.check_output("stat -c '%%F|%%U %%G %%a' --" + " %s" * len(paths), *paths)
    kinds = {"regular file": "file", "regular empty file": "file", "directory": "dir",
             "symbolic link": "link"}
    found = {}
    for path, line in zip(paths, out.splitlines(), strict=True):
        kind, owner_mode = line.split("|")
        found[path] = f"{kinds.get(kind, kind)} {owner_mode}"
    return found


def test_motd_names_the_host_and_its_purpose(host: Any, inventory_vars: dict[str, Any]) -> None:
    assert stat(host, "/etc/motd") == {"/etc/motd": "file root root 644"}
    motd = host.file("/etc/motd").content_string
    assert f"{inventory_vars['inventory_hostname']}: {inventory_vars['baseline_motd_purpose']}" \
        in motd
    assert "managed by Ansible through Petkeeper" in motd


def test_time_zone_link_and_name(host: Any, inventory_vars: dict[str, Any]) -> None:
    zone = inventory_vars["baseline_timezone"]
    link, name, abbreviation = host.check_output(
        "readlink /etc/localtime; cat /etc/timezone; date +%Z").splitlines()
    assert (link, name) == (f"/usr/share/zoneinfo/{zone}", zone)
    assert abbreviation in ("CET", "CEST")  # the host's clock really uses Europe/Paris


def test_sshd_dropin_is_present_and_valid(host: Any) -> None:
    assert stat(host, SSHD_DROPIN) == {SSHD_DROPIN: "file root root 644"}
    # The drop-in alone, as the role's validator judges it, then the whole sshd_config.
    alone = host.run(f"/usr/local/sbin/petkeeper-sshd-validate {SSHD_DROPIN}")
    assert alone.rc == 0, alone.stderr
    whole = host.run(f"/usr/sbin/sshd -t -o HostKey={HOST_KEY}")
    assert whole.rc == 0, whole.stderr


def test_sshd_dropin_takes_effect(host: Any) -> None:
    effective = host.run(f"/usr/sbin/sshd -T -o HostKey={HOST_KEY}")
    assert effective.rc == 0, effective.stderr
    settings = dict(line.split(" ", 1) for line in effective.stdout.splitlines() if " " in line)
    assert settings["maxauthtries"] == "3"
    assert settings["permitrootlogin"] == "without-password"  # prohibit-password's old name
    assert settings["passwordauthentication"] == "no"
    assert settings["x11forwarding"] == "no"
    assert settings["logingracetime"] == "30"


def test_sudoers_dropin_passes_visudo(host: Any) -> None:
    assert stat(host, SUDOERS_DROPIN) == {SUDOERS_DROPIN: "file root root 440"}
    assert "%admins ALL=(ALL:ALL) NOPASSWD: ALL" in host.file(SUDOERS_DROPIN).content_string
    checked = host.run("/usr/sbin/visudo -c")  # the whole sudoers, drop-ins included
    assert checked.rc == 0, checked.stdout + checked.stderr
    assert f"{SUDOERS_DROPIN}: parsed OK" in checked.stdout


def test_admin_users_and_their_keys(host: Any, inventory_vars: dict[str, Any]) -> None:
    admins = inventory_vars["users_admins"]
    assert admins, "the scenario's group_vars name no admin"
    for admin in admins:
        name = admin["name"]
        passwd = host.check_output("getent passwd %s", name).split(":")
        assert passwd[4].split(",")[0] == admin["comment"]
        assert passwd[5:] == [f"/home/{name}", "/bin/bash"]
        assert "admins" in host.check_output("id -nG %s", name).split()
        keys = f"/home/{name}/.ssh/authorized_keys"
        assert stat(host, f"/home/{name}/.ssh", keys) == {
            f"/home/{name}/.ssh": f"dir {name} {name} 700", keys: f"file {name} {name} 600"}
        assert host.file(keys).content_string == "\n".join(admin["ssh_keys"]) + "\n"


def test_backup_cron_file_and_script(host: Any) -> None:
    # Owned by root and not group/world writable, or cron ignores the file.
    assert stat(host, CRON_FILE, BACKUP_SCRIPT) == {CRON_FILE: "file root root 644",
                                                     BACKUP_SCRIPT: "file root root 750"}
    assert f"\n17 3 * * * root {BACKUP_SCRIPT}\n" in host.file(CRON_FILE).content_string
    assert host.run(f"/bin/sh -n {BACKUP_SCRIPT}").rc == 0


def test_backup_token_is_private(host: Any, inventory_vars: dict[str, Any]) -> None:
    folder = "/etc/petkeeper-backup"
    assert stat(host, folder, TOKEN_FILE) == {folder: "dir root root 700",
                                              TOKEN_FILE: "file root root 600"}
    assert host.file(TOKEN_FILE).content_string == f"{inventory_vars['backup_job_token']}\n"


def test_checks_ran_inside_the_instance(host: Any, inventory_vars: dict[str, Any]) -> None:
    """The checks above read the test host, not this machine: its hostname is the instance's."""
    assert host.check_output("hostname") == inventory_vars["inventory_hostname"]
