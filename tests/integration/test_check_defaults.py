"""Defaults that fit a pet managing itself, the way ansible-pull chooses, and secrets in URLs."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from tests.conftest import pet_hosts, petkeeper, pets_repo_files, write_agent_config

pytestmark = pytest.mark.hosts

NOTE_PLAY = """\
- name: {name}
  hosts: all
  gather_facts: false
  tasks:
    - name: Note which playbook ran
      ansible.builtin.copy:
        content: "{name}\\n"
        dest: /etc/which-playbook
        mode: "0644"
"""


def without(config: Path, *keys: str) -> Path:
    data = yaml.safe_load(config.read_text())
    for key in keys:
        data.pop(key)
    config.write_text(yaml.safe_dump(data))
    return config


def ran_playbook(report: dict, host: str) -> str:
    [change] = report["hosts"][host]["changes"]
    return change["play"]


def test_without_playbooks_the_hostname_playbook_wins_over_local_yml(host_pool, remote,
                                                                   tmp_path):
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    files["local.yml"] = NOTE_PLAY.format(name="local")
    remote.commit(files)
    cfg = without(write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                     host_pool), "playbooks")
    r = petkeeper("--config", str(cfg), "check", "--json", "--limit", "alpha")
    assert ran_playbook(json.loads(r.stdout), "alpha") == "local"

    remote.commit({f"{socket.gethostname()}.yml": NOTE_PLAY.format(name="by hostname")})
    r = petkeeper("--config", str(cfg), "check", "--json", "--limit", "alpha")
    assert ran_playbook(json.loads(r.stdout), "alpha") == "by hostname"

    remote.commit({"local.yml": None, f"{socket.gethostname()}.yml": None})
    r = petkeeper("--config", str(cfg), "check", "--limit", "alpha")
    assert r.returncode == 1
    assert "playbooks: none set and none of" in r.stderr and "local.yml" in r.stderr


def test_playbook_names_on_the_command_line_replace_the_configured_ones(host_pool, remote,
                                                                       tmp_path):
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    files["other.yml"] = NOTE_PLAY.format(name="other")
    remote.commit(files)
    cfg = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool)
    r = petkeeper("--config", str(cfg), "check", "--json", "--limit", "alpha", "other.yml")
    assert ran_playbook(json.loads(r.stdout), "alpha") == "other"


def test_without_limit_a_host_missing_from_the_inventory_is_a_clear_error(host_pool, remote,
                                                                          tmp_path):
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha")))
    cfg = without(write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                     host_pool), "limit")
    r = petkeeper("--config", str(cfg), "check")

    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert "limit: not set, and this host (" in line and socket.gethostname() in line
    assert "is not in the inventory inventory/hosts.yml" in line
    assert not (tmp_path / "state" / "status.json").exists()


def test_without_inventory_and_limit_the_pet_checks_itself(remote, tmp_path):
    remote.commit({"local.yml": "- name: Myself\n  hosts: all\n  gather_facts: false\n"
                                "  tasks:\n    - name: Look at the hostname file\n"
                                "      ansible.builtin.stat:\n        path: /etc/hostname\n"})
    cfg = tmp_path / "agent.yml"
    cfg.write_text(yaml.safe_dump({"repo": {"url": remote.url},
                                   "state_dir": str(tmp_path / "state")}))
    r = petkeeper("--config", str(cfg), "check", "--json")

    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert list(report["hosts"]) == [socket.gethostname()]
    assert report["hosts"][socket.gethostname()]["status"] == "clean"


def test_credentials_in_the_repo_url_never_reach_output_or_state(host_pool, tmp_path):
    canary = "s3cret-canary-pw"
    url = f"https://petkeeper:{canary}@127.0.0.1:9/pets.git"  # nothing listens on port 9
    cfg = write_agent_config(tmp_path / "agent.yml", url, tmp_path / "state", host_pool)
    r = petkeeper("--config", str(cfg), "-v", "check")

    assert r.returncode == 1
    assert "https://***@127.0.0.1:9/pets.git" in r.stderr
    assert canary not in r.stdout + r.stderr
    leaked = [p for p in (tmp_path / "state").rglob("*") if p.is_file() and
              canary.encode() in p.read_bytes()]
    assert leaked == []
