"""A plain and an editable install both give the smcroute.* packages.

A throw-away venv from Debian's python3; the build backend comes from the
package index like any pip install, the dependencies are left out (the
modules imported here use none of them).
"""

from __future__ import annotations

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
