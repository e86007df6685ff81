"""Fixtures shared by the integration tests (the session's hosts live in tests/conftest.py)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.signing import gpg_keys, ssh_keys  # noqa: F401 (fixtures)

PROJECT = Path(__file__).resolve().parents[2]


WHEEL_CACHE = Path(os.environ.get("PETKEEPER_TEST_CACHE", "/var/cache/petkeeper-test")) / "wheels"


@dataclass(frozen=True)
class Wheelhouse:
    """What an offline server installs Petkeeper from, beside a clone of it: the wheels of its
    dependencies, and of what builds it from source."""

    wheels: Path

    @property
    def pip_env(self) -> dict[str, str]:
        """pip's environment: this wheelhouse, never an index."""
        return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(self.wheels),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """The wheels of Petkeeper's dependencies at the versions this environment runs, and of
    setuptools. They do not change with Petkeeper's code, so they are kept per machine (like
    the container image), in a folder named after that list: pip downloads them once, and
    every later run, worker and test reuses them (pip-installing from a folder of wheels is
    what an offline install does anyway)."""
    wanted, pins = runtime_requirements()
    key = hashlib.sha256("\n".join([sys.implementation.cache_tag, sys.platform, *wanted, "",
                                    *pins]).encode()).hexdigest()[:16]
    try:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        root = WHEEL_CACHE
    except OSError:  # no shared cache here: one per run
        root = tmp_path_factory.getbasetemp().parent
    wheels = root / key
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist's workers, other runs
        if not wheels.is_dir():
            _download_wheels(wanted, pins, root, wheels)
    return Wheelhouse(wheels)


def runtime_requirements() -> tuple[list[str], list[str]]:
    """What this checkout's pyproject.toml requires to run and to build, and NAME==VERSION of
    each distribution installed here that those requirements need (theirs too, and so on):
    the versions this environment runs. A requirement not installed here is left to pip."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    pins: dict[str, str] = {}
    seen: set[str] = set()
    todo = list(wanted)
    while todo:
        req = Requirement(todo.pop())
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if req.specifier.contains(version, prereleases=True):
            pins[name] = version
            todo.extend(metadata.requires(name) or [])
    return wanted, [f"{name}=={version}" for name, version in sorted(pins.items())]


def _download_wheels(wanted: list[str], pins: list[str], root: Path, wheels: Path) -> None:
    partial = Path(tempfile.mkdtemp(prefix=f".{wheels.name}-", dir=root))
    constraints = partial / "constraints.txt"
    constraints.write_text("".join(f"{pin}\n" for pin in pins))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                        str(partial), "--constraint", str(constraints), *wanted],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    constraints.unlink()
    if r.returncode != 0:
        shutil.rmtree(partial)
        pytest.fail(f"pip wheel exited {r.returncode}:\n{r.stderr}")
    partial.chmod(0o755)
    partial.rename(wheels)


def copy_source(dest: Path) -> Path:
    """A copy of this working tree at DEST, standing in for a clone in /opt/petkeeper/src
    (pip builds in it: each install gets its own)."""
    shutil.copytree(PROJECT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
        ".ansible"))
    return dest


def readme_install_lines() -> list[str]:
    """The commands of the README's "Installing on a server" block, as a person types them."""
    text = (PROJECT / "README.md").read_text()
    section = text.split("\n## Installing on a server\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]
