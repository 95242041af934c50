"""packaging/: the systemd unit's hardening score and its syntax."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "packaging/systemd/smcroute.service"
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
