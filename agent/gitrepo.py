"""Git, through GitPython: the only module that imports it.

A bare mirror under the state directory holds the source branch, the reports branch as the
remote has it (``refs/remotes/origin/...``) and our own queued reports
(``refs/petkeeper/reports``). Every command runs with hooks off, no submodules, no prompts and a
timeout; commits are built with plumbing, so no work tree or index is ever shared.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import git

from agent.errors import FetchError, RepoError
from agent.redact import redact_text

log = logging.getLogger(__name__)

QUEUE_REF = "refs/petkeeper/reports"
HARDENING = {
    "core.hooksPath": os.devnull,
    "core.symlinks": "true",
    "submodule.recurse": "false",
    "fetch.recurseSubmodules": "false",
    "protocol.ext.allow": "never",
    "transfer.fsckObjects": "true",
    "gc.auto": "0",
}


@dataclass(frozen=True)
class Author:
    name: str
    email: str


class Mirror:
    """The agent's private bare copy of the GitOps repository."""

    def __init__(self, path: Path, url: str, timeout: float) -> None:
        self.path, self.url, self.timeout = path, url, timeout
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            git.Repo.init(path, bare=True)
        self.repo = git.Repo(path)
        with self.repo.config_writer() as cw:
            for key, value in HARDENING.items():
                section, option = key.rsplit(".", 1)
                cw.set_value(section, option, value)
        self.repo.git.update_environment(
            GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
            GIT_SSH_COMMAND="ssh -o BatchMode=yes -o StrictHostKeyChecking=yes",
            GIT_CONFIG_NOSYSTEM="1", GIT_ALLOW_PROTOCOL="file:git:ssh:http:https",
        )

    # -- source ----------------------------------------------------------------------------

    def fetch(self, branch: str, reports_branch: str | None) -> None:
        """Fetch BRANCH (RepoError if the remote lacks it) and, when it exists, REPORTS_BRANCH."""
        specs = [f"+refs/heads/{branch}:refs/remotes/origin/{branch}"]
        if reports_branch:
            # A one-star pattern matches nothing, without error, while the branch is new.
            specs.append(f"+refs/heads/{reports_branch}*:refs/remotes/origin/{reports_branch}*")
        self._git("fetch", "--no-tags", "--prune", "--no-write-fetch-head", self.url, *specs,
                  missing_ref=f"branch {branch!r} not found in {self.safe_url}")

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

    # -- reports ---------------------------------------------------------------------------

    def remote_reports(self, branch: str) -> str | None:
        return self._rev(f"refs/remotes/origin/{branch}")

    def queued_reports(self) -> str | None:
        return self._rev(QUEUE_REF)

    def read_blob(self, commit: str | None, path: str) -> bytes | None:
        if commit is None:
            return None
        try:
            return self.repo.git.cat_file("blob", f"{commit}:{path}", stdout_as_string=False)
        except git.GitCommandError:
            return None

    def list_files(self, commit: str | None, folder: str) -> list[str]:
        if commit is None:
            return []
        out = self._git("ls-tree", "-r", "--name-only", commit, "--", folder)
        return out.splitlines()

    def commit_files(self, parent: str | None, files: Mapping[str, bytes | None], message: str,
                     author: Author, when: str) -> str:
        """Return a new commit: PARENT's tree with FILES written (None deletes); no ref moves."""
        with tempfile.TemporaryDirectory(prefix="petkeeper-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent:
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
        return self._git("commit-tree", tree, *parents, "-m", message, env=env).strip()

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

    def queued_commits(self, remote_tip: str | None) -> list[str]:
        """Our report commits the remote does not have yet, oldest first."""
        local = self.queued_reports()
        if local is None:
            return []
        span = f"{remote_tip}..{local}" if remote_tip else local
        return self._git("rev-list", "--reverse", span).split()

    def set_queue(self, new: str | None, old: str | None) -> None:
        """Move the local reports ref from OLD to NEW (compare-and-swap)."""
        if new is None:
            self._git("update-ref", "-d", QUEUE_REF)
        else:
            self._git("update-ref", QUEUE_REF, new, old or "0" * 40)

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", older, newer)
        except RepoError:
            return False
        return True

    def push_reports(self, url: str, branch: str) -> bool:
        """Push the queue to BRANCH of URL without force; False when the remote rejects it."""
        try:
            self._git("push", "--porcelain", url, f"{QUEUE_REF}:refs/heads/{branch}",
                      rejected=True)
        except _Rejected:
            return False
        self._git("update-ref", f"refs/remotes/origin/{branch}", QUEUE_REF)
        return True

    def fetch_reports(self, url: str, branch: str) -> None:
        self._git("fetch", "--no-tags", "--no-write-fetch-head", url,
                  f"+refs/heads/{branch}*:refs/remotes/origin/{branch}*")

    # -- plumbing --------------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        return redact_text(self.url)

    def _rev(self, ref: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except RepoError:
            return None

    def _hash_blob(self, content: bytes) -> str:
        with tempfile.NamedTemporaryFile(prefix="petkeeper-blob-") as f:
            f.write(content)
            f.flush()
            return self._git("hash-object", "-w", "--", f.name).strip()

    def _git(self, *args: str, env: Mapping[str, str] | None = None, missing_ref: str = "",
             rejected: bool = False) -> str:
        try:
            return str(self.repo.git.execute(
                ["git", *args], env=dict(env or {}), kill_after_timeout=self.timeout,
                with_extended_output=False, stdout_as_string=True))
        except git.GitCommandError as e:
            stderr = redact_text(str(e.stderr or "").strip().removeprefix("stderr:").strip(" '"))
            if missing_ref and "couldn't find remote ref" in stderr:
                raise RepoError(missing_ref) from None
            if rejected and ("rejected" in stderr or "[rejected]" in str(e.stdout)):
                raise _Rejected() from None
            if args[0] in ("fetch", "push", "ls-remote"):
                raise FetchError(f"git {args[0]} {self.safe_url} failed: "
                                 f"{_last_line(stderr) or 'timed out'}") from None
            raise RepoError(f"git {args[0]} failed: {_last_line(stderr)}") from None


class _Rejected(Exception):
    pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    return (fatal or lines or [""])[-1]
