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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.runner import run_playbook
from agent.adapters.snapshots import blob_path, store_blob
from agent.adapters.state import StateDir, write_atomic
from agent.config import Config
from agent.core.drift import Change
from agent.core.undo import FileState, parse_stat, snapshot_paths, unrestorable
from agent.cycle.detect import Targets, playbook_run
from agent.cycle.source import Source
from agent.errors import TransientError

log = logging.getLogger(__name__)

STAT_TASK, FETCH_TASK = "petkeeper snapshot: stat", "petkeeper snapshot: fetch"
ETCKEEPER = ("/usr/bin/etckeeper", "/usr/sbin/etckeeper", "/usr/local/bin/etckeeper")
SNAPSHOT_PLAY = [{
    "name": "Petkeeper snapshot", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "petkeeper snapshot: find etckeeper", "when": "petkeeper_etckeeper",
         "ansible.builtin.stat": {"path": "{{ item }}", "get_checksum": False},
         "loop": list(ETCKEEPER), "register": "petkeeper_etckeeper_found"},
        {"name": "petkeeper snapshot: etckeeper commit",
         "when": "petkeeper_etckeeper and (petkeeper_etckeeper_found.results | "
                 "selectattr('stat.exists') | list | length > 0)",
         "ansible.builtin.command": {"argv": [
             "{{ (petkeeper_etckeeper_found.results | selectattr('stat.exists') | first)"
             ".stat.path }}", "commit", "{{ petkeeper_etckeeper_message[inventory_hostname] }}"]},
         "register": "petkeeper_etckeeper_commit",
         "changed_when": "petkeeper_etckeeper_commit.rc == 0", "failed_when": False},
        {"name": STAT_TASK,
         "ansible.builtin.stat": {"path": "{{ item }}", "follow": False, "get_mime": False,
                                  "get_attributes": False, "checksum_algorithm": "sha256"},
         "loop": "{{ petkeeper_paths[inventory_hostname] }}", "register": "petkeeper_stat"},
        {"name": FETCH_TASK,
         "ansible.builtin.fetch": {
             "src": "{{ item.item }}", "flat": True,
             "dest": "{{ petkeeper_fetch_dir }}/{{ petkeeper_slot[inventory_hostname] }}/"
                     "{{ index }}"},
         "loop": "{{ petkeeper_stat.results }}",
         "loop_control": {"index_var": "index", "label": "{{ item.item }}"},
         "when": "petkeeper_fetch and item.stat.exists and item.stat.isreg and "
                 "item.stat.size <= petkeeper_max_file"},
    ]}]


def read_files(config: Config, source: Source, targets: Targets, state: StateDir, host: str,
               paths: Sequence[str], ident: str, *, fetch: bool, etckeeper: str = "",
               cancel: Callable[[], bool] | None = None
               ) -> tuple[dict[str, FileState], dict[str, str]]:
    """Read PATHS on HOST: each one's state, and (FETCH) the sha256 of the bytes now kept in
    the state directory, per path. ETCKEEPER, when set and undo.etckeeper is auto, is the
    message of an etckeeper commit of /etc made first where etckeeper is installed.
    TransientError when the host could not be read: then nothing may be applied."""
    read, failed = read_hosts_files(config, source, targets, state, {host: paths}, ident,
                                    fetch=fetch, etckeeper={host: etckeeper} if etckeeper else {},
                                    cancel=cancel)
    if host in failed:
        raise TransientError(failed[host])
    return read[host]


def read_hosts_files(config: Config, source: Source, targets: Targets, state: StateDir,
                     paths: Mapping[str, Sequence[str]], ident: str, *, fetch: bool,
                     etckeeper: Mapping[str, str], cancel: Callable[[], bool] | None = None
                     ) -> tuple[dict[str, tuple[dict[str, FileState], dict[str, str]]],
                                dict[str, str]]:
    """read_files for several hosts in one run (PATHS and ETCKEEPER's messages per host):
    what was read per host, and why each host that could not be read was not."""
    hosts = list(paths)
    some = replace(targets, hosts=tuple(hosts), limit=",".join(hosts))
    with tempfile.TemporaryDirectory(dir=incoming(state)) as work:
        play = Path(work) / "snapshot.yml"
        write_atomic(play, yaml.safe_dump(SNAPSHOT_PLAY, sort_keys=False).encode())
        fetched = Path(work) / "files"
        fetched.mkdir(mode=0o700)
        variables = Path(work) / "vars.json"
        write_atomic(variables, json.dumps({
            "petkeeper_paths": {h: list(p) for h, p in paths.items()}, "petkeeper_fetch": fetch,
            "petkeeper_fetch_dir": str(fetched), "petkeeper_max_file": config.undo.max_file,
            "petkeeper_slot": {h: i for i, h in enumerate(hosts)},
            "petkeeper_etckeeper": bool(etckeeper) and config.undo.etckeeper == "auto",
            "petkeeper_etckeeper_message": dict(etckeeper)}).encode())
        run = replace(playbook_run(config, source, some, str(play), ident, check=False),
                      tags=(), skip_tags=(),
                      extra_vars=(*config.extra_vars, f"@{variables}"))
        result = run_playbook(run, state.runner, config.ansible.artifacts_keep, cancel)
        read, failed = {}, {}
        whole = result.status != "successful" and (  # timed out, canceled, stopped: all fail
            not result.started or result.status != "failed" or
            not any(e.get("event") == "playbook_on_stats" for e in result.events))
        for slot, host in enumerate(hosts):
            states = _stat_results(result.events, host)
            if whole or _failed(result.events, host) or len(states) != len(paths[host]):
                failed[host] = (f"{host}: the snapshot of {len(paths[host])} file(s) could not "
                                f"be read ({result.error if not result.started else result.status})"
                                "; nothing was applied: the next cycle tries again")
                continue
            digests = {}
            for i, path in enumerate(paths[host]):
                blob = fetched / str(slot) / str(i)
                if fetch and blob.is_file():
                    digests[path] = store_blob(state, blob.read_bytes())
                    blob.unlink()
            read[host] = dict(zip(paths[host], states, strict=True)), digests
        shutil.rmtree(fetched, ignore_errors=True)
    return read, failed


def _failed(events: Sequence[Mapping[str, Any]], host: str) -> bool:
    """Whether a task failed on HOST (not one whose failure is ignored) or HOST was
    unreachable."""
    for event in events:
        data = event.get("event_data") or {}
        if data.get("host") == host and (event.get("event") == "runner_on_unreachable" or (
                event.get("event") == "runner_on_failed" and not data.get("ignore_errors"))):
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


def take_snapshots(config: Config, source: Source, targets: Targets, state: StateDir,
                   changes: Mapping[str, tuple[str, Sequence[Change]]], ident: str,
                   cancel: Callable[[], bool] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Before an apply of each host's (plan id, CHANGES), read in one run: per host the
    snapshot's files (path, before, blob, hidden, skipped) and the changes no undo could put
    back (task, module, reason); and why each host that could not be read was not."""
    wanted = {host: snapshot_paths(c) for host, (_, c) in changes.items()}
    paths = {host: [p for p, _ in w] for host, w in wanted.items() if w}
    read, failed = read_hosts_files(
        config, source, targets, state, paths, ident, fetch=True,
        etckeeper={h: f"petkeeper: before plan {changes[h][0]}" for h in paths},
        cancel=cancel) if paths else ({}, {})
    return {host: _snapshot(config, source, state, wanted[host], *read.get(host, ({}, {})),
                            changes[host][1]) for host in changes if host not in failed}, failed


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


def read_afters(config: Config, source: Source, targets: Targets, state: StateDir,
                snapshots: Mapping[str, tuple[str, Mapping[str, Any]]], ident: str,
                cancel: Callable[[], bool] | None = None
                ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """After the apply, read in one run: each host's (plan id, SNAPSHOT) files, each with
    the state the apply left ("after"), which an undo compares with what it finds (a file
    changed since is a conflict); and why each host that could not be read was not."""
    paths = {host: [f["path"] for f in snapshot["files"]]
             for host, (_, snapshot) in snapshots.items() if snapshot["files"]}
    read, failed = read_hosts_files(
        config, source, targets, state, paths, ident, fetch=False,
        etckeeper={h: f"petkeeper: after plan {snapshots[h][0]}" for h in paths},
        cancel=cancel) if paths else ({}, {})
    files = {}
    for host, (_, snapshot) in snapshots.items():
        if host in failed:
            continue
        states = read.get(host, ({}, {}))[0]
        files[host] = [{**f, "after": states[f["path"]].as_dict()} for f in snapshot["files"]]
    return files, failed
