"""The -e action script: its own session, a timeout that takes what it
started along, a minimal environment."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from smcroute.unprivileged.script import DEFAULT_PATH, ActionScript, script_env

from .fakes import FakeLog


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours is dead too; gone between the two looks: dead as well
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def write_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "action.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


async def run_script(script: Path, timeout: float, action: str = "reload",
                     wait: float = 0.0, **kw: str) -> ActionScript:
    runner = ActionScript(str(script), FakeLog(), timeout=timeout)  # type: ignore[arg-type]
    runner.run(action, **kw)
    await runner.queue.join()
    await asyncio.sleep(wait)
    return runner


def pids_in(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()]


def test_a_timed_out_script_takes_its_children_along(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = write_script(tmp_path, f"sleep 300 &\necho $! >> {pids}\n"
                                    f"sleep 45 &\necho $! $$ >> {pids}\nwait\n")
    runner = asyncio.run(run_script(script, timeout=0.5))
    started = pids_in(pids)
    assert len(started) == 3
    assert wait_gone(started) == []
    assert any("timed out after 0.5 s, killed" in line for _, line in runner.log.lines)


def test_what_a_script_leaves_behind_goes_at_its_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = write_script(tmp_path, f"sleep 300 &\necho $! >> {pids}\nexit 0\n")

    async def main() -> list[int]:
        runner = await run_script(script, timeout=0.6)
        (child,) = pids_in(pids)
        assert alive(child)  # the script is done; its background job has time left
        await asyncio.sleep(1.0)  # past the timeout, in the daemon's loop
        runner.close()
        return [child]

    assert wait_gone(asyncio.run(main())) == []


def test_closing_kills_runs_under_way(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = write_script(tmp_path, f"echo $$ >> {pids}\nsleep 300\n")

    log = FakeLog()

    async def main() -> list[int]:
        runner = ActionScript(str(script), log, timeout=60)  # type: ignore[arg-type]
        runner.run("reload")
        for _ in range(400):  # (bounded: 20 s on a loaded machine)
            if pids.exists() and pids.read_text():
                break
            await asyncio.sleep(0.05)
        runner.close()
        assert pids.exists(), f"the script did not start: {log.lines}"
        return pids_in(pids)

    assert wait_gone(asyncio.run(main())) == []


def test_a_script_runs_in_a_session_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ids"
    script = write_script(tmp_path, f"ps -o pid=,pgid=,sid= -p $$ > {out}\n")
    asyncio.run(run_script(script, timeout=5))
    pid, pgid, sid = out.read_text().split()
    assert pid == pgid == sid
    assert int(sid) != os.getsid(0)


def test_the_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "env"
    for name, value in {"LD_LIBRARY_PATH": "/evil", "PYTHONPATH": "/evil", "LANG": "C.UTF-8",
                        "NOTIFY_SOCKET": "/run/systemd/notify", "SECRET": "x",
                        "PATH": "/usr/bin:/bin", "source": "1.2.3.4"}.items():
        monkeypatch.setenv(name, value)
    script = write_script(tmp_path, f"env > {out}\n")
    asyncio.run(run_script(script, timeout=5, action="install", source="10.0.0.1",
                           group="225.1.2.3"))
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    env.pop("PWD", None)  # what the shell itself sets
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "source": "10.0.0.1",
                   "group": "225.1.2.3"}


def test_script_env_rules() -> None:
    assert script_env({}, None, None) == {"PATH": DEFAULT_PATH}
    assert script_env({"PATH": "/x", "LC_ALL": "C", "HOME": "/root", "source": "1"}, None,
                      None) == {"PATH": "/x", "LC_ALL": "C"}
    assert script_env({}, "::1", "ff05::1") == {"PATH": DEFAULT_PATH, "source": "::1",
                                                  "group": "ff05::1"}
