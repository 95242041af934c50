"""The asyncio executor of the daemon core (core.py): it feeds the core its
events (signals, helper replies and kernel upcalls, netlink, the clock,
the control socket) and performs the effects the core returns, in order.
It decides nothing and holds no privilege at all."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Callable
from typing import Any

from smcroute.ipc.control import ControlRequest
from smcroute.policy.control import Access, Peer
from smcroute.unprivileged import effects as fx
from smcroute.unprivileged.boot import EXIT_HELPER_LOST, Booted, report_helper_lost
from smcroute.unprivileged.channel import Answered, Event, Upcalls
from smcroute.unprivileged.channel_async import HelperChannel
from smcroute.unprivileged.config import read_config
from smcroute.unprivileged.core import EDITS, READY
from smcroute.unprivileged.ctlserver import ControlServer
from smcroute.unprivileged.interfaces import read_interfaces
from smcroute.unprivileged.log import Logger, batched
from smcroute.unprivileged.memory import return_memory
from smcroute.unprivileged.netwatch import LinkWatch
from smcroute.unprivileged.notify import notify
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.pidfile import PidFile
from smcroute.unprivileged.script import ActionScript

TEARDOWN = 3.0  # seconds the helper has to remove our routes at exit


class Controller:
    def __init__(self, opts: Options, log: Logger, helper: subprocess.Popen[bytes],
                 booted: Booted, pidfile: PidFile | None,
                 control: tuple[socket.socket, Access] | None = None) -> None:
        self.opts, self.log, self.helper, self.booted = opts, log, helper, booted
        self.core, self.pidfile, self.control_socket = booted.core, pidfile, control
        self.exit_status = 0
        self.kill_requested = False
        self.stopping = asyncio.Event()
        self.script: ActionScript | None = None
        self.answers: dict[int, Callable[[list[dict[str, Any]]], object]] = {}
        self._tokens = itertools.count(1)
        self._queue: deque[fx.Effect] = deque()
        self._performing = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self, early_signals: list[int] | None = None) -> int:
        """Serve until SIGTERM/SIGINT, kill (or the helper is lost); early_signals
        are those that arrived during start-up, handled now in order."""
        loop = asyncio.get_running_loop()
        self.channel = HelperChannel(self.booted.channel, self.on_helper, self.on_helper_lost)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.perform(self.core.hangup()))
        if self.opts.script and self.core.settings.script:
            self.script = ActionScript(self.opts.script, self.log)
        elif self.opts.script:
            self.log.err(f"{self.opts.script} is not executable.")
        for coro in (self.ticker(), LinkWatch(self.links_changed, self.log.err).run()):
            task = loop.create_task(coro)
            self.tasks.add(task)  # the loop keeps only weak references to tasks
        server = None
        if self.control_socket:
            server = ControlServer(*self.control_socket, self.control,
                                   lambda *why: self.perform(self.core.refused(*why,
                                                                               loop.time())),
                                   self.after_reply)
            await server.start()
        self.ready()
        self.perform(self.booted.later)
        for event in self.booted.channel.backlog:  # upcalls that came during start-up
            self.on_helper(event)
        for sig in early_signals or ():
            if sig != signal.SIGHUP:
                self.stopping.set()
            self.perform(self.core.hangup() if sig == signal.SIGHUP else [])
        if self.opts.exit_delay:
            loop.call_later(self.opts.exit_delay, self.exit_delay_expired)
        await self.stopping.wait()
        notify("STOPPING=1", "STATUS=Exiting.")
        if server:
            server.close()
            with contextlib.suppress(FileNotFoundError, PermissionError):  # (-p USER may not)
                os.unlink(self.opts.sock_path)
        for task in self.tasks:
            task.cancel()
        if self.script:
            self.script.close()
        self.booted.pool.close()
        if not self.channel.lost:
            self.perform(self.core.shutdown())
            for _ in range(int(TEARDOWN / 0.01)):  # bounded: the helper may hang
                if not self.core.batches or self.channel.lost:
                    break
                await asyncio.sleep(0.01)
        self.channel.close()
        try:
            self.helper.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.helper.kill()
            self.helper.wait()
        if self.pidfile and (why := self.pidfile.remove()):
            self.log.notice(why)
        self.log.notice("Exiting.")
        return self.exit_status

    def ready(self) -> None:
        if self.pidfile:
            try:
                self.pidfile.write()
            except OSError as exc:
                self.log.warning(f"Failed create/chown PID file: {exc.strerror}")
        self.log.notice(READY)
        notify("READY=1", f"STATUS={READY}", f"MAINPID={os.getpid()}")

    def exit_delay_expired(self) -> None:
        self.log.notice("Exit delay timer expired.")
        self.stopping.set()

    # -- events in ----------------------------------------------------------------

    def on_helper(self, event: Event) -> None:
        if isinstance(event, Answered):
            self.perform(self.core.answered(event.batch, event.replies, self.now()))
        elif isinstance(event, Upcalls):
            self.perform(self.core.upcalls(event.upcalls, self.now()))

    def on_helper_lost(self, reason: str) -> None:
        report_helper_lost(self.log, self.helper, reason)
        self.exit_status = EXIT_HELPER_LOST
        self.stopping.set()

    async def links_changed(self) -> None:
        self.perform(self.core.interfaces_changed(read_interfaces(), self.now()))

    async def ticker(self) -> None:
        while True:
            deadline = self.core.deadline()
            wait = 1.0 if deadline is None else deadline - self.now()
            await asyncio.sleep(min(max(wait, 0.01), 1.0))
            self.perform(self.core.tick(self.now()))

    def control(self, peer: Peer, reqs: list[ControlRequest],
                done: Callable[[list[dict[str, Any]]], None]) -> None:
        """Answer a batch of requests, in order (done gets the replies);
        consecutive edits go to the core together (one transition, one
        helper batch)."""
        out: list[dict[str, Any]] = []

        def step(i: int) -> None:
            if i == len(reqs):
                done(out)
                return
            j = i + 1
            while reqs[i].cmd in EDITS and j < len(reqs) and reqs[j].cmd in EDITS:
                j += 1
            token = next(self._tokens)
            self.answers[token] = lambda replies: (out.extend(replies), step(j))
            group = reqs[i:j]
            fresh = read_interfaces() if self.core.wants_interfaces(group) else None
            self.perform(self.core.control(token, peer, group, fresh, self.now()))

        step(0)

    def after_reply(self) -> None:
        if self.kill_requested:
            self.stopping.set()

    # -- effects out --------------------------------------------------------------

    def perform(self, effects: list[fx.Effect]) -> None:
        """Carry out effects in order (also those that what they cause
        returns: queued behind, never nested)."""
        self._queue += effects
        if self._performing:
            return
        self._performing = True
        try:
            with batched():
                while self._queue:
                    self._do(self._queue.popleft())
        finally:
            self._performing = False

    def _do(self, e: fx.Effect) -> None:
        if isinstance(e, fx.Send):
            self.channel.send(e.batch, e.requests)
        elif isinstance(e, fx.Log):
            getattr(self.log, e.level)(e.text, **e.fields)
        elif isinstance(e, fx.Answer):
            if (answered := self.answers.pop(e.token, None)) is not None:
                answered(list(e.replies))
        elif isinstance(e, fx.Memberships):
            failures = self.booted.pool.change(e.leave, e.join)
            self._queue += self.core.memberships_done(e.token, failures)
        elif isinstance(e, fx.Script):
            if self.script:
                self.script.run(e.action, e.source, e.group)
        elif isinstance(e, fx.LoadConfig):
            config = read_config(self.opts.conf_path, root_files=os.geteuid() != 0)
            self._queue += self.core.load(config, read_interfaces(), self.now(), e.token)
        elif isinstance(e, fx.Ready):
            self.ready()
        elif isinstance(e, fx.Notify):
            notify(*e.lines)
        elif isinstance(e, fx.ReturnMemory):
            return_memory()
        elif isinstance(e, fx.Stop):
            self.kill_requested = True
