"""agent.operate.notifications: outbox, digests, URL masks, and delivery to real receivers on
loopback (an HTTP server, an SMTP server) within the deadline."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import EVENTS, Config, NotifyConfig, NotifyTarget, RepoConfig
from agent.errors import AgentError, ConfigError
from agent.operate.notifications import (
    build_digest,
    check_targets,
    deliver,
    queue_events,
    send_test,
    target_id,
    url_masker,
)
from tests.receivers import HttpReceiver, SmtpReceiver

TOKEN = "PKCANARY-hook-token-5d1c"
SMTP_PASSWORD = "PKCANARY-smtp-pass-81aa"


def event(n: int, kind: str = "drift.detected", subject: str | None = "web1",
          **data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"id-{n}", "source": "petkeeper://agent1",
            "type": f"org.petkeeper.{kind}", "time": "2026-11-25T20:36:22Z",
            **({"subject": subject} if subject else {}),
            "datacontenttype": "application/json",
            "data": {"status": "drifted", "source_sha": "a" * 40, "changes": [], **data}}


def hook(receiver: HttpReceiver, key: str = "notify.targets[0]", **kw: Any) -> NotifyTarget:
    return NotifyTarget(url=receiver.url(f"/hook/{TOKEN}?token={TOKEN}"), key=key,
                        format="cloudevents", **kw)


def test_the_outbox_keeps_what_each_target_wants_and_drops_the_oldest_when_full(caplog):
    a = NotifyTarget(url="json://h/a", key="notify.targets[0]", events=("drift.detected",))
    b = NotifyTarget(url="json://h/b", key="notify.targets[1]", events=("apply.failed",))
    outbox: dict[str, list] = {"gone": [event(0)]}
    events = [event(i) for i in range(1, 5)] + [event(5, "apply.failed")]
    dropped = queue_events(outbox, {"a": a, "b": b}, events, limit=3)
    assert dropped == {"a": 1}
    assert [e["id"] for e in outbox["a"]] == ["id-2", "id-3", "id-4"]
    assert [e["id"] for e in outbox["b"]] == ["id-5"] and "gone" not in outbox
    assert "notify.targets[0] (json): outbox full (notify.outbox_max 3): dropped the 1 " \
        "oldest" in caplog.text
    assert "json://h" not in caplog.text


def test_a_target_is_named_in_the_outbox_by_a_keyed_hash_never_its_url():
    tid = target_id(b"k" * 32, f"https://hooks.test/{TOKEN}")
    assert tid == target_id(b"k" * 32, f"https://hooks.test/{TOKEN}") and TOKEN not in tid
    assert tid != target_id(b"j" * 32, f"https://hooks.test/{TOKEN}")


def test_the_url_mask_hides_tokens_in_paths_queries_passwords_and_service_hosts():
    targets = [NotifyTarget(url=f"https://hooks.test/services/{TOKEN}?key=PKCANARY-q-77"),
               NotifyTarget(url=f"mailto://ops:{SMTP_PASSWORD}@mail.test?to=a@b.test"),
               NotifyTarget(url="tgram://PKCANARY-bot-123/chat")]
    mask = url_masker(targets, b"k" * 32)
    text = mask(f"failed: /services/{TOKEN}?key=PKCANARY-q-77 login {SMTP_PASSWORD} "
                f"bot PKCANARY-bot-123 at hooks.test; token {TOKEN} refused, key "
                "PKCANARY-q-77 too")
    assert "PKCANARY" not in text and "hooks.test" in text


def test_a_target_config_is_never_shown_with_its_url():
    target = NotifyTarget(url=f"https://hooks.test/{TOKEN}", key="notify.targets[2]")
    assert TOKEN not in repr(target) and target.label == "notify.targets[2] (https)"


def test_delivery_posts_each_event_as_cloudevents_and_keeps_what_was_refused(receiver):
    target = hook(receiver)
    first = deliver({"t": target}, {"t": [event(1), event(2)]}, 10, str)["t"]
    assert first.ok and first.sent == ["id-1", "id-2"] and first.answer == "HTTP 202 Accepted"
    parsed = [r.event() for r in receiver.accepted()]
    assert [(e.get_id(), e.get_type(), e.get_subject()) for e in parsed] == [
        ("id-1", "org.petkeeper.drift.detected", "web1"),
        ("id-2", "org.petkeeper.drift.detected", "web1")]
    assert receiver.received[0].headers["content-type"].startswith(
        "application/cloudevents+json")
    receiver.status = 503
    refused = deliver({"t": target}, {"t": [event(3), event(4)]}, 10, str)["t"]
    assert not refused.ok and refused.sent == [] and refused.answer == \
        "HTTP 503 Service Unavailable"
    assert len(receiver.received) == 3  # it stopped at the first refusal: order is kept


def test_a_hanging_target_costs_the_timeout_and_does_not_hold_back_the_others(receiver):
    hung = HttpReceiver()
    hung.hang = True
    try:
        targets = {"hung": hook(hung, "notify.targets[0]"),
                   "ok": hook(receiver, "notify.targets[1]")}
        started = time.monotonic()
        result = deliver(targets, {"hung": [event(1)], "ok": [event(2)]}, 2.0, str)
        took = time.monotonic() - started
        print(f"delivery with a hanging target took {took:.2f}s (timeout 2s)")
        assert took < 2.0 + 1.5
        assert not result["hung"].ok and result["hung"].sent == []
        assert result["hung"].answer == "no answer within notify.timeout (2s)"
        assert result["ok"].ok and result["ok"].sent == ["id-2"]
    finally:
        hung.close()


def test_a_digest_reaches_a_real_smtp_server_through_apprise_in_one_message():
    smtp = SmtpReceiver("pet", SMTP_PASSWORD)
    url = f"mailto://pet:{SMTP_PASSWORD}@127.0.0.1:{smtp.port}?from=petkeeper@test.invalid" \
          "&to=ops@test.invalid"
    target = NotifyTarget(url=url, key="notify.targets[0]")
    try:
        queue = [event(1, subject="web1"), event(2, subject="web2"),
                 event(3, "apply.failed", "db1", message="<script>x</script>\x1b[2J")]
        result = deliver({"m": target}, {"m": queue}, 15, url_masker([target], b"k" * 32))["m"]
        assert result.ok and result.sent == ["id-1", "id-2", "id-3"], result.answer
        [mail] = smtp.messages
        assert mail["Subject"] == "Petkeeper on agent1: drift detected: 2 hosts, apply " \
                                  "failed: 1 host"
        body = mail.get_content()
        assert "web1: drifted" in body and "web2: drifted" in body and "db1" in body
        assert "\x1b" not in body and "<script>x</script>" in body  # text/plain: inert
        assert mail.get_content_type() == "text/plain"
    finally:
        smtp.close()


def test_a_refused_login_is_a_failure_that_never_shows_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    smtp = SmtpReceiver("pet", "another-password")
    url = f"mailto://pet:{SMTP_PASSWORD}@127.0.0.1:{smtp.port}?from=a@test.invalid" \
          "&to=b@test.invalid"
    target = NotifyTarget(url=url, key="notify.targets[0]")
    try:
        result = deliver({"m": target}, {"m": [event(1)]}, 15, url_masker([target], b"k" * 32))
        assert not result["m"].ok and result["m"].sent == [] and smtp.messages == []
        assert result["m"].answer and SMTP_PASSWORD not in result["m"].answer
        assert SMTP_PASSWORD not in caplog.text
    finally:
        smtp.close()


def test_the_digest_groups_hosts_by_event_and_counts_what_it_does_not_list():
    events = [event(i, subject=f"web{i}") for i in range(60)] + [
        event(99, "agent.stalled", None, message="repo.branch: gone")]
    title, body, kind = build_digest(events)
    assert title == "Petkeeper on agent1: drift detected: 60 hosts, stalled: 1"
    assert "  ... and 10 more" in body and "  repo.branch: gone" in body
    assert kind == "failure"
    assert build_digest([event(1, "apply.succeeded")])[2] == "success"


def test_an_apprise_url_apprise_cannot_read_is_one_line_naming_the_key_without_the_url():
    config = Config(repo=RepoConfig(url="file:///x"), path="agent.yml", notify=NotifyConfig(
        targets=(NotifyTarget(url="mailto://ops@test.invalid", key="notify.targets[0]"),
                 NotifyTarget(url=f"slack://{TOKEN}", key="notify.targets[1]"),
                 NotifyTarget(url=f"slak://{TOKEN}", key="notify.targets[2]"))))
    with pytest.raises(ConfigError) as e:
        check_targets(config)
    assert [p.split(":")[1].strip() for p in e.value.problems] == [
        "notify.targets[1].url", "notify.targets[2].url"]
    assert "scheme slak://" in e.value.problems[1] and TOKEN not in str(e.value)


def test_notify_test_sends_each_target_one_test_event_and_says_what_it_answered(
        receiver, tmp_path: Path):
    down = HttpReceiver(status=500)
    try:
        config = Config(repo=RepoConfig(url="file:///x"), path="agent.yml",
                        state_dir=tmp_path / "state", notify=NotifyConfig(targets=(
                            hook(receiver, "notify.targets[0]", events=()),
                            hook(down, "notify.targets[1]"))))
        ok, lines = send_test(config)
        assert not ok
        assert lines == ["notify.targets[0] (http): sent: HTTP 202 Accepted",
                         "notify.targets[1] (http): FAILED: HTTP 500 Internal Server Error"]
        [test] = receiver.accepted()
        assert test.event().get_type() == "org.petkeeper.test"
    finally:
        down.close()
    with pytest.raises(AgentError, match=r"notify\.targets: none configured"):
        send_test(Config(repo=RepoConfig(url="file:///x"), path="agent.yml"))


def test_every_event_name_of_the_issue_is_known():
    assert set(EVENTS) == {"drift.detected", "drift.resolved", "approval.pending",
                           "apply.succeeded", "apply.failed", "host.unreachable", "host.failed",
                           "source.rejected", "source.rewound", "agent.stalled"}
