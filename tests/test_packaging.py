"""packaging/: the systemd unit's hardening score and its syntax."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging/systemd/smcroute.service"
MAX_EXPOSURE = 2.0


def test_unit_exposure_score() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: run scripts/setup.sh (Debian package systemd)")
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout


def test_unit_runs_unprivileged_with_only_the_start_capabilities() -> None:
    text = UNIT.read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["User"] == "smcroute"
    assert settings["Type"] == "notify"
    assert set(settings["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETPCAP"}
    assert settings["AmbientCapabilities"] == settings["CapabilityBoundingSet"]
    assert "smcroutectl" in settings["ExecReload"] and "reload" in settings["ExecReload"]
    assert "/etc/default/smcroute" in settings["EnvironmentFile"]
    assert "$SMCROUTED_OPTS" in settings["ExecStart"] and "$SMCROUTED_ARGS" in settings["ExecStart"]


def test_install_system_honours_the_venv_and_the_prefix(tmp_path: Path) -> None:
    venv = tmp_path / "elsewhere" / "venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("smcrouted", "smcroutectl"):  # what the script checks for
        (venv / "bin" / tool).write_text("#!/bin/sh\n")
        (venv / "bin" / tool).chmod(0o755)
    dest = tmp_path / "root"
    env = {**os.environ, "SMCROUTE_VENV": str(venv), "PREFIX": "/usr", "DESTDIR": str(dest)}
    subprocess.run(["bash", str(REPO / "scripts/install-system.sh")], env=env, check=True,
                   capture_output=True, timeout=60)
    unit = (dest / "usr/lib/systemd/system/smcroute.service").read_text()
    assert f"ExecStart={venv}/bin/smcrouted " in unit and "/opt/smcroute-py" not in unit
    assert not (dest / "etc/systemd").exists()
    for path in ("usr/lib/sysusers.d/smcroute.conf", "usr/lib/tmpfiles.d/smcroute.conf",
                 "usr/share/man/man8/smcrouted.8", "etc/default/smcroute", "etc/smcroute.conf"):
        assert (dest / path).is_file(), path
    assert os.readlink(dest / "usr/sbin/smcrouted") == str(venv / "bin/smcrouted")
