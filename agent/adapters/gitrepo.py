"""Git, through GitPython: the only module that imports it.

A bare mirror under the state directory holds the source branch and the reports branches as
the remote has them (``refs/remotes/origin/...``) and our own queued reports (which refs, is
agent.adapters.reportstore's business). Every command runs with hooks off, no submodules, no
prompts and a timeout; commits are built with plumbing, so no work tree or index is ever shared.
Every git process GitPython starts (commands and its persistent ``cat-file`` readers) starts in
a session of its own, and each command is waited for by agent.adapters.process: at its timeout,
or when the cycle is cancelled, it is stopped with all it started (ssh, remote helpers).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import string
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from agent.adapters.process import SESSION, TIMEOUT, Cancel, ProcessStopped, wait_process
from agent.adapters.state import disk_full_error
from agent.core.hostkeys import parse_host_key_refusal
from agent.core.redact import redact_text
from agent.errors import AgentError, FetchError, HostKeyError, RepoError, StalledError

log = logging.getLogger(__name__)

NETWORK = ("fetch", "push", "ls-remote")  # the commands that reach a remote
SIGNATURES_CHUNK = 64  # commits per `git log` that checks signatures
LOOSE_LIMIT = 256  # loose objects in the mirror before it is packed (a few files, not thousands)
KNOWN_HOSTS_HINT = "repo.known_hosts (default: ~/.ssh/known_hosts of the user running Petkeeper)"
REPORTS_KNOWN_HOSTS_HINT = "reports.known_hosts (default: repo.known_hosts)"
HARDENING = {
    "core.hooksPath": os.devnull,
    "core.symlinks": "true",
    "submodule.recurse": "false",
    "fetch.recurseSubmodules": "false",
    "protocol.ext.allow": "never",
    "protocol.file.allow": "user",  # a file:// repo.url works; file:// from inside a repo not
    "transfer.fsckObjects": "true",
    "gc.auto": "0",  # never at git's moment, detached: Mirror.tidy packs, inside the cycle
    "maintenance.auto": "false",  # no `git maintenance run --auto` child after each fetch
}


class _Git(git.Git):
    """GitPython's git command, each of whose processes starts in a session of its own."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return super().execute(*args, **{**kwargs, **SESSION})  # the rest goes to Popen


class _Repo(git.Repo):
    GitCommandWrapperType = _Git


@dataclass(frozen=True)
class Author:
    name: str
    email: str
    signing_key: str | None = None  # an SSH private key: commits are signed with it (ssh-keygen)
    own_signature: bool = False  # signed as the user's own Git config says (user.signingKey)


class MissingBranch(RepoError):
    """The remote has no such branch; AVAILABLE lists the ones it has (when it said)."""

    def __init__(self, branch: str, url: str, available: list[str]) -> None:
        self.branch, self.available = branch, available
        has = f" (it has: {', '.join(available[:10])}" + (", ..." if len(available) > 10
                                                          else "") + ")" if available else ""
        super().__init__(f"branch {branch!r} not found in {url}{has}")


class Mirror:
    """The agent's private bare copy of the GitOps repository."""

    def __init__(self, path: Path, url: str, timeout: float,
                 ssh_options: tuple[str, ...] = (), keys: Mapping[str, str] | None = None,
                 cancel: Cancel = None,
                 reports_ssh_options: tuple[str, ...] | None = None) -> None:
        """SSH_OPTIONS reach repo.url; REPORTS_SSH_OPTIONS, when given, the reports remote
        (its own deploy key: Git forges refuse one deploy key on two repositories). KEYS
        names, per URL, the setting to check when it fails ("repo.url in FILE"); CANCEL stops
        the git that reaches a remote."""
        self.path, self.url, self.timeout, self.cancel = path, url, timeout, cancel
        self.keys = dict(keys or {})
        self._reports_ssh = None if reports_ssh_options is None else \
            {"GIT_SSH_COMMAND": ssh_command(reports_ssh_options)}
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            _Repo.init(path, bare=True).close()
        self.repo = _Repo(path)
        with self.repo.config_reader("repository") as cr:
            stale = {key: value for key, value in HARDENING.items()
                     if cr.get(*key.rsplit(".", 1), fallback=None) != value}
        if stale:  # written once, not on every cycle: a quiet cycle leaves the mirror untouched
            with self.repo.config_writer() as cw:
                for key, value in stale.items():
                    cw.set_value(*key.rsplit(".", 1), value)
        self.repo.git.update_environment(
            GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
            GIT_SSH_COMMAND=ssh_command(ssh_options),
            GIT_CONFIG_NOSYSTEM="1", GIT_ALLOW_PROTOCOL="file:git:ssh:http:https",
        )

    # -- source ----------------------------------------------------------------------------

    def fetch(self, branch: str) -> None:
        """Fetch BRANCH (MissingBranch if the remote lacks it)."""
        self.fetch_refs(self.url, [f"+refs/heads/{branch}:refs/remotes/origin/{branch}"],
                        missing=branch)

    def remote_branches(self) -> list[str]:
        """The branches the remote has, by name ([] when it does not say), but for Petkeeper's
        own (``petkeeper/...``: a report branch per host is never a source)."""
        try:
            out = self._git("ls-remote", "--heads", self.url)
        except AgentError:
            return []
        return sorted(name for line in out.splitlines()
                      if (name := line.partition("\trefs/heads/")[2])
                      and not name.startswith("petkeeper/"))

    def resolve(self, branch: str) -> str | None:
        """Return the commit the mirror last fetched for BRANCH, or None."""
        return self._rev(f"refs/remotes/origin/{branch}")

    def materialise(self, sha: str, dest: Path) -> Path:
        """Write exactly commit SHA's tree to DEST (once; atomically); no hooks, no submodules."""
        if dest.is_dir():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
        index = tmp.with_suffix(".index")
        try:
            env = {"GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(tmp)}
            self._git("read-tree", sha, env=env)
            self._git("checkout-index", "--all", "--force", env=env)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            index.unlink(missing_ok=True)
        return dest

    # -- refs and objects --------------------------------------------------------------------

    def rev(self, ref: str) -> str | None:
        """The commit REF (a ref name or a commit id) names, or None."""
        return self._rev(ref)

    def update_ref(self, ref: str, new: str, old: str | None) -> None:
        """Move REF from OLD (None: REF must not exist) to NEW, atomically (compare-and-swap)."""
        self._git("update-ref", ref, new, old or "0" * 40)

    def revs(self, refs: Sequence[str]) -> dict[str, str | None]:
        """What rev says of each of REFS (full ref names, refs/...), read in one `git
        for-each-ref`: a ref naming no commit itself (a tag, say) is left to rev."""
        if not refs:
            return {}
        out = self._git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(objecttype)",
                        "--", *refs)
        found = {name: (sha, kind) for name, sha, kind in
                 (line.split("\0") for line in out.splitlines() if line.count("\0") == 2)}
        commits: dict[str, str | None] = {}
        for ref in refs:
            sha, kind = found.get(ref, (None, None))
            if kind == "commit" or (sha is None and ref.startswith("refs/")):
                commits[ref] = sha
            else:  # peeled, or a name rev-parse may find elsewhere (refs/heads/NAME)
                commits[ref] = self._rev(ref)
        return commits

    def refs_under(self, *prefixes: str) -> dict[str, tuple[str, str]]:
        """Every ref under PREFIXES: name -> (commit, its committer date, ISO 8601)."""
        out = self._git("for-each-ref", "--format=%(refname)%00%(objectname)%00"
                        "%(committerdate:iso-strict)", "--", *prefixes)
        return {name: (sha, date) for name, sha, date in
                (line.split("\0") for line in out.splitlines() if line.count("\0") == 2)}

    def read_blob(self, commit: str | None, path: str) -> bytes | None:
        if commit is None:
            return None
        status, out, _ = self._run(("cat-file", "blob", f"{commit}:{path}"))
        return out if status == 0 else None  # the exact bytes

    def read_blobs(self, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The files WANTED names as (commit, path), read through one `git cat-file --batch`;
        a missing one is left out."""
        found = {}
        for commit, path in wanted:
            try:
                _, kind, _, data = self.repo.git.get_object_data(f"{commit}:{path}")
            except ValueError:  # not there
                continue
            if kind in (b"blob", "blob"):  # GitPython gives bytes
                found[(commit, path)] = data
        return found

    def list_files(self, commit: str | None, folder: str) -> list[str]:
        if commit is None:
            return []
        out = self._git("ls-tree", "-r", "--name-only", commit, "--", folder)
        return out.splitlines()

    def commit_files(self, parent: str | None, files: Mapping[str, bytes | None], message: str,
                     author: Author, when: str, keep_tree: bool = True) -> str:
        """Return a new commit: PARENT's tree (or, without KEEP_TREE, nothing) with FILES
        written (None deletes), signed with AUTHOR's signing key if any; no ref moves."""
        with tempfile.TemporaryDirectory(prefix="petkeeper-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent and keep_tree:
                self._git("read-tree", parent, env=env)
            for path, content in sorted(files.items()):
                if content is None:
                    self._git("update-index", "--force-remove", "--", path, env=env)
                    continue
                blob = self._hash_blob(content)
                self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}",
                          env=env)
            tree = self._git("write-tree", env=env).strip()
        env = {"GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
               "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_NAME": author.name,
               "GIT_COMMITTER_EMAIL": author.email, "GIT_COMMITTER_DATE": when}
        parents = ["-p", parent] if parent else []
        if author.own_signature:
            return self._git("commit-tree", "-S", tree, *parents, "-m", message, env=env).strip()
        if not author.signing_key:  # never signed by root's commit.gpgSign and key either
            return self._git("commit-tree", "--no-gpg-sign", tree, *parents, "-m", message,
                             env=env).strip()
        try:
            return self._git("-c", "gpg.format=ssh", "-c", f"user.signingKey={author.signing_key}",
                             "commit-tree", "-S", tree, *parents, "-m", message, env=env).strip()
        except RepoError as e:
            raise StalledError(f"reports.signing_key: cannot sign with {author.signing_key} "
                               f"({str(e).removeprefix('git commit-tree failed: ')}); give an "
                               "SSH private key without a passphrase, e.g. made with "
                               "ssh-keygen -t ed25519 -N '' -f KEY") from None

    def commit_changes(self, commit: str) -> dict[str, bytes | None]:
        """Return the files COMMIT changed against its first parent (None: deleted)."""
        out = self._git("diff-tree", "--no-commit-id", "-r", "--root", "--name-status", commit)
        changes: dict[str, bytes | None] = {}
        for line in out.splitlines():
            status, _, path = line.partition("\t")
            changes[path] = None if status == "D" else self.read_blob(commit, path)
        return changes

    def commit_message(self, commit: str) -> tuple[str, str]:
        """Return (message, author date) of COMMIT."""
        c = self.repo.commit(commit)
        return str(c.message), c.authored_datetime.isoformat()

    def unpushed(self, tip: str) -> list[str]:
        """The commits of TIP that no ref fetched from a remote holds, oldest first."""
        return self._git("rev-list", "--reverse", tip, "--not", "--remotes").split()

    def commits_between(self, head: str, exclude: tuple[str, ...] = ()) -> list[str]:
        """Commits reachable from HEAD but from none of EXCLUDE (both sides of merges), newest
        first; EXCLUDE entries the mirror lacks are ignored."""
        known = [sha for sha in exclude if self._rev(sha) is not None]
        return self._git("rev-list", "--end-of-options", head, *(f"^{sha}" for sha in known)
                         ).split()

    def parents(self, sha: str) -> list[str]:
        """The parents of commit SHA (none for a root commit, two or more for a merge)."""
        return self._git("rev-list", "--parents", "-n", "1", "--end-of-options", sha
                         ).split()[1:]

    def has_commit(self, sha: str) -> bool:
        return self._rev(sha) is not None

    def resolve_commit(self, name: str) -> str | None:
        """The full id of commit NAME (an id or a prefix of one; never an option), or None."""
        if not name or name.startswith("-"):
            return None
        return self._rev(name)

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", older, newer)
        except RepoError:
            return False
        return True

    def probe_push(self, url: str, branches: Sequence[str]) -> dict[str, str]:
        """Dry-run one push of a throwaway commit to each of BRANCHES of URL (the branches
        HostQueues.push writes): nothing is sent, and nothing changes on either side. It proves
        that URL lets this key in to receive-pack (a forge refuses a read-only key there), not
        what the server's hooks or permissions would say of a real push. Return git's word for
        each branch ("new branch", or why it would be rejected: it exists with other commits)."""
        probe = self.commit_files(None, {}, "petkeeper doctor: push probe, never pushed",
                                  Author("Petkeeper", "petkeeper@localhost"),
                                  "2000-01-01T00:00:00+00:00")
        refs = {_reports_ref(branch): branch for branch in branches}
        out, why = "", "no answer for the ref"
        try:
            out = self._git("push", "--dry-run", "--porcelain", url,
                            *(f"{probe}:{ref}" for ref in refs), rejected=True, remote=url)
        except _Rejected as e:
            out, why = e.stdout, _last_line(e.stderr) or why
        words = {}
        for line in out.splitlines():
            flag, _, rest = line.strip().partition("\t")
            target, _, summary = rest.partition("\t")
            ref = target.rpartition(":")[2]
            if ref in refs:
                words[refs[ref]] = summary.strip("[]") if flag != "!" else f"exists ({summary})"
        if len(words) < len(refs):
            raise FetchError(f"git push {redact_text(url)} failed: {why}")
        return {branch: words[branch] for branch in refs.values()}  # in the order asked

    # -- remotes ---------------------------------------------------------------------------

    def ls_remote(self, url: str, refs: Sequence[str]) -> dict[str, str]:
        """The commits URL's REFS point at: full names, or prefixes ending in '*'; a ref the
        remote lacks is left out."""
        out = self._git("ls-remote", url, *refs, remote=url)
        tips = {ref: sha for sha, _, ref in (line.partition("\t") for line in out.splitlines())}
        return {ref: sha for ref, sha in tips.items()
                if ref in refs or any(p.endswith("*") and ref.startswith(p[:-1]) for p in refs)}

    def fetch_refs(self, url: str, refspecs: Sequence[str], *, depth: int | None = None,
                   since: str | None = None, prune: bool = False, missing: str = "") -> None:
        """Fetch REFSPECS from URL: whole histories, or the newest DEPTH commits of each, or
        those since SINCE (a date; when none is that new, the refs stay as they were).
        MISSING: the branch named in MissingBranch when an exact refspec names a ref the
        remote lacks."""
        shallow = [f"--shallow-since={since}"] if since else \
            [f"--depth={depth}"] if depth else []
        try:
            self._git("fetch", "--no-tags", "--no-write-fetch-head", *shallow,
                      *(["--prune"] if prune else []), url, *refspecs, remote=url,
                      missing_ref=missing)
        except _NoneSince:
            return
        except AgentError:
            # A transfer cut short leaves its partial pack, and gc never runs here: drop it.
            for partial in (self.path / "objects" / "pack").glob("tmp_*"):
                partial.unlink(missing_ok=True)
            raise

    def push(self, url: str, refs: Mapping[str, str]) -> dict[str, bool]:
        """Push each local ref of REFS to its remote ref, in one push, never forced; return,
        per remote ref, whether the remote took it (each ref is taken or refused alone)."""
        specs = [f"{local}:{remote}" for local, remote in refs.items()]
        try:
            out = self._git("push", "--porcelain", url, *specs, rejected=True, remote=url)
        except _Rejected as e:
            out = e.stdout
        done = {m.group(2): m.group(1) != "!" for m in _PUSHED.finditer(out)}
        return {remote: done.get(remote, False) for remote in refs.values()}

    def log(self, refs: Sequence[str], paths: Sequence[str] = (), since: str | None = None,
            grep: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits of REFS touching PATHS (since SINCE, with GREP in their message), newest
        first: sha, date, subject, Petkeeper trailers."""
        known = [ref for ref in refs if self._rev(ref) is not None]
        if not known:
            return []
        fmt = "%H%x1f%aI%x1f%s%x1f%(trailers:only,unfold,separator=%x1e)%x1d"
        options = [f"--since={since}"] * bool(since) + [f"--grep={grep}"] * bool(grep) + \
            [f"--max-count={limit}"] * bool(limit)
        out = self._git("log", f"--format={fmt}", *options, "--end-of-options", *known, "--",
                        *paths)
        entries = []
        for chunk in out.split("\x1d"):
            fields = chunk.strip("\n").split("\x1f")
            if len(fields) != 4:
                continue
            trailers = dict(t.split(": ", 1) for t in fields[3].split("\x1e") if ": " in t)
            entries.append({"sha": fields[0], "date": fields[1], "subject": fields[2],
                            "trailers": trailers})
        return entries

    def tidy(self, loose_limit: int = LOOSE_LIMIT) -> bool:
        """Pack the mirror once LOOSE_LIMIT loose objects piled up (a report commit adds about
        four); return whether it did. Unreachable objects go after git's two weeks."""
        if self._loose_objects() < loose_limit:
            return False
        self._git("gc", "--quiet")
        return True

    # -- approvals -------------------------------------------------------------------------

    def files_under(self, commit: str, folder: str) -> dict[str, bytes]:
        """Return every regular file under FOLDER (recursive) at COMMIT: path -> exact bytes.

        Symlinks and submodules are skipped, never followed; a missing folder gives {}.
        """
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""  # "": the whole tree
        # ls-tree takes "--" as a path after --end-of-options; a plain "--" ends its options.
        out = self._git("--literal-pathspecs", "ls-tree", "-r", "-z", "--", commit,
                        *filter(None, [prefix]))
        files: dict[str, bytes] = {}
        for entry in filter(None, out.split("\0")):
            meta, _, path = entry.partition("\t")
            mode, kind, sha = meta.split()
            if kind == "blob" and mode in ("100644", "100755") and path.startswith(prefix):
                files[path] = self.repo.odb.stream(bytes.fromhex(sha)).read()
        return files

    def last_commit_touching(self, commit: str, path: str) -> str:
        """Return the newest commit reachable from COMMIT that changed PATH (RepoError: none)."""
        sha = self._git("--literal-pathspecs", "log", "-1", "--format=%H", "--end-of-options",
                        commit, "--", path).strip()
        if not sha:
            raise RepoError(f"no commit reachable from {commit[:12]} touches {path!r}")
        return sha

    def last_commit_outside(self, commit: str, folder: str) -> str:
        """The newest commit reachable from COMMIT that changed anything outside FOLDER."""
        sha = self._git("log", "-1", "--format=%H", "--end-of-options", commit, "--", ".",
                        f":(exclude,literal){folder}").strip()
        return sha or commit

    def commit_author(self, commit: str) -> str:
        """Return COMMIT's author as "Name <email>" (as recorded: no mailmap)."""
        return self._git("log", "-1", "--format=%an <%ae>", "--end-of-options", commit).strip()

    def changed_paths(self, old: str, new: str) -> list[str]:
        """Return the paths whose content differs between OLD and NEW; a rename gives both."""
        out = self._git("diff-tree", "-r", "-z", "--name-only", "--no-renames", "--no-ext-diff",
                        "--end-of-options", old, new)
        return [path for path in out.split("\0") if path]

    def verify_commit(self, commit: str, allowed_signers: Path | None,
                      gpg_home: Path | None) -> tuple[bool, str]:
        """Return (True, "good signature by ...") if COMMIT is signed by a trusted key, else
        (False, why). SSH keys are trusted from ALLOWED_SIGNERS only, OpenPGP keys from the
        dedicated keyring GPG_HOME only (any key in it); never from root's own config or keyring."""
        kind = self._signature_kind(commit)
        if kind is None:
            return False, "unsigned"
        if kind not in ("ssh", "openpgp"):
            return False, f"signed in an unsupported format ({kind})"
        trust = allowed_signers if kind == "ssh" else gpg_home
        if trust is None:
            what = "allowed signers file" if kind == "ssh" else "OpenPGP keyring"
            return False, f"signed with {kind}, but no {what} is configured"
        if not trust.exists():
            return False, f"signed with {kind}, but {trust} does not exist"
        env = {"GIT_CONFIG_GLOBAL": os.devnull}
        if gpg_home is not None:
            env["GNUPGHOME"] = str(gpg_home)
        # %G? and friends are git's structured verdict; %GT is avoided: git 2.39 aborts on it
        # when no allowed signers file is set.
        out = self._git("-c", f"gpg.ssh.allowedSignersFile={allowed_signers or ''}", "log", "-1",
                        "--format=%G?%x00%GS%x00%GK%x00%GF", "--end-of-options", commit, env=env)
        status, signer, key_id, fingerprint = out.strip("\n").split("\0", 3)
        return _verdict(kind, trust, status, " ".join(signer.split()), fingerprint or key_id)

    def signatures(self, commits: Sequence[str], allowed_signers: Path
                   ) -> dict[str, tuple[str, bool, str, str]]:
        """Per commit of COMMITS: (git's %G? verdict on its SSH signature against
        ALLOWED_SIGNERS, whether that is a good signature by a key the file lists, the
        principal it lists for that key, why not). Git runs ssh-keygen twice per signed
        commit, so the commits are checked in chunks, one `git log` per core at a time."""
        unique = list(dict.fromkeys(commits))
        chunks = [unique[i:i + SIGNATURES_CHUNK] for i in range(0, len(unique), SIGNATURES_CHUNK)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            outs = list(pool.map(lambda chunk: self._git(
                "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}", "log", "--no-walk=unsorted",
                "--format=%H%x00%G?%x00%GS%x00%GF%x1e", "--end-of-options", *chunk,
                env={"GIT_CONFIG_GLOBAL": os.devnull}), chunks))
        found = {}
        for record in filter(None, (r.strip("\n") for out in outs for r in out.split("\x1e"))):
            sha, status, signer, key = record.split("\0", 3)
            ok, why = _verdict("ssh", allowed_signers, status, signer, key)
            found[sha] = (status, ok, signer if ok else "", why)
        return found

    def user_identity(self) -> tuple[str, str]:
        """(name, email) of the person running this, from their own Git config."""
        ident = self._git("var", "GIT_AUTHOR_IDENT").strip()
        name, _, rest = ident.partition(" <")
        return name, rest.partition(">")[0]

    def is_signed(self, commit: str) -> bool:
        return self._signature_kind(commit) is not None

    def _signature_kind(self, commit: str) -> str | None:
        """Return "ssh", "openpgp", "x509", "unknown" or None (unsigned) from COMMIT's gpgsig."""
        header = self._git("cat-file", "commit", "--end-of-options", commit).partition("\n\n")[0]
        for line in header.splitlines():
            if line.startswith(("gpgsig ", "gpgsig-sha256 ")):
                armor = line.partition(" ")[2].strip()
                return _SIGNATURE_KINDS.get(armor, "unknown")
        return None

    def close(self) -> None:
        """End the git processes GitPython keeps for reading objects."""
        self.repo.close()

    # -- plumbing --------------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        return redact_text(self.url)

    def _rev(self, ref: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except RepoError:
            return None

    def _loose_objects(self) -> int:
        """The loose objects in the mirror, as `git count-objects` counts them (a file named
        by the rest of its id in objects/<first two hex digits>/), without a process."""
        objects = self.path / "objects"
        try:
            folders = [d for d in os.scandir(objects)
                       if len(d.name) == 2 and _hex(d.name) and d.is_dir()]
            return sum(1 for d in folders for f in os.scandir(d.path)
                       if len(f.name) in (38, 62) and _hex(f.name))  # SHA-1, SHA-256
        except FileNotFoundError:  # a folder gone meanwhile (a gc): ask git
            counts = dict(line.split(": ", 1) for line in
                          self._git("count-objects", "-v").splitlines() if ": " in line)
            return int(counts.get("count", 0))

    def _hash_blob(self, content: bytes) -> str:
        with tempfile.NamedTemporaryFile(prefix="petkeeper-blob-") as f:
            f.write(content)
            f.flush()
            return self._git("hash-object", "-w", "--", f.name).strip()

    def ssh_env(self, remote: str | None) -> dict[str, str]:
        """GIT_SSH_COMMAND for REMOTE when it is not repo.url and the reports have SSH options
        of their own (their deploy key); else nothing: the source's, set for every call."""
        return dict(self._reports_ssh or {}) if self._is_reports(remote) else {}

    def _is_reports(self, remote: str | None) -> bool:
        """Whether REMOTE is the reports' own, not repo.url: it gets their key and hints."""
        return remote not in (None, self.url)

    def _git(self, *args: str, env: Mapping[str, str] | None = None, missing_ref: str = "",
             rejected: bool = False, remote: str | None = None) -> str:
        """Run git in the mirror. REMOTE is the URL it reaches: errors name it (else repo.url),
        and a remote other than repo.url (the reports') gets the reports' SSH options."""
        env = {**self.ssh_env(remote), **(env or {})}
        status, out, err = self._run(args, env, remote)
        if status == 0:
            text = out.decode(errors="surrogateescape")  # as GitPython decodes
            return text[:-1] if text.endswith("\n") else text
        stderr = redact_text(err.decode(errors="replace").strip())
        if missing_ref and "couldn't find remote ref" in stderr:
            raise MissingBranch(missing_ref, self.safe_url, self.remote_branches())
        command = _command(args)
        if "No space left on device" in stderr:
            raise _disk_full(self.path, command, stderr)
        if "no commits selected for shallow requests" in stderr:
            raise _NoneSince()
        # --porcelain marks each ref the remote refused with "!": it moved ("[rejected]") or
        # declined the update ("[remote rejected]": a hook, say). Only those lines tell: the
        # word "rejected" in stderr may be a path's (the remote's folder name).
        if rejected and re.search(rb"^!\t", out, re.MULTILINE):
            raise _Rejected(out.decode(errors="replace"), stderr)
        refusal = parse_host_key_refusal(
            stderr, REPORTS_KNOWN_HOSTS_HINT if self._is_reports(remote) else KNOWN_HOSTS_HINT)
        where = redact_text(remote) if remote else self.safe_url
        if refusal and command in NETWORK:
            raise HostKeyError(f"git {command} {where}: {refusal}")
        if command in NETWORK:
            answer = _answer(stderr) or "no output"
            key = self.keys.get(remote or self.url)
            fix = f"; check {key}" if key else ""
            raise FetchError(f"git {command} {where} failed: {answer}{fix}")
        raise RepoError(f"git {command} failed: {_last_line(stderr)}")

    def _run(self, args: tuple[str, ...], env: Mapping[str, str] | None = None,
             remote: str | None = None) -> tuple[int, bytes, bytes]:
        """Run git ARGS in the mirror within repo.timeout; return its exit status, output and
        errors. The cycle's cancel stops what reaches a remote (a FetchError: the reports stay
        queued); local plumbing is quick and finishes, so a record being committed stays
        whole."""
        command = _command(args)
        where = f" {redact_text(remote) if remote else self.safe_url}" if command in NETWORK \
            else ""
        handle = self.repo.git.execute(["git", *args], env=dict(env or {}), as_process=True)
        proc = handle.proc  # the handle stays referenced: it would end proc when collected
        assert proc is not None
        try:
            out, err = wait_process(proc, what=f"git {command}{where}", timeout=self.timeout,
                                    cancel=self.cancel if where else None)
        except ProcessStopped as e:
            failed = f"git {command}{where} failed: {e.why}, stopped {e.stopped}"
            if not where:
                raise RepoError(f"{failed}; raise repo.timeout in the config for a mirror this "
                                "large") from None
            raise FetchError(failed + ("; check the remote, or raise repo.timeout in the config"
                                       if e.reason == TIMEOUT else "")) from None
        return proc.returncode, out, err


class Checkout(Mirror):
    """A work tree someone else checked out (a CI job's), read only: nothing in it is written,
    its hooks and fsmonitor never run, and its own config cannot start a program."""

    def __init__(self, repo: _Repo, timeout: float) -> None:
        self.repo, self.timeout, self.cancel, self.keys = repo, timeout, None, {}
        self.path = Path(repo.working_tree_dir or repo.git_dir)
        self.url = str(self.path)
        settings = {"core.fsmonitor": "false", "core.hooksPath": os.devnull,
                    "safe.directory": str(self.path)}  # a job's checkout may be another user's
        env = {"GIT_CONFIG_COUNT": str(len(settings)), "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}  # status writes no index
        for i, (key, value) in enumerate(settings.items()):
            env |= {f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value}
        self.repo.git.update_environment(**env)

    @classmethod
    def open(cls, folder: Path, timeout: float = 60.0) -> Checkout | None:
        """The Git work tree FOLDER is in (or is), or None when it is in none."""
        try:
            repo = _Repo(folder, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            return None
        if repo.bare:
            repo.close()
            return None
        return cls(repo, timeout)

    def head(self) -> str | None:
        """HEAD's commit, or None before the first commit."""
        return self._rev("HEAD")

    def changes_under(self, folder: Path) -> list[str]:
        """What differs from HEAD under FOLDER (edited, staged or untracked, not ignored), as
        `git status --porcelain` lines."""
        out = self._git("status", "--porcelain", "--untracked-files=all", "--", str(folder))
        return [line for line in out.splitlines() if line.strip()]

    def origin_url(self) -> str | None:
        """The URL of the remote named origin, or None."""
        try:
            return self._git("remote", "get-url", "origin").strip() or None
        except RepoError:
            return None


class _Rejected(Exception):
    def __init__(self, stdout: str, stderr: str) -> None:
        super().__init__(stderr)
        self.stdout, self.stderr = stdout, stderr


def _reports_ref(branch: str) -> str:
    """The ref of the reports remote that the agent's push writes."""
    return f"refs/heads/{branch}"


def ssh_command(options: tuple[str, ...]) -> str:
    """GIT_SSH_COMMAND: host keys always checked, never a prompt, then OPTIONS (key, known
    hosts). DEBUG1: a refused host key's fingerprint is in the error (only errors are read)."""
    return shlex.join(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                       "-o", "LogLevel=DEBUG1", *options])


class _NoneSince(Exception):
    """git fetch --shallow-since: no commit is that new."""


# git push --porcelain: "<flag>\t<local>:<remote>\t<summary>"; "!" is a refused ref.
_PUSHED = re.compile(r"^([ +\-*=!])\t[^\t:]*:([^\t]+)\t", re.MULTILINE)


def _command(args: Sequence[str]) -> str:
    """The git command ARGS run, after any leading ``-c name=value`` options."""
    i = 0
    while i + 1 < len(args) and args[i] == "-c":
        i += 2
    return args[i] if i < len(args) else ""


def _disk_full(mirror: Path, command: str, stderr: str) -> AgentError:
    """A full disk: the remote's (its "remote:" lines say so), or the mirror's own."""
    remote = [ln for ln in stderr.splitlines() if ln.startswith("remote:") and "No space" in ln]
    if remote:
        return FetchError(f"git {command} failed: the remote is out of disk space "
                          f"({remote[0].removeprefix('remote:').strip()}); free space on the "
                          "Git server")
    return disk_full_error(mirror, f"(git {command})")


# What git and ssh add around the cause of a failed transfer: said already, or no help (ssh
# at LogLevel=DEBUG1 also says whom it logged in as, and how many bytes went by).
NOISE = ("debug1:", "Could not read from remote repository", "Please make sure you have",
         "and the repository exists", "error: failed to push some refs", "Authenticated to ",
         "Transferred: sent ", "Bytes per second: ")


def _answer(stderr: str) -> str:
    """The remote's answer, in one clean line: the first line that says why (git's fatal:,
    ssh's connect error), without the generic lines around it, the prefix and the end dot."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and
             not any(ln.strip().startswith(n) or n in ln for n in NOISE)]
    if not lines:
        return _last_line(stderr).removeprefix("fatal:").strip().rstrip(".")
    cause = next((ln for ln in lines if ln.startswith(("fatal:", "error:", "ssh:"))), lines[0])
    for prefix in ("fatal:", "error:", "ssh:", "remote:"):
        cause = cause.removeprefix(prefix).strip()
    return cause.rstrip(".")


def _hex(name: str) -> bool:
    return all(ch in string.hexdigits for ch in name)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    return (fatal or lines or [""])[-1]


_SIGNATURE_KINDS = {"-----BEGIN SSH SIGNATURE-----": "ssh",
                    "-----BEGIN PGP SIGNATURE-----": "openpgp",
                    "-----BEGIN SIGNED MESSAGE-----": "x509"}
_VERIFIERS = {"ssh": "ssh-keygen", "openpgp": "gpg"}


def _verdict(kind: str, trust: Path, status: str, signer: str, key: str) -> tuple[bool, str]:
    """Map git's %G? STATUS for a KIND signature to (trusted, one-line reason).

    "U" is a good signature from a key of unknown validity: for OpenPGP that is a key in our
    dedicated keyring (the keyring is the trust list); for SSH, a key not in TRUST.
    """
    if status == "G" or (status == "U" and kind == "openpgp"):
        return True, f"good signature by {signer or 'unknown signer'} (key {key})"
    reasons = {
        "U": f"signed by a key not in {trust} (key {key})",
        "E": (f"signed by a key not in {trust} (key {key})" if kind == "openpgp" and key
              else f"signature could not be checked (is {_VERIFIERS[kind]} installed?)"),
        "B": "bad signature",
        "X": f"good signature by {signer} (key {key}), but the signature has expired",
        "Y": f"good signature by {signer}, but key {key} has expired",
        "R": f"signed by revoked key {key}",
        "N": "unsigned",
    }
    return False, reasons.get(status, f"unexpected signature status {status!r}")
