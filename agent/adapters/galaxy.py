"""Galaxy requirements: roles and collections a GitOps repo asks for, installed per content.

When the repo has ``requirements.yml`` (the ``requirements`` setting), its roles and collections
are installed with ``ansible-galaxy`` into ``STATE_DIR/galaxy/<hash>/`` before any check, and
every Ansible run of that commit uses them, ahead of the repo's own ``roles_path`` and
``collections_path``. Sources may be local (``type: file``, ``dir``, ``git`` with a file:// URL),
so an offline pet works; the hash covers the file and the bytes of every local source it names,
so a vendored tarball changed under the same name is installed again. Unchanged content is
installed once; a failed install is a clear error and leaves no half-filled cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.process import TIMEOUT, Cancel, ProcessStopped, run_process
from agent.adapters.runner import path_with_venv
from agent.core.ansible_cfg import repo_paths
from agent.errors import RepoError

log = logging.getLogger(__name__)

CACHES_KEPT = 3
DEFAULT_PATHS = {"roles_path": ["~/.ansible/roles", "/usr/share/ansible/roles",
                                "/etc/ansible/roles"],
                 "collections_path": ["~/.ansible/collections",
                                      "/usr/share/ansible/collections"]}
MAX_SOURCE_FILES = 20_000  # a local source bigger than this is a mistake, not a role


def install_requirements(tree: Path, requirements: str, cache_root: Path,
                         timeout: float, cancel: Cancel = None) -> dict[str, str]:
    """Install REQUIREMENTS of TREE (if the file exists) into a cache under CACHE_ROOT; return
    the environment that points Ansible at it, then at the repo's own search paths ({} when
    there is nothing to install). Each ansible-galaxy run, and all it started, is stopped
    after TIMEOUT or when CANCEL() turns true."""
    source = tree / requirements
    if not source.is_file():
        return {}
    cache = cache_root / requirements_key(source, requirements)
    if not cache.is_dir():
        _install(source, requirements, cache, timeout, cancel)
        _prune(cache_root, keep=cache)
    else:
        os.utime(cache)  # most recently used
    return {f"ANSIBLE_{key.upper()}": ":".join(
                [str(cache / folder), *(repo_paths(tree, key) or DEFAULT_PATHS[key])])
            for key, folder in (("roles_path", "roles"), ("collections_path", "collections"))}


def requirements_key(source: Path, name: str) -> str:
    """The cache's name for SOURCE: a hash of its bytes and of every local file or folder it
    names (relative to its own folder, as ansible-galaxy reads them), in a stable order."""
    digest = hashlib.sha256(source.read_bytes())
    for path in sorted(set(_local_sources(source))):
        digest.update(b"\0" + str(path).encode())
        _hash_path(digest, path, name)
    return digest.hexdigest()[:16]


def _local_sources(source: Path) -> Iterator[Path]:
    """The files and folders SOURCE names that exist here: tarballs, role or collection
    folders, and local Git repositories (file:// URLs)."""
    try:
        data: Any = yaml.safe_load(source.read_text(errors="replace"))
    except yaml.YAMLError:
        return  # ansible-galaxy says what is wrong with it
    if isinstance(data, dict):
        data = [e for key in ("roles", "collections")
                if isinstance(data.get(key), list) for e in data[key]]
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict):
            values = [entry.get(key) for key in ("src", "name", "source")]
        else:
            values = [entry]
        for value in values:
            if not isinstance(value, str):
                continue
            text = value.removeprefix("git+").removeprefix("file://").split(",")[0]
            path = source.parent / os.path.expanduser(text)
            if text and path.exists():
                yield Path(os.path.realpath(path))


def _hash_path(digest: Any, path: Path, name: str) -> None:
    if path.is_file():
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
        return
    count = 0
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for file in sorted(files):
            count += 1
            if count > MAX_SOURCE_FILES:
                raise RepoError(f"{name}: the local source {path} holds more than "
                                f"{MAX_SOURCE_FILES} files; name the role or collection "
                                "itself (a folder or tarball)")
            full = Path(folder, file)
            digest.update(b"\0" + str(full.relative_to(path)).encode() + b"\0")
            if full.is_symlink():
                digest.update(os.readlink(full).encode())
            elif full.is_file():
                with full.open("rb") as f:
                    digest.update(hashlib.file_digest(f, "sha256").digest())


def _install(source: Path, name: str, cache: Path, timeout: float, cancel: Cancel) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tmp-"))
    try:
        for kind in ("role", "collection"):
            target = tmp / ("roles" if kind == "role" else "collections")
            argv = ["ansible-galaxy", kind, "install", "-r", str(source), "-p", str(target)]
            _galaxy(argv, source.parent, name, kind, timeout, cancel)
        os.replace(tmp, cache)
        log.info("installed %s into %s", name, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _galaxy(argv: list[str], cwd: Path, name: str, kind: str, timeout: float,
            cancel: Cancel) -> None:
    env = {**os.environ, "PATH": path_with_venv(), "ANSIBLE_NOCOLOR": "1"}
    try:
        proc = run_process(argv, what=f"{name}: ansible-galaxy {kind} install", timeout=timeout,
                           cancel=cancel, cwd=cwd, env=env,
                           fix="check the sources it names (ansible.timeout bounds it)")
    except ProcessStopped as e:
        if e.reason == TIMEOUT:  # a source that never answers: a person must look at it
            raise RepoError(str(e)) from None
        raise
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:] or ["no output"]
        raise RepoError(f"{name}: ansible-galaxy could not install its {kind}s: "
                        f"{errors[0].removeprefix('[ERROR]:').strip()}; fix the requirement "
                        "or its source")


def _prune(cache_root: Path, keep: Path) -> None:
    others = sorted((p for p in cache_root.iterdir() if p.is_dir() and p != keep and
                     not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[CACHES_KEPT - 1:]:
        shutil.rmtree(old, ignore_errors=True)
