"""Galaxy requirements: roles and collections a GitOps repo asks for, installed per content.

When the repo has ``requirements.yml`` (the ``requirements`` setting), its roles and collections
are installed with ``ansible-galaxy`` into ``STATE_DIR/galaxy/<hash of the file>/`` before any
check, and every Ansible run of that commit uses them. Sources may be local (``type: file``,
``dir``, ``git`` with a file:// URL), so an offline pet works. An unchanged file is installed
once; a failed install is a clear error and leaves no half-filled cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from agent.adapters.process import TIMEOUT, Cancel, ProcessStopped, run_process
from agent.adapters.runner import path_with_venv
from agent.errors import RepoError

log = logging.getLogger(__name__)

CACHES_KEPT = 3
DEFAULT_COLLECTIONS = "~/.ansible/collections:/usr/share/ansible/collections"


def install_requirements(tree: Path, requirements: str, cache_root: Path,
                         timeout: float, cancel: Cancel = None) -> dict[str, str]:
    """Install REQUIREMENTS of TREE (if the file exists) into a cache under CACHE_ROOT; return
    the environment that points Ansible at it ({} when there is nothing to install). Each
    ansible-galaxy run, and all it started, is stopped after TIMEOUT or when CANCEL() turns
    true."""
    source = tree / requirements
    if not source.is_file():
        return {}
    content = source.read_bytes()
    cache = cache_root / hashlib.sha256(content).hexdigest()[:16]
    if not cache.is_dir():
        _install(source, requirements, cache, timeout, cancel)
        _prune(cache_root, keep=cache)
    else:
        os.utime(cache)  # most recently used
    return {"ANSIBLE_ROLES_PATH": str(cache / "roles"),
            "ANSIBLE_COLLECTIONS_PATH": f"{cache / 'collections'}:{DEFAULT_COLLECTIONS}"}


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
