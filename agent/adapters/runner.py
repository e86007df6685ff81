"""Runs Ansible: the only module that imports ansible-runner (agent.adapters.galaxy alone starts
ansible-galaxy).

Events are kept in memory and returned; none is written to the artifacts folder, which keeps
only ansible-runner's bounded, rotated bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from agent.adapters.masters import close_masters
from agent.adapters.process import parents, read_proc, stop_process_tree
from agent.adapters.state import DISK_FULL, disk_full_error
from agent.config import parse_extra_var
from agent.core.accelerator import STRATEGY
from agent.core.ssh_masters import Masters
from agent.core.versions import untested_ansible

log = logging.getLogger(__name__)

PLUGINS = Path(__file__).parents[1] / "plugins"  # petkeeper_facts: skip reasons, no_log changes
BACKSTOP = 30  # ansible-runner's own timeout, in case our stop did not end the run
SCRUBBED_ARTIFACTS = ("command", "stdout", "stderr")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class PlaybookRun:
    """What to run: one playbook of a materialised tree, against an inventory and a limit."""

    tree: Path
    playbook: str
    inventory: Path
    limit: str
    check: bool
    ident: str
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    extra_vars: tuple[str, ...] = ()
    vault_password_file: str | None = None
    timeout: float = 1800.0
    forks: int = 5
    private_key_file: str | None = None
    known_hosts_file: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # e.g. agent.adapters.galaxy's paths
    # Petkeeper's own playbooks (absolute paths), run after PLAYBOOK by the same
    # ansible-playbook process: each keeps its own folder, so PLAYBOOK's playbook_dir and
    # adjacent group_vars stay its own. split_run tells their events apart.
    then: tuple[str, ...] = ()
    # The daemon's kept SSH masters (agent.core.ssh_masters); None: a control folder of the
    # run's own, its masters closed when the run ends.
    masters: Masters | None = None


# Sees each event of a run as it happens (a progress line on a terminal, say).
Watcher = Callable[[PlaybookRun, Mapping[str, Any]], None]


@dataclass
class RunResult:
    rc: int
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    events: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)  # from the petkeeper_facts plugin

    @property
    def started(self) -> bool:
        """Whether any play started; if not, Ansible refused the playbook itself."""
        return any(e.get("event") == "playbook_on_play_start" for e in self.events)

    @property
    def finished(self) -> bool:
        """Whether Ansible reached its recap; if not, it stopped mid-run."""
        return any(e.get("event") == "playbook_on_stats" for e in self.events)

    @property
    def error(self) -> str:
        """Ansible's own error line, for a playbook it refused to run."""
        for event in self.events:
            for line in ANSI.sub("", str(event.get("stdout") or "")).splitlines():
                line = line.strip()
                if line.startswith(("[ERROR]", "ERROR!")):
                    return line.removeprefix("[ERROR]:").removeprefix("ERROR!").strip()
        return f"ansible-playbook exited {self.rc} ({self.status})"


def warn_untested_ansible() -> None:
    """Log one warning when the installed ansible-core is outside the tested range."""
    try:
        installed = version("ansible-core")
    except PackageNotFoundError:
        installed = "(not installed as a Python package)"
    warning = untested_ansible(installed, sys.version_info[:2])
    if warning:
        log.warning("%s", warning)


def run_playbook(run: PlaybookRun, work_dir: Path, keep_artifacts: int = 5,
                 cancel: Callable[[], bool] | None = None,
                 watch: Watcher | None = None) -> RunResult:
    """Run RUN through ansible-runner in WORK_DIR; return its rc, status and events (WATCH, if
    given, sees each one as it comes).

    At RUN.timeout, or when CANCEL returns True, every process of the run is stopped: Ansible's
    workers leave the run's process group (setsid), so the whole process tree is signalled.
    The run's SSH control masters are closed when it ends, except the daemon's (RUN.masters),
    which its stop closes."""
    if cancel is not None and cancel():  # shutting down: start no new Ansible run at all
        log.info("not running %s (ident %s): canceled", run.playbook, run.ident)
        return RunResult(rc=-1, status="canceled", events=[], facts=[])
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + run.timeout
    stopped: list[str] = []

    def keep(event: dict[str, Any]) -> bool:
        events.append(event)
        if watch is not None:
            watch(run, event)
        return False  # kept in memory only: artifacts stay small and hold no diffs

    def should_stop() -> bool:
        if not stopped and (time.monotonic() > deadline or (cancel is not None and cancel())):
            late = time.monotonic() > deadline
            stopped.append("timeout" if late else "canceled")
            names = _stop_ansible()
            log.warning("%s (ident %s): %s; stopped %s", run.playbook, run.ident,
                        f"no end within {run.timeout:g}s" if late else "the agent is stopping",
                        ", ".join(names) or "nothing left")
        return bool(stopped)

    # Imported here, where a run starts: the commands and the daemon's ticks that run no
    # playbook (status, --help, the fetch tick) never load ansible-runner and ansible-core.
    import ansible_runner

    _close_reaped_ptys_at_once()
    try:
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="vars-") as vars_dir, \
                control_folder(run.masters) as control_dir:
            facts_file = Path(vars_dir) / "facts.jsonl"
            cmdline = build_cmdline(run, [*_extra_var_files(run.extra_vars, Path(vars_dir)),
                                          *_masters_var_file(run.masters, Path(vars_dir))])
            log.info("running %s%s in %s mode (ident %s, limit %s)", run.playbook,
                     "".join(f" then {Path(p).name}" for p in run.then),
                     "check" if run.check else "apply", run.ident, run.limit)
            try:
                r = ansible_runner.run(
                    private_data_dir=str(work_dir), project_dir=str(run.tree),
                    **runner_targets(run, cmdline),
                    envvars={**build_env(run),
                             **ssh_control_env(run.masters, control_dir, mitogen(run)),
                             "PETKEEPER_FACTS_FILE": str(facts_file)},
                    ident=run.ident, quiet=True, timeout=int(run.timeout) + BACKSTOP,
                    settings={"pexpect_timeout": 1}, rotate_artifacts=keep_artifacts,
                    suppress_env_files=True, event_handler=keep, cancel_callback=should_stop,
                    # ansible-runner's default, a jsonfile cache in the artifacts, would
                    # override strict_env's memory cache: facts stay in memory, never on disk.
                    fact_cache_type="memory",
                )
            except BaseException:
                # ansible-runner gave up (e.g. it could not write its artifacts), or Ctrl-C,
                # while Ansible may still run: stop it, so that nothing outlives the cycle.
                _stop_ansible()
                raise
            facts = _read_facts(facts_file)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full_error(work_dir, "ansible-runner's files") from e
        raise
    _scrub_artifacts(work_dir / "artifacts" / run.ident)
    status = stopped[0] if stopped else str(r.status)
    return RunResult(rc=int(r.rc if r.rc is not None else -1), status=status, events=events,
                     facts=facts)


@contextlib.contextmanager
def control_folder(masters: Masters | None) -> Iterator[Path]:
    """The folder of a run's SSH control sockets: the daemon's, whose masters outlive the run
    (MASTERS), or a fresh private one in /tmp (a short path: a socket's is 107 bytes at most),
    whose masters are closed when the run ends: they left its process tree."""
    if masters is not None:
        yield masters.folder
        return
    with tempfile.TemporaryDirectory(prefix="pk-cp-") as folder:
        try:
            yield Path(folder)
        finally:
            close_masters(Path(folder))


def ssh_control_env(masters: Masters | None, folder: Path,
                    shared: bool = False) -> dict[str, str]:
    """Where Ansible's SSH connections keep their control sockets, and for the daemon's kept
    masters, how long an idle one lives (SHARED: and where Mitogen's go, which it would not
    keep otherwise)."""
    env = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(folder)}
    if masters is not None:
        env["ANSIBLE_SSH_ARGS"] = masters.ssh_args(shared)
    return env


def mitogen(run: PlaybookRun) -> bool:
    """Whether RUN runs Mitogen's strategy (agent.adapters.accelerator sets it)."""
    return run.env.get("ANSIBLE_STRATEGY") == STRATEGY


def build_cmdline(run: PlaybookRun, extra_var_args: Sequence[str]) -> list[str]:
    """Return ansible-playbook's options for RUN (the playbook, inventory and limit aside)."""
    args = ["--check", "--diff"] if run.check else ["--diff"]
    if run.tags:
        args += ["--tags", ",".join(run.tags)]
    if run.skip_tags:
        args += ["--skip-tags", ",".join(run.skip_tags)]
    for value in extra_var_args:
        args += ["--extra-vars", value]
    if run.vault_password_file:
        args += ["--vault-password-file", run.vault_password_file]
    return args


def runner_targets(run: PlaybookRun, cmdline: Sequence[str]) -> dict[str, Any]:
    """ansible-runner's playbook, inventory, limit, forks and cmdline arguments for RUN.

    ansible-runner puts -i, --limit and --forks after the cmdline and its one playbook last,
    and ansible-playbook takes its playbooks as one run of positionals, with no option between
    them. So with playbooks to run after RUN's, the last of them is ansible-runner's playbook
    and the options and the others end the cmdline: `[OPTIONS] -i INV --limit L --forks N
    site.yml [...] LAST.yml`."""
    if not run.then:
        return {"playbook": run.playbook, "inventory": str(run.inventory), "limit": run.limit,
                "forks": run.forks, "cmdline": shlex.join(cmdline)}
    *first, last = run.playbook, *run.then
    return {"playbook": last, "inventory": None, "limit": None, "forks": None,
            "cmdline": shlex.join([*cmdline, "-i", str(run.inventory), "--limit", run.limit,
                                   "--forks", str(run.forks), *first])}


def split_run(result: RunResult) -> tuple[RunResult, RunResult | None]:
    """RESULT of a run with playbooks after its own (PlaybookRun.then), as two: its own
    playbook's part (events up to the second playbook_on_start, the first recap included) and
    the later playbooks' part (None when they never started). ansible-playbook starts the next
    playbook only when the one before ended with no failed or unreachable host: so when the
    later part started, the first part succeeded; the later part has the run's rc and status.
    Each part has the petkeeper_facts of its own tasks."""
    starts = [i for i, e in enumerate(result.events) if e.get("event") == "playbook_on_start"]
    if len(starts) < 2:
        return result, None
    own, later = result.events[:starts[1]], result.events[starts[1]:]
    tasks = {str((e.get("event_data") or {}).get("task_uuid")) for e in later}
    facts = [f for f in result.facts if str(f.get("task_uuid")) not in tasks]
    return (RunResult(rc=0, status="successful", events=own, facts=facts),
            RunResult(rc=result.rc, status=result.status, events=later,
                      facts=[f for f in result.facts if str(f.get("task_uuid")) in tasks]))


def build_env(run: PlaybookRun) -> dict[str, str]:
    """Return the environment ansible-playbook runs with: strict inventory, host keys checked."""
    env = {**strict_env(), "PATH": path_with_venv(), "ANSIBLE_PIPELINING": "True",
           "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS),
           "ANSIBLE_CALLBACKS_ENABLED": "petkeeper_facts"}
    ssh_args = ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    if run.known_hosts_file:
        ssh_args += ["-o", f"UserKnownHostsFile={run.known_hosts_file}"]
    env["ANSIBLE_SSH_COMMON_ARGS"] = shlex.join(ssh_args)
    if run.private_key_file:
        env["ANSIBLE_PRIVATE_KEY_FILE"] = run.private_key_file
    return {**env, **run.env}


def _extra_var_files(values: Sequence[str], folder: Path) -> list[str]:
    """Write inline extra vars to private files so their values never reach a command line
    (ansible-runner records the command line in its artifacts)."""
    args = []
    for i, value in enumerate(values):
        if value.startswith("@"):
            args.append(value)
            continue
        path = folder / f"extra-{i}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(parse_extra_var(value), f)
        args.append(f"@{path}")
    return args


def _masters_var_file(masters: Masters | None, folder: Path) -> list[str]:
    """The extra var that gives each inventory host its own folder of kept masters (Ansible
    renders it per host), last: it outranks the inventory's."""
    if masters is None:
        return []
    path = folder / "ssh-masters.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"ansible_control_path_dir": masters.control_path_dir()}, f)
    return [f"@{path}"]


def _read_facts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    facts = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            facts.append(json.loads(line))
    return facts


@functools.cache
def _close_reaped_ptys_at_once() -> None:
    """ptyprocess pauses 0.1 s whenever it closes a pty (delayafterclose: "to give the kernel
    time to update process status"), and ansible-runner closes ansible-playbook's only once it
    has reaped it (its loop runs while the child is alive, then it reads to EOF): a pause at
    the end of every run, which waits for nothing. A child already reaped is closed at once;
    any other (one left running when ansible-runner raised) with the pause, then stopped, as
    before. Not settable through ansible-runner's API."""
    import ptyprocess

    close = ptyprocess.PtyProcess.close

    def close_at_once_if_reaped(self: Any, force: bool = True) -> None:
        if self.terminated:  # isalive() has seen its exit status: nothing to wait for
            self.delayafterclose = 0
        close(self, force)

    ptyprocess.PtyProcess.close = close_at_once_if_reaped


def _stop_ansible() -> list[str]:
    """Stop every Ansible process tree we started (pexpect made each a session leader)."""
    kids = _ansible_children()
    return stop_process_tree(kids, sessions=kids)


def _ansible_children() -> list[int]:
    """Our child processes that run Ansible (pexpect starts ansible-playbook as our child)."""
    me = os.getpid()
    return [pid for pid, parent in parents().items() if parent == me and
            b"ansible" in read_proc(pid, "cmdline")]


def _scrub_artifacts(folder: Path) -> None:
    """ansible-runner records the whole environment (`command`) and the printed output with
    every diff (`stdout`): drop both, so no secret lingers on disk. rc and status stay."""
    for name in SCRUBBED_ARTIFACTS:
        (folder / name).unlink(missing_ok=True)


def strict_env() -> dict[str, str]:
    """Settings no ansible.cfg may change (the environment outranks it): strict inventories,
    host keys checked, no log file (it would hold diffs in clear), facts cached in memory, and
    no module arguments in the targets' syslog."""
    return {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", "ANSIBLE_HOST_PATTERN_MISMATCH": "error",
            "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOG_PATH": os.devnull,
            "ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_NO_TARGET_SYSLOG": "True"}


def path_with_venv() -> str:
    """ansible-runner starts ansible-playbook by name: find ours first."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/bin:/bin")
    return f"{bin_dir}:{path}"
