"""A module's baseline, built once and given back to each test as it was built: hosts
converged only when they are not, folders (a state directory, a Git remote) restored from a
copy. A check costs several Ansible processes; copying a folder back costs milliseconds."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.testhosts import TestHostPool
from tests.conftest import GitRemote, converge

# What the pets playbook of tests.conftest leaves on a host (mode, content): it is converged
# when these match, and a check finds it clean.
CONVERGED = {"/etc/motd": "644\nManaged by Petkeeper\n", "/etc/pet.conf": "644\nmode=steady\n"}


def host_files(pool: TestHostPool, name: str) -> dict[str, str]:
    """The pets playbook's files on host NAME, as mode and content ('' for a missing file)."""
    return {path: pool.run(name, f"stat -c %a {path} && cat {path}", check=False).stdout
            for path in CONVERGED}


def ensure_converged(pool: TestHostPool, remote: GitRemote, names: tuple[str, ...],
                     tmp: Path) -> None:
    """Converge those of NAMES whose files differ from the converged ones (a real run, as in
    tests.conftest.converge); the others are left alone, which costs no Ansible run."""
    behind = [n for n in names if host_files(pool, n) != CONVERGED]
    if behind:
        converge(pool, remote, ",".join(behind), tmp)
    assert [n for n in names if host_files(pool, n) != CONVERGED] == []


class Saved:
    """Copies of FOLDERS as they are now; restore() puts each back byte for byte, at the same
    path (a state directory and a mirror hold absolute paths)."""

    def __init__(self, keep: Path, *folders: Path) -> None:
        self.pairs = [(folder, keep / f"{i}-{folder.name}") for i, folder in enumerate(folders)]
        for folder, copy in self.pairs:
            shutil.copytree(folder, copy, symlinks=True)

    def restore(self) -> None:
        for folder, copy in self.pairs:
            if folder.exists():
                shutil.rmtree(folder)
            shutil.copytree(copy, folder, symlinks=True)
