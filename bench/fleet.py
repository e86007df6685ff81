"""Fleet simulation: N agents publish their reports to one Git server, nothing may be lost.

Usage (not part of the test suite; the machine's heavy lock, one run at a time)::

    .venv/bin/python bench/fleet.py --agents 100
    .venv/bin/python bench/fleet.py --agents 1000 --time-scale 5
    .venv/bin/python bench/fleet.py --agents 300 --fault outage   # or refuse, kill

One bare remote (this project's playbooks/ and inventories/, ``agent.demo.seed_repo``) is
served by ``git daemon --enable=receive-pack`` on 127.0.94.1 (the git:// transport on
loopback). N agents each have their own agent.yml and state directory (mirror, queue, lock);
they share --workers processes (bench/fleet_worker.py), each running its agents' cycles on
--threads threads from an event schedule. A cycle is Petkeeper's own ``run_cycle`` with the
real fetch, record (queue, commit, push; rebase on reject) and save steps around a simulated
detect step that yields a HostReport of real shape (clean, or drifted with a diff of
/etc/motd), so no Ansible runs. Whatever layout the record step writes, this measures it.

The pattern: every agent has fetched the old source (warm-up, not measured); then a source
commit lands at t=0. Each agent's daemon ticks every daemon.fetch_interval (= --splay) at its
own random phase, so each commits its report within the splay; then it cycles again once
--check-interval has passed since its last cycle ended (at the next tick: with the defaults,
a cycle a minute), committing a heartbeat once --heartbeat has passed (every second cycle) and
a new report when its drift changes (--drift: the chance per cycle). After --duration (two
more cycles), an agent stops once nothing waits in its queue (it gives up at --give-up). When
a cycle runs is the daemon's own ``cycle_due`` and ``backoff_delay``; a rejected push waits
for the next cycle, as in the daemon.

Time is scaled: one simulated second lasts --time-scale real seconds (default N/200, at least
1), because the agents' client side (a real fleet has a CPU per pet) shares this machine's
cores. Every figure is in simulated seconds, for the scaled run: a push that takes 0.5 real
seconds shows as 0.1 s at --time-scale 5.

Measured from the server's side, not from the code under test: a post-receive hook logs every
ref update with the time (bash's EPOCHREALTIME); git daemon's --verbose log counts
receive-pack and upload-pack runs; /proc gives the CPU of git daemon and its children. At the
end: reports committed (each agent's log, and every commit of its own host its mirror holds),
reports on the remote (every commit reachable from its refs), lost (committed, not on the
remote: must be 0), newest report per host as the remote has it against each agent's newest,
every ref update a fast-forward (forced: must be 0).

Faults (--fault, at --fault-at simulated seconds, for --fault-for):
  outage  git daemon killed (its process group), restarted after --fault-for
  refuse  a pre-receive hook exits 1 while a flag file exists (--fault-for)
  kill    SIGKILL of a worker process and every git it runs, while one of its agents
          pushes (the push held in a pre-receive hook until the kill, then refused: cut
          before the server took it); the worker restarts after 30 s (the unit's
          RestartSec) and its agents' queued reports must land
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_check, run as a script too

from bench_check import code_commit, tree_cpu
from fleet_figures import Figures, measure, print_figures, read_fleet

from agent.demo import seed_repo

ADDRESS = "127.0.94.1"
HERE = Path(__file__).resolve().parent
POST_RECEIVE = """#!/bin/bash
# fleet.py: when each ref update landed, as this machine's clock says (microseconds)
while read -r old new ref; do
  printf '%s %s %s %s %s\\n' "$EPOCHREALTIME" "$$" "$old" "$new" "$ref"
done >> {log}
"""
HOLD_ONE_PUSH = """#!/bin/sh
# fleet.py --fault kill: the first push once the hold flag exists waits here until fleet.py
# has killed the agent that made it, then is refused: a push cut before the server took it
if [ -e {flag} ] && mkdir {held} 2>/dev/null; then
  read -r old new ref
  printf '%s\\n' "$ref" > {held}/ref.tmp && mv {held}/ref.tmp {held}/ref
  while [ -e {flag} ]; do sleep 0.02; done
  echo "push cut by fault injection: its agent was killed" >&2
  exit 1
fi
"""
PRE_RECEIVE = """#!/bin/sh
# fleet.py --fault refuse: every push is refused while the flag file exists
if [ -e {flag} ]; then echo "pushes refused for a while (fault injection)" >&2; exit 1; fi
"""
RESTART_SEC = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2)  # systemd/petkeeper.service: RestartSec=30s


# -- the Git server --------------------------------------------------------------------------

@dataclass
class Server:
    """git daemon serving WORKDIR/srv on ADDRESS:PORT, restartable; its CPU is summed."""

    srv: Path
    address: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    cpu_done: float = 0.0  # CPU of instances already stopped

    @property
    def url(self) -> str:
        return f"git://{self.address}:{self.port}/fleet.git"

    def start(self) -> None:
        daemon = Path(git_out("--exec-path")) / "git-daemon"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(daemon), "--reuseaddr", f"--listen={self.address}", f"--port={self.port}",
                 f"--base-path={self.srv}", "--export-all", "--enable=receive-pack",
                 "--max-connections=0", "--informative-errors", "--verbose",
                 "--log-destination=stderr", str(self.srv)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 10
        while not listening(self.address, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fleet: git daemon did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def cpu(self) -> float:
        """CPU seconds of every instance: git daemon, its reaped children, the live ones."""
        return self.cpu_done + (tree_cpu(self.proc.pid) if self.proc else 0.0)

    def stop(self, graceful: bool = True) -> None:
        """Stop it: gracefully once its children are done, or at once with them all."""
        if self.proc is None:
            return
        if graceful:
            deadline = time.monotonic() + 10
            while children(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.cpu_done += tree_cpu(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None


def die_with_parent() -> None:
    """In a child about to exec: the kernel sends it SIGTERM when fleet.py ends, however it
    ends (a session of its own would otherwise outlive a killed run)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every process below PID, whichever of its threads started it."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found += [kid, *descendants(kid)]
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def git_out(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}).stdout.strip()


def set_up_remote(workdir: Path, args: argparse.Namespace) -> Path:
    srv = workdir / "srv"
    remote = seed_repo(srv / "fleet.git", workdir / "seed")
    hooks = remote / "hooks"
    (hooks / "post-receive").write_text(POST_RECEIVE.format(log=workdir / "updates.log"))
    (hooks / "post-receive").chmod(0o755)
    if args.fault == "refuse":
        (hooks / "pre-receive").write_text(PRE_RECEIVE.format(flag=workdir / "refuse"))
        (hooks / "pre-receive").chmod(0o755)
    elif args.fault == "kill":
        (hooks / "pre-receive").write_text(HOLD_ONE_PUSH.format(flag=workdir / "hold",
                                                                held=workdir / "held"))
        (hooks / "pre-receive").chmod(0o755)
    # The ref history the checks below read besides the hook's log: every update, with its
    # old and new value (a forced push would show as a new value that does not descend).
    git_out("--git-dir", str(remote), "config", "core.logAllRefUpdates", "always")
    return remote


def land_source_commit(remote: Path, workdir: Path) -> str:
    """A new commit on main, as an admin's push would land it (a changed motd template)."""
    index = {"GIT_INDEX_FILE": str(workdir / "admin.index")}
    gd = ["--git-dir", str(remote)]
    git_out(*gd, "read-tree", "main", env=index)
    path = "playbooks/roles/baseline/templates/motd.j2"
    text = git_out(*gd, "cat-file", "blob", f"main:{path}") + "\n# fleet simulation\n"
    blob = subprocess.run(["git", *gd, "hash-object", "-w", "--stdin"], input=text, text=True,
                          capture_output=True, check=True, timeout=60).stdout.strip()
    git_out(*gd, "update-index", "--cacheinfo", f"100644,{blob},{path}", env=index)
    tree = git_out(*gd, "write-tree", env=index)
    who = {"GIT_AUTHOR_NAME": "Admin", "GIT_AUTHOR_EMAIL": "admin@fleet.invalid",
           "GIT_COMMITTER_NAME": "Admin", "GIT_COMMITTER_EMAIL": "admin@fleet.invalid"}
    sha = git_out(*gd, "commit-tree", tree, "-p", "main", "-m", "The motd says more", env=who)
    git_out(*gd, "update-ref", "refs/heads/main", sha)
    return sha


# -- agents and workers ----------------------------------------------------------------------

def agent_config(workdir: Path, name: str, url: str, args: argparse.Namespace) -> Path:
    """The agent.yml of one simulated pet: one repo for source and reports, as by default."""
    data = {"repo": {"url": url, "branch": "main", "timeout": "120s"},
            "limit": name,
            "state_dir": str(workdir / "agents" / name),
            "reports": {"heartbeat": f"{args.heartbeat:g}s"},
            "daemon": {"fetch_interval": f"{args.splay:g}s", "splay": f"{args.splay:g}s",
                       "check_interval": f"{args.check_interval:g}s"}}
    path = workdir / "configs" / f"{name}.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Workers:
    """The worker processes, each in a session of its own."""

    workdir: Path
    specs: list[dict[str, Any]] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)

    def spawn(self, spec: dict[str, Any]) -> subprocess.Popen[str]:
        path = self.workdir / f"worker-{spec['worker']}-{len(self.kills)}.json"
        path.write_text(json.dumps(spec))
        return subprocess.Popen([sys.executable, str(HERE / "fleet_worker.py"), str(path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                start_new_session=True, cwd=self.workdir,
                                preexec_fn=die_with_parent)

    def start(self, specs: list[dict[str, Any]]) -> None:
        self.specs = specs
        self.procs = [self.spawn(s) for s in specs]
        for i, proc in enumerate(self.procs):
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "warm":
                raise SystemExit(f"fleet: worker {i} failed its warm-up; see "
                                 f"{specs[i]['errors']}")

    def go(self, t0: float, sha: str, base: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {t0!r} {sha} {base}\n")
            proc.stdin.flush()

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def pushing(self, index: int) -> int | None:
        """The pid of a `git push` worker INDEX runs now, if any."""
        for pid in descendants(self.procs[index].pid):
            argv = cmdline(pid)
            if len(argv) > 1 and argv[0].endswith("git") and "push" in argv[1:3]:
                return pid
        return None

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, index: int, t0: float, sha: str, base: str, at: float) -> None:
        spec = {**self.specs[index], "restart": 1, "restart_at": at, "t0": t0, "sha": sha,
                "base": base}
        self.kills.append({"worker": index, "restart_at": at})
        self.procs[index] = self.spawn(spec)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def worker_specs(workdir: Path, names: list[str], configs: list[Path],
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    specs = []
    for w in range(args.workers):
        mine = list(range(w, len(names), args.workers))
        specs.append({"worker": w, "agents": [{"name": names[i], "config": str(configs[i])}
                                              for i in mine],
                      "threads": args.threads, "time_scale": args.time_scale,
                      "drift": args.drift, "duration": args.duration, "give_up": args.give_up,
                      "seed": args.seed, "log": str(workdir / f"events-{w}.jsonl"),
                      "errors": str(workdir / f"errors-{w}.log")})
    return specs


# -- one run ---------------------------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    workdir: Path
    server: Server
    workers: Workers
    t0: float = 0.0
    sha: str = ""
    base: str = ""
    faults: list[str] = field(default_factory=list)
    killed: dict[str, Any] = field(default_factory=dict)  # --fault kill: whom, when (real)

    def sim(self) -> float:
        return (time.time() - self.t0) / self.args.time_scale

    def sleep_until(self, sim: float) -> None:
        while self.sim() < sim and self.workers.running():
            time.sleep(min(0.05, max(0.0, (sim - self.sim()) * self.args.time_scale)))

    def wait_workers(self) -> None:
        deadline = self.t0 + (self.args.give_up + 60) * self.args.time_scale
        while self.workers.running():
            if time.time() > deadline:
                self.workers.stop_all()
                raise SystemExit("fleet: the workers did not finish in time; see "
                                 f"{self.workdir}/errors-*.log")
            time.sleep(0.2)

    def fault(self) -> None:
        a = self.args
        self.sleep_until(a.fault_at)
        if a.fault == "outage":
            self.server.stop(graceful=False)
            self.faults.append(f"git daemon killed at {self.sim():.1f}s")
            self.sleep_until(a.fault_at + a.fault_for)
            self.server.start()
            self.faults.append(f"git daemon back at {self.sim():.1f}s")
        elif a.fault == "refuse":
            flag = self.workdir / "refuse"
            flag.touch()
            self.faults.append(f"pushes refused from {self.sim():.1f}s")
            self.sleep_until(a.fault_at + a.fault_for)
            flag.unlink()
            self.faults.append(f"pushes accepted again from {self.sim():.1f}s")
        elif a.fault == "kill":
            self.kill_mid_push()

    def kill_mid_push(self) -> None:
        """Hold the first push from --fault-at in the remote's pre-receive hook, SIGKILL the
        worker whose agent made it (with every git it runs), then let the hook refuse it: a
        push cut before the server took it, whose report must land on the agent's next start.
        (A push killed at a random moment on loopback has mostly sent its pack already, and
        the server takes it all the same: the case where nothing is lost anyway.)"""
        flag, held = self.workdir / "hold", self.workdir / "held"
        self.sleep_until(self.args.fault_at)
        flag.touch()
        deadline = time.time() + self.args.fault_for * self.args.time_scale
        while not (held / "ref").exists():
            if time.time() > deadline or not self.workers.running():
                flag.unlink()
                raise SystemExit("fleet: --fault kill: no push came to interrupt")
            time.sleep(0.01)
        host = (held / "ref").read_text().strip().rsplit("/", 1)[-1]
        index = next(i for i, spec in enumerate(self.workers.specs)
                     if host in {a["name"] for a in spec["agents"]})
        push = self.workers.pushing(index)
        self.workers.kill(index)
        flag.unlink()  # the hook refuses the held push: its client is gone
        at = self.sim()
        self.killed = {"agents": [a["name"] for a in self.workers.specs[index]["agents"]],
                       "at": time.time()}
        self.faults.append(f"worker {index} (pid {self.workers.procs[index].pid}, "
                           f"{len(self.workers.specs[index]['agents'])} agents) killed at "
                           f"{at:.1f}s while {host}'s push (pid {push}) waited in the "
                           "server's pre-receive hook")
        self.sleep_until(at + RESTART_SEC)
        self.workers.restart(index, self.t0, self.sha, self.base, self.sim())
        self.killed["restart"] = time.time()
        self.faults.append(f"worker {index} restarted at {self.sim():.1f}s")


def simulate(args: argparse.Namespace, workdir: Path) -> Figures:
    for sub in ("agents", "configs"):
        (workdir / sub).mkdir(parents=True)
    remote = set_up_remote(workdir, args)
    server = Server(workdir / "srv", args.address, free_port(args.address),
                    workdir / "git-daemon.log")
    server.start()
    names = [f"pet{i:04d}" for i in range(1, args.agents + 1)]
    configs = [agent_config(workdir, n, server.url, args) for n in names]
    run = Run(args, workdir, server, Workers(workdir))
    try:
        t = time.monotonic()
        run.workers.start(worker_specs(workdir, names, configs, args))
        say(f"{args.agents} agents fetched the first source (warm-up, not measured) in "
            f"{time.monotonic() - t:.0f}s")
        run.sha = land_source_commit(remote, workdir)
        before = {"cpu": server.cpu(), "size": disk_size(remote),
                  "log": server.log.stat().st_size, "load": os.getloadavg()[0]}
        run.base = datetime.now(UTC).replace(microsecond=0).isoformat()
        run.t0 = time.time()
        run.workers.go(run.t0, run.sha, run.base)
        if args.fault:
            run.fault()
        run.wait_workers()
        real = time.time() - run.t0
        say(f"every agent done after {real:.0f} real seconds")
        server.stop()
        after: dict[str, Any] = {"cpu": server.cpu(), "load": os.getloadavg()[0], "real": real,
                                 "faults": run.faults, "killed": run.killed,
                                 "size": disk_size(remote),
                                 "daemon_log": server.log.read_text(errors="replace")}
        server.start()  # for the reader alone
        after["fleet"] = read_fleet(server.url, workdir)
        say(f"petkeeper fleet read the remote in {after['fleet'][0]:.1f}s; measuring")
        t = time.monotonic()
        figures = measure(args, workdir, remote, names, run.t0, before, after)
        say(f"measured in {time.monotonic() - t:.0f}s")
        return figures
    finally:
        run.workers.stop_all()
        server.stop(graceful=False)


def disk_size(path: Path) -> int:
    """Allocated bytes under PATH (what du counts)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def say(text: str) -> None:
    print(f"fleet: {text}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--agents", type=int, default=100, help="simulated pets (default 100)")
    p.add_argument("--splay", type=float, default=30.0,
                   help="seconds over which the agents notice a source commit (default 30)")
    p.add_argument("--check-interval", type=float, default=30.0,
                   help="daemon.check_interval of the agents, seconds (default 30: with the "
                   "tick, a cycle every minute)")
    p.add_argument("--heartbeat", type=float, default=90.0,
                   help="reports.heartbeat of the agents, seconds (default 90: every second "
                   "cycle)")
    p.add_argument("--drift", type=float, default=0.1,
                   help="chance that a host's drift changes before a cycle (default 0.1)")
    p.add_argument("--duration", type=float, default=None,
                   help="simulated seconds of new reports (default: two more cycles after "
                   "the first, splay + 2 x (check interval + splay))")
    p.add_argument("--give-up", type=float, default=None,
                   help="simulated second at which agents stop pushing (default duration + "
                   "10 check intervals)")
    p.add_argument("--time-scale", type=float, default=None,
                   help="real seconds per simulated second (default agents/200, at least 1)")
    p.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    p.add_argument("--threads", type=int, default=8,
                   help="threads per worker: cycles that may run at once (default 8)")
    p.add_argument("--fault", choices=("outage", "refuse", "kill"), default=None)
    p.add_argument("--fault-at", type=float, default=None,
                   help="simulated second of the fault (default mid-splay)")
    p.add_argument("--fault-for", type=float, default=30.0,
                   help="simulated seconds the outage or refusal lasts (default 30)")
    p.add_argument("--address", default=ADDRESS, help=f"git daemon's address ({ADDRESS})")
    p.add_argument("--seed", default="fleet", help="random seed of phases and drift")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep everything in this (new) folder instead of a temp one")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.agents < 1 or args.workers < 1 or args.threads < 1:
        p.error("--agents, --workers and --threads must be >= 1")
    args.workers = min(args.workers, args.agents)
    args.time_scale = args.time_scale or max(1.0, args.agents / 200)
    args.duration = args.duration if args.duration is not None else \
        args.splay + 2 * (args.check_interval + args.splay)
    args.give_up = args.give_up or args.duration + 10 * args.check_interval
    args.fault_at = args.fault_at if args.fault_at is not None else args.splay / 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a timeout, a kill) ends the run through its finally blocks: workers and git
    # daemon stopped, a failed run's workdir kept.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("fleet: terminated"))
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pkfleet-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=not keep)  # --workdir: a new folder
    code = code_commit()  # now: the run imported agent/ as it is now
    say(f"agent code at {code}; workdir {workdir}; {os.cpu_count()} CPUs; load "
        f"average {os.getloadavg()[0]:.1f}")
    say(f"{args.agents} agents on {args.workers} workers x {args.threads} threads; time scale "
        f"{args.time_scale:g} (1 simulated second = {args.time_scale:g} real seconds); splay "
        f"{args.splay:g}s, check_interval {args.check_interval:g}s, heartbeat "
        f"{args.heartbeat:g}s, drift {args.drift:g}/cycle, duration {args.duration:g}s"
        + (f"; fault {args.fault} at {args.fault_at:g}s" if args.fault else ""))
    figures = None
    try:
        figures = simulate(args, workdir)
        figures.code = code
        print_figures(figures)
        if args.json:
            args.json.write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    finally:
        if figures is None or not figures.ok:
            say(f"kept {workdir} to look into: events-*.jsonl, errors-*.log, agents/")
        elif not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
