"""Start-up before the event loop: greet the helper, apply the initial config.

The initial routes go in with blocking calls, so that traffic flows before
asyncio is even imported; the controller's loop starts right after.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smcroute.ipc.helper import Hello, Modules
from smcroute.unprivileged.channel import BlockingChannel, HelperLost
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.state import RouteState, limits, load_plan

if TYPE_CHECKING:  # structlog is imported only once the routes are in
    from smcroute.unprivileged.log import Logger

EXIT_HELPER_LOST = 1


@dataclass
class Booted:
    channel: BlockingChannel
    state: RouteState
    applied: bool  # the initial configuration is in the kernel


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is not responding"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def report_helper_lost(log: Logger, helper: subprocess.Popen[bytes], reason: str,
                       routes: bool = True) -> None:
    try:
        returncode = helper.wait(timeout=1)
    except subprocess.TimeoutExpired:
        returncode = None
    consequence = "the kernel has dropped our routes, exiting" if routes else "exiting"
    log.err(f"mrouter helper (pid {helper.pid}) {describe_exit(returncode)}: {reason};"
            f" {consequence}")


def boot(opts: Options, log: Logger, level: int, helper: subprocess.Popen[bytes],
         sock: socket.socket) -> Booted | None:
    """Hello, then the initial config; None (logged) if the helper is lost."""
    channel = BlockingChannel(sock)
    state = RouteState(log, level, limits(opts))
    # Parse and plan while the helper is still starting (it runs on another core).
    loaded = load_plan(opts, log, state.vifs, initial=True)
    target = loaded.target
    try:
        (hello,) = channel.call([Hello(channel.next_id())])
        log.debug("mrouter helper ready", helper_pid=hello.get("pid"),
                  table=hello.get("table"), max_mfc=hello.get("max_mfc"))
        if level >= PRIORITY["debug"]:
            (mods,) = channel.call([Modules(channel.next_id())])
            log.debug("mrouter helper modules", modules=",".join(mods.get("modules", [])))
        if target is not None:
            todo = state.requests(state.changes(target), channel.next_id)
            state.record_all(todo, channel.call([req for req, _ in todo]))
            state.adopt(target, time.monotonic())
            state.directives = loaded.config.directives
    except HelperLost as exc:
        report_helper_lost(log, helper, str(exc), routes=bool(state.mfc))
        return None
    return Booted(channel, state, target is not None)
