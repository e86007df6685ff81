"""Where does the daemon's memory go? bench/soak.py's setup, the daemon's own tick run in
process (in one worker thread, as APScheduler runs it), and what grew between two points.

Usage (as root, like bench/soak.py; a diagnostic for when the soak shows growth)::

    PATH=/tmp/pkvenv/bin:$PATH python bench/soak_trace.py --ticks 300    # cheap fetches
    PATH=/tmp/pkvenv/bin:$PATH python bench/soak_trace.py --cycles 60    # whole cycles

``--ticks`` calls the daemon's tick with nothing due (its cheap fetch only); ``--cycles`` asks
for a cycle each tick (as ``run --now`` does): a real ``petkeeper run`` of the soak's light
playbook on one test host (127.0.91.51). After a warm-up (a fifth of the calls) it prints, as
the calls go on, VmRSS, RssAnon, Python's traced bytes (tracemalloc) and the number of objects
the garbage collector tracks; at the end, the source lines whose live allocations grew, and
the containers (dicts, lists, sets, lru_caches) that grew, named where a module holds them.
RssAnon growing while the traced bytes, objects and containers stay flat is the heap keeping
freed memory (the C allocator), not a leak of Python objects.

The daemon now runs each cycle in a child process of its own (agent.daemon.isolate), so
``--cycles`` shows the daemon process around its cycles (flat by construction); to trace a cycle
itself, call agent.cycle.steps.run_cycle in process the same way.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import LIGHT, set_up

from agent.config import load_config
from agent.daemon.service import Daemon
from agent.testhosts import TestHostPool


def memory() -> dict[str, int]:
    """VmRSS and RssAnon (KiB), Python's traced KiB, and the objects gc tracks."""
    gc.collect()
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0])
    fields["traced"] = tracemalloc.get_traced_memory()[0] // 1024
    fields["objects"] = len(gc.get_objects())
    return fields


def container_sizes() -> dict[int, tuple[int, Any]]:
    """id -> (length, object) of every non-empty dict, list and set, and every lru_cache."""
    sizes: dict[int, tuple[int, Any]] = {}
    for o in gc.get_objects():
        if isinstance(o, dict | list | set) and o:
            sizes[id(o)] = (len(o), o)
        elif isinstance(o, functools._lru_cache_wrapper):
            sizes[id(o)] = (o.cache_info().currsize, o)
    return sizes


def holder(o: Any) -> str:
    """Where O is held: module.name when a module's globals hold it, else its type."""
    for ref in gc.get_referrers(o):
        if isinstance(ref, dict) and isinstance(ref.get("__name__"), str):
            for key, value in ref.items():
                if value is o:
                    return f"{ref['__name__']}.{key}"
    return f"a {type(o).__qualname__} held by {len(gc.get_referrers(o))} object(s)"


def trace(tick: Any, daemon: Daemon, calls: int, forced: bool, top: int) -> None:
    warm = max(calls // 5, 1)
    every = max((calls - warm) // 8, 1)
    for i in range(calls + 1):
        if i == warm:
            began, before = time.monotonic(), tracemalloc.take_snapshot()
            sizes = {k: n for k, (n, _) in container_sizes().items()}
        if i >= warm and (i - warm) % every == 0:
            print(f"  after {i:>4} calls: {memory()}", flush=True)
        daemon.forced = forced
        tick()
    print(f"  after {calls + 1:>4} calls: {memory()}")
    mine = [tracemalloc.Filter(False, f) for f in (__file__, tracemalloc.__file__)]
    grown = tracemalloc.take_snapshot().filter_traces(mine).compare_to(
        before.filter_traces(mine), "traceback")
    print(f"== {calls - warm} {'cycles' if forced else 'cheap fetches'} after {warm} of "
          f"warm-up, {time.monotonic() - began:.0f}s; source lines whose live allocations grew:")
    for stat in [s for s in grown if s.size_diff > 0][:top]:
        print(f"  {stat.size_diff:+,} B in {stat.count_diff:+} blocks at:")
        print("\n".join(f"     {line}" for line in stat.traceback.format(most_recent_first=True)))
    now = container_sizes()
    bigger = sorted(((n - sizes[k], n, o) for k, (n, o) in now.items()
                     if k in sizes and n > sizes[k]), key=lambda t: -t[0])
    print(f"  containers that grew: {len(bigger)}")
    for more, n, o in bigger[:top]:
        print(f"    +{more} to {n}: {holder(o)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ticks", type=int, default=0, help="ticks with nothing due")
    parser.add_argument("--cycles", type=int, default=0, help="ticks that run a cycle")
    parser.add_argument("--top", type=int, default=10, help="lines and containers shown")
    parser.add_argument("--frames", type=int, default=1, help="call frames per allocation site")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pksoaktrace-", dir="/tmp"))
    try:
        with TestHostPool(workdir / "hosts") as pool, ThreadPoolExecutor(1) as worker:
            _, config_path, _ = set_up(workdir, pool, 1, LIGHT, first=51)  # not soak.py's
            daemon = Daemon(config_path, load_config(config_path), env={})
            daemon.state.ensure()  # as run_daemon does

            def tick() -> None:
                worker.submit(daemon.tick).result()

            tick()  # the first cycle: mirror, trees, first report
            tracemalloc.start(args.frames)
            for calls, forced in ((args.ticks, False), (args.cycles, True)):
                if calls:
                    trace(tick, daemon, calls, forced, args.top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("NOTIFY_SOCKET", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the test host
    sys.exit(main())
