"""Prometheus metrics, rendered from the state directory by prometheus-client (only here).

Cycles run in child processes, in separate CLI runs and in daemons that restart, so nothing
is counted in a process's memory: each cycle adds itself to STATE_DIR/metrics.json (under the
cycle lock, written atomically), and every exposition, node-exporter's textfile and the
daemon's /metrics alike, is rendered from that file (and pause.json) when it is asked for.
Labels hold host names and fixed words only: never a task name, a diff or a message.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

import agent
from agent.adapters.state import StateDir, read_json, write_atomic, write_json
from agent.config import Config, parse_listen
from agent.core.drift import STATUSES
from agent.errors import AgentError, StalledError

log = logging.getLogger(__name__)

METRICS_SCHEMA = 1
HOST_KEPT = 7 * 86400.0  # a host not checked for a week leaves the metrics (inventory change)
APPLY_RESULTS = {"converged": "converged", "not converged": "not_converged",
                 "interrupted": "interrupted", "apply failed": "failed",
                 "drift changed since approval": "drift_changed", "undone": "undone",
                 "conflict": "conflict"}
EXIT_RESULTS = {0: "clean", 1: "error", 2: "drift", 3: "warning"}


@dataclass(frozen=True)
class CycleCount:
    """What one cycle adds to the metrics."""

    command: str  # check, plan, run, apply, daemon
    result: str  # clean, drift, warning, error
    finished: datetime
    duration: float
    source_sha: str | None
    hosts: Mapping[str, Mapping[str, Any]]  # name: status, changes, pending
    applies: tuple[str, ...] = ()  # each apply's result label
    reports_queued: int | None = None  # None: the cycle did not reach the reports


def metrics_path(state: StateDir) -> Path:
    return state.root / "metrics.json"


def read_metrics(state: StateDir) -> dict[str, Any]:
    data = read_json(metrics_path(state), None)
    if not isinstance(data, dict) or data.get("schema") != METRICS_SCHEMA:
        data = {"schema": METRICS_SCHEMA}
    return data


def count_cycle(data: Mapping[str, Any], count: CycleCount) -> dict[str, Any]:
    """Return DATA with COUNT added: counters grow, gauges take the cycle's values, hosts
    not in the cycle keep their last values (a check with --limit sees only some)."""
    new = {**data, "schema": METRICS_SCHEMA}
    cycles = dict(new.get("cycles_total") or {})
    key = f"{count.command}|{count.result}"
    cycles[key] = cycles.get(key, 0) + 1
    applies = dict(new.get("applies_total") or {})
    for result in count.applies:
        applies[result] = applies.get(result, 0) + 1
    now = count.finished.timestamp()
    hosts = {name: h for name, h in (new.get("hosts") or {}).items()
             if now - float(h.get("checked_at", 0)) < HOST_KEPT}
    for name, h in count.hosts.items():
        hosts[name] = {"status": h["status"], "changes": int(h["changes"]),
                       "pending": bool(h.get("pending")), "checked_at": now}
    new.update(cycles_total=cycles, applies_total=applies, hosts=hosts,
               last_cycle={"finished": now, "duration": count.duration,
                           "command": count.command, "result": count.result})
    if count.source_sha:
        new["source_sha"] = count.source_sha
    if count.reports_queued is not None:
        new["reports_queued"] = count.reports_queued
    return new


def count_notifications(data: Mapping[str, Any], sent: int, failed: int, dropped: int,
                        queued: int) -> dict[str, Any]:
    """Return DATA with one round of sending added."""
    new = dict(data)
    for key, n in (("notifications_sent_total", sent), ("notifications_failed_total", failed),
                   ("notifications_dropped_total", dropped)):
        new[key] = int(new.get(key, 0)) + n
    new["notifications_queued"] = queued
    return new


def write_metrics(state: StateDir, data: Mapping[str, Any]) -> None:
    write_json(metrics_path(state), data)


def render_metrics(state: StateDir) -> bytes:
    """The Prometheus text exposition of STATE's metrics, as they are on disk now."""
    return generate_latest(_registry(state))


def write_textfile(config: Config, state: StateDir) -> None:
    """Write metrics.textfile atomically (readable by node-exporter); AgentError naming the
    key when it cannot be written."""
    if not config.metrics.textfile:
        return
    path = Path(config.metrics.textfile)
    try:
        write_atomic(path, render_metrics(state), mode=0o644)
    except OSError as e:
        raise AgentError(f"{config.path}: metrics.textfile: cannot write {path}: "
                         f"{e.strerror}; create its folder or fix the path") from e


def serve_metrics(config: Config, state: StateDir) -> Any:
    """Serve /metrics on metrics.listen from a thread; return the server (shutdown() stops
    it), or None when no listen address is configured. StalledError naming the key when the
    address cannot be bound."""
    if not config.metrics.listen:
        return None
    host, port = parse_listen(config.metrics.listen)
    try:
        server, _ = start_http_server(port, host, registry=_registry(state))
    except (OSError, socket.gaierror) as e:
        raise StalledError(f"{config.path}: metrics.listen: cannot listen on "
                           f"{config.metrics.listen}: {e.strerror or e}; choose a free port "
                           "or stop what holds it") from e
    log.info("serving /metrics on %s", config.metrics.listen)
    return server


class _StateCollector:
    """Every scrape reads the state directory afresh."""

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        try:
            data = read_metrics(self.state)
        except AgentError as e:
            log.warning("metrics: %s", e)
            data = {}
        yield from build_families(data, self.state.pause_file.exists())


def _registry(state: StateDir) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StateCollector(state))
    return registry


def build_families(data: Mapping[str, Any], paused: bool) -> Iterator[Metric]:
    """The metric families of DATA (metrics.json) and the pause."""
    hosts = data.get("hosts") or {}
    status = GaugeMetricFamily("petkeeper_host_status", "1 for the host's current status "
                               "(clean, drifted, failed, unreachable, unknown), 0 for the "
                               "others", labels=["host", "status"])
    changes = GaugeMetricFamily("petkeeper_host_changes", "Tasks that would change the host "
                                "at its last check", labels=["host"])
    checked = GaugeMetricFamily("petkeeper_host_last_check_timestamp_seconds",
                                "When the host was last checked", labels=["host"])
    for name, h in sorted(hosts.items()):
        for s in STATUSES:
            status.add_metric([name, s], 1.0 if h["status"] == s else 0.0)
        changes.add_metric([name], h["changes"])
        checked.add_metric([name], h["checked_at"])
    yield from (status, changes, checked)
    last = data.get("last_cycle") or {}
    yield _gauge("petkeeper_cycle_duration_seconds", "How long the last cycle took",
                 last.get("duration"))
    yield _gauge("petkeeper_last_cycle_timestamp_seconds", "When the last cycle ended",
                 last.get("finished"))
    yield _counter("petkeeper_cycles", "Cycles run, by command and result (clean, drift, "
                   "warning, error)", ["command", "result"],
                   {tuple(k.split("|")): v for k, v in (data.get("cycles_total") or {}).items()})
    yield _counter("petkeeper_applies", "Applies, by result", ["result"],
                   {(k,): v for k, v in (data.get("applies_total") or {}).items()})
    yield _gauge("petkeeper_pending_approvals", "Plans waiting for a person's approval",
                 sum(1 for h in hosts.values() if h.get("pending")))
    yield _gauge("petkeeper_reports_queued", "Report commits not pushed yet",
                 data.get("reports_queued", 0))
    yield _gauge("petkeeper_paused", "1 while petkeeper pause is in force", float(paused))
    for what, help_text in (("sent", "Events delivered to notification targets"),
                            ("failed", "Rounds in which a target did not take its events"),
                            ("dropped", "Undelivered events dropped from a full outbox")):
        yield _counter(f"petkeeper_notifications_{what}", help_text, [],
                       {(): data.get(f"notifications_{what}_total", 0)})
    yield _gauge("petkeeper_notifications_queued", "Events waiting for a target that was down",
                 data.get("notifications_queued", 0))
    source = InfoMetricFamily("petkeeper_source", "The source commit of the last cycle")
    if data.get("source_sha"):
        source.add_metric([], {"sha": str(data["source_sha"])})
    yield source
    build = InfoMetricFamily("petkeeper_build", "Petkeeper's and ansible-core's versions")
    build.add_metric([], {"version": agent.__version__, "ansible_core": _ansible_core()})
    yield build


def _gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text)
    if value is not None:
        family.add_metric([], float(value))
    return family


def _counter(name: str, help_text: str, labels: list[str],
             values: Mapping[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), float(value))
    return family


def _ansible_core() -> str:
    try:
        return importlib.metadata.version("ansible-core")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
