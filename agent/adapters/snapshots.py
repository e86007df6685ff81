"""The undo store in the state directory (0700, never pushed: the bytes may hold secrets).

Layout, under STATE_DIR/undo/::

    blobs/<sha256>        a file's bytes as a snapshot read them, content-addressed
    applies/<id>.json     one apply's snapshot: per file its state before and after the apply
    plans.json            the undo plans `petkeeper undo` made, by plan id
    approvals/<plan>.json undo approvals given on this host (`petkeeper approve`)
    holds.json            hosts an undo holds, until a new commit or `petkeeper release`
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.adapters.state import StateDir, read_json, write_atomic, write_json
from agent.core.undo import select_pruned
from agent.errors import RepoError, StalledError

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def apply_id(run_id: str, host: str) -> str:
    """The id `history` shows and `petkeeper undo` takes: <run id>/<host>."""
    return f"{run_id}/{host}"


def _manifest_path(state: StateDir, aid: str) -> Path:
    return state.undo / "applies" / (aid.replace("/", "__") + ".json")


def store_blob(state: StateDir, data: bytes) -> str:
    """Keep DATA under its sha256 (once, however many snapshots hold it); return the hash."""
    digest = hashlib.sha256(data).hexdigest()
    path = state.undo / "blobs" / digest
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, data)
    return digest


def blob_path(state: StateDir, digest: str) -> Path:
    """Where the bytes of DIGEST rest; StalledError when they are gone or not what they were."""
    path = state.undo / "blobs" / digest
    if not SHA256.match(digest) or not path.is_file():
        raise StalledError(f"{path}: the snapshot's bytes are missing; this apply cannot be "
                           "undone (undo.keep or undo.max_bytes pruned it, or it was removed)")
    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise StalledError(f"{path}: the snapshot's bytes do not match their hash; the "
                           "state directory was changed by hand: this apply cannot be undone")
    return path


def write_manifest(state: StateDir, manifest: Mapping[str, Any]) -> None:
    write_json(_manifest_path(state, str(manifest["apply_id"])),
               {"schema": MANIFEST_SCHEMA, **manifest})


def read_manifest(state: StateDir, aid: str) -> dict[str, Any]:
    """The snapshot of apply AID; RepoError naming what exists when there is none."""
    data = read_json(_manifest_path(state, aid), None)
    if data is None:
        known = [m["apply_id"] for m in list_manifests(state)][-5:]
        raise RepoError(f"undo {aid}: no snapshot of such an apply in {state.undo}; "
                        + (f"the last applies with one: {', '.join(known)}" if known else
                           "no apply has one yet")
                        + " (petkeeper history shows apply ids)")
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise StalledError(f"{_manifest_path(state, aid)}: not a snapshot of schema "
                           f"{MANIFEST_SCHEMA}; this apply cannot be undone")
    return data


def list_manifests(state: StateDir) -> list[dict[str, Any]]:
    """Every snapshot kept, oldest first."""
    folder = state.undo / "applies"
    found = [read_json(p, {}) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted((m for m in found if isinstance(m, dict) and m.get("apply_id")),
                  key=lambda m: str(m.get("taken") or ""))


def prune_snapshots(state: StateDir, now: datetime, keep: float, max_bytes: int) -> list[str]:
    """Drop the snapshots older than KEEP, then the oldest beyond MAX_BYTES, and the blobs no
    snapshot holds any more; return the apply ids dropped."""
    manifests = list_manifests(state)
    blobs = state.undo / "blobs"
    sizes = {p.name: p.stat().st_size for p in blobs.iterdir()} if blobs.is_dir() else {}
    dropped = select_pruned(manifests, sizes, now, keep, max_bytes)
    for aid in dropped:
        _manifest_path(state, aid).unlink(missing_ok=True)
    held = {f["before"]["sha256"] for m in manifests if m["apply_id"] not in dropped
            for f in m.get("files") or () if f.get("blob")}
    for digest in set(sizes) - held:
        (blobs / digest).unlink(missing_ok=True)
    if dropped:
        log.info("undo snapshots pruned (undo.keep, undo.max_bytes): %s", ", ".join(dropped))
    return dropped


def read_holds(state: StateDir) -> dict[str, dict[str, Any]]:
    """The hosts an undo holds: host -> {apply_id, by, at, seen}."""
    holds = read_json(state.undo / "holds.json", {})
    if not isinstance(holds, dict) or not all(isinstance(h, dict) for h in holds.values()):
        raise StalledError(f"{state.undo / 'holds.json'}: not the holds of undos; restore it "
                           "from a backup, or remove it to release every host")
    return holds


def write_holds(state: StateDir, holds: Mapping[str, Any]) -> None:
    write_json(state.undo / "holds.json", dict(holds))


def read_undo_plans(state: StateDir) -> dict[str, dict[str, Any]]:
    plans = read_json(state.undo / "plans.json", {})
    if not isinstance(plans, dict):
        raise StalledError(f"{state.undo / 'plans.json'}: not undo plans; remove it and run "
                           "petkeeper undo again")
    return plans


def write_undo_plans(state: StateDir, plans: Mapping[str, Any]) -> None:
    write_json(state.undo / "plans.json", dict(plans))
