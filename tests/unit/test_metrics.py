"""agent.operate.metrics: counters kept in the state directory, the exposition rendered from it,
checked by prometheus-client's own parser and by Prometheus's promtool; the example rules."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.adapters.state import StateDir
from agent.config import Config, MetricsConfig, RepoConfig
from agent.core.drift import STATUSES
from agent.errors import AgentError
from agent.operate.metrics import (
    CycleCount,
    count_cycle,
    count_notifications,
    read_metrics,
    render_metrics,
    write_metrics,
    write_textfile,
)

RULES = Path(__file__).resolve().parents[2] / "examples" / "prometheus"
WHEN = datetime(2026, 11, 25, 20, 36, 22, tzinfo=UTC)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: bash .ci/setup installs Debian's prometheus package")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, timeout=60)


def count(command: str = "check", result: str = "drift", when: datetime = WHEN,
          **hosts: tuple[str, int]) -> CycleCount:
    return CycleCount(command, result, when, 12.5, "a" * 40,
                      {h: {"status": s, "changes": n, "pending": s == "drifted"}
                       for h, (s, n) in hosts.items()},
                      applies=("converged",), reports_queued=2)


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    return s


def test_counters_add_up_and_gauges_follow_the_last_cycle(state):
    data = count_cycle({}, count(web1=("drifted", 3), web2=("clean", 0)))
    data = count_cycle(data, count("run", "clean", web1=("clean", 0)))
    data = count_notifications(count_notifications(data, 2, 1, 0, 1), 1, 0, 4, 0)
    write_metrics(state, data)
    m = samples(render_metrics(state))
    assert m[("petkeeper_cycles_total", (("command", "check"), ("result", "drift")))] == 1
    assert m[("petkeeper_cycles_total", (("command", "run"), ("result", "clean")))] == 1
    assert m[("petkeeper_applies_total", (("result", "converged"),))] == 2
    assert m[("petkeeper_host_status", (("host", "web1"), ("status", "clean")))] == 1
    assert m[("petkeeper_host_changes", (("host", "web1"),))] == 0
    assert m[("petkeeper_host_status", (("host", "web2"), ("status", "clean")))] == 1
    assert sum(v for (n, labels), v in m.items()
               if n == "petkeeper_host_status" and ("host", "web1") in labels) == 1
    assert {s for (n, labels), _ in m.items() if n == "petkeeper_host_status"
            for k, s in labels if k == "status"} == set(STATUSES)
    assert m[("petkeeper_host_last_check_timestamp_seconds", (("host", "web1"),))] == \
        WHEN.timestamp()
    assert m[("petkeeper_pending_approvals", ())] == 0
    assert m[("petkeeper_reports_queued", ())] == 2
    assert m[("petkeeper_cycle_duration_seconds", ())] == 12.5
    assert m[("petkeeper_notifications_sent_total", ())] == 3
    assert m[("petkeeper_notifications_dropped_total", ())] == 4
    assert m[("petkeeper_paused", ())] == 0
    assert m[("petkeeper_source_info", (("sha", "a" * 40),))] == 1
    [build] = [labels for (n, labels) in m if n == "petkeeper_build_info"]
    assert dict(build)["version"] and dict(build)["ansible_core"].count(".") >= 2


def test_the_pause_shows_at_once_and_a_host_gone_for_a_week_leaves(state):
    data = count_cycle({}, count(web1=("drifted", 1), old=("clean", 0)))
    data = count_cycle(data, count(when=WHEN + timedelta(days=8), web1=("drifted", 1)))
    write_metrics(state, data)
    state.pause_file.write_text("{}")
    m = samples(render_metrics(state))
    assert m[("petkeeper_paused", ())] == 1
    assert not any(("host", "old") in labels for _, labels in m)


def test_an_unreadable_metrics_file_renders_an_empty_exposition_with_a_warning(state, caplog):
    (state.root / "metrics.json").write_text("{broken")
    m = samples(render_metrics(state))
    assert m[("petkeeper_paused", ())] == 0 and "metrics.json: unreadable" in caplog.text
    (state.root / "metrics.json").write_text('{"schema": 99}')
    assert read_metrics(state) == {"schema": 1}


def test_promtool_accepts_the_exposition(state):
    write_metrics(state, count_notifications(count_cycle({}, count(
        web1=("drifted", 3), web2=("unreachable", 0))), 1, 0, 0, 0))
    checked = promtool("check", "metrics", stdin=render_metrics(state))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == b""  # not even a lint warning


def test_the_example_alert_rules_pass_promtool_check_and_their_own_tests():
    checked = promtool("check", "rules", str(RULES / "petkeeper.rules.yml"))
    assert checked.returncode == 0 and b"SUCCESS: 6 rules found" in checked.stdout, \
        checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULES / "petkeeper.rules.test.yml"))
    assert tested.returncode == 0 and b"SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_textfile_is_written_readable_by_node_exporter_whatever_the_umask(state, tmp_path):
    write_metrics(state, count_cycle({}, count(web1=("clean", 0))))
    path = tmp_path / "node-exporter" / "petkeeper.prom"
    config = Config(repo=RepoConfig(url="file:///x"), path="agent.yml",
                    metrics=MetricsConfig(textfile=str(path)))
    with pytest.raises(AgentError, match=r"agent\.yml: metrics\.textfile: cannot write .*"
                                         r"create its folder"):
        write_textfile(config, state)
    path.parent.mkdir()
    old = os.umask(0o077)
    try:
        write_textfile(config, state)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert samples(path.read_bytes())[("petkeeper_host_changes", (("host", "web1"),))] == 0
    assert [p.name for p in path.parent.iterdir()] == ["petkeeper.prom"]  # no temp file left
