"""`petkeeper daemon`: run cycles on a schedule, react to new commits, pause, signals.

Every fetch interval a cheap fetch (Git only, under the cycle lock) decides whether a cycle is
due: a new source commit (Git approvals come with it), a new host-side approval, a pause or
resume, a reloaded config, or check_interval elapsed. Cycles never overlap, with each other or
with a cycle run by hand. Each cycle runs in a child process of its own (agent.daemon.isolate),
so the daemon's memory stays flat over months. SIGTERM stops the current Ansible run and exits 0,
SIGHUP reloads the config, SIGUSR1 (`petkeeper run --now`) asks for a cycle now.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import random
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent.adapters.masters import close_masters, open_masters, remove_folder
from agent.adapters.state import StateDir, cycle_lock, read_pause, running_daemon
from agent.config import Config, load_config
from agent.core.schema import printable_key as printable
from agent.core.ssh_masters import Masters, persist_seconds
from agent.cycle.decide import APPLY
from agent.cycle.source import fetch_source, open_mirror
from agent.cycle.steps import (
    RUN_STEPS,
    Cycle,
    Step,
    apply_step,
    record_applies_step,
    run_cycle,
)
from agent.daemon.isolate import ChildFailed, run_isolated
from agent.daemon.sd_notify import notify, watchdog_interval
from agent.daemon.ticker import Ticker
from agent.daemon.trigger import Triggers, Window
from agent.errors import (
    AgentError,
    ConfigError,
    FetchError,
    LockedError,
    StalledError,
)
from agent.operate.metrics import serve_metrics
from agent.operate.tell import prepare_tell, tell_after, tell_stall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """What a cycle depends on besides the hosts themselves; a change makes a cycle due."""

    config: Config
    sha: str | None
    approvals: tuple[str, ...]  # host-side approval files
    pause: tuple[Any, ...] | None


def cycle_due(last: Inputs | None, now: Inputs, since_last: float | None,
              check_interval: float, forced: bool) -> str | None:
    """Given the inputs of the last cycle and now, return why a cycle is due, or None."""
    if forced:
        return "asked for (petkeeper run --now)"
    if last is None or since_last is None:
        return "first cycle"
    for what, old, new in (("source commit", last.sha, now.sha),
                           ("config", last.config, now.config),
                           ("host approvals", last.approvals, now.approvals),
                           ("pause", last.pause, now.pause)):
        if old != new:
            return f"new {what}"
    if since_last >= check_interval:
        return f"{check_interval:g}s since the last cycle"
    return None


def backoff_delay(failures: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait after FAILURES transient failures in a row: capped exponential growth,
    with "equal jitter" (half fixed, half random) so pets that failed together spread out."""
    delay = min(cap, base * 2 ** min(failures, 32))
    return delay / 2 + rand() * delay / 2


def until_cancelled(steps: tuple[Step, ...], cancel: Callable[[], bool],
                    keep: tuple[Step, ...] = (record_applies_step,)) -> tuple[Step, ...]:
    """STEPS that do nothing once CANCEL() is true, except KEEP when applies are pending: an
    interrupted apply is still committed, but no new check or apply starts during shutdown."""
    def guard(step: Step) -> Step:
        def guarded(c: Cycle) -> None:
            if not cancel() or (step in keep and c.pending):
                step(c)
        guarded.__name__ = step.__name__
        return guarded
    return tuple(guard(s) for s in steps)


class Daemon:
    def __init__(self, config_path: Path, config: Config, env: dict[str, str] | None = None,
                 masters: Path | None = None):
        self.config_path, self.config = config_path, config
        self.masters_folder = masters  # where cycles keep SSH masters (None: they do not)
        self.state = StateDir(config.state_dir)
        self.env = dict(os.environ if env is None else env)
        self.wake = Wake()
        self.stopping = self.reload_asked = self.forced = False
        self.busy, self.last_tick_end = False, time.monotonic()
        self.last: Inputs | None = None
        self.last_cycle_at: float | None = None
        self.failures, self.retry_at = 0, 0.0
        self.stalled_on: tuple[Config, str | None] | None = None
        self.paused_logged: tuple[Any, ...] | None = None
        self.peeked: str | None = None  # the source head the last cheap fetch saw
        self.skipped = ""  # the last "another cycle is running" seen
        self.ticker = Ticker(self.tick, config.daemon.fetch_interval,
                             random.uniform(0, config.daemon.splay))
        self.metrics_server: Any = None
        self.triggers: Triggers | None = None  # the file watch: made in run(), main thread's

    # -- main thread -----------------------------------------------------------------------

    def run(self) -> int:
        for sig, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                             (signal.SIGHUP, self._on_reload), (signal.SIGUSR1, self._on_now)):
            signal.signal(sig, handler)
        self.metrics_server = serve_metrics(self.config, self.state)  # /metrics, a thread
        triggers = self.triggers = Triggers(self.config, self.state)
        self.ticker.start()
        notify("READY=1\nSTATUS=waiting for the first cycle", self.env)
        log.info("daemon started (pid %d): fetch every %gs, cycle at least every %gs",
                 os.getpid(), self.config.daemon.fetch_interval,
                 self.config.daemon.check_interval)
        watchdog, pinged = watchdog_interval(self.env), 0.0
        while not self.stopping:
            self.wake.wait(min(watchdog or 1.0, 1.0, triggers.timeout(time.monotonic())),
                           triggers.fds())
            self.wake.clear()
            if triggers.turn(time.monotonic(), self.busy) and not self.stopping:
                self.ticker.poke()
            if self.reload_asked:
                self.reload_asked = False
                self.reload()
            if self.forced and not self.stopping:
                self.ticker.poke()
            if watchdog and time.monotonic() - pinged >= watchdog and self.healthy():
                notify("WATCHDOG=1", self.env)
                pinged = time.monotonic()
        notify("STOPPING=1\nSTATUS=stopping", self.env)
        log.info("stopping: %s", "waiting for the current step to stop" if self.busy else "idle")
        self.ticker.shutdown()
        triggers.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        log.info("daemon stopped")
        return 0

    def healthy(self) -> bool:
        """The ticker runs, and ticks: a cycle in progress, or one ended recently."""
        quiet = time.monotonic() - self.last_tick_end
        return self.ticker.running and (self.busy or
                                        quiet < 3 * self.config.daemon.fetch_interval + 60)

    def reload(self) -> None:
        try:
            config = load_config(self.config_path)
            check_notify(config, self.cancelled)
        except ConfigError as e:
            log.error("reload: keeping the running config: %s", "; ".join(e.problems))
            return
        if config.state_dir != self.config.state_dir:
            log.error("reload: keeping the running config: state_dir cannot change while the "
                      "daemon runs; restart it instead")
            return
        if config.metrics.listen != self.config.metrics.listen:
            log.warning("reload: metrics.listen changed; /metrics moves there when the daemon "
                        "restarts")
        if config.daemon.fetch_interval != self.config.daemon.fetch_interval:
            self.ticker.reschedule(config.daemon.fetch_interval)
        self.config, self.stalled_on = config, None
        self.failures, self.retry_at = 0, 0.0
        if self.triggers is not None:
            self.triggers.reconfigure(config)
        log.info("reloaded %s", self.config_path)
        self.ticker.poke()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_asked = True
        self.wake.set()

    def _on_now(self, signum: int, frame: FrameType | None) -> None:
        self.forced = True
        self.wake.set()

    def cancelled(self) -> bool:
        return self.stopping

    # -- the ticker's thread ---------------------------------------------------------------

    def tick(self) -> None:
        if self.stopping:
            return
        self.busy, self.peeked = True, None
        config = self.config
        try:
            self._tick(config)
        except LockedError as e:
            if str(e) != self.skipped:  # once per holder, not every fetch interval
                log.info("skipping this cycle: %s", e)
            self.skipped = str(e)
        except StalledError as e:
            self._stall(config, self.peeked, e)
        except AgentError as e:  # transient, or the cycle was stopped with the daemon
            if self.stopping:
                log.warning("cycle stopped: %s", e)
            else:
                self._back_off(e)
        except ChildFailed as e:  # the child logged the traceback, if it had one
            self._back_off(AgentError(str(e)))
        except Exception:
            log.exception("unexpected error in a cycle, this is probably a bug; retrying later")
            self._back_off(None)
        finally:
            self.busy, self.last_tick_end = False, time.monotonic()
            # GitPython's objects hold reference cycles (config parsers, a Repo per fetch): free
            # them now, not when the oldest generation is next swept. Left to the collector, the
            # daemon's pymalloc pages crept up by about 3 KiB a cycle (bench/soak.py).
            gc.collect()

    def _tick(self, config: Config) -> None:
        forced, self.forced = self.forced, False
        trigger, grace = self.triggers.take() if self.triggers else (None, False)
        pause = read_pause(self.state)
        if pause and pause["checks"]:
            self._log_pause(pause, "skipping whole cycles")
            return
        if not forced and time.monotonic() < self.retry_at:
            return
        sha = self.peeked = self._peek(config)
        if not forced and self.stalled_on == (config, sha):
            return
        now = Inputs(config, sha, self._host_approvals(),
                     tuple(sorted(pause.items())) if pause else None)
        since = None if self.last_cycle_at is None else time.monotonic() - self.last_cycle_at
        why = cycle_due(self.last, now, since, config.daemon.check_interval, forced)
        named = f"check triggered by a change of {printable(trigger['path'])}" if trigger \
            else None
        hold = bool(named and not forced and config.daemon.watch_grace > 0)
        if named and not forced:
            why = f"{named} (file watch)"
        elif why is None and grace:
            why = "the file watch's grace is over: check again, then apply what may be applied"
        if why is None:
            return
        if pause:  # the cycle reads it again under its lock and decides; this is the log
            self._log_pause(pause, "checks go on, nothing is applied")
        log.info("cycle due: %s", why)
        result = self._run_watched(config, named, hold)
        self.last, self.last_cycle_at, self.stalled_on = now, time.monotonic(), None
        notify(f"STATUS={result['status']}", self.env)
        if result["fetch_error"]:
            self._back_off(FetchError(result["fetch_error"]))
        elif self.retry_at:
            self.failures, self.retry_at = 0, 0.0

    def _run_watched(self, config: Config, trigger: str | None, hold: bool) -> dict[str, Any]:
        """Run a daemon cycle; the file watch knows when it ran and when it applied."""
        args = (config, trigger, hold, self.masters(config))
        if self.triggers is None:
            return run_isolated(daemon_cycle, args, self.cancelled)
        self.triggers.cycle_started()
        windows: list[Window] | None = None
        held = False
        try:
            result = run_isolated(daemon_cycle, args, self.cancelled)
            windows = [(a, b) for a, b in result.get("applied", [])]
            held = bool(result.get("held"))
        finally:
            self.triggers.cycle_ended(windows, held)
            self.wake.set()
        if held:
            log.info("a correction waits daemon.watch_grace (%gs), then is checked again "
                     "before it applies", config.daemon.watch_grace)
        return result

    def masters(self, config: Config) -> Masters | None:
        """The SSH masters a cycle keeps, an idle one living a little over CONFIG's check
        interval."""
        if self.masters_folder is None:
            return None
        d = config.daemon
        return Masters(self.masters_folder, persist_seconds(d.check_interval, d.fetch_interval))

    def _peek(self, config: Config) -> str | None:
        """The cheap fetch: the source branch's head, without a cycle."""
        with cycle_lock(self.state, "petkeeper daemon: fetch"):
            mirror = open_mirror(config, self.state, cancel=self.cancelled)
            try:
                fetch_source(config, mirror)
                return mirror.resolve(config.repo.branch)
            finally:
                mirror.close()

    def _host_approvals(self) -> tuple[str, ...]:
        folder = self.state.approvals
        if not folder.is_dir():
            return ()
        return tuple(sorted(f"{p.name}@{p.stat().st_mtime_ns}" for p in folder.iterdir()))

    def _stall(self, config: Config, sha: str | None, e: StalledError) -> None:
        if self.stalled_on == (config, sha):
            return
        # Marked before telling: a SIGHUP while the stall is told (in a child: a fraction of a
        # second) resets the mark, and the next tick retries, as a reload promises.
        self.stalled_on = (config, sha)
        log.error("stalled, a person must fix this: %s; the daemon tries again when the "
                  "config or the source commit changes, or on SIGHUP", e)
        notify(f"STATUS=stalled: {e}", self.env)
        if sha is None and config.notify.targets:  # the cheap fetch stalled, not a cycle
            self._tell_stall(config, e)  # (a cycle tells its own stall)

    def _tell_stall(self, config: Config, e: StalledError) -> None:
        try:
            run_isolated(stall_notice, (config, str(e)), self.cancelled)
        except (AgentError, ChildFailed) as why:
            log.warning("the stall was not told: %s", why)

    def _back_off(self, e: AgentError | None) -> None:
        d = self.config.daemon
        self.failures += 1
        delay = backoff_delay(self.failures, d.fetch_interval, d.backoff_max, random.random)
        self.retry_at = time.monotonic() + delay
        log.warning("%s; retrying in %ds (failure %d in a row)", e or "cycle failed",
                    round(delay), self.failures)

    def _log_pause(self, pause: dict[str, Any], what: str) -> None:
        key = tuple(sorted(pause.items()))
        if self.paused_logged != key:
            log.warning("paused by %s since %s (%s): %s; petkeeper resume to undo",
                        pause["by"], pause["at"], pause["reason"], what)
            notify(f"STATUS=paused: {pause['reason']}", self.env)
        self.paused_logged = key


def daemon_cycle(cancelled: Callable[[], bool], config: Config, trigger: str | None = None,
                 hold: bool = False, masters: Masters | None = None) -> dict[str, Any]:
    """One daemon cycle, in its own process (agent.daemon.isolate): return its status line,
    fetch error, when it applied (monotonic, for the file watch) and whether it HOLD-s a
    correction (a check TRIGGER-ed by the file watch applies nothing: its grace runs). Its
    SSH connections stay open for the next cycle in MASTERS."""
    applied: list[tuple[float, float]] = []

    def timed_apply(c: Cycle) -> None:
        start = time.monotonic()
        try:
            apply_step(c)
        finally:
            applied.append((start, time.monotonic()))

    timed_apply.__name__ = apply_step.__name__
    steps = tuple(timed_apply if s is apply_step else s for s in RUN_STEPS
                  if not (hold and s is apply_step))
    cycle = run_cycle(config, until_cancelled(steps, cancelled), "daemon run",
                      cancel=cancelled, finish=tell_after, trigger=trigger, masters=masters)
    return {"status": describe(cycle),
            "fetch_error": cycle.source.fetch_error if cycle.source else None,
            "applied": applied,
            "held": hold and any(p.action == APPLY for p in cycle.plans.values())}


def check_notify(config: Config, stop: Callable[[], bool]) -> None:
    """ConfigError when Apprise cannot read a target's URL. Asked in a child process: Apprise
    and its plugins (about 26 MiB) never load into the daemon itself."""
    if not any(t.format == "apprise" for t in config.notify.targets):
        return
    try:
        run_isolated(notify_checked, (config,), stop)
    except StalledError as e:  # what crosses back is the message: its lines are the problems
        raise ConfigError(str(e).splitlines()) from None


def notify_checked(cancelled: Callable[[], bool], config: Config) -> dict[str, Any]:
    prepare_tell(config)
    return {}


def stall_notice(cancelled: Callable[[], bool], config: Config, error: str) -> dict[str, Any]:
    """Tell a stall met outside a cycle (in a child process, like a cycle: Apprise and its
    threads never live in the daemon itself); ERROR is its message."""
    tell_stall(config, StalledError(error))
    return {}


def describe(cycle: Cycle) -> str:
    """One line for systemctl status: the last cycle's result."""
    counts: dict[str, int] = {}
    for report in cycle.hosts.values():
        counts[report.status] = counts.get(report.status, 0) + 1
    hosts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no hosts"
    line = f"run {cycle.run_id}: exit {cycle.exit_code}, {hosts}, {len(cycle.applies)} apply(s)"
    if cycle.source is not None and cycle.source.hold:
        line += f"; applies held: {cycle.source.hold}"
    return line + (f"; paused: {cycle.pause['reason']}" if cycle.pause else "")


class Wake:
    """threading.Event's set, clear and wait, over a pipe: the main loop waits for it and for
    the file watch's descriptor in one select (a signal handler's set() ends the wait too)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: it is set already
            os.write(self._write, b"!")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def wait(self, timeout: float, fds: list[int] | None = None) -> bool:
        """Until set, an FDS is readable, or TIMEOUT seconds; True when set."""
        ready, _, _ = select.select([self._read, *(fds or [])], [], [], timeout)
        return self._read in ready


def run_daemon(config_path: Path, env: dict[str, str] | None = None) -> int:
    """Run cycles on the configured schedule until SIGTERM; return the exit code (0)."""
    config = load_config(config_path)
    check_notify(config, lambda: False)
    state = StateDir(config.state_dir)
    state.ensure()
    with daemon_pid(state):
        masters = open_masters(state.root)
        try:
            return Daemon(config_path, config, env, masters).run()
        finally:
            # Stop means stop: the SSH masters (they left our process group) end with us.
            if masters is not None:
                closed = close_masters(masters)
                remove_folder(masters)
                log.info("closed %d kept SSH connection(s)", len(closed))


@contextlib.contextmanager
def daemon_pid(state: StateDir) -> Any:
    """Hold STATE_DIR/daemon.pid: flock-ed with our PID in it while the daemon runs."""
    fd = os.open(state.daemon_pid_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StalledError(f"{state.daemon_pid_file}: a daemon already runs on this state "
                               f"directory (pid {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def request_cycle(state: StateDir) -> int:
    """Ask the running daemon for a cycle now (SIGUSR1); return its PID. AgentError when no
    daemon runs on STATE."""
    no_daemon = AgentError(f"no daemon is running on {state.root}; start it (systemctl start "
                           "petkeeper) or run a cycle by hand with petkeeper run")
    pid = running_daemon(state)
    if pid is None:
        raise no_daemon
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise no_daemon from None
    return pid
