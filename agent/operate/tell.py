"""After each cycle: tell monitors (metrics) and people and machines (notifications).

``tell_after`` runs at the end of every cycle, under its lock, once its reports are committed
(agent.cycle.steps.run_cycle's ``finish``), and also after a cycle that failed: a stall is an
event too. It never changes the cycle's result: whatever goes wrong here is logged and the
cycle's exit code stands. Sending takes notify.timeout at most; what a target did not take
stays in the outbox for the next cycle.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent.adapters.state import StateDir, cycle_lock, write_json
from agent.config import Config, NotifyTarget
from agent.core.redact import redact_text
from agent.cycle.source import mask_key
from agent.cycle.steps import EXIT_ERROR, Cycle, Finish, new_run_id
from agent.errors import AgentError, StalledError
from agent.operate.events import cloud_event, find_events, pending_approval
from agent.operate.metrics import (
    APPLY_RESULTS,
    EXIT_RESULTS,
    CycleCount,
    count_cycle,
    count_notifications,
    read_metrics,
    write_metrics,
    write_textfile,
)
from agent.operate.notifications import (
    check_targets,
    deliver,
    notify_path,
    queue_events,
    read_outbox,
    target_id,
    url_masker,
)

log = logging.getLogger(__name__)

STALL_LOCK_WAIT = 60.0  # seconds a stall's notice waits for a cycle run by hand


def prepare_tell(config: Config) -> Finish:
    """What runs after each cycle of CONFIG; ConfigError (one line per target) when Apprise
    cannot read a target's URL, before anything runs or is sent."""
    check_targets(config)
    return tell_after


def tell_after(cycle: Cycle, error: BaseException | None) -> None:
    """Count CYCLE in the metrics, queue its events and send them, write the textfile. ERROR
    is what ended the cycle early, if anything. Never raises."""
    try:
        _tell(cycle, error)
    except AgentError as e:
        log.warning("after the cycle (its result stands): %s", e)
    except Exception:
        log.exception("after the cycle (its result stands): unexpected error, this is "
                      "probably a bug")


def _tell(cycle: Cycle, error: BaseException | None) -> None:
    config, state = cycle.config, cycle.state
    record = {**cycle.as_json(),
              "report_commits": dict(cycle.publish.report_commits) if cycle.publish else {}}
    try:
        metrics = read_metrics(state)
    except AgentError as e:
        log.warning("metrics: %s; the counters start again from 0", e)
        metrics = {}
    metrics = count_cycle(metrics, _cycle_count(cycle, record, error))
    if config.notify.targets:
        try:
            metrics = count_notifications(metrics, **notify_after(cycle, record, error))
        except AgentError as e:
            log.warning("notify: %s", e)
    write_metrics(state, metrics)
    write_textfile(config, state)


def _cycle_count(cycle: Cycle, record: Mapping[str, Any],
                 error: BaseException | None) -> CycleCount:
    plans = record["plans"]
    applies = tuple("tests_failed" if a["result"] == "converged" and a.get("tests") and
                    not a["tests"]["passed"] else APPLY_RESULTS.get(a["result"], "failed")
                    for a in record["applies"])
    return CycleCount(
        command=(cycle.command or "cycle").split()[0],
        result=EXIT_RESULTS.get(EXIT_ERROR if error else cycle.exit_code, "error"),
        finished=datetime.now(UTC), duration=time.monotonic() - cycle.began,
        source_sha=record["source_sha"],
        hosts={name: {"status": h["status"], "changes": len(h["changes"]),
                      "pending": name in plans and pending_approval(plans[name])}
               for name, h in record["hosts"].items()},
        applies=applies,
        reports_queued=cycle.publish.queued if cycle.publish else None)


def notify_after(cycle: Cycle, record: Mapping[str, Any],
                 error: BaseException | None) -> dict[str, int]:
    """Queue CYCLE's events for the targets that want them, then send every queue; return
    the counts for the metrics (sent, failed, dropped, queued)."""
    config, state = cycle.config, cycle.state
    key = mask_key(state)
    targets = {target_id(key, t.url): t for t in config.notify.targets}
    box = read_outbox(state)
    mask = _text_mask(cycle)
    events, box["told"] = find_events(record, box["told"], mask(str(error) or type(
        error).__name__) if error else None, isinstance(error, StalledError))
    agent_name, when = socket.gethostname(), datetime.now(UTC).replace(microsecond=0)
    dropped = queue_events(box["outbox"], targets,
                           [cloud_event(e, agent_name, when, mask) for e in events],
                           config.notify.outbox_max)
    write_json(notify_path(state), box)  # queued before sending: a crash loses nothing
    counts = {"sent": 0, "failed": 0, "dropped": sum(dropped.values())}
    stopping = isinstance(error, KeyboardInterrupt | SystemExit) or \
        (cycle.cancel is not None and cycle.cancel())
    if box["outbox"] and stopping:
        log.info("notify: stopping; %d event(s) stay queued for the next cycle",
                 sum(map(len, box["outbox"].values())))
    elif box["outbox"]:
        counts.update(send_queued(config, targets, box, url_masker(config.notify.targets, key)))
        write_json(notify_path(state), box)
    return {**counts, "queued": sum(map(len, box["outbox"].values()))}


def send_queued(config: Config, targets: Mapping[str, NotifyTarget], box: dict[str, Any],
                url_mask: Callable[[str], str]) -> dict[str, int]:
    """Send BOX's outbox within notify.timeout and drop what was delivered from it."""
    sent = failed = 0
    for tid, delivery in deliver(targets, box["outbox"], config.notify.timeout,
                                 url_mask).items():
        target, queue = targets[tid], box["outbox"][tid]
        took = set(delivery.sent)
        box["outbox"][tid] = [e for e in queue if e["id"] not in took]
        sent += len(took)
        if box["outbox"][tid]:
            failed += 1
            log.warning("notify: %s: %s; %d event(s) stay queued for the next cycle",
                        target.label, delivery.answer, len(box["outbox"][tid]))
        else:
            del box["outbox"][tid]
            log.info("notify: %s took %d event(s): %s", target.label, len(took),
                     delivery.answer)
    return {"sent": sent, "failed": failed}


def _text_mask(cycle: Cycle) -> Callable[[str], str]:
    """The reports' masks (vault values, credentials), and URL credentials."""
    source_mask = cycle.source.mask if cycle.source is not None else (lambda text: text)
    return lambda text: redact_text(source_mask(text))


def tell_stall(config: Config, error: StalledError) -> None:
    """Tell agent.stalled for a stall met outside a cycle (the daemon's fetch of a branch
    that is gone, a refused host key), once per stall. Never raises."""
    if not config.notify.targets:
        return
    state = StateDir(config.state_dir)
    now = datetime.now(UTC).replace(microsecond=0)
    cycle = Cycle(config, state, new_run_id(now), now, command="daemon")
    try:
        with cycle_lock(state, "petkeeper daemon: notify a stall", STALL_LOCK_WAIT):
            counts = notify_after(cycle, {**cycle.as_json(), "report_commits": {}}, error)
            write_metrics(state, count_notifications(read_metrics(state), **counts))
    except AgentError as e:
        log.warning("notify: the stall was not told: %s", e)
    except Exception:
        log.exception("notify: the stall was not told: unexpected error, this is probably a "
                      "bug")
