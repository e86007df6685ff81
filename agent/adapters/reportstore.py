"""Where the reports live in Git, how an agent writes them and how anyone reads them: the one
module that knows the layout.

Each host has a branch of its own, ``<reports.host_branches>/<host>`` (``petkeeper/hosts/web1``),
written by that host's agent alone and holding three files: ``hosts/<host>.yml`` (the newest
report), ``applies/<host>.yml`` (the newest apply) and ``approvals/<host>.yml`` (the newest
approval given on the host); each record is one commit. No two agents write one branch, so
pushes never race, and a Git server can hold each agent's key to its own branch.

Before, every agent wrote one shared branch (``reports.branch``, ``petkeeper/reports``). An
agent whose host has reports there and no branch of its own yet starts that branch with a
commit whose parent is the shared tip, keeping its host's files only: ``git log`` keeps the
history, nothing is deleted, nothing is forced. Readers read the hosts whose agent has not
moved yet from the shared branch.

Writing (agent.cycle.record): `HostQueues`; commits wait in a local queue ref per host until the
remote takes them, and the agent fetches its own hosts' branches only. Reading (fleet,
history): `ReportReader`, in the agent's mirror or in a cache of its own, fetching the tips
only unless history is asked for.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.gitrepo import Author, Mirror
from agent.adapters.state import read_json, write_json
from agent.core.redact import redact_text
from agent.core.schema import load_yaml, yaml_problem
from agent.errors import FetchError, RepoError

log = logging.getLogger(__name__)

UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
FOLDERS = ("hosts", "applies", "approvals")  # per host: the report, the apply, the approval
REPORT_SCHEMAS = (1, 2)  # the report schemas this Petkeeper reads
SHARED_QUEUE = "refs/petkeeper/reports"  # the agent's queue for the shared branch, before
QUEUES = "refs/petkeeper/queue/"
FULL_DEPTH = 2147483647  # git's "all of it" for --depth, in a shallow repository
VERDICTS = "petkeeper-signatures.json"  # in a reader's cache: the tips' signature verdicts


def file_name(host: str) -> str:
    return UNSAFE.sub("_", host)


def host_path(folder: str, host: str) -> str:
    """FOLDER/<host>.yml, the one file of HOST there (a name that never leaves FOLDER)."""
    return f"{folder}/{file_name(host)}.yml"


def ref_name(host: str) -> str:
    """HOST as one component of a ref name: no '..', no leading '.', no '.' or '.lock' at the
    end (git refuses them); the same as file_name for every usual host name."""
    name = re.sub(r"\.(?=\.)", "_", file_name(host)) or "_"
    name = "_" + name[1:] if name.startswith(".") else name
    return name + "_" if name.endswith((".", ".lock")) else name


def format_message(subject: str, body: str, trailers: Mapping[str, Any]) -> str:
    """A commit message whose TRAILERS become `Petkeeper-<Key>: value` lines."""
    # A value with a line break would end the trailer block: Git would then read none.
    lines = "".join(f"Petkeeper-{key}: {' '.join(str(value).split())}\n"
                    for key, value in trailers.items())
    return f"{subject}\n\n{body}\n\n{lines}"


@dataclass(frozen=True)
class Layout:
    """A branch per host under HOST_BRANCHES; SHARED_BRANCH is where all hosts were before."""

    host_branches: str = "petkeeper/hosts"
    shared_branch: str = "petkeeper/reports"

    def branch(self, host: str) -> str:
        return f"{self.host_branches}/{ref_name(host)}"

    def remote(self, host: str) -> str:
        return f"refs/heads/{self.branch(host)}"

    def tracking(self, host: str) -> str:
        return f"refs/remotes/origin/{self.branch(host)}"

    def queue(self, host: str) -> str:
        return f"{QUEUES}{self.branch(host)}"

    @property
    def tracking_prefix(self) -> str:
        return f"refs/remotes/origin/{self.host_branches}/"

    @property
    def shared_remote(self) -> str:
        return f"refs/heads/{self.shared_branch}"

    @property
    def shared_tracking(self) -> str:
        return f"refs/remotes/origin/{self.shared_branch}"


PUSHED, NOTHING_TO_PUSH, PUSH_OFF, PUSH_FAILED, PUSH_REJECTED = (
    "pushed", "nothing to push", "off", "failed", "rejected")


@dataclass(frozen=True)
class Pushed:
    queued: int  # report commits the remote does not have yet
    pushed: bool
    error: str | None = None
    push: str = NOTHING_TO_PUSH  # PUSHED, NOTHING_TO_PUSH, PUSH_OFF (reports.push: false),
    # PUSH_FAILED (the remote could not be reached) or PUSH_REJECTED (it moved meanwhile)


class HostQueues:
    """An agent's report commits on their way to the remote: one local queue ref per host."""

    def __init__(self, mirror: Mirror, url: str, layout: Layout, author: Author) -> None:
        self.mirror, self.url, self.layout, self.author = mirror, url, layout, author
        self.error: str | None = None
        # The synced hosts' queue and tracking refs: read in one go by sync, then kept as this
        # object moves them (one HostQueues per publish; each move is a compare-and-swap, so
        # a ref moved by someone else meanwhile is an error, never overwritten).
        self._refs: dict[str, str | None] = {}

    def sync(self, hosts: Iterable[str]) -> None:
        """Fetch HOSTS' branches (nothing else, unless a host moves from the shared branch),
        then bring each host's queue onto its branch: fast-forward, or our commits rebased.
        Nothing queued is ever dropped; a failed fetch leaves the queues as they were."""
        hosts = sorted(set(hosts))
        self._read_refs(hosts)
        try:
            self._fetch(hosts)
        except FetchError as e:
            log.warning("%s; report commits stay queued", e)
            self.error = str(e)
        for host in hosts:
            self._sync(host)

    def base(self, host: str) -> str | None:
        """The commit HOST's next record goes on."""
        return self._rev(self.layout.queue(host))

    def commit(self, host: str, path: str, content: bytes, message: str, when: str) -> str:
        """Commit CONTENT as PATH onto HOST's queue; return the commit."""
        base = self.base(host)
        new = self.mirror.commit_files(base, {path: content}, message, self.author, when)
        self._update_ref(self.layout.queue(host), new, base)
        return new

    def push(self, push: bool = True) -> Pushed:
        """Push every queue the remote lacks commits of, all in one push, never forced."""
        m, waiting, counts = self.mirror, {}, {}
        prefix = f"{QUEUES}{self.layout.host_branches}/"
        refs = m.refs_under(prefix, self.layout.tracking_prefix)
        moves: dict[str, tuple[str, str, str | None]] = {}  # queue -> its tracking ref: new, old
        for queue, (tip, _) in refs.items():
            branch = queue.removeprefix(QUEUES)
            tracking = f"refs/remotes/origin/{branch}"
            tracked = refs[tracking][0] if tracking in refs else None
            if not queue.startswith(prefix) or tracked == tip:
                continue  # a tracking ref, or a queue the remote has all of
            if count := len(m.unpushed(tip)):
                waiting[queue], counts[f"refs/heads/{branch}"] = f"refs/heads/{branch}", count
                moves[queue] = (tracking, tip, tracked)
        queued = sum(counts.values())
        if not queued or not push:
            return Pushed(queued, False, self.error, PUSH_OFF if queued else NOTHING_TO_PUSH)
        try:
            taken = m.push(self.url, waiting)
        except FetchError as e:
            log.warning("%s; %d report commit(s) stay queued for the next cycle", e, queued)
            return Pushed(queued, False, str(e), PUSH_FAILED)
        for queue, remote in waiting.items():
            if taken[remote]:  # the tips read above: what was pushed, what the remote had
                self._update_ref(*moves[queue])
        left = sum(n for remote, n in counts.items() if not taken[remote])
        if left:
            refused = sorted(r.removeprefix("refs/heads/") for r in counts if not taken[r])
            msg = (f"push to {', '.join(refused)} rejected (the remote moved); {left} report "
                   "commit(s) stay queued and will be rebased and pushed next cycle")
            log.warning("%s", msg)
            return Pushed(left, False, msg, PUSH_REJECTED)
        log.info("pushed %d report commit(s) to %d branch(es)", queued, len(waiting))
        return Pushed(0, True, self.error, PUSHED)

    def _read_refs(self, hosts: Sequence[str]) -> None:
        lay = self.layout
        self._refs.update(self.mirror.revs([ref for h in hosts
                                            for ref in (lay.tracking(h), lay.queue(h))]))

    def _rev(self, ref: str) -> str | None:
        return self._refs[ref] if ref in self._refs else self.mirror.rev(ref)

    def _update_ref(self, ref: str, new: str, old: str | None) -> None:
        self.mirror.update_ref(ref, new, old)
        self._refs[ref] = new

    def _fetch(self, hosts: Sequence[str]) -> None:
        m, lay = self.mirror, self.layout
        local = {lay.remote(h): lay.tracking(h) for h in hosts}
        new = [h for h in hosts if self._rev(lay.tracking(h)) is None and
               self._rev(lay.queue(h)) is None]
        tips = m.ls_remote(self.url, [*local, *([lay.shared_remote] if new else [])])
        if any(lay.remote(h) not in tips for h in new):  # a host may move from the shared branch
            local[lay.shared_remote] = lay.shared_tracking
        specs = [f"+{ref}:{local[ref]}" for ref, sha in tips.items()
                 if ref in local and self._rev(local[ref]) != sha]
        if specs:
            try:
                m.fetch_refs(self.url, specs)
            finally:  # a fetch cut short may have moved some of them
                self._read_refs(hosts)

    def _sync(self, host: str) -> None:
        m, lay = self.mirror, self.layout
        remote, local = self._rev(lay.tracking(host)), self._rev(lay.queue(host))
        if local is None:
            start = remote or self._move(host)
            if start:
                self._update_ref(lay.queue(host), start, None)
            return
        if remote is None or remote == local or m.is_ancestor(remote, local):
            return  # the remote has none yet, or we are ahead: our commits wait to be pushed
        if m.is_ancestor(local, remote):
            self._update_ref(lay.queue(host), remote, local)
            return
        base = remote
        for commit in m.unpushed(local):
            message, when = m.commit_message(commit)
            base = m.commit_files(base, m.commit_changes(commit), message, self.author, when)
        self._update_ref(lay.queue(host), base, local)
        log.info("%s: rebased queued report commits onto the remote's %s", host, remote[:12])

    def _move(self, host: str) -> str | None:
        """HOST's first commit on its own branch, when the shared branch holds its files:
        the shared tip as parent, HOST's files alone in its tree."""
        m, lay = self.mirror, self.layout
        shared = self._shared_tip()
        files = {path: blob for path in (host_path(f, host) for f in FOLDERS)
                 if shared and (blob := m.read_blob(shared, path)) is not None}
        if not shared or not files:
            return None
        message = format_message(
            f"{host}: reports move to branch {lay.branch(host)}",
            f"Its history is {lay.shared_branch} up to {shared[:12]}, this commit's parent; "
            f"only {host}'s files are kept.",
            {"Host": host, "Moved-From": f"{lay.shared_branch}@{shared}"})
        when = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("%s: reports move from %s to %s", host, lay.shared_branch, lay.branch(host))
        return m.commit_files(shared, files, message, self.author, when, keep_tree=False)

    def _shared_tip(self) -> str | None:
        """The newest of the shared branch as fetched and our own queue for it, before."""
        m = self.mirror
        remote, local = m.rev(self.layout.shared_tracking), m.rev(SHARED_QUEUE)
        if local is None or remote is None or local == remote:
            return local or remote
        return remote if m.is_ancestor(local, remote) else local


@dataclass(frozen=True)
class Trust:
    """Whether the commit holding a host's reports is signed by that host's own key."""

    trusted: bool
    signer: str  # the host the signing key belongs to, per reports.allowed_signers
    reason: str


@dataclass(frozen=True)
class HostReports:
    """What the reports say of one host: the newest report, apply and approval."""

    host: str
    branch: str  # where they were read
    commit: str  # the commit holding them
    date: str  # its date
    report: dict[str, Any] | None
    apply: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None
    trust: Trust | None = None  # None: not checked (no reports.allowed_signers)
    problem: str | None = None  # why the report could not be read, with the fix

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "branch": self.branch, "commit": self.commit,
                "date": self.date, "report": self.report, "apply": self.apply,
                "approval": self.approval, "problem": self.problem,
                "trust": None if self.trust is None else {
                    "trusted": self.trust.trusted, "signer": self.trust.signer,
                    "reason": self.trust.reason}}


class ReportReader:
    """Every host's reports as the remote has them, read into MIRROR (the agent's own, or a
    cache anyone may create: no agent state, no root). SHALLOW: fetch the tips only, and
    history when asked, since a date."""

    def __init__(self, mirror: Mirror, url: str, layout: Layout,
                 allowed_signers: Path | None = None, shallow: bool = True) -> None:
        self.mirror, self.url, self.layout = mirror, url, layout
        self.allowed_signers, self.shallow = allowed_signers, shallow

    def fetch(self) -> None:
        """Fetch every host's branch and the shared branch: their tips only, when shallow.
        RepoError when the remote has neither."""
        lay = self.layout
        try:
            self.mirror.fetch_refs(self.url, [
                f"+refs/heads/{lay.host_branches}/*:{lay.tracking_prefix}*",
                # A one-star pattern matches nothing, without error, when there is no branch.
                f"+{lay.shared_remote}*:{lay.shared_tracking}*"],
                depth=1 if self.shallow else None, prune=True)
        except FetchError:
            # git fetch --depth fails, saying nothing, when no ref matches.
            if self.mirror.ls_remote(self.url, [f"refs/heads/{lay.host_branches}/*",
                                                lay.shared_remote]):
                raise
        if not self.mirror.refs_under(lay.tracking_prefix) and \
                self.mirror.rev(lay.shared_tracking) is None:
            raise RepoError(f"no reports in {redact_text(self.url)}: no branch "
                            f"{lay.host_branches}/<host> and no {lay.shared_branch}; run an "
                            "agent's check first, or give the URL its reports go to "
                            "(--reports-url, reports.url)")

    def latest(self) -> list[HostReports]:
        """The newest reports of every host, by host name: each host's branch, and the shared
        branch for hosts that have none yet."""
        m, lay = self.mirror, self.layout
        tips = {ref.removeprefix(lay.tracking_prefix): tip for ref, tip in
                m.refs_under(lay.tracking_prefix).items()}
        found = self._read({name: (lay.branch(name), sha, date, name)
                            for name, (sha, date) in tips.items()})
        shared = m.refs_under(lay.shared_tracking).get(lay.shared_tracking)
        if shared:
            names = [Path(p).stem for p in m.list_files(shared[0], "hosts") if p.endswith(".yml")]
            old = self._read({n: (lay.shared_branch, *shared, n) for n in names})
            moved = {ref_name(r.host) for r in found}
            found += [r for r in old if ref_name(r.host) not in moved and
                      ref_name(r.host) not in tips]
        return self._verified(sorted(found, key=lambda r: r.host))

    def history(self, host: str | None = None, since: str | None = None,
                fetch: bool = True) -> list[dict[str, Any]]:
        """HOST's (or every host's) report, apply and approval commits, newest first: sha,
        date, subject, Petkeeper trailers; SINCE: only those since that date. Without FETCH,
        what the mirror has."""
        refs = self._deepen(host, since, fetch)
        paths = [host_path(f, host) for f in FOLDERS] if host else []
        entries = self.mirror.log(refs, paths, since=since)
        return [e for e in entries if not host or e["trailers"].get("Petkeeper-Host") == host]

    def report_of_source(self, host: str, source_sha: str) -> HostReports | None:
        """The newest report of HOST that checked SOURCE_SHA, or None."""
        refs = self._deepen(host, None)
        found = self.mirror.log(refs, [host_path("hosts", host)], limit=1,
                                grep=f"^Petkeeper-Source: {re.escape(source_sha)}$")
        if not found:
            return None
        sha, date = found[0]["sha"], found[0]["date"]
        branch = self.layout.branch(host) if self.mirror.rev(self.layout.tracking(host)) \
            else self.layout.shared_branch
        return self._verified(self._read({file_name(host): (branch, sha, date, file_name(host))
                                          }))[0]

    def _deepen(self, host: str | None, since: str | None, fetch: bool = True) -> list[str]:
        """Fetch the history HOST's (or every host's) reports need; return the refs to read
        (our own unpushed queues among them)."""
        m, lay = self.mirror, self.layout
        mine = f"{lay.tracking_prefix}{ref_name(host)}" if host else f"{lay.tracking_prefix}*"
        specs = [f"+refs/heads/{lay.host_branches}/{ref_name(host) + '*' if host else '*'}:"
                 f"{mine}{'*' if host else ''}", f"+{lay.shared_remote}*:{lay.shared_tracking}*"]
        depth = FULL_DEPTH if self.shallow and not since else None
        if fetch:
            m.fetch_refs(self.url, specs, depth=depth, since=since if self.shallow else None)
        refs = [lay.tracking(host), lay.queue(host)] if host else [
            *m.refs_under(lay.tracking_prefix), *m.refs_under(f"{QUEUES}{lay.host_branches}/")]
        return [*refs, lay.shared_tracking]

    def _read(self, where: Mapping[str, tuple[str, str, str, str]]) -> list[HostReports]:
        """Each NAME: (branch, commit, date, file name) read into HostReports, in one batch."""
        blobs = self.mirror.read_blobs([(sha, f"{folder}/{fname}.yml") for _, sha, _, fname
                                        in where.values() for folder in FOLDERS])
        found = []
        for name, (branch, sha, date, fname) in where.items():
            files = {f: blobs.get((sha, f"{f}/{fname}.yml")) for f in FOLDERS}
            if all(v is None for v in files.values()):
                files = self._files_named_otherwise(sha)
            if any(v is not None for v in files.values()):  # else a branch with no report yet
                found.append(_parse(name, branch, sha, date, files))
        return found

    def _files_named_otherwise(self, sha: str) -> dict[str, bytes | None]:
        """A host whose file name is not its branch name (a name git would refuse): its
        branch holds the files of one host only."""
        names = {Path(p).stem for f in FOLDERS for p in self.mirror.list_files(sha, f)}
        if len(names) != 1:
            return {}
        fname = names.pop()
        return {f: self.mirror.read_blob(sha, f"{f}/{fname}.yml") for f in FOLDERS}

    def _verified(self, found: list[HostReports]) -> list[HostReports]:
        """FOUND with each commit's signature checked against the allowed signers. A verdict
        never changes for a commit and a signers file: they are kept in the cache, for the
        tips of this reading, so a fleet that did not move is read without checking again."""
        if self.allowed_signers is None:
            return found
        try:
            digest = hashlib.sha256(self.allowed_signers.read_bytes()).hexdigest()
        except OSError as e:
            raise RepoError(f"reports.allowed_signers: cannot read {self.allowed_signers} "
                            f"({e.strerror}); give the file naming each host's key") from None
        path = self.mirror.path / VERDICTS
        kept = read_json(path, {})
        known = kept.get("verdicts", {}) if isinstance(kept, dict) and \
            kept.get("signers") == digest else {}
        todo = [r.commit for r in found if r.commit not in known]
        known.update({sha: list(v) for sha, v in
                      self.mirror.signatures(todo, self.allowed_signers).items()})
        write_json(path, {"signers": digest, "verdicts": {
            r.commit: known[r.commit] for r in found
            if r.commit in known and known[r.commit][0] != "E"}})  # "E": could not check
        return [_with_trust(r, known.get(r.commit), self.layout) for r in found]


def _parse(name: str, branch: str, sha: str, date: str,
           files: Mapping[str, bytes | None]) -> HostReports:
    """One host's files at SHA, read; a report that cannot be read becomes the problem."""
    where = f"branch {branch} at {sha[:12]}"
    parsed: dict[str, dict[str, Any] | None] = {}
    problem = None
    for folder, blob in files.items():
        try:
            data = load_yaml(blob, fast=True) if blob is not None else None
        except yaml.YAMLError as e:
            data, problem = None, f"{folder}/{name}.yml ({where}): {yaml_problem(e)}"
        parsed[folder] = data if isinstance(data, dict) else None
    report = parsed["hosts"]
    host = str(report["host"]) if report and report.get("host") else name
    if problem is None and report is None:
        problem = f"hosts/{name}.yml ({where}): missing or not a mapping of report fields"
    elif report is not None and report.get("schema") not in REPORT_SCHEMAS:
        problem = (f"hosts/{name}.yml ({where}): report schema {report.get('schema')!r} is "
                   f"not one this Petkeeper reads ({', '.join(map(str, REPORT_SCHEMAS))}); "
                   "upgrade petkeeper where you read it")
    elif name not in (ref_name(host), file_name(host)):
        problem = (f"hosts/{name}.yml ({where}): a report for {host!r} where {name}'s belongs; "
                   "a pet cannot speak for another: see who pushed it")
        host = name
    return HostReports(host=host, branch=branch, commit=sha, date=date,
                       report=None if problem else report, apply=parsed["applies"],
                       approval=parsed["approvals"], problem=problem)


def _with_trust(r: HostReports, verdict: Sequence[Any] | None,
                layout: Layout) -> HostReports:
    """R with whether its commit is signed by R's host's own key (reports.allowed_signers)."""
    if r.branch == layout.shared_branch:
        trust = Trust(False, "", f"on the shared branch {layout.shared_branch}, which every "
                                 "agent could write; trusted once its agent moves it")
    elif verdict is None:
        trust = Trust(False, "", "signature not checked")
    else:
        _, ok, signer, why = verdict
        principals = {p.strip() for p in signer.split(",")}
        if not ok:
            trust = Trust(False, "", why)
        elif r.host not in principals:
            trust = Trust(False, signer, f"signed by the key of {signer}, not {r.host}'s: a "
                                         "pet cannot speak for another")
        else:
            trust = Trust(True, r.host, why)
    return HostReports(**{**r.__dict__, "trust": trust})
