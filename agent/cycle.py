"""One reconcile cycle: an ordered list of small steps sharing one signature.

Each step reads and fills the Cycle record and may raise AgentError, which ends the cycle at
that step. The stage only moves forward.
"""

from __future__ import annotations

import enum
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.detect import Targets, check_drift, select_targets
from agent.drift import CLEAN, DRIFTED, HostReport
from agent.errors import FetchError
from agent.gitrepo import Author, Mirror
from agent.redact import redact_text
from agent.report import PublishResult, RunInfo, publish_reports
from agent.source import Source, open_mirror, sync_source
from agent.state import StateDir, cycle_lock, write_status

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2


class Stage(enum.IntEnum):
    STARTED = 0
    FETCHED = 1
    TARGETED = 2
    CHECKED = 3
    RECORDED = 4
    SAVED = 5


@dataclass
class Cycle:
    config: Config
    state: StateDir
    run_id: str
    started: datetime
    stage: Stage = Stage.STARTED
    mirror: Mirror | None = None
    source: Source | None = None
    targets: Targets | None = None
    hosts: dict[str, HostReport] = field(default_factory=dict)
    publish: PublishResult | None = None
    cancel: Callable[[], bool] | None = None

    def advance(self, stage: Stage) -> None:
        if stage < self.stage:
            raise RuntimeError(f"cycle stage cannot go backwards: {self.stage.name} -> "
                               f"{stage.name}")
        self.stage = stage

    @property
    def exit_code(self) -> int:
        """0 all clean, 2 drift, 1 any host failed, unreachable or unknown (terraform-like)."""
        statuses = {r.status for r in self.hosts.values()}
        if not statuses or statuses - {CLEAN, DRIFTED}:
            return EXIT_ERROR
        if self.source is not None and self.source.fetch_error:
            return EXIT_ERROR
        return EXIT_DRIFT if DRIFTED in statuses else EXIT_CLEAN

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source_sha": self.source.sha if self.source else None,
            "started": self.started.isoformat(timespec="seconds"),
            "fetch_error": self.source.fetch_error if self.source else None,
            "hosts": {name: r.as_dict() for name, r in self.hosts.items()},
            "reports": None if self.publish is None else {
                "committed": list(self.publish.committed), "queued": self.publish.queued,
                "pushed": self.publish.pushed, "error": self.publish.error},
        }


def fetch_step(c: Cycle) -> None:
    c.mirror = open_mirror(c.config, c.state)
    c.source = sync_source(c.config, c.state, c.mirror)
    c.advance(Stage.FETCHED)


def target_step(c: Cycle) -> None:
    assert c.source is not None
    c.targets = select_targets(c.config, c.source, c.state)
    c.advance(Stage.TARGETED)


def check_step(c: Cycle) -> None:
    assert c.source is not None and c.targets is not None
    c.hosts = check_drift(c.config, c.source, c.targets, c.state, c.run_id, c.cancel)
    c.advance(Stage.CHECKED)


def record_step(c: Cycle) -> None:
    assert c.mirror is not None and c.source is not None
    r = c.config.reports
    if c.config.reports_url != c.config.repo.url:
        _fetch_reports_quietly(c.mirror, c.config.reports_url, r.branch)
    run = RunInfo(c.run_id, c.source.sha, c.started, socket.gethostname())
    c.publish = publish_reports(c.mirror, c.hosts, run, url=c.config.reports_url,
                                branch=r.branch, author=Author(r.author_name, r.author_email),
                                heartbeat=r.heartbeat, push=r.push)
    c.advance(Stage.RECORDED)


def save_step(c: Cycle) -> None:
    assert c.source is not None
    write_status(c.state, {
        "last_run": {**c.as_json(), "hosts": None, "finished": _now().isoformat(
            timespec="seconds"), "exit_code": c.exit_code},
        "hosts": {name: {"status": r.status, "fingerprint": r.fingerprint,
                         "changes": len(r.changes), "message": r.message,
                         "source_sha": c.source.sha, "checked_at": c.started.isoformat(
                             timespec="seconds"), "run_id": c.run_id}
                  for name, r in c.hosts.items()},
    })
    c.advance(Stage.SAVED)


CHECK_STEPS: tuple[Callable[[Cycle], None], ...] = (
    fetch_step, target_step, check_step, record_step, save_step)


def run_check(config: Config, *, wait: float = 0.0, now: datetime | None = None,
              cancel: Callable[[], bool] | None = None) -> Cycle:
    """Run one detect-only cycle under the state directory's lock; return its record."""
    state = StateDir(config.state_dir)
    state.ensure()
    started = now or _now()
    cycle = Cycle(config, state, new_run_id(started), started, cancel=cancel)
    with cycle_lock(state, f"petkeeper check, run {cycle.run_id}", wait):
        log.info("cycle %s: check of %s of %s (check mode)", cycle.run_id, config.repo.branch,
                 redact_text(config.repo.url))
        for step in CHECK_STEPS:
            step(cycle)
    return cycle


def new_run_id(when: datetime) -> str:
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _fetch_reports_quietly(mirror: Mirror, url: str, branch: str) -> None:
    try:
        mirror.fetch_reports(url, branch)
    except FetchError as e:
        log.warning("%s; reports stay queued", e)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
