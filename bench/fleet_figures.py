"""The figures of a bench/fleet.py run, read from the server's side and from the agents' logs.

Nothing here trusts the code under test's own account: the reports on the remote are the
commits reachable from its refs (plain git), when each landed is the post-receive hook's log,
every ref update is checked for a fast-forward in the remote's reflog, pushes and fetches are
counted in git daemon's log.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ZERO = "0" * 40
Report = tuple[str, str]  # (host, run id): one report commit, whatever copy of it


@dataclass
class Figures:
    agents: int
    workers: int
    threads: int
    time_scale: float
    splay: float
    check_interval: float
    heartbeat: float
    drift: float
    duration: float
    fault: str | None
    code: str = ""
    faults: list[str] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)
    real_seconds: float = 0.0
    cycles: int = 0
    cycle_errors: dict[str, int] = field(default_factory=dict)
    error_sample: list[str] = field(default_factory=list)
    lag: tuple[float, float, float] = (0.0, 0.0, 0.0)  # cycle start after its tick: p50 p99 max
    committed: int = 0
    on_remote: int = 0
    lost: list[str] = field(default_factory=list)
    gave_up: int = 0
    unlanded: list[str] = field(default_factory=list)  # still queued when the agents stopped
    stale: list[str] = field(default_factory=list)
    pushes: int = 0  # receive-pack runs (git daemon's log)
    landed_pushes: int = 0  # pushes that updated a ref (post-receive runs)
    fetches: int = 0  # upload-pack runs
    client_pushes: int = 0  # push attempts the agents made (landed, rejected, failed)
    client_push_failures: int = 0
    push_errors: dict[str, int] = field(default_factory=dict)  # by kind, as the agents logged
    fetch_errors: dict[str, int] = field(default_factory=dict)  # failed fetches of a cycle
    latency: tuple[float, float, float] = (0.0, 0.0, 0.0)  # commit to landed: p50 p99 max
    server_cpu: float = 0.0
    remote_growth: int = 0  # allocated bytes the run added to the remote, as pushed
    reports_packed: int = 0  # bytes of a pack of every report object
    fleet_read: float = 0.0  # seconds to read every host's newest report
    fleet_read_how: str = ""
    fleet_hosts: int = 0
    ref_updates: int = 0
    forced: list[str] = field(default_factory=list)
    deletions: int = 0
    # --fault kill: the killed worker's reports committed before the kill, by when they landed
    killed_before: int = 0  # landed before the worker restarted (the interrupted push landed)
    killed_after: int = 0  # landed after it restarted: pushed by the agent's next start

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unlanded or self.forced or self.stale or self.gave_up or
                    self.deletions)

    @property
    def verdict(self) -> str:
        if self.ok:
            return "OK: every report landed, none lost, no push forced"
        problems = [f"{len(self.lost)} report(s) lost" if self.lost else "",
                    f"{len(self.unlanded)} report(s) of {self.gave_up} agent(s) still queued "
                    "when the agents gave up" if self.unlanded or self.gave_up else "",
                    f"{len(self.forced)} forced update(s)" if self.forced else "",
                    f"{self.deletions} deleted ref(s)" if self.deletions else "",
                    f"{len(self.stale)} host(s) whose newest report is not on the remote"
                    if self.stale else ""]
        return "FAILED: " + "; ".join(p for p in problems if p)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- reading ---------------------------------------------------------------------------------

def git_lines(git_dir: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    return out.splitlines()


TRAILERS = ("%(trailers:key=Petkeeper-Host,valueonly,separator=%x2C)%x1f"
            "%(trailers:key=Petkeeper-Run,valueonly,separator=%x2C)")


def graph(remote: Path) -> dict[str, tuple[list[str], Report | None]]:
    """Every commit reachable from the remote's refs: its parents and the report it holds."""
    commits: dict[str, tuple[list[str], Report | None]] = {}
    for line in git_lines(remote, "log", "--all", f"--format=%H%x1f%P%x1f{TRAILERS}"):
        sha, parents, host, run = line.split("\x1f")
        commits[sha] = (parents.split(), (host, run) if host and run else None)
    return commits


def own_reports(mirror: Path, host: str, queued: bool = False) -> set[Report]:
    """The report commits of HOST that an agent's mirror holds (queued, or pushed); with
    QUEUED, only those its queue refs (refs/petkeeper/...) hold."""
    if not mirror.is_dir():
        return set()
    refs = "--glob=refs/petkeeper" if queued else "--all"
    lines = git_lines(mirror, "log", refs, f"--format={TRAILERS}")
    return {(h, r) for h, r in (line.split("\x1f") for line in lines) if h == host and r}


def events(workdir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(workdir.glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # the last line of a killed worker may be cut short
    return found


def updates(workdir: Path) -> list[tuple[float, str, str, str, str]]:
    """The post-receive log: (time, hook pid, old, new, ref), oldest first."""
    path = workdir / "updates.log"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        t, pid, old, new, ref = line.split()
        rows.append((float(t), pid, old, new, ref))
    return sorted(rows)


def reflog(remote: Path) -> list[tuple[str, str, str]]:
    """Every ref update the remote logged: (ref, old, new)."""
    rows = []
    logs = remote / "logs" / "refs"
    for path in sorted(p for p in logs.rglob("*") if p.is_file()):
        ref = str(path.relative_to(remote / "logs"))
        for line in path.read_text().splitlines():
            old, new = line.split()[:2]
            rows.append((ref, old, new))
    return rows


def descends(commits: dict[str, tuple[list[str], Report | None]], new: str, old: str) -> bool:
    """Whether OLD is NEW or one of its ancestors, among the remote's reachable commits."""
    seen, todo = set(), [new]
    while todo:
        sha = todo.pop()
        if sha == old:
            return True
        if sha in seen or sha not in commits:
            continue
        seen.add(sha)
        todo += commits[sha][0]
    return False


def landed_at(commits: dict[str, tuple[list[str], Report | None]],
              rows: Iterable[tuple[float, str, str, str, str]]) -> dict[Report, float]:
    """When each report first became reachable from a ref, from the hook's log."""
    when: dict[Report, float] = {}
    seen: set[str] = set()
    for t, _, _, new, _ in rows:
        todo = [new]
        while todo:
            sha = todo.pop()
            if sha in seen or sha not in commits:
                continue
            seen.add(sha)
            parents, report = commits[sha]
            if report is not None:
                when.setdefault(report, t)
            todo += parents
    return when


def read_fleet(url: str, workdir: Path) -> tuple[float, dict[str, str], str]:
    """Run `petkeeper fleet --json` over the remote as a new reader would (a fresh cache);
    return the seconds it took, host -> the commit of its newest report, and how it read."""
    cache = workdir / "fleet-cache.git"
    argv = [sys.executable, "-m", "agent", "fleet", "--repo", url, "--cache", str(cache),
            "--stale", "3650d", "--json"]
    start = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - start
    if r.returncode not in (0, 2):  # 0 all clean, 2 drift: the simulated hosts drift
        raise SystemExit(f"fleet: petkeeper fleet exited {r.returncode}: {r.stderr[-2000:]}")
    view = json.loads(r.stdout)
    newest = {h["host"]: h["commit"] for h in view["hosts"] if h.get("commit")}
    return seconds, newest, ("`petkeeper fleet --json`, fresh cache: the tips of every "
                             "host's branch (depth 1), their reports in one cat-file batch")


# -- the figures -----------------------------------------------------------------------------

def push_error_kind(message: str) -> str:
    """A push error without what differs between agents (counts, hosts, URLs)."""
    if "rejected (the remote moved)" in message:
        return "rejected: the remote moved"
    return re.sub(r"git://\S+|\d+", "N", message)[:100]


def pct(values: Sequence[float], q: float) -> float:
    """The Q-th percentile by nearest rank (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return (pct(values, 50), pct(values, 99), max(values, default=0.0))


def measure(args: argparse.Namespace, workdir: Path, remote: Path, names: list[str],
            t0: float, before: dict[str, Any], after: dict[str, Any]) -> Figures:
    f = Figures(args.agents, args.workers, args.threads, args.time_scale, args.splay,
                args.check_interval, args.heartbeat, args.drift, args.duration, args.fault,
                faults=after["faults"], load=(before["load"], after["load"]),
                real_seconds=after["real"], server_cpu=after["cpu"] - before["cpu"])
    log = events(workdir)
    cycles = [e for e in log if e["kind"] == "cycle"]
    f.cycles = len(cycles)
    f.gave_up = sum(1 for e in log if e["kind"] == "gave_up" and e["queued"])
    errors = [e["error"] for e in cycles if e.get("error")]
    f.cycle_errors = dict(Counter(err.split(":", 1)[0] for err in errors))
    f.error_sample = sorted(set(errors))[:5]
    f.lag = spread([(e["start"] - e["due"]) / args.time_scale for e in cycles])
    f.client_pushes = sum(1 for e in cycles if e.get("pushed") or e.get("push_error"))
    f.client_push_failures = sum(1 for e in cycles if e.get("push_error"))
    f.push_errors = dict(Counter(push_error_kind(e["push_error"]) for e in cycles
                                 if e.get("push_error")))
    f.fetch_errors = dict(Counter(push_error_kind(e["fetch_error"]) for e in cycles
                                  if e.get("fetch_error")))

    started = {e["run"]: e["t"] for e in log if e["kind"] == "record"}
    # committed: host names, or (host, file) pairs of the per-host layout's record step
    committed = {(c if isinstance(c, str) else c[0], e["run"]) for e in cycles
                 for c in e.get("committed", [])}
    for name in names:  # commits a killed cycle made but could not log
        committed |= own_reports(workdir / "agents" / name / "mirror.git", name)
    committed = {r for r in committed if r[1] in started}  # this run's, not the warm-up's
    commits = graph(remote)
    on_remote = {rep for _, rep in commits.values() if rep is not None and rep[1] in started}
    f.committed, f.on_remote = len(committed), len(on_remote)
    missing = committed - on_remote
    queued = set().union(*(own_reports(workdir / "agents" / h / "mirror.git", h, queued=True)
                           for h in {h for h, _ in missing}))
    f.unlanded = sorted(f"{h} run {r}" for h, r in missing & queued)
    f.lost = sorted(f"{h} run {r}" for h, r in missing - queued)

    rows = updates(workdir)
    f.ref_updates = len(rows)
    # A push runs the hook once, logging each ref it updated: a new push wherever the hook's
    # pid changes (not the number of distinct pids: a long run wraps the pid counter).
    f.landed_pushes = sum(1 for i, row in enumerate(rows) if i == 0 or row[1] != rows[i - 1][1])
    landed = landed_at(commits, rows)
    f.latency = spread([(landed[r] - started[r[1]]) / args.time_scale
                        for r in committed if r in landed])
    killed = after.get("killed") or {}
    if killed.get("restart"):
        theirs = [r for r in committed if r[0] in set(killed["agents"]) and
                  started[r[1]] < killed["at"] and r in landed]
        f.killed_after = sum(1 for r in theirs if landed[r] >= killed["restart"])
        f.killed_before = len(theirs) - f.killed_after
    history = reflog(remote)
    f.forced = [f"{ref} {old[:12]} -> {new[:12]}" for ref, old, new in history
                if old != ZERO and new != ZERO and not descends(commits, new, old)]
    f.deletions = sum(1 for _, _, new in history if new == ZERO)

    newest: dict[str, tuple[float, str]] = {}
    for host, run in committed:
        newest[host] = max(newest.get(host, (0.0, "")), (started[run], run))
    f.fleet_read, tips, f.fleet_read_how = after["fleet"]
    run_of = {sha: rep[1] for sha, (_, rep) in commits.items() if rep is not None}
    remote_newest = {host: run_of.get(sha) for host, sha in tips.items()}
    f.fleet_hosts = len(remote_newest)
    f.stale = sorted(f"{h}: remote has {remote_newest.get(h)}, agent's newest is {run}"
                     for h, (_, run) in newest.items() if remote_newest.get(h) != run)

    daemon_log = after["daemon_log"][before["log"]:]
    f.pushes = daemon_log.count("Request receive-pack")
    f.fetches = daemon_log.count("Request upload-pack")
    f.remote_growth = after["size"] - before["size"]
    f.reports_packed = packed_reports(remote)
    return f


def packed_reports(remote: Path) -> int:
    """Bytes of one pack of every object the report refs hold beyond the source branch."""
    refs = [r for r in git_lines(remote, "for-each-ref", "--format=%(refname)")
            if r != "refs/heads/main"]
    if not refs:
        return 0
    objects = subprocess.run(["git", "--git-dir", str(remote), "rev-list", "--objects", *refs,
                              "--not", "refs/heads/main"], capture_output=True, timeout=600,
                             check=True).stdout
    pack = subprocess.run(["git", "--git-dir", str(remote), "pack-objects", "--stdout", "-q"],
                          input=objects, capture_output=True, timeout=600, check=True).stdout
    return len(pack)


# -- printing --------------------------------------------------------------------------------

def print_figures(f: Figures) -> None:
    k = f.time_scale
    per = max(f.on_remote, 1)

    def row(what: str, value: str) -> None:
        print(f"  {what:34} {value}")

    print(f"\n== fleet: {f.agents} agents, splay {f.splay:g}s, check_interval "
          f"{f.check_interval:g}s, heartbeat {f.heartbeat:g}s"
          + (f", fault: {f.fault}" if f.fault else "")
          + f"\n   agent code {f.code}; time scale {k:g} (simulated seconds below; real = x"
          f"{k:g}); {f.real_seconds:.0f} real seconds; load average {f.load[0]:.1f} -> "
          f"{f.load[1]:.1f}")
    for line in f.faults:
        row("fault", line)
    if f.killed_before or f.killed_after:
        row("killed worker's earlier reports", f"{f.killed_before + f.killed_after} committed "
            f"before the kill: {f.killed_after} landed after its restart, {f.killed_before} "
            "before it")
    row("reports committed", f"{f.committed}")
    row("reports on the remote", f"{f.on_remote}")
    row("still queued when agents gave up", f"{len(f.unlanded)}" +
        (f"  e.g. {', '.join(f.unlanded[:2])}" if f.unlanded else ""))
    row("lost (neither landed nor queued)", f"{len(f.lost)}" +
        (f"  e.g. {', '.join(f.lost[:3])}" if f.lost else ""))
    row("newest report wrong on the remote", f"{len(f.stale)}"
        + (f"  e.g. {f.stale[0]}" if f.stale else ""))
    row("agents that gave up with a queue", f"{f.gave_up}")
    row("pushes per report", f"{f.pushes / per:.2f} ({f.pushes} receive-packs, "
        f"{f.landed_pushes} landed); by the agents: {f.client_pushes} attempts, "
        f"{f.client_push_failures} rejected or failed")
    for kind, n in sorted(f.push_errors.items()):
        print(f"      {n:5} x {kind}")
    # A killed worker's last attempts are in no log; its push may have landed all the same.
    row("retries per report", f"{max(0, f.client_pushes - f.landed_pushes) / per:.2f}")
    row("commit to landed", "p50 {:.2f}s, p99 {:.2f}s, max {:.2f}s".format(*f.latency))
    row("git server CPU", f"{f.server_cpu:.1f}s (git daemon and its children), "
        f"{1000 * f.server_cpu / per:.0f} ms per report; {f.fetches} fetches served")
    row("remote size per 1,000 reports", f"{f.remote_growth / per * 1000 / 2**20:.2f} MiB on "
        f"disk as pushed, {f.reports_packed / per * 1000 / 2**20:.2f} MiB packed")
    row("petkeeper fleet", f"{f.fleet_read:.2f}s real for {f.fleet_hosts} hosts "
        f"({f.fleet_read_how})")
    row("ref updates", f"{f.ref_updates}; forced {len(f.forced)}; deleted {f.deletions}"
        + (f"  e.g. {f.forced[0]}" if f.forced else ""))
    row("cycles", f"{f.cycles}; errors {f.cycle_errors or 'none'}; failed fetches "
        f"{sum(f.fetch_errors.values())}")
    for kind, n in sorted(f.fetch_errors.items()):
        print(f"      {n:5} x {kind}")
    for err in f.error_sample:
        print(f"      {err[:160]}")
    row("cycle start after its tick", "p50 {:.2f}s, p99 {:.2f}s, max {:.2f}s (the sim's own "
        "lag)".format(*f.lag))
    print(f"  verdict: {f.verdict}")
