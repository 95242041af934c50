"""The asyncio controller: wires signals (and later the control socket,
upcalls and netlink) to the engine, and the engine's decisions to the
helper. It holds no privilege at all."""

from __future__ import annotations

import asyncio
import signal
import subprocess

from smcroute.ipc.helper import Upcall
from smcroute.unprivileged import engine
from smcroute.unprivileged.boot import EXIT_HELPER_LOST, Booted, report_helper_lost
from smcroute.unprivileged.channel import HelperLost
from smcroute.unprivileged.channel_async import HelperChannel
from smcroute.unprivileged.log import Logger
from smcroute.unprivileged.model import Mfc, MfcKey, Vif
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.pidfile import PidFile
from smcroute.unprivileged.state import addr, load_plan


class Controller:
    def __init__(self, opts: Options, log: Logger, helper: subprocess.Popen[bytes],
                 booted: Booted, pidfile: PidFile | None) -> None:
        self.opts = opts
        self.log = log
        self.helper = helper
        self.booted = booted
        self.state = booted.state
        self.pidfile = pidfile
        self.exit_status = 0
        self.stopping = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.channel: HelperChannel

    @property
    def vifs(self) -> dict[tuple[int, int], Vif]:
        return self.state.vifs

    @property
    def mfc(self) -> dict[MfcKey, Mfc]:
        return self.state.mfc

    # -- life cycle ---------------------------------------------------------

    async def run(self, early_signals: list[int] | None = None) -> int:
        """Serve until SIGTERM/SIGINT (or the helper is lost); early_signals
        are those that arrived during start-up, handled now in order."""
        loop = asyncio.get_running_loop()
        self.channel = HelperChannel(self.booted.channel, self.on_upcalls, self.on_helper_lost)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.ready()
        for sig in early_signals or ():
            if sig == signal.SIGHUP:
                self.request_reload()
            else:
                self.stopping.set()
        if self.opts.exit_delay:
            loop.call_later(self.opts.exit_delay, self.exit_delay_expired)
        await self.stopping.wait()
        if not self.channel.lost:
            await self.teardown()
        self.channel.close()
        self.reap_helper()
        if self.pidfile and (why := self.pidfile.remove()):
            self.log.notice(why)
        self.log.notice("Exiting.")
        return self.exit_status

    def request_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self.tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.tasks.discard)

    def ready(self) -> None:
        if self.pidfile:
            try:
                self.pidfile.write()
            except OSError as exc:
                self.log.warning(f"Failed create/chown PID file: {exc.strerror}")
        self.log.notice("Ready, waiting for client request or kernel event.")

    def exit_delay_expired(self) -> None:
        self.log.notice("Exit delay timer expired.")
        self.stopping.set()

    async def reload(self) -> None:
        self.log.notice("Reloading configuration, please wait ...")
        async with self.reload_lock:
            target = load_plan(self.opts, self.log, self.vifs, initial=False)
            try:
                if target is not None:
                    await self.apply(self.state.changes(target))
                    self.state.adopt_names(target)
            except HelperLost:
                return
        self.ready()

    async def teardown(self) -> None:
        """Remove every route and VIF we installed, then let the helper go."""
        try:
            await self.apply(self.state.teardown())
        except HelperLost:
            pass

    def reap_helper(self) -> None:
        try:
            self.helper.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.helper.kill()
            self.helper.wait()

    def on_helper_lost(self, reason: str) -> None:
        report_helper_lost(self.log, self.helper, reason)
        self.exit_status = EXIT_HELPER_LOST
        self.stopping.set()

    # -- kernel -------------------------------------------------------------

    async def apply(self, changes: engine.Changes) -> None:
        """Send the changes as one batch; record what the kernel accepted."""
        todo = self.state.requests(changes, self.channel.next_id)
        if todo:
            self.state.record_all(todo, await self.channel.call([req for req, _ in todo]))

    def on_upcalls(self, upcalls: list[Upcall]) -> None:
        # (*,G) handling comes with the templates; until then, note and ignore.
        for u in upcalls:
            self.log.debug(f"{u.kind} upcall: multicast from {addr(u.source)} to"
                           f" group {addr(u.group)} on VIF {u.vif}")
