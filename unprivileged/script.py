"""The -e CMD action script: run unprivileged, never blocking the event loop.

SMCRoute calls it with "reload" after a configuration is applied and with
"install" (environment: source, group) after a (*,G) rule installs an (S,G).
Invocations queue (bounded) for a few workers; each run has a timeout;
failures are logged, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from smcroute.unprivileged.budget import Throttle
from smcroute.unprivileged.log import Logger

WORKERS = 4
MAX_QUEUE = 10_000
TIMEOUT = 30.0


class ActionScript:
    def __init__(self, path: str, log: Logger, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.log = log
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue(MAX_QUEUE)
        self.throttle = Throttle()
        self.workers = [asyncio.get_running_loop().create_task(self._work())
                        for _ in range(WORKERS)]

    def run(self, action: str, source: str | None = None, group: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("source", "group", "NOTIFY_SOCKET")}
        if source is not None and group is not None:
            env.update(source=source, group=group)
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
                self.path, action, env=env, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            self.log.warning(f"Cannot start script {self.path}: {exc.strerror}")
            return
        try:
            status = await asyncio.wait_for(proc.wait(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self.log.warning(f"Script {self.path} {action} timed out after {self.timeout:g} s,"
                             " killed")
            return
        if status != 0:
            self.log.warning(f"Script {self.path} {action} returned error: {status}")

    def close(self) -> None:
        for task in self.workers:
            task.cancel()


def usable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
