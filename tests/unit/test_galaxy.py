"""The Galaxy requirements cache: keyed on everything the install reads, ahead of the repo's
own search paths (issue 22, items 4 and 5). The install itself runs in
tests/integration/test_repo_extras.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from agent.adapters.galaxy import install_requirements, requirements_key


def write_requirements(tree: Path, collections: list[dict], roles: list | None = None) -> Path:
    path = tree / "requirements.yml"
    path.write_text(yaml.safe_dump({"collections": collections, "roles": roles or []}))
    return path


def test_a_vendored_tarball_changed_under_the_same_name_changes_the_key(tmp_path: Path):
    (tmp_path / "vendor").mkdir()
    tarball = tmp_path / "vendor" / "acme-pets-1.0.0.tar.gz"
    tarball.write_bytes(b"first build")
    source = write_requirements(tmp_path, [{"name": "vendor/acme-pets-1.0.0.tar.gz",
                                            "type": "file"}])
    first = requirements_key(source, "requirements.yml")
    (tmp_path / "README.md").write_text("not named by the requirements\n")
    assert requirements_key(source, "requirements.yml") == first

    tarball.write_bytes(b"second build")
    assert requirements_key(source, "requirements.yml") != first


def test_every_kind_of_local_source_is_part_of_the_key(tmp_path: Path):
    role = tmp_path / "src" / "role" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text("- ansible.builtin.ping:\n")
    repo = tmp_path / "gitrole"
    subprocess.run(["git", "init", "-q", "--initial-branch=main", str(repo)], check=True)

    def commit(text: str) -> None:
        (repo / "x").write_text(text)
        subprocess.run(["git", "-C", str(repo), "add", "x"], check=True)
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=a", "-c", "user.email=a@b",
                        "commit", "-qm", text], check=True)

    commit("1")
    tree = tmp_path / "tree"
    tree.mkdir()
    source = write_requirements(
        tree, [{"name": str(tmp_path / "src" / "role"), "type": "dir"}],
        roles=[{"name": "git_role", "src": f"git+file://{repo}", "version": "main"},
               "community.general"])
    keys = {requirements_key(source, "requirements.yml")}
    (role / "main.yml").write_text("- ansible.builtin.ping: {data: changed}\n")
    keys.add(requirements_key(source, "requirements.yml"))
    commit("2")
    keys.add(requirements_key(source, "requirements.yml"))
    assert len(keys) == 3


def test_the_installed_requirements_come_before_the_repo_paths_not_instead(tmp_path: Path):
    source = write_requirements(tmp_path, [])
    cache_root = tmp_path / "galaxy"
    (cache_root / requirements_key(source, "requirements.yml")).mkdir(parents=True)  # installed
    cache = cache_root / requirements_key(source, "requirements.yml")

    env = install_requirements(tmp_path, "requirements.yml", cache_root, 10)
    assert env == {  # no ansible.cfg: Ansible's own defaults follow the cache
        "ANSIBLE_ROLES_PATH": f"{cache}/roles:~/.ansible/roles:/usr/share/ansible/roles:"
                              "/etc/ansible/roles",
        "ANSIBLE_COLLECTIONS_PATH": f"{cache}/collections:~/.ansible/collections:"
                                    "/usr/share/ansible/collections"}

    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nroles_path = ./roles:shared/roles\ncollections_path = ./collections\n")
    env = install_requirements(tmp_path, "requirements.yml", cache_root, 10)
    assert env == {
        "ANSIBLE_ROLES_PATH": f"{cache}/roles:{tmp_path}/roles:{tmp_path}/shared/roles",
        "ANSIBLE_COLLECTIONS_PATH": f"{cache}/collections:{tmp_path}/collections"}
