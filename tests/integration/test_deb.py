"""The Debian package (debian/, scripts/build-deb.sh): built with Debian's
tools and lintian clean, it holds what a system daemon needs, and, unpacked
into a throwaway root, runs on Debian's /usr/bin/python3 and python3-*
packages (no venv, no compiler) and forwards real multicast."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .netns import flow, netns_available, read_mfc, wait_for

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

REPO = Path(__file__).resolve().parents[2]
DEBIAN_DEPS = ("python3-prctl", "python3-msgpack", "python3-pyroute2", "python3-structlog")


@pytest.fixture(scope="module")
def deb() -> Path:
    if os.geteuid() != 0 or not shutil.which("dpkg-query"):
        pytest.skip("needs root on Debian")
    out = Path(tempfile.mkdtemp(prefix="smcpy-deb-"))
    try:
        proc = subprocess.run(["bash", str(REPO / "scripts/build-deb.sh"), str(out)],
                              capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield Path(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def root(deb: Path) -> Path:
    """The package unpacked into a throwaway root."""
    top = Path(tempfile.mkdtemp(prefix="smcpy-debroot-"))
    top.chmod(0o755)
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(top)], check=True, timeout=60)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


@pytest.mark.no_mroute
def test_the_package_declares_what_a_replacement_of_smcroute_needs(deb: Path) -> None:
    assert field(deb, "Architecture") == "all"
    depends = field(deb, "Depends")
    for dep in (*DEBIAN_DEPS, "libseccomp2"):
        assert dep in depends, depends
    for name in ("Provides", "Conflicts", "Replaces"):
        assert field(deb, name) == "smcroute"
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                           check=True, timeout=30).stdout
    for path in ("./usr/sbin/smcrouted", "./usr/sbin/smcroutectl",
                 "./lib/systemd/system/smcroute.service",
                 "./usr/lib/sysusers.d/smcroute-py.conf", "./usr/lib/tmpfiles.d/smcroute-py.conf",
                 "./etc/smcroute.conf", "./etc/default/smcroute",
                 "./usr/share/man/man8/smcrouted.8.gz", "./usr/share/man/man5/smcroute.conf.5.gz",
                 "./usr/lib/python3/dist-packages/smcroute/privileged/__main__.py"):
        assert f" {path}\n" in files or files.endswith(f" {path}"), path
    control = Path(tempfile.mkdtemp(prefix="smcpy-debctl-"))
    try:
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True, timeout=30)
        assert (control / "conffiles").read_text().split() == ["/etc/default/smcroute",
                                                               "/etc/smcroute.conf"]
        postinst = (control / "postinst").read_text()
        # the user first (systemd-sysusers), then its runtime files, then the unit
        assert postinst.index("systemd-sysusers") < postinst.index("systemd-tmpfiles") \
            < postinst.index("deb-systemd-invoke")
    finally:
        shutil.rmtree(control, ignore_errors=True)


def run_env(root: Path) -> dict[str, str]:
    """Debian's python3 with the unpacked package on its path: what an
    installed package gets from /usr/lib/python3/dist-packages."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(root / "usr/lib/python3/dist-packages")}


@pytest.mark.no_mroute
def test_it_runs_on_debians_python_and_packages(root: Path) -> None:
    unit = (root / "lib/systemd/system/smcroute.service").read_text()
    assert "ExecStart=/usr/sbin/smcrouted " in unit and "/opt/" not in unit
    out = subprocess.run(["/usr/bin/python3", str(root / "usr/sbin/smcrouted"), "-v"],
                         env=run_env(root), capture_output=True, text=True, check=True,
                         timeout=30).stdout
    assert out.startswith("smcroute-py v")
    code = ("import msgpack, prctl, pyroute2, structlog, smcroute.unprivileged.smcrouted as s;"
            " print(msgpack.__file__, prctl.__file__, pyroute2.__file__, structlog.__file__,"
            " s.__file__)")
    paths = subprocess.run(["/usr/bin/python3", "-c", code], env=run_env(root),
                           capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert all(p.startswith("/usr/lib/python3/dist-packages/") for p in paths[:4]), paths
    assert paths[4].startswith(str(root)), paths


def test_the_unpacked_package_forwards_multicast(root: Path, topo) -> None:
    work = Path(tempfile.mkdtemp(prefix="smcpy-debrun-"))
    work.chmod(0o755)
    conf = work / "smcroute.conf"
    conf.write_text("phyint r-s enable\nphyint r-a enable\n"
                    "mroute from r-s source 10.0.1.2 group 225.1.2.3 to r-a\n")
    conf.chmod(0o644)
    log = work / "smcrouted.log"
    proc = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", topo.router.name, "env", *(
                    f"{k}={v}" for k, v in run_env(root).items()), "/usr/bin/python3",
                 str(root / "usr/sbin/smcrouted"), "-n", "-f", str(conf), "-P",
                 str(work / "pid"), "-u", str(work / "sock")], stdout=out,
                stderr=subprocess.STDOUT)
        ready = wait_for(lambda: (work / "pid").exists()
                         and (work / "pid").read_text() == f"{proc.pid}\n", 10.0)
        assert ready, log.read_text()
        assert read_mfc(topo.router, socket.AF_INET), log.read_text()
        got = flow(topo, "225.1.2.3", ["A", "B"], {"A": 10}, count=10)
        assert got == {"A": 10, "B": 0}, (got, log.read_text())
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)
