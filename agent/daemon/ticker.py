"""The daemon's ticker: APScheduler 3.x's background scheduler, and only here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

# "maximum number of running instances reached" is how a tick during a long cycle is skipped:
# by design here, not worth a warning line in the journal every fetch interval.
logging.getLogger("apscheduler").setLevel(logging.ERROR)


class Ticker:
    """Call TICK every INTERVAL seconds in one worker thread, the first time after FIRST_DELAY;
    two calls never overlap (a tick due while one runs is dropped, not queued)."""

    def __init__(self, tick: Callable[[], None], interval: float, first_delay: float) -> None:
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)}, timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._job = self._scheduler.add_job(
            tick, IntervalTrigger(seconds=interval, timezone=UTC), id="tick",
            next_run_time=datetime.now(UTC) + timedelta(seconds=first_delay))

    def start(self) -> None:
        self._scheduler.start()

    def poke(self) -> None:
        """Tick now (or, when a tick is running, at the next interval)."""
        self._job.modify(next_run_time=datetime.now(UTC))

    def reschedule(self, interval: float) -> None:
        self._job.reschedule(IntervalTrigger(seconds=interval, timezone=UTC))

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def shutdown(self) -> None:
        """Stop ticking and wait for a running tick to return."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
