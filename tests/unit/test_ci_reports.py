"""The preview reads each host's report of the base commit from a real bare reports remote
(agent.cycle.preview.Reports): the newest of that commit, not the newest of all."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from agent.adapters.gitrepo import Mirror
from agent.config import Config, RepoConfig, ReportsConfig
from agent.core.drift import DRIFTED, Change, HostReport, fingerprint
from agent.cycle.preview import Reports
from agent.cycle.record import RunInfo, publish_reports

BASE, HEAD = "b" * 40, "c" * 40


def report(diff: str) -> HostReport:
    changes = (Change("Pets", None, "motd", "ansible.builtin.copy", diff),)
    return HostReport("web1", DRIFTED, changes, fingerprint(DRIFTED, changes))


def test_the_newest_report_of_the_base_commit_is_found_and_the_newest_of_all(tmp_path: Path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    url = f"file://{remote}"
    agent = Mirror(tmp_path / "agent.git", url, 30)
    config = Config(repo=RepoConfig(url=url), reports=ReportsConfig(heartbeat=1))
    for i, (sha, diff) in enumerate([(BASE, "-a\n+b\n"), (BASE, "-a\n+c\n"),
                                     (HEAD, "-a\n+d\n")]):
        run = RunInfo(f"run{i}", sha, datetime(2026, 12, 1, 10, i, tzinfo=UTC), "pet1")
        publish_reports(agent, config, {"web1": report(diff)}, run)
    agent.close()

    reader = Reports(Mirror(tmp_path / "preview.git", url, 30), config)
    reader.fetch()

    base = reader.report_of_source("web1", BASE)
    assert base is not None and base["changes"][0]["diff"] == "-a\n+c\n"
    assert base["run_id"] == "run1" and len(base["commit"]) == 40
    newest = reader.newest("web1")
    assert newest is not None and newest["source_sha"] == HEAD
    assert reader.report_of_source("web1", "d" * 40) is None
    assert reader.newest("web2") is None
