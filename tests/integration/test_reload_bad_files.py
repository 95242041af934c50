"""A reload of an unusable configuration file changes nothing (issue 3):
binary garbage, a directory, an include loop, an over-long line, a file the
daemon may not read. Each gives a clear message; the kernel keeps its routes."""

from __future__ import annotations

import shutil
import signal
import socket
import time

import pytest

from .netns import netns_available, read_mfc

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

CONFIG = ("phyint r-s enable\n"
          "mroute from r-s source 10.0.1.2 group 225.1.2.3 to r-a\n"
          "mroute from r-s source fd00:1::2 group ff0e::1:3 to r-a\n")
REJECTED = "configuration not applied, keeping the running one"


def make_garbage(conf):
    conf.write_bytes(b"\x00\xff\xfe garbage \x01" * 50)
    return "not UTF-8 text"


def make_directory(conf):
    conf.unlink()
    conf.mkdir()
    return "is a directory"


def make_loop(conf):
    conf.write_text(CONFIG + f"include {conf}\n")
    return "include loop"


def make_long_line(conf):
    conf.write_text(CONFIG + "mroute from r-s group 225.9.9.9 to " + "r-a " * 200 + "\n")
    return "line too long"


def make_unreadable(conf):
    conf.chmod(0o000)  # the daemon runs as -p nobody: no access
    return "Permission denied"


@pytest.mark.parametrize("spoil", [make_garbage, make_directory, make_loop, make_long_line,
                                   make_unreadable])
def test_reload_of_unusable_file_keeps_routes(topo, smcrouted, spoil):
    daemon = smcrouted(CONFIG, ["-p", "nobody"])
    before = (read_mfc(topo.router, socket.AF_INET), read_mfc(topo.router, socket.AF_INET6))
    assert before[0] and before[1]
    why = spoil(daemon.conf)
    try:
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while REJECTED not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = daemon.log()
        assert REJECTED in log, log
        assert why in log, log
        after = (read_mfc(topo.router, socket.AF_INET), read_mfc(topo.router, socket.AF_INET6))
        assert after == before
        assert daemon.proc.poll() is None
    finally:  # let the harness clean up its work directory
        if daemon.conf.is_dir():
            shutil.rmtree(daemon.conf)
        elif daemon.conf.exists():
            daemon.conf.chmod(0o644)
