"""The helper's sandbox (privileged/sandbox.py), applied in a child process
exactly as the helper applies it: then the forbidden things fail, or kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

CHILD = r"""
import json, os, socket, sys
import prctl
from smcroute.privileged import sandbox
what, path = sys.argv[1], sys.argv[2]
sock = socket.socket()  # made before, used after
prctl.set_no_new_privs(1)
applied = sandbox.apply()
attempts = {
    "nothing": lambda: None,
    "open": lambda: open("/proc/self/status").close(),
    "create": lambda: open(path, "w").close(),
    "execve": lambda: os.execv("/bin/true", ["true"]),
    "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    "connect": lambda: sock.connect(("127.0.0.1", 9)),
    "ptrace": lambda: __import__("ctypes").CDLL(None).ptrace(16, os.getppid(), None, None),
    "signal": lambda: os.kill(os.getppid(), 0),
}
try:
    attempts[what]()
    result = "ok"
except OSError as exc:
    result = exc.strerror
print(json.dumps({"applied": applied, "result": result}), flush=True)
"""


def attempt(what: str, path: str) -> tuple[int, dict[str, str] | None]:
    out = subprocess.run([sys.executable, "-I", "-c", CHILD, what, path],
                         capture_output=True, text=True, timeout=30)
    return out.returncode, json.loads(out.stdout) if out.stdout else None


@pytest.fixture
def applied(tmp_path) -> str:
    rc, got = attempt("nothing", str(tmp_path / "x"))
    assert rc == 0 and got is not None and got["result"] == "ok", (rc, got)
    return got["applied"]


@pytest.mark.parametrize("what", ["open", "create", "signal"])
def test_the_sandbox_refuses(applied, tmp_path, what) -> None:
    rc, got = attempt(what, str(tmp_path / "x"))
    assert rc == 0 and got is not None, (rc, got)
    if applied.startswith("none") and not applied.endswith("seccomp"):
        pytest.skip(applied)
    assert got["result"] in ("Operation not permitted", "Permission denied"), got
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("what", ["execve", "socket", "connect", "ptrace"])
def test_the_sandbox_kills(applied, tmp_path, what) -> None:
    if not applied.endswith("seccomp"):
        pytest.skip(f"no seccomp filter here: {applied}")
    rc, got = attempt(what, str(tmp_path / "x"))
    assert rc == -signal.SIGSYS and got is None, (rc, got)


def test_landlock_and_seccomp_are_both_applied_on_this_kernel(applied) -> None:
    try:
        with open("/sys/kernel/security/lsm") as f:
            assert applied.startswith("landlock ABI ") == ("landlock" in f.read()), applied
    except FileNotFoundError:  # (no securityfs: cannot tell)
        pass
    assert applied.endswith(", seccomp"), applied
