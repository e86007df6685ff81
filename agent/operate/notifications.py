"""Notification targets: their outbox, digests for people, and delivery within a deadline.

Each target of ``notify.targets`` has a queue of CloudEvents in the outbox
(STATE_DIR/notify.json), keyed by a keyed hash of its URL, never the URL: the URL holds a
token. A webhook target (format: cloudevents) gets each event in its own POST, in order; an
Apprise target gets one digest of everything queued for it. An event leaves the queue only
when the target took it, so a target that is down gets every event once it is back, with the
same ids; a full queue drops its oldest events, counted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.adapters.apprise_send import send_message, url_problem
from agent.adapters.state import StateDir, read_json
from agent.adapters.webhook import post_event
from agent.config import Config, NotifyTarget
from agent.core.redact import Masker
from agent.cycle.source import mask_key
from agent.errors import AgentError, ConfigError
from agent.operate.events import TYPE_PREFIX, Event, cloud_event, plain

log = logging.getLogger(__name__)

NOTIFY_SCHEMA = 1

Masking = Callable[[str], str]
DIGEST_HOSTS = 50  # hosts listed per kind of event in one digest; the rest are counted
FAILING = {"apply.failed", "host.failed", "host.unreachable", "source.rejected",
           "agent.stalled"}
WARNING = {"drift.detected", "approval.pending", "source.rewound"}
TITLES = {"drift.detected": "drift detected", "drift.resolved": "drift resolved",
          "approval.pending": "approval pending", "apply.succeeded": "applied",
          "apply.failed": "apply failed", "host.unreachable": "unreachable",
          "host.failed": "failed", "source.rejected": "source rejected",
          "source.rewound": "source rewound", "agent.stalled": "stalled", "test": "test"}


@dataclass
class Delivery:
    """What one target took in one round of sending."""

    sent: list[str] = field(default_factory=list)  # ids of the events it took
    answer: str = "no answer"  # its last answer (masked)
    ok: bool = False
    done: bool = False  # it answered for every event before the deadline


def target_id(key: bytes, url: str) -> str:
    """A stable name for a target in the outbox that says nothing of its URL."""
    return hmac.new(key, url.encode(), hashlib.sha256).hexdigest()[:16]


def url_masker(targets: Iterable[NotifyTarget], key: bytes) -> Masker:
    """A mask for the secret parts of the targets' URLs: the URL, its user info, path,
    query and fragment, and the host of a non-web URL (slack://TOKEN/...)."""
    secrets: set[str] = set()
    for t in targets:
        parts = urlsplit(t.url)
        secrets |= {t.url, unquote(parts.username or ""), unquote(parts.password or ""),
                    parts.path, parts.query, parts.fragment, unquote(parts.path)}
        secrets |= {unquote(p) for p in parts.path.split("/")}
        secrets |= {unquote(v) for pair in parts.query.split("&") for v in pair.split("=")[1:]}
        if t.scheme not in ("http", "https"):  # slack://TOKEN/...: the "host" is a token
            host = parts.netloc.rpartition("@")[2]
            secrets |= {host, host.rsplit(":", 1)[0]}
    return Masker({s for s in secrets if s and s != "/"}, key)


def check_targets(config: Config) -> None:
    """ConfigError, one line per target, when Apprise cannot read a target's URL."""
    mask = url_masker(config.notify.targets, secrets.token_bytes(16))
    problems = []
    for t in config.notify.targets:
        if t.format == "apprise" and (why := url_problem(t.url, mask)):
            problems.append(f"{config.path}: {t.key}.url: {why}; fix the URL (see "
                            "https://github.com/caronc/apprise/wiki), the value is not shown")
    if problems:
        raise ConfigError(problems)


def notify_path(state: StateDir) -> Path:
    return state.root / "notify.json"


def read_outbox(state: StateDir) -> dict[str, Any]:
    """STATE's notify.json: what was told (per host and for the agent) and the outbox."""
    data = read_json(notify_path(state), None)
    if not isinstance(data, dict) or data.get("schema") != NOTIFY_SCHEMA:
        data = {}
    return {"schema": NOTIFY_SCHEMA, "told": data.get("told") or {},
            "outbox": {k: list(v) for k, v in (data.get("outbox") or {}).items()}}


def send_test(config: Config) -> tuple[bool, list[str]]:
    """Send one test event to every target (whatever events it wants), within
    notify.timeout; return whether all took it, and one line per target with its answer."""
    if not config.notify.targets:
        raise AgentError(f"{config.path}: notify.targets: none configured; add a target "
                         "(see docs/notifications.md)")
    check_targets(config)
    state = StateDir(config.state_dir)
    state.ensure()
    key = mask_key(state)
    agent = socket.gethostname()
    event = cloud_event(Event("test", None, {
        "message": f"a test from petkeeper notify --test on {agent}: notifications reach "
                   "this target"}), agent, datetime.now(UTC).replace(microsecond=0), str)
    targets = {target_id(key, t.url): t for t in config.notify.targets}
    results = deliver(targets, {tid: [event] for tid in targets}, config.notify.timeout,
                      url_masker(config.notify.targets, key))
    lines = [f"{targets[tid].label}: {'sent' if r.ok else 'FAILED'}: {r.answer}"
             for tid, r in results.items()]
    return all(r.ok for r in results.values()), lines


def notify_status(config: Config) -> list[str]:
    """One line per target: what it is sent and what waits for it in the outbox."""
    if not config.notify.targets:
        return [f"no notify.targets in {config.path}; see docs/notifications.md"]
    state = StateDir(config.state_dir)
    outbox = read_outbox(state)["outbox"] if state.root.is_dir() else {}
    key = mask_key(state) if state.root.is_dir() else b""
    lines = []
    for t in config.notify.targets:
        queued = len(outbox.get(target_id(key, t.url), []))
        lines.append(f"{t.label}: {t.format}, {', '.join(t.events) or 'no events'}; "
                     f"{queued or 'nothing'} queued")
    return lines


def queue_events(outbox: dict[str, list[dict[str, Any]]], targets: Mapping[str, NotifyTarget],
                 events: Sequence[dict[str, Any]], limit: int) -> dict[str, int]:
    """Append to each target's queue the EVENTS it wants, keep at most LIMIT (the oldest go);
    return how many each dropped. Queues of targets no longer configured are removed."""
    for gone in set(outbox) - set(targets):
        log.warning("notify: %d undelivered event(s) of a target no longer configured dropped",
                    len(outbox.pop(gone)))
    dropped = {}
    for tid, target in targets.items():
        queue = outbox.setdefault(tid, [])
        queue += [e for e in events if str(e["type"])[len(TYPE_PREFIX):] in target.events]
        if len(queue) > limit:
            dropped[tid] = len(queue) - limit
            del queue[:dropped[tid]]
            log.warning("notify: %s: outbox full (notify.outbox_max %d): dropped the %d oldest "
                        "undelivered event(s)", target.label, limit, dropped[tid])
        if not queue:
            del outbox[tid]
    return dropped


def deliver(targets: Mapping[str, NotifyTarget], outbox: Mapping[str, list[dict[str, Any]]],
            timeout: float, mask: Masking) -> dict[str, Delivery]:
    """Send each target its queue, all targets at once, and wait TIMEOUT seconds at most: a
    target that has not answered by then keeps its events for the next round."""
    deadline = time.monotonic() + timeout
    results = {tid: Delivery() for tid in outbox if tid in targets}
    workers = [threading.Thread(target=_send_queue, name=f"notify {targets[tid].key}",
                                args=(targets[tid], list(outbox[tid]), deadline, mask, result),
                                daemon=True)  # a hung target must not keep the process alive
               for tid, result in results.items()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    return {tid: Delivery(list(r.sent), r.answer if r.done else "no answer within "
                          f"notify.timeout ({timeout:g}s)", r.ok and r.done, r.done)
            for tid, r in results.items()}


def _send_queue(target: NotifyTarget, queue: list[dict[str, Any]], deadline: float,
                mask: Masking, result: Delivery) -> None:
    """In a worker thread: send QUEUE to TARGET, recording in RESULT as it goes."""
    try:
        if target.format == "cloudevents":
            for event in queue:
                answer = post_event(target.url, event, deadline - time.monotonic())
                result.answer, result.ok = mask(answer.text), answer.ok
                if not answer.ok:
                    break
                result.sent.append(str(event["id"]))
        else:
            title, body, kind = build_digest(queue)
            sent = send_message(target.url, title, body, kind,
                                             deadline - time.monotonic(), mask)
            result.answer, result.ok = mask(sent.text), sent.ok
            if sent.ok:
                result.sent += [str(e["id"]) for e in queue]
    except Exception as e:  # a bug in a library must not end the cycle's process
        result.answer, result.ok = mask(f"unexpected error: {type(e).__name__}: {e}"), False
    finally:
        result.done = True


def build_digest(events: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """One message for people about EVENTS: (title, plain-text body, kind), hosts grouped
    by event type, so a fleet-wide change is one message."""
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        by_type.setdefault(str(e["type"])[len(TYPE_PREFIX):], []).append(e)
    agent = str(events[0]["source"]).removeprefix("petkeeper://") if events else "?"
    counts = [f"{TITLES.get(t, t)}: {_count(es)}" for t, es in by_type.items()]
    title = plain(f"Petkeeper on {agent}: {', '.join(counts)}", 250)
    lines: list[str] = []
    for kind, group in by_type.items():
        lines.append(f"{TITLES.get(kind, kind).capitalize()} ({_count(group)}):")
        lines += [f"  {_digest_line(e)}" for e in group[:DIGEST_HOSTS]]
        if len(group) > DIGEST_HOSTS:
            lines.append(f"  ... and {len(group) - DIGEST_HOSTS} more")
        lines.append("")
    sources = sorted({str((e.get("data") or {}).get("source_sha") or "")[:12] for e in events}
                     - {""})
    lines.append(f"Source {', '.join(sources) or 'unknown'}; petkeeper status on {agent} "
                 "for more.")
    kinds = set(by_type)
    kind = "failure" if kinds & FAILING else "warning" if kinds & WARNING else \
        "info" if "test" in kinds else "success"
    return title, "\n".join(lines), kind


def _count(group: Sequence[Mapping[str, Any]]) -> str:
    hosts = {e.get("subject") for e in group if e.get("subject")}
    return f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}" if hosts else str(len(group))


def _digest_line(event: Mapping[str, Any]) -> str:
    data = event.get("data") or {}
    if not event.get("subject"):
        return plain(data.get("message") or "")
    parts = [f"{event['subject']}: {data.get('status')}"]
    if data.get("changes"):
        tasks = ", ".join(plain(c["task"], 80) for c in data["changes"][:3])
        more = len(data["changes"]) - 3
        parts.append(f"{len(data['changes'])} change(s): {tasks}{f' +{more}' if more > 0 else ''}")
    if apply := data.get("apply"):
        parts.append(f"apply of plan {apply['plan_id']}: {apply['result']} (approved by "
                     f"{apply['approved_by']})")
    elif plan := data.get("plan"):
        parts.append(f"plan {plan['id']}: {plan['action']}, {plan['reason']}")
    if data.get("message"):
        parts.append(str(data["message"]))
    return plain("; ".join(parts), 500)
