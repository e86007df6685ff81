"""systemd/: the unit files load cleanly in systemd-analyze, warnings included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = ("petkeeper.service", "petkeeper-oneshot.service", "petkeeper.timer")
SOURCE = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (apt-get install systemd)")
def test_units_verify_without_any_warning(tmp_path: Path):
    petkeeper = Path(sys.executable).with_name("petkeeper")
    for name in UNITS:  # point ExecStart at this environment's petkeeper: verify checks it
        text = (SOURCE / name).read_text().replace("/usr/local/bin/petkeeper", str(petkeeper))
        (tmp_path / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *UNITS], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")


def test_the_service_is_type_notify_with_a_watchdog_and_its_state_directory():
    text = (SOURCE / "petkeeper.service").read_text()
    for line in ("Type=notify", "ExecStart=/usr/local/bin/petkeeper daemon",
                 "StateDirectory=petkeeper", "Restart=on-failure", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text.splitlines()
    assert any(line.startswith("WatchdogSec=") for line in text.splitlines())
