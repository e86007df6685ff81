"""What it costs to start a daemon cycle's child process, by way of starting it.

Usage (no hosts, no Ansible; a few seconds)::

    .venv/bin/python bench/isolate_start.py --cycles 30

The daemon runs each cycle in a child process (agent.daemon.isolate) and must not fork() itself
once it has threads (the scheduler's, a metrics server's, a file watch's): Python 3.12+ warns,
and the child can deadlock on a lock another thread held. Each way of starting a child is timed
here from a worker thread, as the scheduler's thread starts cycles, with a trivial cycle that
imports what a real one imports (agent.daemon.service) and returns its own CPU time:

  fork        os.fork() from the thread: what the daemon did until 2026-12 (the reference)
  forkserver  multiprocessing's fork server, agent modules preloaded, started before any thread
  spawn       multiprocessing's spawn: a fresh interpreter per cycle, pickled arguments
  exec        a fresh `python -c` child per cycle, the result as JSON on stdout
  isolate     the daemon's own: agent.daemon.isolate.run_isolated (a fresh interpreter, the
              job pickled on its stdin, log records and the result back on a pipe)

Printed per way: median wall time from asking to having the result, the child's own CPU
(imports included), and the resident memory of the helper processes that stay between cycles
(the fork server, multiprocessing's resource tracker), next to the parent's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD_CODE = ("import json, resource, agent.daemon.service; u = resource.getrusage("
              "resource.RUSAGE_SELF); print(json.dumps({'cpu': u.ru_utime + u.ru_stime}))")


def cycle(conn: Any) -> None:
    """The trivial cycle: what a real one imports, then its own CPU time."""
    import agent.daemon.service  # noqa: F401  (already there when preloaded or forked)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send({"cpu": usage.ru_utime + usage.ru_stime})
    conn.close()


def by_fork() -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the very warning at stake
        pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        start = resource.getrusage(resource.RUSAGE_SELF)  # the fork's copy: count from here
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - start.ru_utime - start.ru_stime
        os.write(write_fd, json.dumps({"cpu": cpu}).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        result = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return dict(result)


def by_context(method: str) -> Callable[[], dict[str, Any]]:
    ctx = multiprocessing.get_context(method)

    def start() -> dict[str, Any]:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=cycle, args=(child,))
        proc.start()
        child.close()
        result = parent.recv()
        proc.join()
        return dict(result)
    return start


def by_exec() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD_CODE], capture_output=True, text=True,
                         check=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    return dict(json.loads(out.stdout))


def trivial_cycle(cancelled: Callable[[], bool]) -> dict[str, Any]:
    """The trivial cycle as the daemon's work function (its child imports this module)."""
    import agent.daemon.service  # noqa: F401

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": usage.ru_utime + usage.ru_stime}


def by_isolate() -> dict[str, Any]:
    from isolate_start import trivial_cycle as work  # by its module's name, for the child

    from agent.daemon.isolate import run_isolated

    return run_isolated(work, (), lambda: False)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def helpers() -> dict[str, int]:
    """Our child processes that stay between cycles, with their RSS in KiB."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[1]) == os.getpid():
            name = "fork server" if "forkserver" in cmdline else \
                "resource tracker" if "resource_tracker" in cmdline else cmdline[:40]
            found[name] = rss_kib(int(entry))
    return found


def measure(name: str, start: Callable[[], dict[str, Any]], cycles: int) -> None:
    walls, cpus = [], []

    def work() -> None:
        for _ in range(cycles + 1):
            t = time.perf_counter()
            result = start()
            walls.append(time.perf_counter() - t)
            cpus.append(result["cpu"])

    threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()  # another thread
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    walls, cpus = walls[1:], cpus[1:]  # the first start warms caches (and starts servers)
    kept = ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in helpers().items()) or "none"
    print(f"{name:10}  wall {statistics.median(walls) * 1000:7.1f} ms  child CPU "
          f"{statistics.median(cpus) * 1000:6.1f} ms  helpers between cycles: {kept}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--way", choices=list(WAYS), help="measure this way alone (each way "
                        "runs in a process of its own, so helpers are its own)")
    args = parser.parse_args()
    import agent.daemon.service  # noqa: F401  (the daemon has it: fork copies it)

    if args.way:
        multiprocessing.set_forkserver_preload(["agent.daemon.service"])
        measure(args.way, WAYS[args.way](), args.cycles)
        return 0
    print(f"Python {sys.version.split()[0]}, parent RSS {rss_kib(os.getpid()) / 1024:.1f} MiB, "
          f"{args.cycles} cycles each, started from a worker thread")
    for way in WAYS:
        subprocess.run([sys.executable, __file__, "--cycles", str(args.cycles), "--way", way],
                       check=True, timeout=600)
    return 0


WAYS: dict[str, Callable[[], Callable[[], dict[str, Any]]]] = {
    "fork": lambda: by_fork, "forkserver": lambda: by_context("forkserver"),
    "spawn": lambda: by_context("spawn"), "exec": lambda: by_exec,
    "isolate": lambda: by_isolate}


if __name__ == "__main__":
    sys.exit(main())
