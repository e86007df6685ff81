"""The daemon's kept SSH masters: the pure parts (agent.core.ssh_masters) and the folder's
checks (agent.adapters.masters) that need no SSH."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from agent.adapters.masters import close_departed, close_masters, open_folder
from agent.adapters.runner import (
    PlaybookRun,
    _masters_var_file,
    control_folder,
    mitogen,
    ssh_control_env,
)
from agent.core.accelerator import STRATEGY
from agent.core.ssh_masters import (
    SOCKET_PATH_MAX,
    Masters,
    choose_folder,
    departed,
    host_folder_name,
    persist_seconds,
    socket_path_len,
)
from agent.errors import AgentError


def test_a_short_state_dir_keeps_its_masters_inside_it():
    folder, why = choose_folder(Path("/var/lib/petkeeper"), Path("/tmp"), 0)
    assert folder == Path("/var/lib/petkeeper/ssh") and why == ""


def test_a_state_dir_too_long_for_a_socket_falls_back_to_a_private_tmp_folder_said_once():
    deep = Path("/tmp/pytest-of-root/pytest-123/popen-gw1/test_something_long_name0/state")
    folder, why = choose_folder(deep, Path("/tmp"), 1000)
    digest = hashlib.sha1(str(deep).encode()).hexdigest()[:10]
    assert folder == Path(f"/tmp/petkeeper-ssh-1000-{digest}")
    assert str(deep / "ssh") in why and str(folder) in why and "too long" in why
    # the longest path ssh binds there fits: Mitogen's shared socket (ssh's %C, longer than a
    # host folder and Ansible's socket in it), ssh's temporary suffix
    assert socket_path_len(folder) <= SOCKET_PATH_MAX
    assert len(f"{folder}/{'a' * 10}/{'b' * 10}.{'c' * 16}") < socket_path_len(folder)
    assert len(f"{folder}/{'a' * 40}.{'c' * 16}") == socket_path_len(folder)


def test_the_limit_is_exact_at_the_boundary():
    fits = Path("/" + "s" * (SOCKET_PATH_MAX - socket_path_len(Path("/")) - 4))  # + "/ssh"
    assert choose_folder(fits, Path("/tmp"), 0)[1] == ""
    assert choose_folder(Path(f"{fits}x"), Path("/tmp"), 0)[1] != ""


def test_two_state_dirs_falling_back_get_two_folders():
    a = choose_folder(Path("/x" * 60 + "/a"), Path("/tmp"), 0)[0]
    b = choose_folder(Path("/x" * 60 + "/b"), Path("/tmp"), 0)[0]
    assert a != b


def test_an_idle_master_lives_a_little_longer_than_the_longest_quiet_gap():
    assert persist_seconds(900, 60) == 900 + 60 + 120
    assert persist_seconds(3600.5, 1) == 3602 + 120
    assert Masters(Path("/s/ssh"), 1080).ssh_args() == \
        "-C -o ControlMaster=auto -o ControlPersist=1080s"


def test_mitogens_ssh_args_name_its_shared_sockets_with_the_folder_quoted_and_escaped():
    assert Masters(Path("/s/ssh"), 60).ssh_args(shared=True) == \
        "-C -o ControlMaster=auto -o ControlPersist=60s -o ControlPath=/s/ssh/%C"
    odd = Masters(Path("/s/100% pets/ssh"), 60).ssh_args(shared=True)
    assert shlex.split(odd)[-1] == "ControlPath=/s/100%% pets/ssh/%C"


def test_each_inventory_host_gets_its_own_folder_and_departed_hosts_are_known_by_it():
    masters = Masters(Path("/s/ssh"), 60)
    assert masters.host_folder("pet1") == Path("/s/ssh") / hashlib.sha1(b"pet1").hexdigest()[:10]
    names = [host_folder_name(h) for h in ("pet1", "pet2", "old")] + ["stray"]
    assert departed(names, ["pet1", "pet2"]) == sorted([host_folder_name("old"), "stray"])
    assert departed(names[:2], ("pet1", "pet2")) == []


def test_the_control_path_dir_var_renders_per_host_and_keeps_the_folder_verbatim():
    var = Masters(Path("/s/{{ x }}/ssh"), 60).control_path_dir()
    assert var == ("{% raw %}/s/{{ x }}/ssh{% endraw %}/"
                   "{{ (inventory_hostname | hash('sha1'))[:10] }}")


def test_the_daemon_runs_get_the_kept_folder_its_persist_and_the_per_host_var(tmp_path):
    masters = Masters(tmp_path / "ssh", 1080)
    with control_folder(masters) as folder:
        assert folder == tmp_path / "ssh"
    env = ssh_control_env(masters, folder)
    assert env == {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "ssh"),
                   "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=1080s"}
    [arg] = _masters_var_file(masters, tmp_path)
    written = Path(arg.removeprefix("@"))
    assert json.loads(written.read_text()) == {"ansible_control_path_dir":
                                               masters.control_path_dir()}
    assert written.stat().st_mode & 0o777 == 0o600


def test_mitogen_runs_of_the_daemon_name_the_shared_sockets_and_plain_ones_do_not(tmp_path):
    masters = Masters(tmp_path / "ssh", 1080)
    run = PlaybookRun(tree=tmp_path, playbook="p.yml", inventory=tmp_path, limit="",
                      check=True, ident="x", masters=masters)
    assert not mitogen(run)
    fast = replace(run, env={"ANSIBLE_STRATEGY": STRATEGY})
    assert mitogen(fast)
    assert ssh_control_env(masters, masters.folder, mitogen(fast))["ANSIBLE_SSH_ARGS"] == \
        masters.ssh_args(shared=True)
    assert ssh_control_env(None, tmp_path, True) == {"ANSIBLE_SSH_CONTROL_PATH_DIR":
                                                     str(tmp_path)}


def test_ad_hoc_runs_keep_a_fresh_folder_and_ansibles_own_ssh_args(tmp_path):
    with control_folder(None) as folder:
        assert folder.is_dir() and folder.name.startswith("pk-cp-")
        assert ssh_control_env(None, folder) == {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(folder)}
    assert not folder.exists()
    assert _masters_var_file(None, tmp_path) == []
    assert PlaybookRun(tree=tmp_path, playbook="p.yml", inventory=tmp_path, limit="",
                       check=True, ident="x").masters is None


def test_the_folder_is_made_private_and_a_link_or_a_file_is_refused(tmp_path):
    folder = tmp_path / "ssh"
    open_folder(folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    os.chmod(folder, 0o755)
    open_folder(folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(AgentError, match="not a folder of the agent's own user"):
        open_folder(link)
    (tmp_path / "file").write_text("")
    with pytest.raises(AgentError, match="not a folder"):
        open_folder(tmp_path / "file")


def test_closing_a_folder_with_no_master_removes_stale_sockets_and_departed_folders(tmp_path):
    import socket

    masters = Masters(tmp_path / "ssh", 60)
    open_folder(masters.folder)
    for host in ("kept", "gone"):
        masters.host_folder(host).mkdir()
        with socket.socket(socket.AF_UNIX) as s:  # a socket whose master died: nobody listens
            s.bind(str(masters.host_folder(host) / "0123456789"))
    shared = masters.folder / "c0ffee"  # Mitogen's (named by %C), whose host is not known
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(shared))
    assert close_departed(masters, ["kept", "gone"]) == []  # nobody left: nothing closed
    assert shared.is_socket()
    assert close_departed(masters, ["kept", "new"]) == []
    assert not masters.host_folder("gone").exists()
    assert (masters.host_folder("kept") / "0123456789").is_socket()
    assert not shared.exists()  # a host left: Mitogen's sockets go with it
    # every target has its folder, so the next cycle knows who was there
    assert masters.host_folder("new").is_dir()
    assert masters.host_folder("new").stat().st_mode & 0o777 == 0o700
    assert close_masters(masters.folder) == []
    assert list(masters.host_folder("kept").iterdir()) == []
    assert close_masters(tmp_path / "nothing") == []


def test_each_daemon_cycle_gets_the_kept_folder_with_its_configs_persist(tmp_path):
    import yaml

    from agent.config import load_config
    from agent.daemon.service import Daemon

    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump({
        "repo": {"url": "file:///srv/git/pets.git"}, "state_dir": str(tmp_path / "state"),
        "daemon": {"check_interval": "15m", "fetch_interval": "1m"}}))
    config = load_config(path)
    assert Daemon(path, config, env={}).masters(config) is None  # none kept: each run its own
    daemon = Daemon(path, config, env={}, masters=tmp_path / "ssh")
    assert daemon.masters(config) == Masters(tmp_path / "ssh", 900 + 60 + 120)
