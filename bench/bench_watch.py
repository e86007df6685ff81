"""The daemon's file watch: time from a hand edit to the committed report, and what the watch
costs an idle daemon.

Usage (no SSH host: the daemon runs as the pet itself, local connection; not part of the
test suite)::

    /work/tools/heavy --exclusive .venv/bin/python bench/bench_watch.py --edits 10 --idle 60

Latency: a bare remote, a playbook that manages three files under a temporary folder, policy
``auto``, ``check_interval: 1h`` (only the watch explains a check) and the default
``watch_debounce`` (5s). Each round appends a line to a managed file and times, from just
before the write, until the pet's reports branch on the remote holds a report naming the
trigger; then it waits for that cycle's end. A triggered check applies nothing (the correction
waits ``watch_grace``, 1h here so that none runs during the rounds): each round is what a hand
edit costs with the defaults, and each edit is a new drift, so a new report. ``watch_min_interval``
is 1s here so ten rounds do not take ten minutes; it bounds how often a check may start, not how
soon.

Idle cost: two daemons side by side, watch on and watch off, each with the same 1,000 managed
paths in 100 folders recorded for a local host (written where a check writes them, then a
SIGHUP rebuilds the watch: a playbook of 1,000 file tasks would take minutes per check). After
both are idle, their VmRSS and their CPU over --idle seconds (from /proc/PID/stat; the
default fetch interval of 1m, so a cheap fetch falls inside).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.adapters.state import StateDir, write_managed_paths  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def make_remote(work: Path, pet: Path) -> str:
    bare, clone = work / "remote.git", work / "clone"
    git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    git("init", "-q", "--initial-branch=main", str(clone))
    tasks = "".join(f"""
    - name: Manage {n}
      ansible.builtin.copy: {{dest: "{pet / n}", content: "managed {n}\\n", mode: "0644"}}
""" for n in ("motd", "app.conf", "hosts"))
    (clone / "site.yml").write_text(
        f"- name: The pet\n  hosts: all\n  gather_facts: false\n  tasks:{tasks}")
    (clone / "petkeeper").mkdir()
    (clone / "petkeeper" / "policy.yml").write_text("default: auto\n")
    git("add", "-A", cwd=clone)
    git("-c", "user.name=Bench", "-c", "user.email=bench@test.invalid", "commit", "-qm",
        "The pet", cwd=clone)
    git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=clone)
    return f"file://{bare}"


def write_config(path: Path, url: str, state: Path, daemon: dict) -> Path:
    path.write_text(yaml.safe_dump({
        "repo": {"url": url, "branch": "main", "timeout": "30s"}, "playbooks": ["site.yml"],
        "state_dir": str(state), "daemon": daemon, "ansible": {"timeout": "5m"}}))
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config),
                                 "daemon"], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def wait(what: str, predicate: Callable[[], Any], timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def last_run(state: Path) -> dict:
    try:
        return dict(json.loads((state / "status.json").read_text())["last_run"])
    except (FileNotFoundError, ValueError, KeyError):
        return {}


def reports_head(bare: Path) -> tuple[str, str] | None:
    """The pet's reports branch on the remote (a branch per host: petkeeper/hosts/<host>, the
    only one here) and its head, once it exists."""
    found = git("--git-dir", str(bare), "for-each-ref", "--format=%(refname) %(objectname)",
                "refs/heads/petkeeper/hosts/")
    return (found.split()[0], found.split()[1]) if found else None


def latency(work: Path, edits: int) -> list[float]:
    pet = work / "pet"
    pet.mkdir()
    url = make_remote(work, pet)
    bare, state = work / "remote.git", work / "state-latency"  # make_remote's
    config = write_config(work / "latency.yml", url, state, {
        "fetch_interval": "1m", "check_interval": "1h", "splay": 0, "watch_grace": "1h",
        "watch_min_interval": "1s"})
    proc = start(config, work / "latency.log")
    try:
        wait("the first cycle", lambda: last_run(state).get("exit_code") == 0 and
             (state / "watch.json").exists())
        wait("the watch", lambda: json.loads((state / "watch.json").read_text())["paths"] == 3)
        times = []
        for i in range(edits):
            before, run = reports_head(bare), last_run(state).get("run_id")
            began = time.monotonic()
            with (pet / "motd").open("a") as f:
                f.write(f"hand edit {i}\n")
            wait("the report", lambda b=before: (head := reports_head(bare)) not in (None, b)
                 and "check triggered by a change of" in git(
                     "--git-dir", str(bare), "log", "-1", "--format=%B", head[0]).lower())
            times.append(time.monotonic() - began)
            print(f"edit {i + 1}: {times[-1]:.2f}s to the committed report", flush=True)
            # The cycle ends (status.json written after the push): the next edit is not read
            # during a cycle, which would wait for its end.
            wait("the cycle's end", lambda r=run: last_run(state).get("run_id") not in (None, r))
        return times
    finally:
        stop(proc)


def idle_cost(work: Path, idle: float) -> dict[str, tuple[int, float]]:
    paths = []
    for d in range(100):
        folder = work / "many" / f"d{d:03}"
        folder.mkdir(parents=True)
        for f in range(10):
            (folder / f"f{f}").write_text("x\n")
            paths.append(str(folder / f"f{f}"))
    procs = {}
    for mode, watch in (("on", True), ("off", False)):  # each its own remote and pet
        (work / f"idle-{mode}").mkdir()
        (work / f"pet-{mode}").mkdir()
        url = make_remote(work / f"idle-{mode}", work / f"pet-{mode}")
        state = work / f"state-{mode}"
        config = write_config(work / f"idle-{mode}.yml", url, state, {
            "check_interval": "1h", "splay": 0, "watch": watch})
        procs[mode] = (start(config, work / f"idle-{mode}.log"), state)
    try:
        for mode, (proc, state) in procs.items():
            wait(f"the {mode} daemon's first cycle", lambda s=state: "exit_code" in last_run(s))
            write_managed_paths(StateDir(state), "bench-1000", {"paths": paths, "local": True})
            proc.send_signal(signal.SIGHUP)
        wait("the 1,000 paths watched", lambda: json.loads(
            (work / "state-on" / "watch.json").read_text()).get("paths", 0) >= 1000)
        time.sleep(5)  # the first cycle's child gone, the reload done
        start_cpu = {m: cpu(p.pid) for m, (p, _) in procs.items()}
        time.sleep(idle)
        return {m: (rss(p.pid), cpu(p.pid) - start_cpu[m]) for m, (p, _) in procs.items()}
    finally:
        for proc, _ in procs.values():
            stop(proc)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, the daemon alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    # A timeout's SIGTERM: the daemons started are stopped on the way out (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_watch: stopped (SIGTERM)"))
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        work = Path(tmp)
        times = latency(work, args.edits)
        print(f"hand edit to committed report: median {statistics.median(times):.2f}s, "
              f"min {min(times):.2f}s, max {max(times):.2f}s over {len(times)} edits "
              "(goal: under 15 s)")
        cost = idle_cost(work, args.idle)
        (on_rss, on_cpu), (off_rss, off_cpu) = cost["on"], cost["off"]
        print(f"idle daemon over {args.idle:g}s: watch on (1,000 paths, 100 folders) RSS "
              f"{on_rss / 1024:.1f} MiB, CPU {on_cpu:.2f}s; watch off RSS "
              f"{off_rss / 1024:.1f} MiB, CPU {off_cpu:.2f}s; difference "
              f"{(on_rss - off_rss)} KiB RSS (goal: at most 1024 KiB)")


if __name__ == "__main__":
    main()
