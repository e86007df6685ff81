"""One worker process of bench/fleet.py: many simulated agents, each a real Petkeeper cycle.

Started by fleet.py as ``python bench/fleet_worker.py SPEC.json`` in a session of its own (so
that the kill fault can SIGKILL it with every git it runs). Each agent has its own agent.yml
and state directory (mirror, queue, lock, status.json). Its cycle is ``run_cycle`` of
agent.cycle.steps with the real steps around one simulated detect step:

    fetch_step       the real fetch of the source (and, on one remote, the reports)
    detect (here)    a HostReport of real shape instead of an Ansible run
    record_step      the real report path: queue, commit, push, rebase on reject (timed here)
    save_step        the real status.json

When a cycle runs follows the daemon (agent.daemon.service): a tick every
daemon.fetch_interval at the agent's own phase, a cycle when ``cycle_due`` says so (a new
source commit, or check_interval elapsed), ``backoff_delay`` after a failed fetch. The daemon's
cheap fetch between cycles is not simulated: the sim knows the source head.

Time is scaled: SIM seconds = real seconds / TIME_SCALE since t0, the moment the source commit
landed. Every event goes to the worker's JSON-lines log, which fleet.py reads at the end.
"""

from __future__ import annotations

import faulthandler
import heapq
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from agent.config import Config, load_config
from agent.core.drift import CLEAN, DRIFTED, Change, HostReport, fingerprint, render_diff
from agent.cycle.steps import Cycle, Stage, fetch_step, record_step, run_cycle, save_step
from agent.daemon.service import Inputs, backoff_delay, cycle_due
from agent.errors import AgentError, LockedError, StalledError

MOTD = "Welcome to {name}.\nManaged by Petkeeper: edits here are reported.\n"


def host_report(name: str, drift: int) -> HostReport:
    """A host's report as the check would build it: clean, or drifted by DRIFT hand edits of
    /etc/motd (each a different diff, so a different fingerprint)."""
    if not drift:
        return HostReport(name, CLEAN, (), fingerprint(CLEAN, ()))
    after = MOTD.format(name=name)
    before = after + "".join(f"Back at {5 + i % 6}pm -- edit {i} by hand\n"
                             for i in range(drift))
    diff = render_diff({"before": before, "after": after, "before_header": "/etc/motd",
                        "after_header": "(generated)"})
    changes = (Change("Converge pet servers", "baseline", "Write the message of the day",
                      "ansible.builtin.template", diff, tags=("baseline",)),)
    return HostReport(name, DRIFTED, changes, fingerprint(DRIFTED, changes))


@dataclass
class Agent:
    """One simulated pet: its config, its drift, and its daemon's scheduling state."""

    index: int
    name: str
    config: Config
    rng: random.Random
    phase: float  # sim seconds: its ticks fall at phase + k * fetch_interval
    drift: int = 0
    last: Inputs | None = None
    last_cycle_at: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    queued: int = 0
    busy: bool = False
    done: bool = False

    def next_tick(self, after: float) -> float:
        """The first tick of this agent's ticker strictly after sim time AFTER."""
        fi = self.config.daemon.fetch_interval
        # The tolerance: AFTER is often a tick itself, give or take a rounding error.
        ticks = max(0, math.floor((after - self.phase) / fi + 1e-6) + 1)
        return self.phase + ticks * fi


@dataclass
class Worker:
    spec: dict[str, Any]
    log: TextIO
    agents: list[Agent] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)  # the schedule's
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Condition = field(init=False)
    heap: list[tuple[float, int]] = field(default_factory=list)
    t0: float = 0.0
    sha: str = ""
    base: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.wake = threading.Condition(self.lock)
        self.scale = float(self.spec["time_scale"])

    # -- time ------------------------------------------------------------------------------

    def sim(self, real: float | None = None) -> float:
        return ((time.time() if real is None else real) - self.t0) / self.scale

    def real(self, sim: float) -> float:
        return self.t0 + sim * self.scale

    def sim_datetime(self, sim: float) -> datetime:
        return (self.base + timedelta(seconds=sim)).replace(microsecond=0)

    def emit(self, **event: Any) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self.log_lock:
            self.log.write(line)
            self.log.flush()

    # -- cycles ----------------------------------------------------------------------------

    def cycle(self, agent: Agent, steps: tuple[Any, ...], sim_now: float) -> Cycle:
        return run_cycle(agent.config, steps, "fleet simulation",
                         now=self.sim_datetime(sim_now))

    def steps(self, agent: Agent) -> tuple[Any, ...]:
        report = host_report(agent.name, agent.drift)

        def detect(c: Cycle) -> None:
            c.hosts = {agent.name: report}
            c.advance(Stage.CHECKED)

        def record(c: Cycle) -> None:
            self.emit(kind="record", agent=agent.name, run=c.run_id, t=time.time())
            record_step(c)

        return (fetch_step, detect, record, save_step)

    def warm_up(self, agent: Agent, seed: Agent | None = None) -> None:
        """The agent's mirror as a running daemon has it: the old source fetched. With SEED
        (an agent already warm), its mirror is copied first, so that the fetch finds nothing
        new: a thousand clones of one repository only cost the warm-up time."""
        if seed is not None:
            root = Path(agent.config.state_dir)
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copytree(Path(seed.config.state_dir) / "mirror.git", root / "mirror.git",
                            symlinks=True)
        self.cycle(agent, (fetch_step,), 0.0)

    def run_agent_cycle(self, agent: Agent, due: float) -> None:
        start = time.time()
        now = self.sim(start)
        if agent.rng.random() < float(self.spec["drift"]):
            agent.drift = 0 if agent.drift else agent.rng.randint(1, 3)
        event: dict[str, Any] = {"kind": "cycle", "agent": agent.name, "due": self.real(due),
                                 "start": start, "sim": round(now, 3)}
        inputs = Inputs(agent.config, self.sha, (), None)
        try:
            c = self.cycle(agent, self.steps(agent), now)
        except LockedError as e:
            event["error"] = f"locked: {e}"
        except StalledError as e:
            event["error"] = f"stalled: {e}"
            agent.done = True  # the daemon waits for a person: the sim's figures show it
        except AgentError as e:
            event["error"] = f"transient: {e}"
            self.back_off(agent, now)
        except Exception as e:  # a bug: log it and carry on, as the daemon does
            event["error"] = f"bug: {type(e).__name__}: {e}"
            self.back_off(agent, now)
        else:
            p = c.publish
            event.update(run=c.run_id, sha=c.source.sha if c.source else None,
                         fetch_error=c.source.fetch_error if c.source else None,
                         committed=list(p.committed) if p else [],
                         queued=p.queued if p else 0, pushed=bool(p and p.pushed),
                         push_error=p.error if p else None)
            agent.queued = p.queued if p else 0
            agent.last = Inputs(agent.config, c.source.sha if c.source else "", (), None)
            agent.last_cycle_at = self.sim()  # as the daemon: when the cycle ended
            if c.source and c.source.fetch_error:
                self.back_off(agent, now)
            else:
                agent.failures, agent.retry_at = 0, 0.0
            if inputs.sha != agent.last.sha:
                agent.last = None  # not the head yet (a failed fetch): due again after backoff
        event["end"] = time.time()
        self.emit(**event)

    def back_off(self, agent: Agent, now: float) -> None:
        d = agent.config.daemon
        agent.failures += 1
        agent.retry_at = now + backoff_delay(agent.failures, d.fetch_interval, d.backoff_max,
                                             agent.rng.random)

    # -- the schedule ----------------------------------------------------------------------

    def tick(self, agent: Agent, now: float) -> bool:
        """Decide at sim time NOW whether AGENT's daemon starts a cycle."""
        if self.over(agent, now):
            agent.done = True
            return False
        if now >= float(self.spec["give_up"]):
            agent.done = True
            self.emit(kind="gave_up", agent=agent.name, queued=agent.queued)
            return False
        if now < agent.retry_at:
            return False
        since = None if agent.last_cycle_at is None else now - agent.last_cycle_at
        why = cycle_due(agent.last, Inputs(agent.config, self.sha, (), None), since,
                        agent.config.daemon.check_interval, False)
        return why is not None

    def schedule(self, agent: Agent, after: float) -> None:
        if not agent.done:
            heapq.heappush(self.heap, (agent.next_tick(after), agent.index))
            self.wake.notify()

    def finished(self, agent: Agent, future: Any) -> None:
        with self.lock:
            agent.busy = False
            now = self.sim()
            # What its next tick would decide, decided now: nothing a tick reads (the span,
            # the queue, the last cycle) changes before it, so the run ends a tick sooner.
            if self.over(agent, agent.next_tick(now)):
                agent.done = True
                return
            self.schedule(agent, now)

    def over(self, agent: Agent, now: float) -> bool:
        """The measured span is over for AGENT and nothing waits in its queue."""
        return now >= float(self.spec["duration"]) and not agent.queued and \
            agent.last is not None

    def run(self, pool: ThreadPoolExecutor) -> None:
        with self.lock:
            for agent in self.agents:
                self.schedule(agent, -1e-9)
            parent = os.getppid()
            while self.heap or any(a.busy for a in self.agents):
                if os.getppid() != parent:
                    raise SystemExit("fleet_worker: fleet.py is gone")
                if not self.heap:
                    self.wake.wait(1.0)
                    continue
                due, index = self.heap[0]
                delay = self.real(due) - time.time()
                if delay > 0:
                    self.wake.wait(min(delay, 1.0))
                    continue
                heapq.heappop(self.heap)
                agent = self.agents[index]
                if agent.busy:
                    continue  # its cycle still runs: the ticker skips, `finished` reschedules
                if not self.tick(agent, due):
                    self.schedule(agent, due)
                    continue
                agent.busy = True
                future = pool.submit(self.run_agent_cycle, agent, due)
                future.add_done_callback(lambda f, a=agent: self.finished(a, f))


def load_agents(spec: dict[str, Any]) -> list[Agent]:
    agents = []
    for i, entry in enumerate(spec["agents"]):
        config = load_config(Path(entry["config"]))
        rng = random.Random(f"{spec['seed']}/{entry['name']}/{spec.get('restart_at', 0)}")
        # The daemon's first tick waits a random [0, splay) after it starts (here: after the
        # source commit landed, or after a restart), then it ticks every fetch_interval.
        phase = float(spec.get("restart_at", 0.0)) + rng.uniform(0, config.daemon.splay)
        agent = Agent(i, entry["name"], config, rng, phase)
        agent.drift = 1 if rng.random() < float(spec["drift"]) else 0
        agents.append(agent)
    return agents


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    logging.basicConfig(filename=spec["errors"], level=logging.WARNING,
                        format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    with open(spec["log"], "a", buffering=1) as log, open(spec["errors"], "a") as err:
        faulthandler.register(signal.SIGUSR1, file=err, all_threads=True)  # where it hangs
        worker = Worker(spec, log, load_agents(spec))
        with ThreadPoolExecutor(int(spec["threads"]), thread_name_prefix="agent") as pool:
            if not spec.get("restart"):
                first, *others = worker.agents
                worker.warm_up(first)
                list(pool.map(lambda a: worker.warm_up(a, first), others))
                print("warm", flush=True)
                go = sys.stdin.readline().split()  # "go T0 SHA BASE"
                if not go or go[0] != "go":
                    return 1
                spec.update(t0=float(go[1]), sha=go[2], base=go[3])
            worker.t0, worker.sha = float(spec["t0"]), spec["sha"]
            worker.base = datetime.fromisoformat(spec["base"])
            worker.run(pool)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
