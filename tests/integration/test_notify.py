"""Notifications and metrics, end to end: a real SSH host drifts, real receivers on loopback (an
HTTP server read with the cloudevents SDK, an SMTP server taking Apprise's mailto:// digest),
the textfile and the daemon's /metrics read with prometheus-client's parser and promtool.

One scenario shares one host (alpha), one repo and one state directory; its cycles are
no-change checks but for the one that changes the drift and the one after an approval.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import main
from tests.conftest import (
    GitRemote,
    git,
    pet_hosts,
    pets_repo_files,
    settle,
    write_agent_config,
)
from tests.receivers import HttpReceiver, Received, SmtpReceiver, free_port, wait_until

pytestmark = pytest.mark.hosts

TOKEN = "PKCANARY-webhook-token-6e2b"
SMTP_PASSWORD = "PKCANARY-smtp-password-90d4"
TIMEOUT = 3  # notify.timeout of the scenario, in seconds
MOTD = "/etc/motd"
FAST = {"fetch_interval": "1s", "check_interval": "1h", "splay": 0}


@dataclass
class Scene:
    remote: GitRemote
    state: Path
    config: Path
    textfile: Path
    hook: HttpReceiver
    smtp: SmtpReceiver
    settings: dict[str, Any]
    texts: list[str]  # every stdout, stderr and daemon log of the scenario

    def write_config(self, *extra_targets: dict[str, Any], **extra: Any) -> Path:
        settings = json.loads(json.dumps(self.settings))
        settings["notify"]["targets"] += list(extra_targets)
        settings.update(extra)
        self.config.write_text(yaml.safe_dump(settings, sort_keys=False))
        return self.config

    def petkeeper(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "agent", "-vv", "--config", str(self.config),
                            *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        self.texts += [r.stdout, r.stderr]
        return r

    def check(self) -> tuple[int, dict[str, Any]]:
        r = self.petkeeper("check", "--json")
        assert r.stdout.strip(), r.stderr
        return r.returncode, json.loads(r.stdout)

    def events(self) -> list[Received]:
        return self.hook.accepted()


@pytest.fixture(scope="module")
def scene(host_pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("notify")
    remote = GitRemote(tmp / "git")
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha")))
    settle(host_pool, "alpha")
    hook, smtp = HttpReceiver(), SmtpReceiver("pet", SMTP_PASSWORD)
    write_agent_config(tmp / "agent.yml", remote.url, tmp / "state", host_pool, limit="alpha")
    settings = yaml.safe_load((tmp / "agent.yml").read_text())
    settings["notify"] = {"timeout": f"{TIMEOUT}s", "targets": [
        {"url": f"http://127.0.0.1:{hook.port}/hook/{TOKEN}?token={TOKEN}",
         "format": "cloudevents"},
        {"url": f"mailto://pet:{SMTP_PASSWORD}@127.0.0.1:{smtp.port}?from=petkeeper@"
                "test.invalid&to=ops@test.invalid"}]}
    settings["metrics"] = {"textfile": str(tmp / "node-exporter" / "petkeeper.prom")}
    settings["daemon"] = FAST
    (tmp / "node-exporter").mkdir()
    scene = Scene(remote, tmp / "state", tmp / "agent.yml", tmp / "node-exporter" /
                  "petkeeper.prom", hook, smtp, settings, [])
    scene.write_config()
    try:
        yield scene
    finally:
        hook.close()
        smtp.close()
        host_pool.run("alpha", "printf 'Managed by Petkeeper\\n' > /etc/motd")  # as converged


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def promtool_accepts(text: str) -> None:
    assert shutil.which("promtool"), "promtool is missing: bash .ci/setup installs it"
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout + r.stderr, r.stdout + r.stderr


def checks(m: dict, command: str, result: str = "drift") -> float:
    return m.get(("petkeeper_cycles_total", (("command", command), ("result", result))), 0)


def test_drift_notifies_once_per_transition_and_metrics_count_across_runs(scene, host_pool):
    # notify --test: one test event to each target, and what each answered.
    r = scene.petkeeper("notify", "--test")
    assert r.returncode == 0, r.stderr
    hook_line, mail_line = r.stdout.splitlines()
    assert hook_line == "notify.targets[0] (http): sent: HTTP 202 Accepted"
    # The recipient is part of the URL, masked like any part of it: it might be a token.
    assert mail_line.startswith("notify.targets[1] (mailto): sent: Sent Email to <secret:")
    [test] = scene.events()
    assert test.event().get_type() == "org.petkeeper.test"
    assert len(scene.smtp.messages) == 1

    # The drift: told once (an event each for the drift and its pending approval, one digest).
    host_pool.run("alpha", "echo 'edited by hand' >> /etc/motd")
    code, first = scene.check()
    assert code == 2 and first["hosts"]["alpha"]["status"] == "drifted"
    drift, pending = [r.event() for r in scene.events()[1:]]
    print("drift.detected as received:", json.dumps(scene.events()[1].json(), indent=2))
    print("digest as received:", scene.smtp.messages[-1])
    assert (drift.get_type(), drift.get_subject(), pending.get_type()) == (
        "org.petkeeper.drift.detected", "alpha", "org.petkeeper.approval.pending")
    assert drift.get_source() == f"petkeeper://{socket.gethostname()}"
    data = drift.get_data()
    assert isinstance(data, dict)
    assert data["status"] == "drifted" and data["fingerprint"] == \
        first["hosts"]["alpha"]["fingerprint"]
    assert data["source_sha"] == first["source_sha"]
    assert data["plan"]["id"] == first["plans"]["alpha"]["plan_id"]
    assert data["plan"]["action"] == "wait"
    assert "Write the message of the day" in [c["task"] for c in data["changes"]]
    subject = git("--git-dir", str(scene.remote.bare), "log", "-1", "--format=%s",
                  data["report_commit"])
    assert subject.startswith("alpha: drifted")
    digest = scene.smtp.messages[1]
    assert "drift detected: 1 host" in digest["Subject"] and "alpha: drifted" in \
        digest.get_content()

    # Three no-change cycles: a second CLI run, then a daemon, stopped and started again.
    assert scene.check()[0] == 2
    m = samples(scene.textfile.read_text())
    assert checks(m, "check") == 2  # a counter across two CLI runs
    assert m[("petkeeper_host_status", (("host", "alpha"), ("status", "drifted")))] == 1
    assert m[("petkeeper_host_changes", (("host", "alpha"),))] == \
        len(first["hosts"]["alpha"]["changes"])
    promtool_accepts(scene.textfile.read_text())
    port = free_port()
    scene.write_config(metrics={**scene.settings["metrics"], "listen": f"127.0.0.1:{port}"})
    for restart in (1, 2):  # a counter across a daemon restart
        scraped = daemon_cycle(scene, port, restart)
        assert checks(scraped, "check") == 2
        assert scraped[("petkeeper_host_status", (("host", "alpha"), ("status", "drifted")))] \
            == 1
    assert len(scene.events()) == 3 and len(scene.smtp.messages) == 2  # nothing told again
    assert_nothing_secret_leaked(scene)


def daemon_cycle(scene: Scene, port: int, cycles: int) -> dict[tuple[str, tuple], float]:
    """Start the daemon, scrape /metrics until it counts CYCLES daemon cycles, stop it."""
    log = scene.state.parent / "daemon.log"
    with open(log, "ab") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "agent", "-v", "--config",
                                   str(scene.config), "daemon"], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=out)
    try:
        def counted() -> str | None:
            assert daemon.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    assert r.headers["Content-Type"].startswith("text/plain")
                    text = r.read().decode()
                if checks(samples(text), "daemon") == cycles:
                    return text
            return None
        text = wait_until(f"daemon cycle {cycles} in /metrics", counted, timeout=240)
        promtool_accepts(text)
        return samples(text)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, log.read_text()
        scene.texts.append(log.read_text())
        log.unlink()


def test_a_receiver_down_gets_every_event_later_and_a_hanging_one_costs_only_the_timeout(
        scene, host_pool):
    scene.hook.status = 503  # down for the next two cycles
    hung = HttpReceiver()
    hung.hang = True
    seen, mails = len(scene.hook.received), len(scene.smtp.messages)
    try:
        scene.write_config({"url": hung.url("/hang"), "format": "cloudevents"})
        host_pool.run("alpha", "echo 'edited again' >> /etc/motd")
        code, changed = scene.check()
        ended = time.monotonic()
        [hanging] = hung.received
    finally:
        hung.close()
    took = ended - hanging.at
    print(f"the cycle ended {took:.1f}s after the hanging target got its event "
          f"(notify.timeout {TIMEOUT}s)")
    assert took < TIMEOUT + 5  # the process ended: nothing waited for the hung target
    assert code == 2  # failed notifications leave the exit code alone
    log = scene.texts[-1]
    assert f"notify.targets[2] (http): no answer within notify.timeout ({TIMEOUT}s)" in log
    assert "notify.targets[0] (http): HTTP 503 Service Unavailable; 2 event(s) stay queued" \
        in log
    assert len(scene.smtp.messages) == mails + 1  # the digest of the new drift

    # An approval commit moves the head, not the plan's source: nothing new is told.
    plan_id = changed["plans"]["alpha"]["plan_id"]
    scene.remote.commit({"approvals/alpha.yml": yaml.safe_dump(
        {"host": "alpha", "plan": plan_id, "expires": "8h"})}, "Approve alpha's motd")
    scene.write_config()  # the hanging target is gone: its queue is dropped, said once
    code, approved = scene.check()
    assert code == 2 and approved["plans"]["alpha"]["action"] == "apply"
    assert approved["plans"]["alpha"]["plan_id"] == plan_id
    assert "undelivered event(s) of a target no longer configured dropped" in scene.texts[-1]
    refused = [r.json()["id"] for r in scene.hook.received[seen:]]
    assert len(refused) == 2 and refused[0] == refused[1]  # the same first event, retried

    scene.hook.status = 202  # back: every event, once, with the ids it refused
    assert scene.check()[0] == 2
    back = [r.event() for r in scene.hook.received[seen + 2:]]
    assert [e.get_id() for e in back][:1] == refused[:1] and len(back) == 2
    assert [e.get_type() for e in back] == ["org.petkeeper.drift.detected",
                                            "org.petkeeper.approval.pending"]
    data = back[0].get_data()
    assert isinstance(data, dict)
    assert data["fingerprint"] == changed["hosts"]["alpha"]["fingerprint"]
    assert len(scene.smtp.messages) == mails + 1
    assert json.loads((scene.state / "notify.json").read_text())["outbox"] == {}
    status = scene.petkeeper("notify")
    assert status.returncode == 0 and status.stdout.count("nothing queued") == 2
    m = samples(scene.textfile.read_text())
    assert m[("petkeeper_notifications_failed_total", ())] >= 3
    assert m[("petkeeper_notifications_queued", ())] == 0
    assert m[("petkeeper_pending_approvals", ())] == 0
    assert_nothing_secret_leaked(scene)


def assert_nothing_secret_leaked(scene: Scene) -> None:
    """No webhook token or SMTP password in any output, log, receiver body, state file or the
    textfile; the receivers did receive (the check is not vacuous)."""
    assert scene.texts and scene.hook.received and scene.smtp.messages
    secrets = (TOKEN, SMTP_PASSWORD)
    places = {"output": "\n".join(scene.texts),
              "webhook bodies": b"".join(r.body for r in scene.hook.received).decode(),
              "mails": b"".join(scene.smtp.mailbox.raw).decode(),
              "textfile": scene.textfile.read_text()}
    places |= {str(p): p.read_bytes().decode(errors="replace")
               for p in scene.state.rglob("*") if p.is_file() and not p.is_symlink()}
    leaks = {(secret, where) for where, text in places.items() for secret in secrets
             if secret in text}
    assert leaks == set()


def test_bad_config_is_one_line_naming_the_key_and_nothing_is_sent(scene, capsys):
    sent, mails = len(scene.hook.received), len(scene.smtp.messages)
    status = scene.state / "status.json"
    before = status.read_bytes() if status.exists() else None
    targets = scene.settings["notify"]["targets"]
    for bad, key in (({**targets[0], "events": ["drift.detectd"]}, "notify.targets[0].events[0]"),
                     ({"url": f"slak://{TOKEN}/x"}, "notify.targets[0].url")):
        settings = {**scene.settings, "notify": {"targets": [bad, targets[1]]}}
        scene.config.write_text(yaml.safe_dump(settings))
        assert main(["--config", str(scene.config), "check"]) == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and f": {key}: " in err and TOKEN not in err, err

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        scene.write_config(metrics={"listen": f"127.0.0.1:{port}"})
        r = scene.petkeeper("daemon", timeout=120)
    finally:
        busy.close()
    assert r.returncode == 1
    [line] = [x for x in r.stderr.splitlines() if x.startswith("petkeeper: error:")]
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in line and \
        "choose a free port" in line
    assert (len(scene.hook.received), len(scene.smtp.messages)) == (sent, mails)
    assert (status.read_bytes() if status.exists() else None) == before  # no cycle ran
    scene.write_config()


def test_a_daemon_stalled_before_any_cycle_tells_it_once(tmp_path, host_pool):
    remote = GitRemote(tmp_path / "git")
    remote.commit({"README.md": "no main branch yet\n"}, branch="other")
    hook = HttpReceiver()
    config = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                host_pool, limit="alpha", daemon=FAST, notify={"targets": [
                                    {"url": hook.url(f"/hook/{TOKEN}"),
                                     "format": "cloudevents"}]})
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config),
                                   "daemon"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        [stalled] = wait_until("the stall told", lambda: hook.accepted(), timeout=120)
        event = stalled.event()
        assert event.get_type() == "org.petkeeper.agent.stalled"
        data = event.get_data()
        assert isinstance(data, dict) and "branch 'main' not found" in data["message"]
        daemon.send_signal(signal.SIGHUP)  # a reload retries at once, and stalls again
        wait_until("the stall after the reload", lambda: log.read_text().count(
            "stalled, a person must fix this") == 2, timeout=120)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        assert len(hook.received) == 1, log.read_text()  # the same stall: told once
        assert TOKEN not in log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
        hook.close()
