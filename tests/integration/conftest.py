"""Fixtures for the netns integration tests (root only).

``topo``     sender S -- router R -- receivers A, B, C (see netns.Topology)
``smcrouted`` factory: start smcrouted in R with a config, wait until ready,
             always stop it; its log is printed when the test fails.

Every test here needs kernel multicast routing unless it is marked
``no_mroute``: on a kernel without it (probed once, mroute_probe.py) they
are skipped, and scripts/test.sh runs them in a VM (scripts/vm-run.sh).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .netns import Netns, Topology, kill_pid, netns_available, pid_alive, remove_stale_netns

SMCROUTED = Path(sys.executable).parent / "smcrouted"
SMCROUTECTL = Path(sys.executable).parent / "smcroutectl"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
MROUTE_PROBE = Path(__file__).with_name("mroute_probe.py")


def mroute_missing() -> str | None:
    """Why this kernel cannot route multicast, or None if it can (or the
    probe cannot tell: then the tests run and show what fails)."""
    proc = subprocess.run([sys.executable, str(MROUTE_PROBE)], capture_output=True, text=True,
                          timeout=120, check=False)
    return proc.stdout.strip() if proc.returncode == 1 else None


def pytest_collection_modifyitems(config, items):
    """Skip this directory's tests that need multicast routing where the
    kernel has none (once per session, and only if there are any)."""
    here = Path(__file__).parent
    need = [item for item in items
            if here in item.path.parents and item.get_closest_marker("no_mroute") is None]
    if not need or not netns_available()[0]:  # (not root: skipped anyway)
        return
    missing = mroute_missing()
    if missing:
        skip = pytest.mark.skip(reason=f"{missing}: scripts/test.sh runs these tests in a VM")
        for item in need:
            item.add_marker(skip)


_REPORTS = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures know of failures."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces():
    ok, _ = netns_available()
    if ok:
        remove_stale_netns()
    yield


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology.build()
    try:
        yield t
    finally:
        t.destroy()


class Smcrouted:
    """One smcrouted process running in a namespace (foreground, debug log)."""

    def __init__(self, ns: Netns, workdir: Path, config: str, args: Sequence[str] = (),
                 ident: str | None = None, split_stderr: bool = False,
                 prefix: Sequence[str] = ()):
        self.ns = ns
        self.prefix = list(prefix)  # run smcrouted through this (e.g. setpriv)
        self.workdir = workdir
        self.conf = workdir / "smcroute.conf"
        # With an identity (-i NAME) and no -P/-u, the daemon derives its
        # paths: /var/run/NAME.pid and /var/run/NAME.sock (SPEC 1.1).
        self.ident = ident
        self.pidfile = Path(f"/var/run/{ident}.pid") if ident else workdir / "smcroute.pid"
        self.sock = Path(f"/var/run/{ident}.sock") if ident else workdir / "smcroute.sock"
        self.logfile = workdir / "smcrouted.log"
        # stderr in a file of its own (errfile) instead of the log
        self.errfile = workdir / "stderr.log" if split_stderr else None
        self.conf.write_text(config)
        self.conf.chmod(0o644)
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.helper: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        paths = ["-i", self.ident] if self.ident else [
            "-P", str(self.pidfile), "-u", str(self.sock)]
        return [
            "ip", "netns", "exec", self.ns.name,
            *self.prefix, str(SMCROUTED), "-n", "-f", str(self.conf), *paths, "-l", "debug",
            *self.args,
        ]  # fmt: skip

    def start(self) -> Smcrouted:
        # 'ip netns exec' execs the command: the Popen pid is smcrouted's.
        with open(self.logfile, "wb") as log, open(self.errfile or os.devnull, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=err if self.errfile else subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return text + (f"--- stderr ---\n{self.stderr()}" if self.errfile else "")

    def stderr(self) -> str:
        """What it wrote to stderr (only with split_stderr; else it is in log())."""
        try:
            return self.errfile.read_text(errors="replace") if self.errfile else ""
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Smcrouted:
        """Until the PID file holds '<pid>\\n'; fail with the log if it exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        want = f"{self.pid}\n"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"smcrouted exited with {self.proc.returncode} before ready; log:\n{self.log()}"
                )
            try:
                if self.pidfile.read_text() == want:
                    self.helper = self.find_helper()
                    return self
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"smcrouted not ready within {timeout}s; log:\n{self.log()}")

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def find_helper(self, timeout: float = 2.0) -> int:
        """PID of the privileged helper: the child running smcroute.privileged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.children():
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                except FileNotFoundError:
                    continue
                if b"smcroute.privileged" in cmd:  # (in its -c boot line)
                    return child
            time.sleep(0.05)
        raise AssertionError(
            f"no smcroute.privileged child of {self.pid} (children {self.children()});"
            f" log:\n{self.log()}"
        )

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL; returns the exit status (negative = signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.helper is not None and pid_alive(self.helper):
            _reap_if_ours(self.helper)
        return self.proc.returncode

    def ctl(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """``smcroutectl -u SOCK ARGS...`` in the daemon's namespace; the exit
        status is the caller's to check (returncode, stdout, stderr as text)."""
        argv = ["ip", "netns", "exec", self.ns.name, str(SMCROUTECTL), "-u", str(self.sock),
                *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)


def _reap_if_ours(pid: int) -> None:
    """Kill a leftover helper, by PID, only if it still is a smcroute helper."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    if b"smcroute.privileged" in cmd:
        kill_pid(pid)


@pytest.fixture
def smcrouted(request, topo):
    """Factory: ``smcrouted(config, args=(), ns=None)`` -> a ready Smcrouted in R."""
    if not SMCROUTED.exists():
        pytest.skip(f"{SMCROUTED} is not installed")
    started: list[Smcrouted] = []
    workdirs: list[Path] = []

    def start(
        config: str, args: Sequence[str] = (), ns: Netns | None = None, ready: bool = True,
        ident: str | None = None, split_stderr: bool = False, prefix: Sequence[str] = (),
        owner: int | None = None,
    ) -> Smcrouted:
        """``ident``: start with ``-i IDENT`` instead of -P/-u in the workdir
        (the daemon then uses /var/run/IDENT.pid and .sock; pick a unique
        name).  ``split_stderr``: keep stderr apart (Smcrouted.stderr()).
        ``prefix``: run smcrouted through this command; ``owner``: the
        workdir's uid."""
        # Root's but world-readable, like /run: a daemon running as -p nobody
        # can still read its config (reload).
        workdir = Path(tempfile.mkdtemp(prefix="smcpy-"))
        workdir.chmod(0o755)
        if owner is not None:  # a daemon started as that uid writes its PID file and socket here
            os.chown(workdir, owner, -1)
        workdirs.append(workdir)
        daemon = Smcrouted(ns or topo.router, workdir, config, args, ident, split_stderr,
                           prefix)
        started.append(daemon)
        daemon.start()
        if ready:
            daemon.wait_ready()
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()
            if _failed(request):
                sys.stderr.write(
                    f"\n--- smcrouted {daemon.args} exit {daemon.proc and daemon.proc.returncode}"
                    f" log ---\n{daemon.log()}--- end of log ---\n"
                )
        for daemon in started:
            if daemon.ident:  # the daemon removes them; not if it was killed
                for path in (daemon.pidfile, daemon.sock):
                    path.unlink(missing_ok=True)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
