"""The controller is never root-equivalent: with its exact credentials and
confinement (its -e script's), writing /etc, /root, the venv's
site-packages or the helper's code fails, and so does changing a root-owned
file's mode; a root-only file named by an include is refused with a clear
error that does not echo it. In each mode: -p nobody, no -p with a
dedicated user, no -p with no user to become (uid 0 in a Landlock domain),
and the systemd unit's way (a system user with ambient capabilities)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import smcroute.privileged

from .netns import netns_available, wait_for

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

UNIT_CAPS = "+net_admin,+net_raw,+setpcap"
SITE = Path(smcroute.privileged.__file__).resolve().parent.parent.parent  # site-packages
HELPER_CODE = Path(smcroute.privileged.__file__).resolve().parent / "server.py"
ATTACKS = ("etc", "root", "site", "helper", "chmod")


@pytest.fixture
def dedicated_user() -> Iterator[str]:
    if not shutil.which("useradd"):
        pytest.skip("useradd not available")
    name = f"smcpy-ctl-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30, check=False)
        subprocess.run(["groupdel", name], capture_output=True, timeout=30, check=False)


@pytest.fixture
def bait() -> Iterator[Path]:
    """A world-traversable directory with root's own files: a 0400 file
    whose mode an attacker would change, a 0600 secret an include would
    leak, and the attack script."""
    top = Path(tempfile.mkdtemp(prefix="smcpy-bait-"))
    try:
        top.chmod(0o755)
        (top / "rootfile").write_text("root's\n")
        (top / "rootfile").chmod(0o400)
        (top / "secret.conf").write_text("secret line 1: do not echo me\n")
        (top / "secret.conf").chmod(0o600)
        targets = {"etc": "/etc/smcpy-attack", "root": "/root/smcpy-attack",
                   "site": f"{SITE}/smcpy-attack.pth"}
        lines = ["#!/bin/sh", '[ "$1" = reload ] || exit 0']
        for name, path in targets.items():
            lines.append(f'if (: > "{path}") 2>/dev/null; then r=written; else r=denied; fi;'
                         f' echo "ATTACK {name} $r"')
        # (a subshell: a failed redirection ends a POSIX shell)
        # opening for append changes nothing; being allowed to is the hole
        lines.append(f'if (: >> "{HELPER_CODE}") 2>/dev/null; then r=written; else r=denied; fi;'
                     ' echo "ATTACK helper $r"')
        lines.append(f'if chmod 600 "{top}/rootfile" 2>/dev/null; then r=written;'
                     ' else r=denied; fi; echo "ATTACK chmod $r"')
        script = top / "attack.sh"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755)
        yield top
    finally:
        for path in ("/etc/smcpy-attack", "/root/smcpy-attack", f"{SITE}/smcpy-attack.pth"):
            Path(path).unlink(missing_ok=True)
        shutil.rmtree(top, ignore_errors=True)


def attacks(log: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[2] for line in log.splitlines()
            if line.startswith("ATTACK ")}


@pytest.mark.parametrize("mode", ["p-nobody", "dedicated", "uid0-landlock", "unit"])
def test_the_controllers_confinement_holds(smcrouted, dedicated_user, bait, mode):
    config = "phyint r-s enable\n"
    args = ["-e", str(bait / "attack.sh")]
    prefix: list[str] = []
    owner = None
    if mode == "p-nobody":
        args += ["-p", "nobody"]
    elif mode == "dedicated":
        args += ["--default-user", dedicated_user]
    elif mode == "uid0-landlock":
        args += ["--default-user", f"{dedicated_user}-absent"]
    else:
        entry = pwd.getpwnam(dedicated_user)
        owner = entry.pw_uid
        prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                  "--clear-groups", f"--inh-caps={UNIT_CAPS}", f"--ambient-caps={UNIT_CAPS}",
                  f"--bounding-set=-all,{UNIT_CAPS}"]
    daemon = smcrouted(config, args, prefix=prefix, owner=owner)
    assert wait_for(lambda: len(attacks(daemon.log())) == len(ATTACKS), 10.0), daemon.log()
    assert attacks(daemon.log()) == dict.fromkeys(ATTACKS, "denied"), daemon.log()
    assert (bait / "rootfile").stat().st_mode & 0o777 == 0o400
    # an include of root's secret: refused, and not echoed
    daemon.conf.write_text(f"phyint r-s enable\ninclude {bait}/secret.conf\n")
    res = daemon.ctl("reload")
    log = daemon.log()
    assert res.returncode != 0 and f"{bait}/secret.conf" in res.stderr + res.stdout, (res, log)
    assert "do not echo me" not in log
    assert f"{bait}/secret.conf" in log and (
        "only root may read it" in log or "Permission denied" in log), log
    # the controller is who the mode says
    uid = int(Path(f"/proc/{daemon.pid}/status").read_text().split("Uid:")[1].split()[0])
    want = {"p-nobody": pwd.getpwnam("nobody").pw_uid, "uid0-landlock": 0}.get(
        mode, pwd.getpwnam(dedicated_user).pw_uid)
    assert uid == want
    if mode == "uid0-landlock":
        assert "confined (landlock ABI" in log and "seccomp)" in log, log
    if mode == "p-nobody":
        assert "a dedicated user such as smcroute is safer" in log
    assert os.path.exists(daemon.sock)


def test_a_reload_still_reads_the_configuration_when_confined(smcrouted, dedicated_user):
    daemon = smcrouted("phyint r-s enable\n", ["--default-user", f"{dedicated_user}-absent"])
    daemon.conf.write_text("phyint r-s enable\nphyint r-a enable\n")
    res = daemon.ctl("reload")
    assert res.returncode == 0, (res, daemon.log())
    assert wait_for(lambda: "r-a" in daemon.ctl("show", "interfaces").stdout, 5.0)
    res = daemon.ctl("kill")
    assert res.returncode == 0
    assert daemon.wait_exit(5.0) == 0
    assert not daemon.pidfile.exists() and not daemon.sock.exists()  # its own directory


def test_smcroutes_own_test_suite_mode_a_user_namespace(tmp_path):
    """SMCRoute's test suite runs smcrouted as root without -p in a user
    namespace (unshare -r) of an unprivileged user: no user to become, and
    SO_RCVBUFFORCE refused. It starts, confined, and stops cleanly."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    from .conftest import SMCROUTED

    work = Path(tempfile.mkdtemp(prefix="smcpy-userns-"))
    try:
        work.chmod(0o777)  # nobody's own directory, as the suite's /tmp/$NM is
        (work / "smcroute.conf").write_text("phyint lo enable\n")
        (work / "smcroute.conf").chmod(0o644)
        nobody = pwd.getpwnam("nobody")
        argv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                "--clear-groups", "unshare", "--user", "--map-root-user", "--net",
                str(SMCROUTED), "-n", "-f", str(work / "smcroute.conf"), "-P",
                str(work / "pid"), "-u", str(work / "sock"), "-l", "info", "-D", "2"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log
        assert "Ready, waiting for client request or kernel event." in log, log
        assert "confined (landlock ABI" in log, log
        assert not (work / "pid").exists() and not (work / "sock").exists(), log
    finally:
        shutil.rmtree(work, ignore_errors=True)
