"""Privilege separation and fate sharing of smcrouted and its helper.

The controller (smcrouted) holds no capability; its one child, the
privileged helper, holds none either once its sockets are open, and is not
dumpable; both have no_new_privs. When either dies the other follows, and
the kernel drops the routes.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import time
from pathlib import Path

import pytest

from .netns import netns_available, pid_alive, proc_status, read_mfc, wait_for

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
NO_CAPS = "0" * 16
FATE_TIMEOUT = 2.0
DROP_TIMEOUT = 2.0  # the PID file appears before the drop (SMCRoute order)

CONFIG = """\
phyint r-s enable
phyint r-a enable
mroute from r-s source 10.0.1.2 group 225.1.2.3 to r-a
mroute from r-s source fd00:1::2 group ff0e::1:3 to r-a
"""

USERS = [pytest.param(None, id="root"), pytest.param("nobody", id="p-nobody")]


def _ids(user: str | None) -> tuple[int, int]:
    if user is None:
        return 0, 0
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _args(user: str | None) -> list[str]:
    return ["-p", user] if user else []


def _routes(topo) -> set:
    return read_mfc(topo.router, V4) | read_mfc(topo.router, V6)


def _expect_status(pid: int, want: dict[str, str]) -> dict[str, str]:
    """/proc/PID/status once every field in ``want`` matches (or the deadline
    passes: then the caller's assert shows the difference)."""

    def current():
        status = proc_status(pid)
        return status if all(status.get(k) == v for k, v in want.items()) else None

    return wait_for(current, DROP_TIMEOUT) or proc_status(pid)


def _subset(status: dict[str, str], keys) -> dict[str, str]:
    return {k: status.get(k) for k in keys}


@pytest.mark.parametrize("user", USERS)
def test_helper_holds_no_capability(smcrouted, user):
    daemon = smcrouted(CONFIG, _args(user))
    uid, gid = _ids(user)
    want = {
        "CapEff": NO_CAPS,
        "CapPrm": NO_CAPS,
        "CapBnd": NO_CAPS,
        "CapInh": NO_CAPS,
        "CapAmb": NO_CAPS,
        "NoNewPrivs": "1",
        "Seccomp": "2",  # its filter (privileged/sandbox.py)
        "Uid": "\t".join([str(uid)] * 4),
        "Gid": "\t".join([str(gid)] * 4),
    }
    status = _expect_status(daemon.helper, want)
    assert _subset(status, want) == want
    if user is not None:
        assert "0" not in status["Groups"].split(), "helper kept root's groups"
    cmdline = Path(f"/proc/{daemon.helper}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-I", b"-S", b"-c"] and b"smcroute.privileged" in cmdline[4]


def _as_controller(user: str | None, target: int | None) -> dict[str, str]:
    """In a child with exactly the controller's credentials (the same
    drop_privileges), try to reach into process target (None: a dumpable
    process of those credentials, the control); what happened."""
    import ctypes
    import json

    from smcroute.privileged.caps import drop_privileges

    control = target
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(rfd)
            creds = None
            if user is not None:
                entry = pwd.getpwnam(user)
                creds = (entry.pw_uid, entry.pw_gid, ())
            drop_privileges(creds)
            if target is None:
                target = os.fork()
                if target == 0:
                    import prctl
                    prctl.set_dumpable(True)
                    time.sleep(10)
                    os._exit(0)
                time.sleep(0.2)
            libc = ctypes.CDLL(None, use_errno=True)
            out = {}
            rc = libc.ptrace(16, target, None, None)  # PTRACE_ATTACH
            out["ptrace"] = "ok" if rc == 0 else os.strerror(ctypes.get_errno())
            try:
                with open(f"/proc/{target}/mem", "rb"):
                    out["mem"] = "ok"
            except OSError as exc:
                out["mem"] = exc.strerror
            try:
                pidfd = os.pidfd_open(target)
                fd = libc.syscall(438, pidfd, 0, 0)  # pidfd_getfd(pidfd, its fd 0, 0)
                out["pidfd_getfd"] = "ok" if fd >= 0 else os.strerror(ctypes.get_errno())
            except OSError as exc:
                out["pidfd_getfd"] = exc.strerror
            os.write(wfd, json.dumps(out).encode())
            if target != control:
                os.kill(target, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    return json.loads(data)


# The systemd unit's way: a system user with the three ambient capabilities
UNIT_CAPS = "+net_admin,+net_raw,+setpcap"


def _start(smcrouted, mode: str | None):
    if mode != "unit":
        return smcrouted(CONFIG, _args(mode)), mode
    uid, gid = _ids("nobody")
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
              f"--inh-caps={UNIT_CAPS}", f"--ambient-caps={UNIT_CAPS}",
              f"--bounding-set=-all,{UNIT_CAPS}"]
    return smcrouted(CONFIG, [], prefix=prefix, owner=uid), "nobody"


@pytest.mark.parametrize("mode", [*USERS, pytest.param("unit", id="unit-ambient")])
def test_the_controllers_credentials_cannot_reach_into_the_helper(smcrouted, mode):
    daemon, user = _start(smcrouted, mode)
    status = _expect_status(daemon.helper, {"CapEff": NO_CAPS, "CapPrm": NO_CAPS,
                                            "CapBnd": NO_CAPS, "CapAmb": NO_CAPS})
    assert status["CapBnd"] == status["CapAmb"] == NO_CAPS, status
    got = _as_controller(user, daemon.helper)
    assert "ok" not in got.values() and len(got) == 3, got
    # the control: the same credentials reach a dumpable process of their
    # own, so the refusals come from the helper's state, not from the test
    assert _as_controller(user, None) == {"ptrace": "ok", "mem": "ok", "pidfd_getfd": "ok"}


@pytest.mark.parametrize("user", USERS)
def test_controller_holds_no_capability(smcrouted, user):
    daemon = smcrouted(CONFIG, _args(user))
    uid, gid = _ids(user)
    want = {
        "CapEff": NO_CAPS,
        "CapPrm": NO_CAPS,
        "CapInh": NO_CAPS,
        "CapAmb": NO_CAPS,
        "NoNewPrivs": "1",
        "Uid": "\t".join([str(uid)] * 4),
        "Gid": "\t".join([str(gid)] * 4),
    }
    status = _expect_status(daemon.pid, want)
    assert _subset(status, want) == want
    if user is not None:
        assert "0" not in status["Groups"].split(), "controller kept root's groups"
    assert daemon.children() == [daemon.helper]


def test_controller_killed_helper_exits_and_routes_go(topo, smcrouted):
    daemon = smcrouted(CONFIG, ["-p", "nobody"])
    assert len(_routes(topo)) == 2
    helper = daemon.helper
    os.kill(daemon.pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(helper), FATE_TIMEOUT), (
        f"helper {helper} still alive {FATE_TIMEOUT}s after its controller was killed"
    )
    wait_for(lambda: not _routes(topo), FATE_TIMEOUT)
    assert _routes(topo) == set()


def test_helper_killed_controller_exits_with_error(topo, smcrouted):
    daemon = smcrouted(CONFIG, ["-p", "nobody"])
    assert len(_routes(topo)) == 2
    os.kill(daemon.helper, signal.SIGKILL)
    status = daemon.wait_exit(FATE_TIMEOUT)
    assert status is not None, f"smcrouted still running {FATE_TIMEOUT}s after its helper died"
    assert status != 0
    assert "helper" in daemon.log(), daemon.log()
    wait_for(lambda: not _routes(topo), FATE_TIMEOUT)
    assert _routes(topo) == set()


@pytest.mark.parametrize("user", USERS)
def test_sigterm_exits_cleanly_and_removes_routes(topo, smcrouted, user):
    daemon = smcrouted(CONFIG, _args(user))
    assert len(_routes(topo)) == 2
    helper = daemon.helper
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait_exit(5.0) == 0, daemon.log()
    assert _routes(topo) == set()
    assert wait_for(lambda: not pid_alive(helper), FATE_TIMEOUT)
    if user is None:  # as nobody it cannot unlink from a root-owned directory
        assert not daemon.pidfile.exists()


def _fds(pid: int) -> dict[int, str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    out = {}
    for entry in fd_dir.iterdir():
        try:
            out[int(entry.name)] = os.readlink(entry)
        except FileNotFoundError:
            continue
    return out


@pytest.mark.parametrize("user", USERS)
def test_no_inherited_descriptor_survives_in_either_process(smcrouted, user, tmp_path):
    # what a careless starter leaves open: a pipe and a file of root's
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    opener = ["bash", "-c", f'exec 251<{secret} 252< <(sleep 60); exec "$@"', "opener"]
    daemon = smcrouted(CONFIG, _args(user), prefix=opener)
    for pid in (daemon.pid, daemon.helper):
        fds = _fds(pid)
        assert 251 not in fds and 252 not in fds, fds
        assert not [t for t in fds.values() if str(secret) in t or t.startswith("pipe:")], fds
    # the helper: stdio and sockets (its end of the pair, its mroute sockets) only
    helper = _fds(daemon.helper)
    assert all(fd <= 2 or t.startswith("socket:") for fd, t in helper.items()), helper
