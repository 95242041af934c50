"""The helper's Landlock domain (privileged/sandbox.py), applied in a child
process exactly as the helper applies it: then the forbidden things fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, os, socket, sys
import prctl
from smcroute.privileged.sandbox import restrict
out = {}
try:
    with open("/proc/self/status"):  # before: allowed
        out["open before"] = "ok"
except OSError as exc:
    out["open before"] = exc.strerror
prctl.set_no_new_privs(1)
out["applied"] = restrict()
def attempt(name, f):
    try:
        f()
        out[name] = "ok"
    except OSError as exc:
        out[name] = exc.strerror
attempt("open", lambda: open("/proc/self/status").close())
attempt("create", lambda: open(sys.argv[1], "w").close())
attempt("execve", lambda: os.execv("/bin/true", ["true"]))
s = socket.socket()
attempt("connect", lambda: s.connect(("127.0.0.1", 9)))
attempt("bind", lambda: s.bind(("127.0.0.1", 0)))
attempt("signal", lambda: os.kill(os.getppid(), 0))
print(json.dumps(out))
"""


def test_the_sandbox_closes_the_filesystem_tcp_and_signals(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-I", "-c", CHILD, str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=30, check=True)
    got = json.loads(out.stdout)
    if not got["applied"].startswith("landlock"):
        pytest.skip(f"this kernel: {got['applied']}")
    abi = int(got["applied"].split()[-1])
    assert got["open before"] == "ok"
    for what in ("open", "create", "execve"):
        assert got[what] == "Permission denied", (what, got)
    assert not (tmp_path / "x").exists()
    if abi >= 4:
        assert got["connect"] == got["bind"] == "Permission denied", got
    if abi >= 6:
        assert got["signal"] == "Operation not permitted", got
