"""`check --json` prints a JSON object on errors too (issue 22, item 7): in process, no host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.errors import ConfigError, RepoError
from agent.operate.output import cycle_json
from tests.conftest import GitRemote


def check_json(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, dict, str]:
    code = main(["--config", str(config), "check", "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_a_repo_error_is_a_json_object_on_stdout_as_well_as_the_line_on_stderr(
        remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    remote.commit({"site.yml": "- hosts: all\n", "ansible.cfg": "[defaults]\nlog_path = /x\n"})
    config = tmp_path / "agent.yml"
    config.write_text(yaml.safe_dump({"repo": {"url": remote.url}, "limit": "web1",
                                      "state_dir": str(tmp_path / "state")}))

    code, data, err = check_json(capsys, config)

    assert code == 1
    assert data["error"].startswith("ansible.cfg: [defaults] log_path: not allowed")
    assert err.strip() == f"petkeeper: error: {data['error']}"
    assert data["hosts"] == {} and data["run_id"] and data["source_sha"] is None


def test_a_config_error_is_a_json_object_naming_every_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "agent.yml"
    config.write_text("repo: {url: ''}\nforks_please: 3\n")

    code, data, err = check_json(capsys, config)

    assert code == 1 and data["hosts"] == {} and data["run_id"] is None
    assert data["error"] == "; ".join(line.removeprefix("petkeeper: error: ")
                                      for line in err.strip().splitlines())
    assert "repo.url: is empty" in data["error"] and "forks_please: unknown key" in data["error"]


def test_a_cycle_that_ended_early_keeps_the_hosts_it_had_checked():
    checked = {"run_id": "r", "source_sha": "a" * 40, "hosts": {"web1": {"status": "clean"}}}
    assert cycle_json(checked, RepoError("petkeeper/policy.yml: bad")) == {
        **checked, "error": "petkeeper/policy.yml: bad"}
    assert cycle_json(checked)["error"] is None
    assert cycle_json(None, ConfigError(["a: x", "b: y"]))["error"] == "a: x; b: y"
