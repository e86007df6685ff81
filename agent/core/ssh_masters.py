"""The daemon's kept SSH connections: where their control sockets go, how long an idle master
lives, and which host owns which socket folder. Pure functions.

Between the daemon's cycles each host keeps one OpenSSH ControlPersist master, so a cycle does
not pay a new handshake. Each inventory host gets a folder of its own, FOLDER/<hash of its
inventory name>, which Ansible's plain strategy fills with its usual socket (a hash of address,
port and user): a host that leaves the targets is then known by its folder alone, whatever
address, port or user its connection used. Mitogen's strategy takes its ControlPath from
ssh_args, one pattern for every host: its sockets are FOLDER/<ssh's %C, a hash of local host,
address, port, user and jump host>, shared by all hosts, and every one of them is closed when
any host leaves (the host folders, made for every target, still tell which hosts were there).
Ad hoc CLI runs keep a fresh folder per run, closed at its end.
"""

from __future__ import annotations

import hashlib
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

# A Unix socket path holds at most 107 bytes (sun_path is 108, with its NUL). ssh binds the
# master's socket under a temporary name first: the path plus "." and 16 random characters.
SOCKET_PATH_MAX = 107
SSH_TEMP_SUFFIX = 17
NAME_LEN = 10  # Ansible's socket names (a SHA-1 prefix of host-port-user) and ours alike
SHARED_NAME_LEN = 40  # ssh's %C: a whole SHA-1 in hex (Mitogen's sockets)
SUBFOLDER = "ssh"  # under the state directory
# An idle master outlives the check interval by this much: the next cycle finds it alive.
MARGIN = 120


@dataclass(frozen=True)
class Masters:
    """Where a daemon's cycles keep their SSH masters, and how long an idle one lives."""

    folder: Path
    persist: int  # seconds: ssh's ControlPersist

    def ssh_args(self, shared: bool = False) -> str:
        """Ansible's default ssh_args, with this ControlPersist instead of its 60 s; SHARED:
        with the ControlPath of Mitogen's sockets too (Mitogen adds none of its own)."""
        args = f"-C -o ControlMaster=auto -o ControlPersist={self.persist}s"
        if not shared:
            return args
        path = str(self.folder).replace("%", "%%")  # ssh expands %-tokens in a ControlPath
        return f"{args} -o {shlex.quote(f'ControlPath={path}/%C')}"

    def control_path_dir(self) -> str:
        """ansible_control_path_dir as an extra var: Ansible renders it per host, so each
        inventory host's sockets land in a folder of its own (host_folder's name)."""
        raw = f"{{% raw %}}{self.folder}{{% endraw %}}"
        return f"{raw}/{{{{ (inventory_hostname | hash('sha1'))[:{NAME_LEN}] }}}}"

    def host_folder(self, host: str) -> Path:
        return self.folder / host_folder_name(host)


def host_folder_name(host: str) -> str:
    """The folder name of inventory host HOST (what control_path_dir renders for it)."""
    return hashlib.sha1(host.encode()).hexdigest()[:NAME_LEN]


def socket_path_len(folder: Path) -> int:
    """The longest path ssh binds under FOLDER: a host folder and Ansible's socket name in it,
    or Mitogen's longer shared one; with ssh's temporary suffix."""
    name = max(NAME_LEN + 1 + NAME_LEN, SHARED_NAME_LEN)
    return len(str(folder).encode()) + 1 + name + SSH_TEMP_SUFFIX


def choose_folder(state_root: Path, tmp: Path, uid: int) -> tuple[Path, str]:
    """The folder for the daemon's SSH control sockets: STATE_ROOT/ssh, or when that path is
    too long for a socket, a private folder under TMP named for the agent's UID and the state
    directory. Return it and, for a fallback, why (to log once); "" otherwise."""
    preferred = state_root / SUBFOLDER
    if socket_path_len(preferred) <= SOCKET_PATH_MAX:
        return preferred, ""
    digest = hashlib.sha1(str(state_root).encode()).hexdigest()[:NAME_LEN]
    fallback = tmp / f"petkeeper-ssh-{uid}-{digest}"
    why = (f"{preferred} is too long for SSH control sockets ({socket_path_len(preferred)} "
           f"bytes with their names, at most {SOCKET_PATH_MAX}): kept SSH connections use "
           f"{fallback} (0700, the agent's own) instead")
    return fallback, why


def persist_seconds(check_interval: float, fetch_interval: float) -> int:
    """ControlPersist for the daemon's masters: a little more than a cycle's longest quiet
    gap (CHECK_INTERVAL, plus a fetch interval for the tick that notices it is due), so a
    master lives from one cycle to the next, and one orphaned by a killed daemon exits by
    itself soon after."""
    return math.ceil(check_interval + fetch_interval) + MARGIN


def departed(folders: list[str], hosts: list[str] | tuple[str, ...]) -> list[str]:
    """Of host FOLDERS' names, those of no host among HOSTS (hosts that left the targets)."""
    kept = {host_folder_name(h) for h in hosts}
    return sorted(name for name in folders if name not in kept)
