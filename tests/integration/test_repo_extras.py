"""What a GitOps repo may bring besides playbooks: testinfra tests run after an apply, and
Galaxy requirements installed from local sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    GitRemote,
    pet_hosts,
    petkeeper,
    pets_repo_files,
    write_agent_config,
)

pytestmark = pytest.mark.hosts

PET_TESTS = '''\
def test_motd_is_the_managed_one(host):
    assert "edited by hand" not in host.file("/etc/motd").content_string


def test_pet_conf_is_steady(host):
    assert host.file("/etc/pet.conf").contains("mode=steady")
'''
NOBODYS_FILE = '''

def test_a_file_nobody_manages(host):
    assert host.file("/etc/not-there").exists
'''


@pytest.fixture
def pets(host_pool, remote: GitRemote, tmp_path: Path) -> Path:
    """beta's repo, and beta drifted by hand. No converge first: each test's first cycle
    checks (or applies) whatever drift the shared host has, the hand edit among it."""
    remote.commit(pets_repo_files(pet_hosts(host_pool, "beta")))
    host_pool.run("beta", "echo 'edited by hand' >> /etc/motd")
    return write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool,
                              limit="beta")


def run_json(config: Path, command: str = "run") -> tuple[int, dict]:
    r = petkeeper("--config", str(config), command, "--json")
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_repo_tests_run_after_an_apply_and_their_result_is_recorded(pets, remote, host_pool):
    """One apply, whose repo tests pass on what it manages and fail on a file nobody manages:
    both outcomes on the real host in one run (an apply costs five Ansible runs). That all
    passing tests make a passed result, its record line and exit 0 is pure Python:
    tests/unit/test_verify.py, test_apply_records.py and test_cycle_exit.py."""
    remote.commit({"petkeeper/policy.yml": "default: auto\n",
                   "tests/test_pet.py": PET_TESTS + NOBODYS_FILE})
    code, ran = run_json(pets)

    [applied] = ran["applies"]
    assert applied["result"] == "converged" and applied["after_status"] == "clean"
    assert "edited by hand" not in host_pool.run("beta", "cat /etc/motd").stdout
    tests = applied["tests"]
    assert (tests["tests"], tests["failures"], tests["errors"]) == (3, 1, 0), tests
    assert not tests["passed"]
    assert tests["failed"] == ["tests.test_pet::test_a_file_nobody_manages[ansible://beta]"]
    assert code == 1  # a correction that broke a test is visible at once
    record = yaml.safe_load(remote.show("petkeeper/hosts/beta", "applies/beta.yml"))
    assert record["tests"] == tests
    assert "Post-apply tests: FAILED (3 run, 1 failed)" in remote.log("beta", "%B%x00")[1]


def build_sources(tmp: Path) -> dict[str, str]:
    """A role as a tarball, a role in a Git repo, and a collection tarball, all local."""
    role = tmp / "src" / "galaxy_motd"
    (role / "tasks").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "tasks" / "main.yml").write_text(
        "- name: Write the Galaxy role's file\n  ansible.builtin.copy:\n"
        "    content: \"from galaxy\\n\"\n    dest: /etc/from-galaxy\n    mode: \"0644\"\n")
    (role / "meta" / "main.yml").write_text(
        "galaxy_info: {author: t, description: t, license: MIT, min_ansible_version: '2.15', "
        "platforms: []}\ndependencies: []\n")
    subprocess.run(["tar", "-czf", str(tmp / "galaxy_motd.tar.gz"), "-C", str(tmp / "src"),
                    "galaxy_motd"], check=True)
    git_role = GitRemote(tmp / "gitrole")
    git_role.commit({"tasks/main.yml": "- name: Note the Git role\n  ansible.builtin.copy:\n"
                                       "    content: \"from git\\n\"\n    dest: /etc/from-git\n"
                                       "    mode: \"0644\"\n",
                     "meta/main.yml": (role / "meta" / "main.yml").read_text()})
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "ansible-galaxy", "collection", "init", "acme.pets",
                    "--init-path", str(tmp / "coll")], check=True, capture_output=True)
    subprocess.run([bin_dir / "ansible-galaxy", "collection", "build",
                    str(tmp / "coll" / "acme" / "pets"), "--output-path", str(tmp)],
                   check=True, capture_output=True)
    return {"tarball": f"file://{tmp}/galaxy_motd.tar.gz", "git": f"git+{git_role.url}",
            "collection": str(tmp / "acme-pets-1.0.0.tar.gz")}


def requirements(sources: dict[str, str]) -> str:
    return yaml.safe_dump({
        "roles": [{"name": "galaxy_motd", "src": sources["tarball"]},
                  {"name": "git_role", "src": sources["git"], "version": "main"}],
        "collections": [{"name": sources["collection"], "type": "file"}]})


def test_galaxy_requirements_are_installed_once_per_content_and_used(pets, remote, tmp_path):
    sources = build_sources(tmp_path / "sources")
    remote.commit({"requirements.yml": requirements(sources),
                   "site.yml": pets_repo_files({})["site.yml"].replace(
                       "    - role: motd\n", "    - role: galaxy_motd\n    - role: git_role\n"
                                               "    - role: motd\n")})
    code, checked = run_json(pets, "check")
    assert code == 2

    tasks = [c["task"] for c in checked["hosts"]["beta"]["changes"]]
    assert tasks[:2] == ["Write the Galaxy role's file", "Note the Git role"]
    caches = list((tmp_path / "state" / "galaxy").iterdir())
    assert len(caches) == 1
    assert (caches[0] / "collections" / "ansible_collections" / "acme" / "pets").is_dir()
    inode = caches[0].stat().st_ino

    remote.commit({"README.md": "unrelated\n"})
    run_json(pets, "check")
    [again] = list((tmp_path / "state" / "galaxy").iterdir())
    assert again.stat().st_ino == inode  # the same requirements are not installed twice


def test_a_failed_galaxy_install_refuses_the_commit_and_the_last_good_one_is_checked(
        pets, remote, tmp_path):
    _, first = run_json(pets, "check")
    bad = remote.commit({"requirements.yml": yaml.safe_dump(
        {"roles": [{"name": "gone", "src": f"file://{tmp_path}/missing.tar.gz"}]})})
    r = petkeeper("--config", str(pets), "check")

    # One clear error line, and the refusal is visible (issue 22, item 6).
    assert r.returncode == 1 and "Traceback" not in r.stderr
    why = (f"source commit {bad[:12]} refused: requirements.yml: ansible-galaxy could not "
           "install its roles")
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("petkeeper: error:")]
    assert line.startswith(f"petkeeper: error: {why}"), r.stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["hosts"]["beta"]["source_sha"] == first["source_sha"]
    assert status["hosts"]["beta"]["source_rejected"].startswith(why)
    assert [p for p in (tmp_path / "state" / "galaxy").iterdir()
            if not p.name.startswith(".")] == []
    # One more report: the last good commit's, which now says the head was refused.
    assert len(remote.log()) == 2
    report = yaml.safe_load(remote.show("petkeeper/hosts/beta", "hosts/beta.yml"))
    assert report["source_sha"] == first["source_sha"]
    assert report["source_refused"].startswith(why)


def collection_tarball(tmp: Path, text: str) -> bytes:
    """acme.pets 1.0.0, whose role `banner` writes TEXT to /etc/from-collection: each build
    has the same file name, as a vendored tarball rebuilt in place has."""
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "ansible-galaxy", "collection", "init", "acme.pets", "--force",
                    "--init-path", str(tmp / "coll")], check=True, capture_output=True)
    tasks = tmp / "coll" / "acme" / "pets" / "roles" / "banner" / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "main.yml").write_text(
        "- name: Write the vendored collection's banner\n  ansible.builtin.copy:\n"
        f"    content: \"{text}\\n\"\n    dest: /etc/from-collection\n    mode: \"0644\"\n")
    subprocess.run([bin_dir / "ansible-galaxy", "collection", "build", "--force",
                    str(tmp / "coll" / "acme" / "pets"), "--output-path", str(tmp)],
                   check=True, capture_output=True)
    return (tmp / "acme-pets-1.0.0.tar.gz").read_bytes()


def test_vendored_requirements_are_installed_again_when_they_change_and_keep_the_repo_paths(
        host_pool, remote, tmp_path):
    """Issue 22, items 4 and 5: a vendored tarball rebuilt under the same name is installed
    again (it was served from the cache), and the installed requirements come before the
    repo's own collections_path (they replaced it: a playbook in a subfolder could not find
    the repo's collection)."""
    remote.commit({
        **pets_repo_files(pet_hosts(host_pool, "beta")),
        "ansible.cfg": "[defaults]\ncollections_path = ./collections\n",
        "collections/ansible_collections/local/tools/roles/note/tasks/main.yml":
            "- name: Write the repo collection's note\n  ansible.builtin.copy:\n"
            "    content: \"from the repo\\n\"\n    dest: /etc/from-repo\n    mode: \"0644\"\n",
        "vendor/acme-pets-1.0.0.tar.gz": collection_tarball(tmp_path / "v1", "build one"),
        "requirements.yml": yaml.safe_dump({"collections": [
            {"name": "vendor/acme-pets-1.0.0.tar.gz", "type": "file"}]}),
        "plays/content.yml": "- hosts: pets\n  roles:\n    - local.tools.note\n"
                             "    - acme.pets.banner\n"})
    config = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                host_pool, limit="beta", playbooks=["plays/content.yml"])

    code, checked = run_json(config, "check")
    changes = {c["task"]: c["diff"] for c in checked["hosts"]["beta"]["changes"]}
    assert code == 2, checked
    assert list(changes) == ["Write the repo collection's note",
                             "Write the vendored collection's banner"]
    assert "+build one" in changes["Write the vendored collection's banner"]

    remote.commit({"vendor/acme-pets-1.0.0.tar.gz": collection_tarball(tmp_path / "v2",
                                                                       "build two")})
    code, checked = run_json(config, "check")
    changes = {c["task"]: c["diff"] for c in checked["hosts"]["beta"]["changes"]}
    assert "+build two" in changes["Write the vendored collection's banner"], changes
    assert len([p for p in (tmp_path / "state" / "galaxy").iterdir()
                if not p.name.startswith(".")]) == 2
