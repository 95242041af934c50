"""The -e CMD action script: run unprivileged, never blocking the event loop.

SMCRoute calls it with "reload" after a configuration is applied and with
"install" (environment: source, group) after a (*,G) rule installs an (S,G).
Invocations queue (bounded) for a few workers; each run has a timeout;
failures are logged, never fatal. Each run is a session (and process
group) of its own, killed whole at its timeout and when the daemon stops,
so nothing it starts outlives either; its environment is a documented
minimal set (ENVIRONMENT in smcrouted(8)), not the daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from smcroute.unprivileged.budget import Throttle
from smcroute.unprivileged.log import Logger

WORKERS = 4
MAX_QUEUE = 10_000
TIMEOUT = 30.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCALE = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_COLLATE", "LC_NUMERIC",
          "LC_TIME", "LC_MONETARY", "TZ")


def script_env(environ: dict[str, str], source: str | None, group: str | None) -> dict[str, str]:
    """PATH (the daemon's, or a default), the locale variables the daemon
    has, and for install source and group: nothing else of the daemon's
    environment (no LD_*, PYTHON*, NOTIFY_SOCKET, credentials) gets through."""
    env = {"PATH": environ.get("PATH") or DEFAULT_PATH}
    env.update((k, environ[k]) for k in LOCALE if k in environ)
    if source is not None and group is not None:
        env.update(source=source, group=group)
    return env


class ActionScript:
    def __init__(self, path: str, log: Logger, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.log = log
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue(MAX_QUEUE)
        self.throttle = Throttle()
        self.running: set[int] = set()  # process groups of the runs under way
        self.workers = [asyncio.get_running_loop().create_task(self._work())
                        for _ in range(WORKERS)]

    def run(self, action: str, source: str | None = None, group: str | None = None) -> None:
        env = script_env(dict(os.environ), source, group)
        try:
            self.queue.put_nowait((action, env))
        except asyncio.QueueFull:
            loop = asyncio.get_running_loop()
            if n := self.throttle.hit("full", loop.time()):
                self.log.warning(f"Script {self.path}: {n} invocation(s) dropped, "
                                 f"more than {MAX_QUEUE} waiting")

    async def _work(self) -> None:
        while True:
            action, env = await self.queue.get()
            try:
                await self._run_one(action, env)
            finally:
                self.queue.task_done()

    async def _run_one(self, action: str, env: dict[str, str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.path, action, env=env, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, cwd="/")
        except OSError as exc:
            self.log.warning(f"Cannot start script {self.path}: {exc.strerror}")
            return
        pgid = proc.pid  # its session's and process group's id
        self.running.add(pgid)
        loop = asyncio.get_running_loop()
        # Whatever the run leaves in the background gets the rest of its
        # time, then goes with its group (and with the daemon).
        loop.call_later(self.timeout, self._expire, pgid)
        try:
            status = await asyncio.wait_for(proc.wait(), self.timeout)
        except TimeoutError:
            self._expire(pgid)
            await proc.wait()
            self.log.warning(f"Script {self.path} {action} timed out after {self.timeout:g} s,"
                             " killed")
            return
        if not group_alive(pgid):  # nothing left: forget it before its id is reused
            self.running.discard(pgid)
        if status != 0:
            self.log.warning(f"Script {self.path} {action} returned error: {status}")

    def _expire(self, pgid: int) -> None:
        if pgid in self.running:
            self.running.discard(pgid)
            kill_group(pgid)

    def close(self) -> None:
        for task in self.workers:
            task.cancel()
        for pgid in self.running:
            kill_group(pgid)
        self.running.clear()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int) -> None:
    """SIGKILL a run's whole process group: the script and what it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def usable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
