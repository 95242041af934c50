"""Start-up before the event loop: greet the helper, apply the initial config.

The daemon core (core.py) gets the configuration; its effects are
performed here with blocking calls, so that traffic flows before asyncio
is even imported. What needs the event loop (scripts, the service
manager, control replies) is kept for the controller, which takes over
the same core right after.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smcroute.ipc.helper import Hello, HelloReply, Modules, ModulesReply
from smcroute.unprivileged.channel import BlockingChannel, HelperLost
from smcroute.unprivileged.config import read_config
from smcroute.unprivileged.core import Core, Settings
from smcroute.unprivileged.effects import Effect, Log, Memberships, Send
from smcroute.unprivileged.flows import Limits
from smcroute.unprivileged.interfaces import read_interfaces
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.membership import Memberships as Pool
from smcroute.unprivileged.options import Options

if TYPE_CHECKING:  # structlog is imported only once the routes are in
    from smcroute.unprivileged.log import Logger

EXIT_HELPER_LOST = 1


@dataclass
class Booted:
    channel: BlockingChannel
    core: Core
    pool: Pool  # the group membership sockets
    later: list[Effect]  # for the controller to perform
    config_dirs: list[str]  # where the configuration and its includes were read from


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


def settings(opts: Options, level: int) -> Settings:
    script = opts.script is not None and os.path.isfile(opts.script) \
        and os.access(opts.script, os.X_OK)
    lifetime = float(opts.cache_timeout) if opts.cache_timeout > 0 else 60.0
    return Settings(opts.conf_path, not opts.no_vifs,
                    Limits(opts.max_learned, opts.max_learned_per_rule, opts.upcall_rate,
                           lifetime),
                    opts.cache_timeout, opts.mrdisc_interval, level, script,
                    opts.kernel_star_g)


def perform(core: Core, effects: list[Effect], channel: BlockingChannel, pool: Pool,
            log: Logger) -> list[Effect]:
    """Carry out effects with blocking calls; returns those for the controller."""
    queue = deque(effects)
    later: list[Effect] = []
    while queue:
        e = queue.popleft()
        if isinstance(e, Send):
            replies = channel.call(e.requests)
            queue += core.answered(e.batch, replies, time.monotonic())
        elif isinstance(e, Memberships):
            queue += core.memberships_done(e.token, pool.change(e.leave, e.join))
        elif isinstance(e, Log):
            getattr(log, e.level)(e.text, **e.fields)
        else:
            later.append(e)
    return later


def boot(opts: Options, log: Logger, level: int, helper: subprocess.Popen[bytes],
         sock: socket.socket) -> Booted | None:
    """Hello, then the initial config; None (logged) if the helper is lost."""
    channel = BlockingChannel(sock)
    core = Core(settings(opts, level))
    pool = Pool()
    hello_id = core.ledger.next_id()
    # Read and plan while the helper is still starting (it runs on another core).
    config = read_config(opts.conf_path, root_files=os.geteuid() != 0)
    effects = core.start(config, read_interfaces(), time.monotonic())
    try:
        (hello,) = channel.call([Hello(hello_id)])
        if isinstance(hello, HelloReply):
            log.debug("mrouter helper ready", helper_pid=hello.pid, table=hello.table,
                      max_mfc=hello.max_mfc, sandbox=hello.sandbox)
            if "none" in hello.sandbox:
                log.warning(f"The mrouter helper runs without part of its sandbox:"
                            f" {hello.sandbox}")
        if level >= PRIORITY["debug"]:
            (mods,) = channel.call([Modules(core.ledger.next_id())])
            if isinstance(mods, ModulesReply):
                log.debug("mrouter helper modules", modules=",".join(mods.modules))
        later = perform(core, effects, channel, pool, log)
    except HelperLost as exc:
        # (routes only if the helper answered for some: the ledger is optimistic)
        routes = bool(core.ledger.mfc) and len(core.batches) < sum(
            isinstance(e, Send) for e in effects)
        report_helper_lost(log, helper, str(exc), routes=routes)
        pool.close()
        return None
    dirs = {os.path.dirname(os.path.realpath(f))
            for f in (opts.conf_path, *(path for path, _ in config.includes))}
    return Booted(channel, core, pool, later, sorted(dirs))
