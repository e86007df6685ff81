"""Reading the fleet at scale: `petkeeper fleet` over N hosts with D days of report history, and
an agent's own fetch before a push, against fetching every commit.

Usage (not part of the test suite; run it under the heavy lock)::

    python bench/fleet_read.py --hosts 1000 --days 30
    python bench/fleet_read.py --hosts 1000 --days 30 --signed

Setup: a bare repository with a branch per host, ``petkeeper/hosts/<host>``, each with D days of
history at one report a day (the heartbeat) plus a drift and its correction every fifth day,
each commit holding a real-shaped report (written by agent.cycle.record's own renderer) and,
every fifth day, an apply record; generated with ``git fast-import`` (minutes of agents'
work in seconds). With --signed, each host's tip is a commit signed by that host's own SSH key
(ssh-keygen), and `fleet` checks them against an allowed-signers file of all N keys.

Measured (wall time, each the median of --repeat runs unless said):
  fleet, cold      `petkeeper fleet --repo file://...` into a new cache: tips fetched (--depth 1),
                   every host's files read, signatures checked (--signed), the view printed
  fleet, warm      the same cache again, nothing new on the remote
  fleet, one moved the same after one host's agent pushed one report
  fleet --html     warm, plus the page's week of history (--shallow-since)
  agent fetch      what one agent does before a push: ls-remote of its own branch, and a
                   fetch when it moved (HostQueues.sync), in its own mirror
  full clone       for comparison: `git clone --mirror` of the whole repository (every commit
                   of every host), what a reader fetching everything would pay once
and the sizes: the repository, the fleet's cache, the bytes of one agent's fetch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.adapters.gitrepo import Author, Mirror
from agent.adapters.reportstore import HostQueues, Layout
from agent.core.drift import Change, HostReport, fingerprint
from agent.cycle.record import RunInfo, build_message, build_report, render_report

START = datetime(2026, 10, 1, 3, 0, tzinfo=UTC)
MOTD = Change("Converge pet servers", "baseline", "Write the message of the day",
              "ansible.builtin.template",
              "--- before: /etc/motd\n+++ after: (generated)\n@@ -1,2 +1 @@\n Managed by "
              "Petkeeper\n-Back at 5pm -- bob\n")


def report_file(host: str, day: int, drifted: bool) -> tuple[str, str]:
    status = "drifted" if drifted else "clean"
    changes = (MOTD,) if drifted else ()
    when = START + timedelta(days=day)
    run = RunInfo(f"{when:%Y%m%dT%H%M%SZ}-{day:06x}", f"{day:040x}", when, host,
                  plans={host: {"plan_id": f"{day:016x}", "action": "wait" if drifted else
                                "nothing", "reason": "awaiting approval" if drifted else
                                "nothing to correct", "mode": "approve", "rule": "default",
                                "approval": None}})
    data = build_report(HostReport(host, status, changes, fingerprint(status, changes)), run)
    return render_report(data), build_message(data, "heartbeat")


def fast_import_stream(hosts: list[str], days: int) -> bytes:
    """One branch per host, a commit a day (and a drift every fifth day), for fast-import."""
    out: list[bytes] = []
    mark = 0
    for host in hosts:
        parent = None
        for day in range(days):
            for drifted in ((True, False) if day % 5 == 4 else (False,)):
                mark += 1
                content, message = report_file(host, day, drifted)
                when = int((START + timedelta(days=day, hours=1 if not drifted else 0))
                           .timestamp())
                body = content.encode()
                msg = message.encode()
                out.append(f"commit refs/heads/petkeeper/hosts/{host}\nmark :{mark}\n"
                           f"committer Petkeeper <petkeeper@localhost> {when} +0000\n"
                           f"data {len(msg)}\n".encode() + msg + b"\n")
                if parent:
                    out.append(f"from :{parent}\n".encode())
                out.append(f"M 100644 inline hosts/{host}.yml\ndata {len(body)}\n".encode() +
                           body + b"\n")
                if not drifted and day % 5 == 4:
                    apply = f"# {host}: apply\nplan_id: {day:016x}\nresult: converged\n"
                    out.append(f"M 100644 inline applies/{host}.yml\ndata {len(apply)}\n"
                               .encode() + apply.encode() + b"\n")
                parent = mark
    return b"".join(out)


def build(root: Path, n: int, days: int, signed: bool) -> tuple[Path, Path | None]:
    bare = root / "pets.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(bare)],
                   check=True)
    hosts = [f"web{i:04d}" for i in range(n)]
    subprocess.run(["git", "--git-dir", str(bare), "fast-import", "--quiet"],
                   input=fast_import_stream(hosts, days), check=True, timeout=3600)
    tree = subprocess.run(["git", "--git-dir", str(bare), "mktree"], input=b"",
                          capture_output=True, check=True).stdout.decode().strip()
    source = subprocess.run(["git", "--git-dir", str(bare), "-c", "user.name=a", "-c",
                             "user.email=a@x", "commit-tree", "-m", "pets", tree],
                            capture_output=True, check=True, text=True).stdout.strip()
    subprocess.run(["git", "--git-dir", str(bare), "update-ref", "refs/heads/main", source],
                   check=True)
    if not signed:
        return bare, None
    return bare, sign_tips(root, bare, hosts)


def sign_tips(root: Path, bare: Path, hosts: list[str]) -> Path:
    """A signed commit on each host's tip, by that host's own key; the allowed-signers file."""
    lines = []
    mirror = Mirror(bare, f"file://{bare}", 60)
    for host in hosts:
        key = root / "keys" / host
        key.parent.mkdir(exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host, "-f",
                        str(key)], check=True, timeout=30)
        lines.append(f'{host} namespaces="git" {Path(f"{key}.pub").read_text()}')
        ref = f"refs/heads/petkeeper/hosts/{host}"
        tip = mirror.rev(ref)
        content, message = report_file(host, 999, False)
        new = mirror.commit_files(tip, {f"hosts/{host}.yml": content.encode()}, message,
                                  Author("Petkeeper", "petkeeper@localhost", str(key)),
                                  datetime.now(UTC).isoformat())
        mirror.update_ref(ref, new, tip)
    allowed = root / "allowed_signers"
    allowed.write_text("".join(lines))
    return allowed


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fleet(url: str, cache: Path, config: Path | None, *extra: str) -> None:
    args = ["--config", str(config)] if config else ["--repo", url]
    r = subprocess.run([sys.executable, "-m", "agent", "fleet", *args, "--cache", str(cache),
                        "--stale", "3650d", *extra], capture_output=True, text=True,
                       timeout=3600)
    if r.returncode not in (0, 1, 2) or not r.stdout.strip():
        raise SystemExit(f"fleet failed: {r.stderr[-2000:]}")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--signed", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pk-fleet-read-"))
    try:
        t0 = time.perf_counter()
        bare, allowed = build(root, args.hosts, args.days, args.signed)
        built = time.perf_counter() - t0
        url = f"file://{bare}"
        config = None
        if allowed:
            config = root / "fleet.yml"
            config.write_text(f"repo: {{url: '{url}'}}\nreports: {{allowed_signers: "
                              f"'{allowed}'}}\n")
        commits = subprocess.run(["git", "--git-dir", str(bare), "rev-list", "--all", "--count"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        print(f"repository: {args.hosts} hosts, {args.days} days, {commits} commits, "
              f"{du(bare) / 2**20:.1f} MiB (built in {built:.1f}s)"
              + (", tips signed by each host's key" if allowed else ""))
        caches = iter(range(10**6))
        cold = timed(lambda: fleet(url, root / f"cache-{next(caches)}", config), args.repeat)
        cache = root / "cache-warm"
        fleet(url, cache, config)
        warm = timed(lambda: fleet(url, cache, config), args.repeat)
        agent = Mirror(root / "agent.git", url, 60)
        queues = HostQueues(agent, url, Layout(), Author("Petkeeper", "petkeeper@localhost"))
        first_fetch = timed(lambda: queues.sync(["web0000"]))
        size_one = du(agent.path)
        queues.commit("web0000", "hosts/web0000.yml", b"schema: 2\nhost: web0000\n",
                      "web0000: moved\n\nPetkeeper-Host: web0000\n",
                      datetime.now(UTC).isoformat())
        queues.push()
        moved = timed(lambda: fleet(url, cache, config))
        again = timed(lambda: queues.sync(["web0000"]), args.repeat)
        page = timed(lambda: fleet(url, cache, config, "--html", str(root / "page.html")))
        clone = timed(lambda: subprocess.run(["git", "clone", "-q", "--mirror", url,
                                              str(root / f"clone-{time.time_ns()}")],
                                             check=True))
        rows = [("petkeeper fleet, cold cache", cold,
                 f"cache {du(root / 'cache-0') / 2**20:.1f} MiB"),
                ("petkeeper fleet, warm, no change", warm, ""),
                ("petkeeper fleet, one host moved", moved, ""),
                ("petkeeper fleet --html (7 days)", page, ""),
                ("agent's first fetch of its branch", first_fetch,
                 f"its mirror {size_one / 2**10:.0f} KiB"),
                ("agent's fetch before a push", again, ""),
                ("git clone --mirror (everything)", clone, "")]
        for what, seconds, note in rows:
            print(f"{what:36} {seconds:7.2f}s" + (f"   ({note})" if note else ""))
    finally:
        if os.environ.get("KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
