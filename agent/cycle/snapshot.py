"""Snapshot: before an apply, read what it is about to change from the host; after it, read
again what it left. Through a small play of Petkeeper's own, over the same Ansible connection
(inventory, ansible.cfg, keys) as the apply, limited to the files the plan's changes name.

The bytes go straight from the host into the state directory (ansible.builtin.fetch): no event,
log or record sees them. The apply record keeps their hashes and metadata only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.runner import RunResult, Watcher, run_playbook
from agent.adapters.snapshots import blob_path, store_blob
from agent.adapters.state import StateDir, write_atomic
from agent.config import Config
from agent.core.drift import Change, HostReport
from agent.core.undo import FileState, parse_stat, snapshot_paths, unrestorable
from agent.cycle.detect import Targets, check_drift, check_drift_then, playbook_run
from agent.cycle.source import Source
from agent.errors import AgentError, TransientError

log = logging.getLogger(__name__)

STAT_TASK, FETCH_TASK = "petkeeper snapshot: stat", "petkeeper snapshot: fetch"
ETCKEEPER = ("/usr/bin/etckeeper", "/usr/sbin/etckeeper", "/usr/local/bin/etckeeper")
# Run alone, or after the repo's playbook in its check's ansible-playbook process (check_and_read):
# so its tasks run for real in a check run (check_mode: false), whatever --tags or --skip-tags
# the check has (always; only --skip-tags always or tagged skips them: then it runs alone),
# and a task of its that fails stops nothing (ignore_errors; _failed still counts it). Its
# variables come from its own vars file, never extra vars, which would reach the repo's play.
SNAPSHOT_PLAY: dict[str, Any] = {
    "name": "Petkeeper snapshot", "hosts": "all", "gather_facts": False,
    "check_mode": False, "tags": ["always"], "ignore_errors": True, "tasks": [
        {"name": "petkeeper snapshot: find etckeeper",
         "when": "petkeeper_etckeeper and inventory_hostname in petkeeper_etckeeper_message",
         "ansible.builtin.stat": {"path": "{{ item }}", "get_checksum": False},
         "loop": list(ETCKEEPER), "register": "petkeeper_etckeeper_found"},
        {"name": "petkeeper snapshot: etckeeper commit",
         "when": "petkeeper_etckeeper and inventory_hostname in petkeeper_etckeeper_message "
                 "and (petkeeper_etckeeper_found.results | selectattr('stat.exists') | list | "
                 "length > 0)",
         "ansible.builtin.command": {"argv": [
             "{{ (petkeeper_etckeeper_found.results | selectattr('stat.exists') | first)"
             ".stat.path }}", "commit", "{{ petkeeper_etckeeper_message[inventory_hostname] }}"]},
         "register": "petkeeper_etckeeper_commit",
         "changed_when": "petkeeper_etckeeper_commit.rc == 0", "failed_when": False},
        {"name": STAT_TASK,
         "ansible.builtin.stat": {"path": "{{ item }}", "follow": False, "get_mime": False,
                                  "get_attributes": False, "checksum_algorithm": "sha256"},
         "loop": "{{ petkeeper_paths.get(inventory_hostname, []) }}",
         "register": "petkeeper_stat"},
        {"name": FETCH_TASK,
         "ansible.builtin.fetch": {
             "src": "{{ item.item }}", "flat": True,
             "dest": "{{ petkeeper_fetch_dir }}/{{ petkeeper_slot[inventory_hostname] }}/"
                     "{{ index }}"},
         "loop": "{{ petkeeper_stat.results | default([]) }}",
         "loop_control": {"index_var": "index", "label": "{{ item.item }}"},
         "when": "petkeeper_fetch and item.stat.exists and item.stat.isreg and "
                 "item.stat.size <= petkeeper_max_file"},
    ]}
# With these, a tag filter would skip even the play's `always` tasks (Taggable.evaluate_tags).
SKIPS_ALWAYS = frozenset({"always", "tagged"})


@dataclass(frozen=True)
class Reading:
    """What one snapshot play reads: per host its PATHS, their bytes too (FETCH) or only
    their state, after an etckeeper commit of /etc with the host's ETCKEEPER message (when
    set, and undo.etckeeper is auto)."""

    paths: Mapping[str, Sequence[str]]
    fetch: bool
    etckeeper: Mapping[str, str] = field(default_factory=dict)

    @property
    def slots(self) -> dict[str, int]:
        """Each host's folder of fetched bytes (a number: a host name is no path)."""
        return {host: i for i, host in enumerate(self.paths)}


@dataclass(frozen=True)
class _Play:
    path: Path  # the play, next to its vars file
    fetched: Path  # where fetch puts the bytes: <slot of the host>/<index of the path>


def read_files(config: Config, source: Source, targets: Targets, state: StateDir, host: str,
               paths: Sequence[str], ident: str, *, fetch: bool, etckeeper: str = "",
               cancel: Callable[[], bool] | None = None
               ) -> tuple[dict[str, FileState], dict[str, str]]:
    """Read PATHS on HOST: each one's state, and (FETCH) the sha256 of the bytes now kept in
    the state directory, per path. ETCKEEPER, when set and undo.etckeeper is auto, is the
    message of an etckeeper commit of /etc made first where etckeeper is installed.
    TransientError when the host could not be read: then nothing may be applied."""
    read, failed = read_hosts_files(config, source, targets, state, Reading(
        {host: paths}, fetch, {host: etckeeper} if etckeeper else {}), ident, cancel)
    if host in failed:
        raise TransientError(failed[host])
    return read[host]


Read = dict[str, tuple[dict[str, FileState], dict[str, str]]]


def read_hosts_files(config: Config, source: Source, targets: Targets, state: StateDir,
                     reading: Reading, ident: str, cancel: Callable[[], bool] | None = None
                     ) -> tuple[Read, dict[str, str]]:
    """read_files for several hosts in a run of its own (READING): what was read per host,
    and why each host that could not be read was not."""
    with _snapshot_play(config, state, reading) as play:
        hosts = list(reading.paths)
        return _parse(state, reading, play, hosts, _run_alone(
            config, source, targets, state, play, hosts, ident, cancel))


def check_and_read(config: Config, source: Source, targets: Targets, state: StateDir,
                   reading: Reading, run_id: str, ident: str,
                   keep: Callable[[Mapping[str, HostReport]], Collection[str]],
                   cancel: Callable[[], bool] | None = None, watch: Watcher | None = None
                   ) -> tuple[dict[str, HostReport], Read, dict[str, str]]:
    """check_drift of TARGETS (RUN_ID), and READING's files read, for the hosts KEEP picks
    from the check's reports, by the play run after the last playbook's check in the same
    ansible-playbook process: one process less. Where it cannot ride along (--skip-tags
    always, or the check's run did not reach it: a host failed or was unreachable, or it was
    stopped), the play runs alone after the check (IDENT). The reports, what was read per
    host, and why each host that could not be read was not."""
    if not reading.paths:
        return check_drift(config, source, targets, state, run_id, cancel, watch), {}, {}
    with _snapshot_play(config, state, reading) as play:
        ride = not SKIPS_ALWAYS & set(config.skip_tags)
        reports, later = check_drift_then(config, source, targets, state, run_id,
                                          str(play.path) if ride else None, cancel, watch)
        kept = set(keep(reports))
        hosts = [h for h in reading.paths if h in kept]
        if not hosts:
            return reports, {}, {}
        try:
            if later is None:
                later = _run_alone(config, source, targets, state, play, hosts, ident, cancel)
            return (reports, *_parse(state, reading, play, hosts, later))
        except AgentError as e:  # the check's reports stand; the files were not read
            return reports, {}, dict.fromkeys(hosts, str(e))


@contextmanager
def _snapshot_play(config: Config, state: StateDir, reading: Reading) -> Iterator[_Play]:
    """READING's play and its vars file, in a private folder of the state directory, for as
    long as the play's runs last; the bytes it fetched and nobody kept go with it."""
    with tempfile.TemporaryDirectory(dir=incoming(state)) as work:
        fetched = Path(work) / "files"
        fetched.mkdir(mode=0o700)
        variables = Path(work) / "vars.json"
        write_atomic(variables, json.dumps({
            "petkeeper_paths": {h: list(p) for h, p in reading.paths.items()},
            "petkeeper_fetch": reading.fetch, "petkeeper_fetch_dir": str(fetched),
            "petkeeper_max_file": config.undo.max_file,
            "petkeeper_slot": reading.slots,
            "petkeeper_etckeeper": bool(reading.etckeeper) and config.undo.etckeeper == "auto",
            "petkeeper_etckeeper_message": dict(reading.etckeeper)}).encode())
        play = Path(work) / "snapshot.yml"
        write_atomic(play, yaml.safe_dump([{**SNAPSHOT_PLAY, "vars_files": [str(variables)]}],
                                          sort_keys=False).encode())
        try:
            yield _Play(play, fetched)
        finally:
            shutil.rmtree(fetched, ignore_errors=True)


def _run_alone(config: Config, source: Source, targets: Targets, state: StateDir, play: _Play,
               hosts: Sequence[str], ident: str, cancel: Callable[[], bool] | None
               ) -> RunResult:
    run = replace(playbook_run(config, source, targets.only(hosts), str(play.path), ident,
                               check=False),
                  tags=(), skip_tags=())
    return run_playbook(run, state.runner, config.ansible.artifacts_keep, cancel)


def _parse(state: StateDir, reading: Reading, play: _Play, hosts: Sequence[str],
           result: RunResult) -> tuple[Read, dict[str, str]]:
    """What RESULT, a run of PLAY, read on each of HOSTS: the bytes fetched go to the undo
    store."""
    read, failed = {}, {}
    whole = result.status != "successful" and (  # timed out, canceled, stopped: all fail
        not result.started or result.status != "failed" or not result.finished)
    slots = reading.slots
    for host in hosts:
        paths = reading.paths[host]
        states = _stat_results(result.events, host)
        if whole or _failed(result.events, host) or len(states) != len(paths):
            failed[host] = (f"{host}: the snapshot of {len(paths)} file(s) could not "
                            f"be read ({result.error if not result.started else result.status})"
                            "; nothing was applied: the next cycle tries again")
            continue
        digests = {}
        for i, path in enumerate(paths):
            blob = play.fetched / str(slots[host]) / str(i)
            if reading.fetch and blob.is_file():
                digests[path] = store_blob(state, blob.read_bytes())
                blob.unlink()
        read[host] = dict(zip(paths, states, strict=True)), digests
    return read, failed


def _failed(events: Sequence[Mapping[str, Any]], host: str) -> bool:
    """Whether a task of the snapshot play failed on HOST (its failures are ignored, so that
    they stop nothing: they count all the same) or HOST was unreachable."""
    for event in events:
        data = event.get("event_data") or {}
        if data.get("host") == host and event.get("event") in ("runner_on_unreachable",
                                                                "runner_on_failed"):
            return True
    return False


def incoming(state: StateDir) -> Path:
    """A private folder for one play's files (under the cycle's lock); what a killed cycle
    left there, bytes read from a host included, goes first."""
    folder = state.undo / "incoming"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    return folder


def _stat_results(events: Sequence[Mapping[str, Any]], host: str) -> list[FileState]:
    for event in events:
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == STAT_TASK and \
                data.get("host") == host:
            return [parse_stat(r) for r in (data.get("res") or {}).get("results") or ()]
    return []


def check_and_snapshot(config: Config, source: Source, targets: Targets, state: StateDir,
                       plans: Mapping[str, tuple[str, str, Sequence[Change]]], run_id: str,
                       ident: str, cancel: Callable[[], bool] | None = None,
                       watch: Watcher | None = None
                       ) -> tuple[dict[str, HostReport], dict[str, dict[str, Any]],
                                  dict[str, str]]:
    """The re-check before the applies of PLANS (per host: plan id, fingerprint, changes)
    and, in the same run (check_and_read), the snapshot of the files the plan's changes name:
    the reports; per host whose drift is still its plan's, the snapshot's files (path, before,
    blob, hidden, skipped) and the changes no undo could put back (task, module, reason); and
    why each such host that could not be read was not."""
    wanted = {host: snapshot_paths(c) for host, (_, _, c) in plans.items()}
    paths = {host: [p for p, _ in w] for host, w in wanted.items() if w}

    def still(reports: Mapping[str, HostReport]) -> list[str]:
        return [host for host, (_, fingerprint, _) in plans.items()
                if host in reports and reports[host].fingerprint == fingerprint]

    reports, read, failed = check_and_read(
        config, source, targets, state,
        Reading(paths, True, {h: f"petkeeper: before plan {plans[h][0]}" for h in paths}),
        run_id, ident, still, cancel, watch)
    return reports, {host: _snapshot(config, source, state, wanted[host],
                                     *read.get(host, ({}, {})), plans[host][2])
                     for host in still(reports) if host not in failed}, failed


def _snapshot(config: Config, source: Source, state: StateDir, wanted: Sequence[tuple[str, bool]],
              states: Mapping[str, FileState], digests: Mapping[str, str],
              changes: Sequence[Change]) -> dict[str, Any]:
    files = []
    for path, hidden in wanted:
        before = states[path]
        skipped = unrestorable(path, before, config.undo.max_file)
        if before.kind == "file" and not skipped and digests.get(path) != before.sha256:
            skipped = "its bytes changed while they were read"
        if not skipped and path in digests:
            # A secret the source knows now may be gone from it by the time of an undo (a
            # rotated vault value): such a file's undo diff never shows its content.
            text = blob_path(state, digests[path]).read_bytes().decode(errors="replace")
            hidden = hidden or source.mask(text) != text
        files.append({"path": path, "hidden": hidden, "before": before.as_dict(),
                      "blob": before.kind == "file" and not skipped, "skipped": skipped})
    irreversible = [{"task": c.task, "module": c.module, "reason": c.irreversible}
                    for c in changes if c.irreversible]
    irreversible += [{"task": "", "module": "", "reason": f"{f['path']}: {f['skipped']}"}
                     for f in files if f["skipped"]]
    return {"files": files, "irreversible": irreversible}


def check_and_read_after(config: Config, source: Source, targets: Targets, state: StateDir,
                         snapshots: Mapping[str, tuple[str, Mapping[str, Any]]], run_id: str,
                         ident: str, cancel: Callable[[], bool] | None = None,
                         watch: Watcher | None = None
                         ) -> tuple[dict[str, HostReport], dict[str, list[dict[str, Any]]],
                                    dict[str, str]]:
    """The re-check after the apply and, in the same run (check_and_read), each host's (plan
    id, SNAPSHOT) files read again, hashes only: the reports; per host its snapshot's files,
    each with the state the apply left ("after"), which an undo compares with what it finds
    (a file changed since is a conflict); and why each host that could not be read was not."""
    paths = {host: [f["path"] for f in snapshot["files"]]
             for host, (_, snapshot) in snapshots.items() if snapshot["files"]}
    reports, read, failed = check_and_read(
        config, source, targets, state,
        Reading(paths, False, {h: f"petkeeper: after plan {snapshots[h][0]}" for h in paths}),
        run_id, ident, lambda _: list(snapshots), cancel, watch)
    files = {}
    for host, (_, snapshot) in snapshots.items():
        if host in failed:
            continue
        states = read.get(host, ({}, {}))[0]
        files[host] = [{**f, "after": states[f["path"]].as_dict()} for f in snapshot["files"]]
    return reports, files, failed
