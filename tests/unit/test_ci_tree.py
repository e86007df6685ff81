"""check --tree and preview on bad input: one clear line, exit 1, nothing written; and the
source id of a checkout (agent.cycle.checkout)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import Config, RepoConfig
from agent.cycle.checkout import checkout_source, hash_files, tree_config
from tests.signing import SshKeys, ssh_keys  # noqa: F401 (a fixture)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> Iterator[Run]:
    """`petkeeper ARGV...` in this process, with a temporary folder of its own (to see that
    no temporary state directory is left behind)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("PETKEEPER_CONFIG", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        assert not list(temp.iterdir()), "a temporary state directory was left behind"
        return code, out.out, out.err

    yield run


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=T", "-c",
                           "user.email=t@test.invalid", *args], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A Git checkout with a playbook and an inventory, committed."""
    folder = tmp_path / "checkout"
    (folder / "inventory").mkdir(parents=True)
    (folder / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (folder / "inventory/hosts.yml").write_text(yaml.safe_dump(
        {"all": {"hosts": {"web1": {"ansible_host": "127.0.0.1"}}}}))
    git(folder, "init", "--quiet", "--initial-branch=main")
    git(folder, "add", "--all")
    git(folder, "commit", "--quiet", "-m", "pets")
    return folder


def snapshot(folder: Path) -> tuple[str, str]:
    return hash_files(folder), git(folder, "status", "--porcelain")


def test_tree_that_does_not_exist_is_one_line_exit_1(cli: Run, tmp_path: Path):
    code, out, err = cli("check", "--tree", str(tmp_path / "nope"))

    assert code == 1 and out == ""
    assert err.splitlines() == [f"petkeeper: error: command line: --tree: "
                                f"'{tmp_path / 'nope'}': no such folder; give the folder of the "
                                "checkout holding the playbooks (e.g. --tree .)"]


@pytest.mark.parametrize("where", [["-i", "../outside.yml"], ["../outside.yml"]])
def test_a_path_outside_the_tree_is_refused_and_nothing_written(cli: Run, checkout: Path,
                                                                where: list[str]):
    (checkout.parent / "outside.yml").write_text("all: {}\n")
    before = snapshot(checkout)

    code, _, err = cli("check", "--tree", str(checkout), *where)

    assert code == 1 and len(err.splitlines()) == 1
    assert "resolves outside the repository" in err or "not found in the repository" in err
    assert snapshot(checkout) == before


def test_a_dirty_tree_with_verify_on_is_refused(cli: Run, checkout: Path, tmp_path: Path):
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    config = tmp_path / "agent.yml"
    config.write_text(yaml.safe_dump({"repo": {"url": "file:///nowhere.git", "verify": "head",
                                               "allowed_signers": str(signers)},
                                      "inventory": "inventory/hosts.yml"}))
    (checkout / "site.yml").write_text("- hosts: all\n  tasks: [{debug: {msg: edited}}]\n")
    before = snapshot(checkout)

    code, _, err = cli("--config", str(config), "check", "--tree", str(checkout))

    assert code == 1 and len(err.splitlines()) == 1
    assert "1 file(s) differ from commit" in err and "repo.verify is 'head'" in err
    assert snapshot(checkout) == before


def test_a_clean_unsigned_tree_with_verify_on_is_refused(checkout: Path, tmp_path: Path):
    config = Config(repo=RepoConfig(url="", verify="head",
                                    allowed_signers=str(tmp_path / "none")))
    with pytest.raises(Exception, match="is not trusted: unsigned"):
        checkout_source(config, checkout)


def test_a_base_that_does_not_exist_is_one_line_exit_1(cli: Run, checkout: Path):
    before = snapshot(checkout)

    code, out, err = cli("preview", "--tree", str(checkout), "--base", "origin/nope",
                         "--reports-url", "file:///nowhere.git")

    assert code == 1 and out == ""
    assert err.splitlines() == [f"petkeeper: error: command line: --base origin/nope: no such "
                                f"commit in the checkout {checkout}; fetch it first (git fetch "
                                "origin main; actions/checkout: fetch-depth: 0) or give the "
                                "base commit's id"]
    assert snapshot(checkout) == before


def test_github_outside_github_actions_is_refused(cli: Run, checkout: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    code, _, err = cli("preview", "--tree", str(checkout), "--base", "HEAD", "--github")
    assert code == 1 and "--github: not in GitHub Actions" in err


def test_source_id_is_the_commit_dirty_said_or_a_hash_of_the_files(checkout: Path,
                                                                    tmp_path: Path):
    config = Config(repo=RepoConfig(url=""))
    head = git(checkout, "rev-parse", "HEAD").strip()
    assert checkout_source(config, checkout).sha == head
    (checkout / "new.yml").write_text("x: 1\n")
    assert checkout_source(config, checkout).sha == f"{head}-dirty"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "site.yml").write_text("- hosts: all\n")
    first = checkout_source(config, plain).sha
    (plain / "site.yml").write_text("- hosts: web\n")
    assert first.startswith("tree:") and len(first) == 5 + 64
    assert checkout_source(config, plain).sha != first


def test_without_agent_yml_an_inventory_means_all_its_hosts(tmp_path: Path):
    config = tree_config(None, tmp_path, "inventory/hosts.yml", None)
    assert (config.limit, config.inventory, config.repo.url) == ("all", "inventory/hosts.yml", "")


def test_with_verify_on_a_head_signed_by_an_allowed_key_is_checked_as_it_is(
        checkout: Path, ssh_keys: SshKeys):  # noqa: F811 (the fixture)
    config = Config(repo=RepoConfig(url="", verify="head",
                                    allowed_signers=str(ssh_keys.allowed)))
    for key, trusted in ((ssh_keys.alice, True), (ssh_keys.mallory, False)):
        git(checkout, *ssh_keys.signing(key), "commit", "--quiet", "--allow-empty", "-S", "-m",
            f"signed by {key.name}")
        head = git(checkout, "rev-parse", "HEAD").strip()
        if trusted:
            assert checkout_source(config, checkout).sha == head
        else:
            with pytest.raises(Exception, match=f"commit {head[:12]} is not trusted: signed by "
                                                "a key not in"):
                checkout_source(config, checkout)
