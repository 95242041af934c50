"""What the benchmark scripts in bench/ share (a plain library, not a benchmark).

The scripts run as ``/opt/smcroute-py/venv/bin/python bench/NAME.py``, so
this directory is sys.path[0] and they import it as ``common``.  Importing
it also makes tests/integration/netns.py (the namespace harness) importable
as ``netns``.

Here: namespaces R and H joined by veths, switching this process into a
namespace (setns), an smcrouted process stopped by PID only (with its
privileged helper), the work directory and namespaces of one run, turning
SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt so that clean-up runs, and the
hex words of /proc/net/ip_mr_cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from netns import PREFIX, Netns, kill_pid, pid_alive, remove_stale_netns, veth, wait_for

CLONE_NEWNET = 0x40000000
IN_IF = "r-in"
OUT_IFS = ("r-o1", "r-o2", "r-o3")

_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# namespaces


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run the block with this (single-threaded) process in ns's network namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


def build(tag: str, created: list[Netns]) -> Netns:
    """R (IN_IF and OUT_IFS) and H with the veths; every namespace made is
    appended to created; returns R."""
    router, host = Netns(f"{tag}-R"), Netns(f"{tag}-H")
    for ns in (router, host):
        created.append(ns)
        ns.create()
    veth(router, IN_IF, host, "h-in", 1)
    for i, name in enumerate(OUT_IFS, start=2):
        veth(router, name, host, f"h-o{i - 1}", i)
    return router


def mr_cache_word(addr: str) -> str:
    """An IPv4 address as ip_mr_cache prints it: the big-endian word as a
    host-order hex integer."""
    packed = bytes(int(x) for x in addr.split("."))
    return f"{int.from_bytes(packed, sys.byteorder):08X}"


# --------------------------------------------------------------------------
# one run: signals, work directory, namespaces


def raise_on_signals(*signums: int) -> None:
    """Make these signals (default SIGINT, also when inherited as ignored in a
    background job, SIGTERM and SIGHUP) raise KeyboardInterrupt, so that the
    finally blocks that clean up run.  Children forked later (pyroute2 forks
    short-lived ones into namespaces and stops them with SIGTERM) just exit:
    they must not run the clean-up."""
    main_pid = os.getpid()

    def interrupted(signum, frame):
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in signums or (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)


@dataclass
class Workspace:
    workdir: Path
    tag: str  # prefix of the namespace names, PREFIX + our PID: see remove_stale_netns
    namespaces: list[Netns] = field(default_factory=list)


@contextlib.contextmanager
def workspace(name: str, keep: bool = False) -> Iterator[Workspace]:
    """Remove stale namespaces of dead runs; yield a fresh work directory
    (smcpy-NAME-*) and a list for the namespaces made; on exit delete those
    namespaces (which stops whatever still runs in them, by PID) and the
    work directory, unless keep."""
    remove_stale_netns()
    ws = Workspace(Path(tempfile.mkdtemp(prefix=f"smcpy-{name}-")), f"{PREFIX}{os.getpid()}-{name}")
    try:
        ws.workdir.chmod(0o755)
        yield ws
    finally:
        for ns in ws.namespaces:
            ns.delete()
        if keep:
            print(f"work directory kept: {ws.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(ws.workdir, ignore_errors=True)


# --------------------------------------------------------------------------
# the daemon


class Smcrouted:
    """smcrouted with its files in workdir; stopped by PID, and its
    privileged helper too.  Subclasses start it."""

    exited = "; log:\n"  # in check_alive's message: between the exit status and the log
    log_shown = 4000  # characters of the log's end in messages

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.conf = workdir / "bench.conf"
        self.pidfile = workdir / "bench.pid"
        self.sock = workdir / "bench.sock"
        self.logfile = workdir / "bench.log"
        self.proc: subprocess.Popen | None = None
        self.helpers: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> bytes:
        try:
            return self.logfile.read_bytes()
        except FileNotFoundError:
            return b""

    def log_tail(self, n: int) -> str:
        return self.log().decode(errors="replace")[-n:]

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"smcrouted exited with {self.proc.returncode}{self.exited}"
                             + self.log_tail(self.log_shown))

    def wait_ready(self, timeout: float, interval: float) -> bool:
        """Poll until the PID file holds the daemon's PID (it is ready), then
        note its helper; False on timeout."""
        want = f"{self.pid}\n"

        def ready() -> bool:
            self.check_alive()
            try:
                return self.pidfile.read_text() == want
            except FileNotFoundError:
                return False

        if not wait_for(ready, timeout, interval):
            return False
        self.note_helpers()
        return True

    def note_helpers(self) -> None:
        """Remember the children (the privileged helper), to stop them by PID."""
        if self.proc is None:
            return
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return
        self.helpers.update(int(p) for p in text.split())

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        self.note_helpers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for pid in self.helpers:
            if pid_alive(pid) and _is_helper(pid):
                kill_pid(pid)
        self.proc = None
        self.helpers.clear()


def _is_helper(pid: int) -> bool:
    try:
        return b"smcroute.privileged" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def guarded(body: Callable[[], None], cleanup: Callable[[], None]) -> int | None:
    """Run a benchmark's body, then cleanup whatever happens (in the main
    process only: a forked child that got here exits at once). Returns 130
    after Ctrl-C, 1 after a BenchError (both said on stderr), else None."""
    main_pid = os.getpid()
    try:
        body()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if os.getpid() != main_pid:
            os._exit(1)
        cleanup()
    return None
