"""sd_notify: READY=1 once the config is applied, RELOADING=1 then READY=1
around a reload (also a rejected one), STOPPING=1 at the end -- in order, on a
NOTIFY_SOCKET this test creates."""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from .netns import netns_available

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

CONFIG = "phyint r-s enable\nmroute from r-s source 10.0.1.2 group 225.1.2.3 to r-a\n"


def messages(sock: socket.socket, until: str, timeout: float = 10.0) -> list[str]:
    """Datagrams until one contains until (bounded)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append(data)
        if until in data:
            return got
    raise AssertionError(f"no {until!r} in {got}")


def test_notify_sequence(topo, smcrouted, monkeypatch):
    workdir = Path(tempfile.mkdtemp(prefix="smcpy-notify-"))
    path = workdir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        path.chmod(0o777)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        daemon = smcrouted(CONFIG)
        first = messages(sock, "READY=1")
        assert len(first) == 1
        fields = dict(line.split("=", 1) for line in first[0].splitlines())
        assert fields["READY"] == "1" and fields["MAINPID"] == str(daemon.pid)
        assert fields["STATUS"].startswith("Ready")

        daemon.proc.send_signal(signal.SIGHUP)
        reload = messages(sock, "READY=1")
        assert [m.splitlines()[0] for m in reload] == ["RELOADING=1", "READY=1"]

        daemon.conf.write_text("mroute to r-a\n")  # rejected: READY=1 all the same
        daemon.proc.send_signal(signal.SIGHUP)
        rejected = messages(sock, "READY=1")
        assert [m.splitlines()[0] for m in rejected] == ["RELOADING=1", "READY=1"]

        daemon.proc.send_signal(signal.SIGTERM)
        assert messages(sock, "STOPPING=1")[-1].splitlines()[0] == "STOPPING=1"
        assert daemon.proc.wait(10) == 0
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        workdir.rmdir()
