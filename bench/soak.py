"""Soak run: one long-lived ``petkeeper daemon``, hundreds of cycles, memory and disk sampled.

Usage (as root, like the demo: needs unshare and /usr/sbin/sshd; not part of the test suite)::

    PATH=/tmp/pkvenv/bin:$PATH python bench/soak.py --cycles 200
    PATH=/tmp/pkvenv/bin:$PATH python bench/soak.py --cycles 500 --hosts 2 --csv soak.csv
    PATH=/tmp/pkvenv/bin:$PATH python bench/soak.py --cycles 200 --playbook site

Setup (with bench_check.py's helpers): a bare repo of this project's playbooks/ and
inventories/, an inventory of test hosts soak1..N on 127.0.91.11.., a policy that lets tasks
tagged ``baseline`` heal themselves (``auto``) while the rest waits for an approval, and
``soak/light.yml``; the hosts are converged once.

Then ``petkeeper daemon`` runs as one process, with a notify socket this script binds (it
counts cycles by the daemon's ``STATUS=run ...`` lines), a watchdog, and
``daemon: {fetch_interval: 1s, check_interval: 1h, splay: 0}``: every cycle is one this script
caused, and between cycles (--idle seconds) the daemon does its cheap fetch every second.
A cycle is a real ``petkeeper run``: git fetch of the file:// remote, ansible-inventory, the
playbook in check + diff mode through ansible-runner over SSH on every host, decide, report
commits when something changed, push, status.json. The playbook is ``soak/light.yml`` (four
tasks, seven results per host, no fact gathering) unless ``--playbook site`` asks for
``playbooks/site.yml`` (four roles, facts, packages: about three times slower per cycle).

Most cycles are asked for with SIGUSR1 (what ``petkeeper run --now`` sends; cycle 2 uses that
command) and change nothing. Every 40 cycles (--every), at fixed offsets: a new source commit (the
daemon notices it by itself; a report commit per host, a new tree, the oldest pruned), a
hand-edit of /etc/motd on soak1 (drift the policy lets the daemon apply in the same cycle:
journal, ledger, and a drifted, an apply and a clean commit), a hand-edit of soak1's backup
cron file (drift that waits for an approval: exit 2, a drifted commit), then its restore by
hand (a clean commit).

After each cycle it samples the daemon process alone (VmRSS and its heap and file parts,
VmHWM, threads, open fds, own CPU and that of the processes it starts for cycles, from their log
lines), its child processes, the processes inside the test hosts (the daemon's kept SSH
connections: steady, one per host, never growing), the state directory by part (mirror.git,
trees, runner = ansible-runner's artifacts, other) and the bare remote. At the end: SIGTERM,
exit 0 expected, and no SSH session left on the hosts (stop means stop: the kept connections
close with the daemon); hosts stopped; a summary with a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_check, run as a script too

from bench_check import (
    BIN,
    BRANCH,
    INVENTORY,
    LIGHT,
    LIGHT_PLAYBOOK,
    TIMEOUT,
    add_inventory,
    bench_config,
    git,
)

from agent.adapters.runner import PlaybookRun, run_playbook
from agent.config import Config, load_config
from agent.demo import PLAYBOOK, seed_repo
from agent.testhosts import TestHostPool

ADDRESS = "127.0.91.{}"  # not 127.0.80.x (demo), .81 (tests), .90 (bench_check)
CYCLE_TIMEOUT = 900.0
STOP_TIMEOUT = 120.0
HELD_FILE = "/etc/cron.d/petkeeper-backup"  # backup_job role: no rule, waits for an approval
POLICY = {"default": "approve",
          "rules": [{"name": "banners heal themselves", "tags": ["baseline"], "mode": "auto"}]}
PARTS = ("mirror", "trees", "artifacts", "other")
CYCLE_CPU = re.compile(r"cycle process \d+: ([0-9.]+)s of CPU of its own")
FIT_FROM = 20  # the slope skips the warm-up cycles


@dataclass
class Sample:
    """The figures after one cycle."""

    cycle: int
    event: str
    wall: float  # from asking (or committing) to the daemon's STATUS line
    exit: int
    applies: int
    rss_kb: int
    hwm_kb: int
    anon_kb: int  # RssAnon: the heap, what a leak grows
    file_kb: int  # RssFile: mapped code and libraries, grows as new code paths run once
    threads: int
    fds: int
    children: int  # the daemon's descendant processes, between cycles
    host_procs: int  # processes in the test hosts beyond their sshd: the kept connections
    cpu: float  # the daemon's own user + system seconds so far
    commits: int  # report commits on the remote's reports branch
    remote: int  # bytes of the bare remote
    remote_files: int
    parts: dict[str, int] = field(default_factory=dict)  # state dir bytes by part
    files: dict[str, int] = field(default_factory=dict)  # state dir files by part


# -- the daemon and its notify socket ------------------------------------------------------

class Notified:
    """A datagram socket the daemon speaks sd_notify to; keeps what it said."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: dict[str, int] = {}

    def next_status(self, prefix: str, timeout: float) -> str:
        """Wait for the next STATUS= line starting with PREFIX; return it without STATUS=."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(65536).decode()
            except TimeoutError:
                break
            for line in message.splitlines():
                key = line.split("=", 1)[0]
                self.seen[key] = self.seen.get(key, 0) + 1
                if line.startswith(f"STATUS={prefix}"):
                    return line.removeprefix("STATUS=")
        raise SystemExit(f"soak: no STATUS={prefix}... from the daemon within {timeout:.0f}s")

    def close(self) -> None:
        self.sock.close()


def start_daemon(config: Path, workdir: Path, notify: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_"))}
    env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="20000000",
               PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    with open(workdir / "daemon.log", "wb") as log:
        return subprocess.Popen([str(BIN / "petkeeper"), "--config", str(config), "daemon"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as systemd stops it; SIGKILL the group only if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9
    return proc.returncode


# -- setup -----------------------------------------------------------------------------------

class SourceClone:
    """A work clone of the remote, to commit what an admin would: policy, other changes."""

    def __init__(self, remote: Path, path: Path) -> None:
        self.path = path
        git("clone", "--quiet", "--branch", BRANCH, f"file://{remote}", str(path))

    def commit(self, files: dict[str, str], message: str) -> None:
        for name, text in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)
        git("add", "--all", cwd=self.path)
        git("-c", "user.name=Soak Admin", "-c", "user.email=admin@soak.invalid", "commit",
            "--quiet", "-m", message, cwd=self.path)
        git("push", "--quiet", "origin", BRANCH, cwd=self.path)


def set_up(workdir: Path, pool: TestHostPool, count: int, playbook: str, first: int = 11
           ) -> tuple[Path, Path, SourceClone]:
    """Remote, hosts (on ADDRESS from FIRST on), inventory, policy, converge; return (remote,
    agent.yml, work clone)."""
    remote = seed_repo(workdir / "pets.git", workdir / "seed")
    names = [f"soak{i}" for i in range(1, count + 1)]
    for i, name in enumerate(names, start=first):
        pool.start(name, ADDRESS.format(i))
    add_inventory(remote, workdir, pool, names)
    clone = SourceClone(remote, workdir / "admin-clone")
    clone.commit({"petkeeper/policy.yml": yaml.safe_dump(POLICY, sort_keys=False),
                  LIGHT: LIGHT_PLAYBOOK}, "Policy: banners heal themselves; a light playbook")
    data = yaml.safe_load(bench_config(workdir, remote, pool, names, "state").read_text())
    data["playbooks"] = [playbook]
    data["daemon"] = {"fetch_interval": "1s", "check_interval": "1h", "splay": 0,
                      "backoff_max": "1m"}
    config = workdir / "agent.yml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    converge(load_config(config), clone.path, workdir / "converge-runner", names, playbook)
    return remote, config, clone


def converge(config: Config, tree: Path, runner: Path, names: list[str], playbook: str) -> None:
    """Apply PLAYBOOK of TREE once, as the hosts' admin did before Petkeeper."""
    run = PlaybookRun(tree=tree, playbook=playbook, inventory=tree / INVENTORY,
                      limit=",".join(names), check=False, ident="soak-converge",
                      private_key_file=config.ansible.private_key_file,
                      known_hosts_file=config.ansible.known_hosts_file, timeout=TIMEOUT)
    result = run_playbook(run, runner)
    if result.status != "successful":
        raise SystemExit(f"soak: converge failed ({result.status}, rc {result.rc}): "
                         f"{result.error}")


# -- one cycle -------------------------------------------------------------------------------

def event_of(cycle: int, every: int) -> str:
    """What happens before CYCLE: nothing (most), or, once in EVERY cycles, at 3/8 of the way a
    source commit, at 5/8 drift the daemon heals, at 3/4 drift that waits, then its restore."""
    if cycle == 1:
        return "first"
    events = {every * 3 // 8: "source", every * 5 // 8: "drift-auto",
              every * 3 // 4: "drift-held", every * 3 // 4 + 1: "restore"}
    return events.get(cycle % every, "none")


EXPECTED_EXIT = {"drift-held": 2}


def cause(event: str, cycle: int, pool: TestHostPool, clone: SourceClone, config: Path,
          pid: int) -> None:
    """Make EVENT happen, then ask for the cycle (a new commit needs no asking)."""
    host = next(iter(pool.hosts))
    if event == "source":
        clone.commit({"soak/marker.txt": f"cycle {cycle}\n"}, f"Soak marker for cycle {cycle}")
        return
    if event == "drift-auto":
        pool.run(host, f"echo 'soak {cycle}: edited by hand' >> /etc/motd")
    elif event == "drift-held":
        pool.run(host, f"cp -p {HELD_FILE} /root/soak-held.orig && "
                       f"echo '# soak {cycle}: edited by hand' >> {HELD_FILE}")
    elif event == "restore":
        pool.run(host, f"mv /root/soak-held.orig {HELD_FILE}")
    if event == "first":
        return  # splay 0: the daemon's first tick is its first cycle
    if cycle == 2:
        subprocess.run([str(BIN / "petkeeper"), "--config", str(config), "run", "--now"],
                       check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    else:
        os.kill(pid, signal.SIGUSR1)  # what `petkeeper run --now` sends


def parse_status(line: str) -> tuple[int, int]:
    """Given "run ID: exit N, 2 clean, 1 apply(s)", return (exit code, applies)."""
    exit_part = line.split(": exit ", 1)[1]
    applies = line.rsplit(", ", 1)[1].split(" apply", 1)[0]
    return int(exit_part.split(",", 1)[0]), int(applies)


# -- measures --------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def own_cpu(pid: int, log: Path) -> float:
    """CPU seconds of the daemon and of the processes it started for its cycles, each logging
    its own (agent.daemon.isolate), Ansible's processes left out."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cycles = sum(float(m.group(1)) for m in CYCLE_CPU.finditer(log.read_text(errors="replace")))
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK") + cycles


def descendants(pid: int) -> list[int]:
    """PID's live descendant processes (zombies included: a leak too)."""
    try:
        children = [int(c) for c in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in descendants(c)]


def state_parts(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes and files of the state directory: mirror.git, trees, runner/ (ansible-runner's
    artifacts), and the rest."""
    size = dict.fromkeys(PARTS, 0)
    files = dict.fromkeys(PARTS, 0)
    names = {"mirror.git": "mirror", "trees": "trees", "runner": "artifacts"}
    for entry in root.iterdir():
        part = names.get(entry.name, "other")
        if entry.is_dir() and not entry.is_symlink():
            used, count = tree_size(entry)
        else:  # a file of the state dir, or a temp file gone already (atomic writes)
            used, count = _file_size(entry)
        size[part] += used
        files[part] += count
    return size, files


def _file_size(path: Path) -> tuple[int, int]:
    try:
        return path.lstat().st_size, 1
    except FileNotFoundError:
        return 0, 0


def tree_size(root: Path) -> tuple[int, int]:
    """Apparent bytes and files under ROOT. Unlike bench_check.disk_usage it runs while the
    daemon writes: a file gone between listing and stat (a git lock) is skipped."""
    size = files = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
    return size, files


def report_commits(remote: Path) -> int:
    out = subprocess.run(["git", "--git-dir", str(remote), "rev-list", "--count",
                          "--branches=petkeeper/hosts/*"], capture_output=True, text=True,
                         timeout=60)
    return int(out.stdout.strip() or 0)


def sample(cycle: int, event: str, wall: float, status: str, pid: int, pool: TestHostPool,
           state: Path, remote: Path) -> Sample:
    exit_code, applies = parse_status(status)
    f = least_of_reads(pid, pool, state)
    return Sample(cycle, event, wall, exit_code, applies, f["VmRSS"], f["VmHWM"], f["RssAnon"],
                  f["RssFile"], f["Threads"], f["fds"], f["children"], f["host_procs"],
                  own_cpu(pid, state.parent / "daemon.log"), report_commits(remote),
                  *tree_size(remote),
                  {p: f[f"{p}_bytes"] for p in PARTS}, {p: f[f"{p}_files"] for p in PARTS})


def least_of_reads(pid: int, pool: TestHostPool, state: Path, reads: int = 10
                   ) -> dict[str, int]:
    """The daemon's memory, threads, fds and child processes, the test hosts' processes and
    the state directory by part: each the least of READS reads 0.1 s apart. A cheap fetch
    runs every second (a git child, its pipes, GitPython's timeout thread, the lock's text,
    mirror.git/config rewritten); what it holds for a moment is not what a cycle left."""
    least: dict[str, int] = {}
    for _ in range(reads):
        parts, files = state_parts(state)
        now = {**proc_status(pid), "fds": len(os.listdir(f"/proc/{pid}/fd")),
               "children": len(descendants(pid)),
               "host_procs": sum(len(descendants(h.pid)) for h in pool.hosts.values()),
               **{f"{p}_bytes": n for p, n in parts.items()},
               **{f"{p}_files": n for p, n in files.items()}}
        least = {k: min(v, least.get(k, v)) for k, v in now.items()}
        time.sleep(0.1)
    return least


def fd_kinds(pid: int) -> dict[str, int]:
    """What the daemon's fds point at, by kind (for a leak's first clue)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kind = target.split(":", 1)[0] if ":" in target else target.rsplit("/", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


# -- the run ---------------------------------------------------------------------------------

def soak(args: argparse.Namespace, workdir: Path) -> list[Sample]:
    samples: list[Sample] = []
    with TestHostPool(workdir / "hosts") as pool:
        t = time.monotonic()
        playbook = LIGHT if args.playbook == "light" else PLAYBOOK
        remote, config, clone = set_up(workdir, pool, args.hosts, playbook)
        say(f"{args.hosts} host(s) on {ADDRESS.format('x')}, remote and policy ready, hosts "
            f"converged in {time.monotonic() - t:.0f}s (setup); each cycle checks {playbook}")
        notified = Notified(workdir / "notify.sock")
        daemon = start_daemon(config, workdir, workdir / "notify.sock")
        try:
            notified.next_status("waiting", 60)
            say(f"daemon pid {daemon.pid} ready; fds by kind at start {fd_kinds(daemon.pid)}")
            for cycle in range(1, args.cycles + 1):
                samples.append(one_cycle(cycle, args, pool, clone, config, daemon, notified,
                                         remote, workdir / "state"))
                if args.csv:
                    append_csv(samples[-1], args.csv)
                if cycle in (10, 100) or cycle == args.cycles:
                    say(f"fds by kind after cycle {cycle}: {fd_kinds(daemon.pid)}")
        finally:
            rc = stop_daemon(daemon)
            if rc == 0:
                notified.next_status("stopping", 5)
            say(f"daemon stopped with SIGTERM: exit {rc}; notify messages "
                f"{dict(sorted(notified.seen.items()))}")
            notified.close()
        if rc != 0:
            raise SystemExit(f"soak: the daemon exited {rc} on SIGTERM, expected 0")
        left = sessions_after_stop(pool)
        say(f"SSH sessions on the hosts after the stop: {left}")
        if left:
            raise SystemExit(f"soak: {left} SSH session process(es) left on the hosts after "
                             "the daemon stopped; expected none")
    return samples


def sessions_after_stop(pool: TestHostPool, timeout: float = 15.0) -> int:
    """The test hosts' processes beyond their sshd once the daemon stopped: the far end of a
    closed connection ends on its own, so poll until none is left or TIMEOUT."""
    deadline = time.monotonic() + timeout
    while (left := sum(len(descendants(h.pid)) for h in pool.hosts.values())) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def one_cycle(cycle: int, args: argparse.Namespace, pool: TestHostPool, clone: SourceClone,
              config: Path, daemon: subprocess.Popen[bytes], notified: Notified, remote: Path,
              state: Path) -> Sample:
    event = event_of(cycle, args.every)
    start = time.monotonic()
    cause(event, cycle, pool, clone, config, daemon.pid)
    status = notified.next_status("run ", CYCLE_TIMEOUT)
    wall = time.monotonic() - start
    time.sleep(args.idle)  # the daemon's cheap fetch ticks meanwhile; its tick returns
    if daemon.poll() is not None:
        raise SystemExit(f"soak: the daemon exited {daemon.returncode} after cycle {cycle}")
    s = sample(cycle, event, wall, status, daemon.pid, pool, state, remote)
    want = EXPECTED_EXIT.get(event, 0)
    if s.exit != want or (event == "drift-auto") != (s.applies == 1) or s.applies > 1:
        raise SystemExit(f"soak: cycle {cycle} ({event}): {status}; expected exit {want} and "
                         f"{'one apply' if event == 'drift-auto' else 'no apply'}; see "
                         f"{state.parent / 'daemon.log'}")
    if cycle <= 3 or cycle % 10 == 0 or event != "none":
        say(f"cycle {cycle:>4} {event:10} {wall:5.1f}s exit {s.exit} RSS {s.rss_kb / 1024:.1f} "
            f"MiB fds {s.fds} threads {s.threads} children {s.children} commits {s.commits}")
    return s


# -- summary ---------------------------------------------------------------------------------

def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) POINTS."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def at(samples: list[Sample], cycle: int) -> Sample:
    return samples[min(cycle, len(samples)) - 1]


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n:,.0f} B"


def summarize(samples: list[Sample], args: argparse.Namespace, workdir: Path) -> bool:
    """Print the figures; return whether memory and disk stayed flat."""
    n, fit = len(samples), [s for s in samples if s.cycle >= FIT_FROM] or samples
    quiet = [s.wall for s in samples if s.event == "none"]
    cpu = (samples[-1].cpu - samples[0].cpu) / max(n - 1, 1)
    print(f"\n== soak: {n} daemon cycles on {args.hosts} host(s); {len(quiet)} no-change; "
          f"no-change cycle wall median {statistics.median(quiet):.1f}s "
          f"({min(quiet):.1f}-{max(quiet):.1f}); Petkeeper's own CPU (daemon and cycle "
          f"processes, not Ansible) {cpu:.2f}s per cycle")
    slopes = print_memory(samples, fit)
    print_disk(samples, workdir)
    return verdict(samples, fit, slopes)


def print_memory(samples: list[Sample], fit: list[Sample]) -> tuple[float, float]:
    """Print RSS and its parts, fds, threads, processes; return the RSS slopes (KiB per 100
    cycles) over cycles FIT_FROM..N and over the second half."""
    n, rss = len(samples), [s.rss_kb for s in samples]
    half = [s for s in samples if s.cycle > n // 2]
    full, late = (slope([(s.cycle, s.rss_kb) for s in part]) * 100 for part in (fit, half))
    step = max(itertools.pairwise(samples), key=lambda ab: ab[1].rss_kb - ab[0].rss_kb)
    print(f"  RSS (VmRSS, daemon process only): first {rss[0] / 1024:.1f} MiB, median "
          f"{statistics.median(rss) / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB; VmHWM last "
          f"{samples[-1].hwm_kb / 1024:.1f} MiB")
    print(f"  RSS slope (least squares) over cycles {FIT_FROM}..{n}: {full:+,.0f} KiB per 100 "
          f"cycles; over {half[0].cycle}..{n}: {late:+,.0f} KiB per 100 cycles; largest rise "
          f"in one cycle {step[1].rss_kb - step[0].rss_kb:+,} KiB (cycle {step[1].cycle}, "
          f"VmHWM {step[0].hwm_kb / 1024:.1f} -> {step[1].hwm_kb / 1024:.1f} MiB)")
    for what, key in (("RssAnon (heap)", "anon_kb"), ("RssFile (code)", "file_kb")):
        values = [getattr(s, key) for s in samples]
        fitted = slope([(s.cycle, getattr(s, key)) for s in fit]) * 100
        print(f"    {what}: first {values[0] / 1024:.1f} MiB, median "
              f"{statistics.median(values) / 1024:.1f} MiB, last {values[-1] / 1024:.1f} MiB, "
              f"slope {fitted:+,.0f} KiB per 100 cycles")
    for what in ("fds", "threads", "children", "host_procs"):
        values = [getattr(s, what) for s in fit]
        print(f"  {what:10} cycle 1 {getattr(samples[0], what)}, cycles {FIT_FROM}..{n} "
              f"min {min(values)} max {max(values)}, last {values[-1]}")
    return full, late


def print_disk(samples: list[Sample], workdir: Path) -> None:
    n = len(samples)
    checkpoints = sorted({min(c, n) for c in (10, 100, 200, n)})
    print(f"  disk (apparent bytes, files) at cycles {', '.join(map(str, checkpoints))}:")
    for part in PARTS:
        cells = [f"{kib(at(samples, c).parts[part])} / {at(samples, c).files[part]}"
                 for c in checkpoints]
        print(f"    state {part:9} " + " | ".join(f"{c:>20}" for c in cells))
    cells = [f"{kib(at(samples, c).remote)} / {at(samples, c).remote_files}"
             for c in checkpoints]
    print(f"    {'remote':15} " + " | ".join(f"{c:>20}" for c in cells))
    print(f"    {'report commits':15} " + " | ".join(f"{at(samples, c).commits:>20}"
                                                   for c in checkpoints))
    print(f"  per report commit, cycles 10..{n}: remote {per_commit(samples, 'remote')}, mirror "
          f"{per_commit(samples, 'mirror')} (loose objects until 256, then packed); "
          f"daemon.log (stderr) {kib((workdir / 'daemon.log').stat().st_size)}")


def per_commit(samples: list[Sample], get: str) -> str:
    """Growth of the remote or the mirror (GET) per report commit from cycle 10 to the end."""
    a, b = at(samples, 10), samples[-1]
    size = {"remote": (lambda s: (s.remote, s.remote_files)),
            "mirror": (lambda s: (s.parts["mirror"], s.files["mirror"]))}[get]
    commits = max(b.commits - a.commits, 1)
    return (f"{(size(b)[0] - size(a)[0]) / commits:+,.0f} B and "
            f"{(size(b)[1] - size(a)[1]) / commits:+.1f} files")


def verdict(samples: list[Sample], fit: list[Sample], slopes: tuple[float, float]) -> bool:
    """Flat: RSS fitted growth under 256 KiB per 100 cycles over the second half, and RSS at
    the end no more above cycle FIT_FROM's than 1 MiB (a one-off step, such as CPython's table
    of interned strings doubling once) plus that rate; fds, threads and child processes back
    to their level; trees, artifacts and other no larger than at cycle FIT_FROM plus 10%;
    mirror and remote growing only with report commits, never over no-change cycles."""
    problems = []
    grown = samples[-1].rss_kb - fit[0].rss_kb
    if slopes[1] > 256 or grown > 1024 + 256 * (samples[-1].cycle - fit[0].cycle) / 100:
        problems.append(f"RSS grows {slopes[1]:,.0f} KiB per 100 cycles over the second half, "
                        f"{grown:+,} KiB since cycle {fit[0].cycle}")
    for what in ("fds", "threads", "children", "host_procs"):
        if getattr(samples[-1], what) > getattr(fit[0], what):
            problems.append(f"{what} grew {getattr(fit[0], what)} -> "
                            f"{getattr(samples[-1], what)}")
    for part in ("trees", "artifacts", "other"):
        top, ref = max(s.parts[part] for s in fit), fit[0].parts[part]
        if top > ref * 1.1 + 4096:
            problems.append(f"state {part} grew {kib(ref)} -> {kib(top)}")
    quiet = [(a, b) for a, b in itertools.pairwise(samples) if b.event == "none"
             and b.cycle >= FIT_FROM and b.commits == a.commits]
    for get in ("mirror", "remote"):
        grew = sum((b.parts["mirror"] - a.parts["mirror"]) if get == "mirror"
                   else b.remote - a.remote for a, b in quiet)
        if grew > 0:
            problems.append(f"{get} grew {grew:,} B over {len(quiet)} cycles without a commit")
    print(f"  no-change cycles from {FIT_FROM} on: {len(quiet)}, mirror and remote net growth "
          "over them checked")
    print("VERDICT: " + ("flat: memory, fds, threads and processes steady; disk bounded"
                         if not problems else "NOT flat: " + "; ".join(problems)))
    return not problems


def append_csv(s: Sample, path: Path) -> None:
    """One row per cycle, written as it comes: a long soak can be watched, or cut short."""
    row = {**{k: v for k, v in asdict(s).items() if k not in ("parts", "files")},
           **{f"{p}_bytes": s.parts[p] for p in PARTS},
           **{f"{p}_files": s.files[p] for p in PARTS}}
    with path.open("w" if s.cycle == 1 else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if s.cycle == 1:
            writer.writeheader()
        writer.writerow(row)


def say(text: str) -> None:
    print(f"soak: {text}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cycles", type=int, default=200, help="daemon cycles (default 200)")
    parser.add_argument("--hosts", type=int, default=1, help="test hosts (default 1)")
    parser.add_argument("--workdir", type=Path,
                        help="work folder, kept (default: a temp folder under /tmp, removed)")
    parser.add_argument("--idle", type=float, default=2.0,
                        help="seconds between cycles: cheap fetches every 1s (default 2)")
    parser.add_argument("--playbook", choices=("light", "site"), default="light",
                        help=f"what a cycle checks: {LIGHT} (default; 7 task results per host, "
                             f"no facts) or {PLAYBOOK} (four roles, facts, packages)")
    parser.add_argument("--every", type=int, default=40,
                        help="cycles per round of four event cycles (default 40)")
    parser.add_argument("--csv", type=Path, help="write one row per cycle to this file")
    args = parser.parse_args(argv)
    if args.cycles < 2 or not 1 <= args.hosts <= 80 or args.every < 8:
        parser.error("--cycles must be >= 2, --hosts 1..80, --every >= 8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pksoak-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if any(workdir.iterdir()):
        raise SystemExit(f"soak: {workdir} is not empty; give an empty or new folder")
    began = time.monotonic()
    # SIGTERM unwinds like Ctrl-C: the daemon is stopped and the hosts too, by the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say(f"workdir {workdir}; {args.cycles} cycles on {args.hosts} host(s); {os.cpu_count()} "
        f"CPUs; load average {os.getloadavg()[0]:.1f}")
    try:
        samples = soak(args, workdir)
        flat = summarize(samples, args, workdir)
        say(f"total {time.monotonic() - began:.0f}s")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
