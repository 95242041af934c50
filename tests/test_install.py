"""A plain and an editable install both give the smcroute.* packages.

A throw-away venv from Debian's python3; the build backend comes from the
package index like any pip install, the dependencies are left out (the
modules imported here use none of them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {
    "privileged": "smcroute.privileged.kernel",
    "unprivileged": "smcroute.unprivileged.texts",
    "ipc": "smcroute.ipc.helper",
    "policy": "smcroute.policy.limits",
}
BASE_PYTHON = Path("/usr/bin/python3")


def run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True, timeout=300).stdout


@pytest.mark.parametrize("editable", [False, True], ids=["plain", "editable"])
def test_install(tmp_path: Path, editable: bool) -> None:
    if not BASE_PYTHON.exists():
        pytest.skip("needs Debian's /usr/bin/python3")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".venv", ".pytest_cache"))
    venv = tmp_path / "venv"
    run(BASE_PYTHON, "-m", "venv", venv)
    pip = [venv / "bin/pip", "install", "-q", "--no-deps"]
    run(*pip, *(["-e", src] if editable else [src]))
    code = ("import importlib, json, sys; print(json.dumps({m: importlib.import_module(m)"
            ".__file__ for m in sys.argv[1:]}))")
    out = run(venv / "bin/python", "-c", code, *PACKAGES.values())
    files = __import__("json").loads(out)
    for folder, module in PACKAGES.items():
        path = Path(files[module])
        if editable:
            assert path.parent == src / folder
        else:
            assert "site-packages" in path.parts and path.parent.name == folder
    for script in ("smcrouted", "smcroutectl"):
        assert (venv / "bin" / script).exists()


def test_a_p_user_who_cannot_read_the_code_gets_one_line(tmp_path: Path) -> None:
    """Installed where the -p user cannot read it (a venv under a 0700
    directory): one line naming the path and the fix, exit 77, no
    traceback, no socket or PID file left behind."""
    if not BASE_PYTHON.exists() or os.geteuid() != 0:
        pytest.skip("needs root and Debian's /usr/bin/python3")
    import site

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".venv", ".pytest_cache"))
    venv = private / "venv"
    run(BASE_PYTHON, "-m", "venv", venv)
    run(venv / "bin/pip", "install", "-q", "--no-deps", src)
    # the dependencies: those of the venv running the tests
    (next((venv / "lib").glob("python3*")) / "site-packages" / "deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    work = tmp_path / "run"
    work.mkdir(mode=0o755)
    (work / "smcroute.conf").write_text("phyint lo enable\n")
    proc = subprocess.run([str(venv / "bin/smcrouted"), "-n", "-p", "nobody", "-f",
                           str(work / "smcroute.conf"), "-P", str(work / "pid"), "-u",
                           str(work / "sock")], capture_output=True, text=True, timeout=60,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 77, out
    assert "Traceback" not in out, out
    named = out.split("User nobody cannot read ", 1)[1].split(",", 1)[0]
    assert str(private).startswith(named), out  # (pytest's own 0700 directory, or ours)
    assert "install smcroute-py where that user can read it" in out
    assert len(out.strip().splitlines()) == 1, out
    assert not (work / "pid").exists() and not (work / "sock").exists()
