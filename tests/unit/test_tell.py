"""agent.operate.tell: after a cycle, metrics are counted and events queued, sent, retried with
the same ids, and nothing that goes wrong changes the cycle's result. Real receivers on
loopback; the cycles are records built here (no Git, no Ansible)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.adapters.state import StateDir
from agent.config import Config, MetricsConfig, NotifyConfig, NotifyTarget, RepoConfig
from agent.core.drift import Change, HostReport
from agent.cycle.decide import Plan
from agent.cycle.record import PublishResult
from agent.cycle.source import Source
from agent.cycle.steps import EXIT_DRIFT, Cycle, run_cycle
from agent.errors import RepoError
from agent.operate.tell import tell_after
from tests.receivers import HttpReceiver

SRC = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
SECRET = "PKCANARY-vault-0b7e"


def make_config(tmp: Path, *urls: str, **notify: object) -> Config:
    targets = tuple(NotifyTarget(url=u, key=f"notify.targets[{i}]", format="cloudevents")
                    for i, u in enumerate(urls))
    return Config(repo=RepoConfig(url="file:///srv/git/pets.git"), path="agent.yml",
                  state_dir=tmp / "state", notify=NotifyConfig(targets=targets, **notify),
                  metrics=MetricsConfig(textfile=str(tmp / "petkeeper.prom")))


def drifted_cycle(config: Config, fingerprint: str = "fp1", message: str = "") -> Cycle:
    state = StateDir(config.state_dir)
    state.ensure()
    c = Cycle(config, state, "20261125T203622Z-a1b2c3",
              datetime(2026, 11, 25, 20, 36, 22, tzinfo=UTC), command="check")
    c.source = Source(SRC, Path("/nonexistent"),
                      mask=lambda t: t.replace(SECRET, "<secret:0123456789>"))
    change = Change("Keep pets", "motd", "Write the motd", "copy", f"-{SECRET}\n+new")
    c.hosts = {"web1": HostReport("web1", "drifted", (change,), fingerprint,
                                  message=message or None),
               "web2": HostReport("web2", "clean", (), "fp0")}
    c.plans = {"web1": Plan("web1", f"plan-{fingerprint}", SRC, fingerprint, "drifted", "wait",
                            "awaiting approval", mode="approve"),
               "web2": Plan("web2", "plan-web2", SRC, "fp0", "clean", "nothing", "clean")}
    c.publish = PublishResult((("web1", "hosts/web1.yml"),), 0, True, None,
                              (("web1", "c0ffee" * 6 + "abcd"),), push="pushed")
    return c


def metrics_of(path: Path) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples}


def test_a_drift_is_sent_once_and_a_receiver_down_gets_every_event_later_with_the_same_ids(
        receiver, tmp_path):
    config = make_config(tmp_path, receiver.url("/hook"))
    tell_after(drifted_cycle(config), None)
    tell_after(drifted_cycle(config), None)  # the same drift: nothing new
    first = [r.event() for r in receiver.accepted()]
    assert [(e.get_type(), e.get_subject()) for e in first] == [
        ("org.petkeeper.drift.detected", "web1"), ("org.petkeeper.approval.pending", "web1")]
    assert first[0].get_data()["report_commit"] == "c0ffee" * 6 + "abcd"

    receiver.status = 503  # down for two cycles, with a new drift in each
    tell_after(drifted_cycle(config, "fp2"), None)
    tell_after(drifted_cycle(config, "fp3"), None)
    refused = [r.json()["id"] for r in receiver.received if r.answered == 503]
    outbox = json.loads((tmp_path / "state/notify.json").read_text())["outbox"]
    [queue] = outbox.values()
    assert len(queue) == 4 and refused == [queue[0]["id"]] * 2  # in order, the first retried

    receiver.status = 202
    tell_after(drifted_cycle(config, "fp3"), None)  # no new event: the queue is sent
    later = [r.json()["id"] for r in receiver.accepted()][2:]
    assert later == [e["id"] for e in queue]
    assert json.loads((tmp_path / "state/notify.json").read_text())["outbox"] == {}
    m = metrics_of(tmp_path / "petkeeper.prom")
    assert m[("petkeeper_notifications_sent_total", ())] == 6.0
    assert m[("petkeeper_notifications_failed_total", ())] == 2.0
    assert m[("petkeeper_notifications_queued", ())] == 0.0


def test_the_outbox_overflow_drops_the_oldest_counted_in_the_metrics(receiver, tmp_path,
                                                                      caplog):
    config = make_config(tmp_path, receiver.url("/hook"), outbox_max=3)
    receiver.status = 503
    for fp in ("fp1", "fp2", "fp3"):
        tell_after(drifted_cycle(config, fp), None)
    m = metrics_of(tmp_path / "petkeeper.prom")
    assert m[("petkeeper_notifications_dropped_total", ())] == 3.0
    assert m[("petkeeper_notifications_queued", ())] == 3.0
    assert "outbox full (notify.outbox_max 3): dropped the 1 oldest" in caplog.text


def test_nothing_secret_reaches_the_receiver_the_log_or_the_state(receiver, tmp_path, caplog):
    token = "PKCANARY-hook-token-3f9a"
    config = make_config(tmp_path, receiver.url(f"/hook/{token}"))
    tell_after(drifted_cycle(config, message=f"failed with {SECRET}"), None)
    receiver.status = 500
    tell_after(drifted_cycle(config, "fp2", message=f"failed with {SECRET}"), None)
    bodies = b"".join(r.body for r in receiver.received)
    assert b"<secret:0123456789>" in bodies and SECRET.encode() not in bodies
    assert token not in caplog.text and SECRET not in caplog.text
    assert "notify.targets[0] (http): HTTP 500 Internal Server Error" in caplog.text
    for path in (tmp_path / "state").rglob("*"):
        assert token.encode() not in path.read_bytes(), path
    assert token not in (tmp_path / "petkeeper.prom").read_text()


def test_a_failed_cycle_is_counted_and_a_stall_told_and_the_error_stands(receiver, tmp_path):
    config = make_config(tmp_path, receiver.url("/hook"))

    def bad_policy(c: Cycle) -> None:
        raise RepoError("petkeeper/policy.yml: not valid YAML; fix the policy file")

    with pytest.raises(RepoError):
        run_cycle(config, (bad_policy,), "run", finish=tell_after)
    [stall] = [r.event() for r in receiver.accepted()]
    assert stall.get_type() == "org.petkeeper.agent.stalled" and stall.get_subject() is None
    assert "policy.yml" in stall.get_data()["message"]
    m = metrics_of(tmp_path / "petkeeper.prom")
    assert m[("petkeeper_cycles_total", (("command", "run"), ("result", "error")))] == 1.0


def test_a_hanging_target_or_a_broken_outbox_never_changes_the_cycle(tmp_path, caplog):
    hung = HttpReceiver()
    hung.hang = True
    try:
        config = make_config(tmp_path, hung.url("/hook"), timeout=1.0)
        cycle = drifted_cycle(config)
        tell_after(cycle, None)
        assert cycle.exit_code == EXIT_DRIFT
        assert "no answer within notify.timeout (1s); 2 event(s) stay queued" in caplog.text
        (tmp_path / "state/notify.json").write_text("{not json")
        tell_after(drifted_cycle(config), None)  # logged, never raised
        assert "notify.json: unreadable" in caplog.text
    finally:
        hung.close()


def test_metrics_match_the_cycle_and_counters_add_up_across_cycles(tmp_path):
    config = make_config(tmp_path)
    for _ in range(2):
        tell_after(drifted_cycle(config), None)
    m = metrics_of(tmp_path / "petkeeper.prom")
    assert m[("petkeeper_host_status", (("host", "web1"), ("status", "drifted")))] == 1.0
    assert m[("petkeeper_host_status", (("host", "web1"), ("status", "clean")))] == 0.0
    assert m[("petkeeper_host_status", (("host", "web2"), ("status", "clean")))] == 1.0
    assert m[("petkeeper_host_changes", (("host", "web1"),))] == 1.0
    assert m[("petkeeper_cycles_total", (("command", "check"), ("result", "drift")))] == 2.0
    assert m[("petkeeper_pending_approvals", ())] == 1.0
    assert m[("petkeeper_source_info", (("sha", SRC),))] == 1.0
    assert ("petkeeper_notifications_sent_total", ()) in m
    assert not (tmp_path / "state/notify.json").exists()  # no targets: nothing to remember
