"""adapters/runner.run_playbook when ansible-runner itself fails mid-run: Ansible is stopped, and a
full disk is one clear, transient error. ansible-runner is replaced; no Ansible runs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ansible_runner
import pytest

from agent.adapters.runner import PlaybookRun, run_playbook
from agent.adapters.state import mount_point
from agent.errors import TransientError

Started = list[subprocess.Popen[bytes]]


@pytest.fixture
def ansible_child(monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[Started, list[BaseException]]]:
    """Make ansible_runner.run start a child that looks like ansible-playbook, then raise the
    error the test appends to the second list."""
    started: Started = []
    failure: list[BaseException] = []

    def fake_run(**kwargs: object) -> None:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                         "ansible-playbook"]))
        raise failure[0]

    monkeypatch.setattr(ansible_runner, "run", fake_run)
    yield started, failure
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def a_run(tmp_path: Path) -> PlaybookRun:
    return PlaybookRun(tree=tmp_path, playbook="site.yml", inventory=tmp_path / "hosts.yml",
                       limit="web1", check=True, ident="r1-check-0")


def test_full_disk_in_ansible_runner_stops_ansible_and_names_the_folder_to_free(
        tmp_path: Path, ansible_child):
    started, failure = ansible_child
    failure.append(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    work = tmp_path / "runner"

    with pytest.raises(TransientError) as e:
        run_playbook(a_run(tmp_path), work)

    where = mount_point(work)
    assert str(e.value) == (f"{work}: cannot write ansible-runner's files: no space left on "
                            f"device; free space on {where} (df -h {where}), then run again")
    assert started[0].poll() is not None  # stopped, not left running


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"),
                                   KeyboardInterrupt()], ids=["EIO", "interrupt"])
def test_other_failures_of_ansible_runner_pass_unchanged_and_stop_ansible_too(
        tmp_path: Path, ansible_child, error: BaseException):
    started, failure = ansible_child
    failure.append(error)

    with pytest.raises(type(error)) as e:
        run_playbook(a_run(tmp_path), tmp_path / "runner")

    assert e.value is error
    assert started[0].poll() is not None
