"""The asyncio controller: wires config, interfaces and signals to the engine,
and the engine's decisions to the helper. It holds no privilege at all."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import subprocess
from typing import Any

from smcroute.ipc.helper import AddMfc, AddVif, DelMfc, DelVif, Hello, Modules, Request, Upcall
from smcroute.unprivileged import engine
from smcroute.unprivileged.channel import HelperChannel, HelperLost
from smcroute.unprivileged.config import read_config
from smcroute.unprivileged.interfaces import read_interfaces
from smcroute.unprivileged.log import Logger
from smcroute.unprivileged.model import Diagnostic, Mfc, MfcKey, Pending, Vif
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.pidfile import PidFile

EXIT_HELPER_LOST = 1


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


def addr(family: int, packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def sg(key: MfcKey) -> str:
    return f"({addr(key.family, key.source)}, {addr(key.family, key.group)})"


def pending_text(p: Pending) -> str:
    r = p.rule
    return f"mroute from {r.iif} group {r.group} pending: interface not available"


class Controller:
    def __init__(self, opts: Options, log: Logger, helper: subprocess.Popen[bytes],
                 sock: Any, pidfile: PidFile | None) -> None:
        self.opts = opts
        self.log = log
        self.helper = helper
        self.sock = sock
        self.pidfile = pidfile
        self.vifs: dict[tuple[int, int], Vif] = {}  # (family, slot) -> VIF we installed
        self.mfc: dict[MfcKey, Mfc] = {}
        self.pending: list[Pending] = []
        self.exit_status = 0
        self.stopping = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.channel: HelperChannel

    # -- life cycle ---------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.channel = HelperChannel(self.sock, self.on_upcalls, self.on_helper_lost)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        try:
            await self.start()
            await self.stopping.wait()
        except HelperLost:
            await self.stopping.wait()  # on_helper_lost has logged why
        if not self.channel.lost:
            await self.teardown()
        self.channel.close()
        self.reap_helper()
        if self.pidfile and (why := self.pidfile.remove()):
            self.log.notice(why)
        self.log.notice("Exiting.")
        return self.exit_status

    async def start(self) -> None:
        (hello,) = await self.channel.call([Hello(self.channel.next_id())])
        self.log.debug("mrouter helper ready", helper_pid=hello.get("pid"),
                       table=hello.get("table"), max_mfc=hello.get("max_mfc"))
        (mods,) = await self.channel.call([Modules(self.channel.next_id())])
        self.log.debug("mrouter helper modules", modules=",".join(mods.get("modules", [])))
        await self.load(initial=True)
        if self.pidfile:
            try:
                self.pidfile.write()
            except OSError as exc:
                self.log.warning(f"Failed create/chown PID file: {exc.strerror}")
        self.log.notice("Ready, waiting for client request or kernel event.")
        if self.opts.exit_delay:
            asyncio.get_running_loop().call_later(self.opts.exit_delay, self.exit_delay_expired)

    def exit_delay_expired(self) -> None:
        self.log.notice("Exit delay timer expired.")
        self.stopping.set()

    async def reload(self) -> None:
        self.log.notice("Reloading configuration, please wait ...")
        try:
            await self.load(initial=False)
        except HelperLost:
            return
        if self.pidfile:
            try:
                self.pidfile.write()
            except OSError as exc:
                self.log.warning(f"Failed create/chown PID file: {exc.strerror}")
        self.log.notice("Ready, waiting for client request or kernel event.")

    async def teardown(self) -> None:
        """Remove every route and VIF we installed, then let the helper go."""
        changes = engine.Changes(del_mfc=tuple(self.mfc.values()),
                                 del_vifs=tuple(self.vifs.values()))
        try:
            await self.apply(changes)
        except HelperLost:
            pass

    def reap_helper(self) -> None:
        try:
            self.helper.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.helper.kill()
            self.helper.wait()

    def on_helper_lost(self, reason: str) -> None:
        try:
            returncode = self.helper.wait(timeout=1)
        except subprocess.TimeoutExpired:
            returncode = None
        self.log.err(f"mrouter helper (pid {self.helper.pid}) {describe_exit(returncode)}:"
                     f" {reason}; the kernel has dropped our routes, exiting")
        self.exit_status = EXIT_HELPER_LOST
        self.stopping.set()

    # -- configuration ------------------------------------------------------

    async def load(self, initial: bool) -> bool:
        """Read the config and make the kernel match it, all or nothing."""
        async with self.reload_lock:
            path = self.opts.conf_path
            config = read_config(path)
            for d in config.diagnostics:
                self.log_diagnostic(d)
            if config.errors:
                if initial and not config.directives and len(config.diagnostics) == 1:
                    self.log.notice("Continuing anyway, waiting for client to connect.")
                    return False
                self.log.warning(f"Parse error in {path}, configuration not applied"
                                 + ("" if initial else ", keeping the running one"))
                return False
            interfaces = await read_interfaces()
            target = engine.plan(config, interfaces, self.vifs,
                                 default_enable=not self.opts.no_vifs)
            for d in target.diagnostics:
                self.log_diagnostic(d)
            for p in target.pending:
                if p not in self.pending:
                    self.log.notice(pending_text(p))
            self.pending = target.pending
            await self.apply(engine.diff(self.vifs, self.mfc, target))
            self.adopt_names(target)
            return True

    def adopt_names(self, target: engine.Plan) -> None:
        """Unchanged kernel objects take the target's names (interface renames)."""
        for v in target.vifs.values():
            old = self.vifs.get((v.family, v.vif))
            if old is not None and old.ifindex == v.ifindex:
                self.vifs[(v.family, v.vif)] = v
        for key, m in target.mfc.items():
            if self.mfc.get(key) == m:
                self.mfc[key] = m

    def log_diagnostic(self, d: Diagnostic) -> None:
        if d.where is None and "does not exist" in d.message:
            self.log.notice(str(d))
        else:
            self.log.warning(str(d))

    # -- kernel -------------------------------------------------------------

    async def apply(self, changes: engine.Changes) -> None:
        """Send the changes as one batch; record what the kernel accepted."""
        ch = self.channel
        todo: list[tuple[Request, Vif | Mfc]] = []
        for v in changes.add_vifs:
            todo.append((AddVif(ch.next_id(), v.family, v.vif, v.ifindex, v.threshold), v))
        for m in changes.del_mfc:
            todo.append((DelMfc(ch.next_id(), m.key.family, m.key.source, m.key.group), m))
        for m in changes.set_mfc:
            todo.append((AddMfc(ch.next_id(), m.key.family, m.key.source, m.key.group,
                                m.iif, m.oifs), m))
        for v in changes.del_vifs:
            todo.append((DelVif(ch.next_id(), v.family, v.vif), v))
        if not todo:
            return
        replies = await ch.call([req for req, _ in todo])
        for (req, obj), reply in zip(todo, replies, strict=True):
            self.record(req, obj, reply)

    def record(self, req: Request, obj: Vif | Mfc, reply: dict[str, Any]) -> None:
        ok = bool(reply.get("ok"))
        error = reply.get("error", "")
        if isinstance(obj, Vif):
            kind = "VIF" if obj.family == 4 else "MIF"
            slot = (obj.family, obj.vif)
            if isinstance(req, AddVif):
                if ok:
                    self.vifs[slot] = obj
                    self.log.debug(f"Map iface {obj.name:<16} => {kind} {obj.vif:<2} ifindex"
                                   f" {obj.ifindex:2} TTL threshold {obj.threshold}")
                else:
                    self.log.warning(f"Failed creating {kind} {obj.vif} for {obj.name}: {error}")
            else:
                if self.vifs.get(slot) == obj:
                    del self.vifs[slot]  # gone either way: the helper forgets it too
                if ok:
                    self.log.debug(f"Removed {kind} {obj.vif} of {obj.name}")
            return
        fam = f"IPv{obj.key.family}"
        where = f"{obj.where}: " if obj.where else ""
        if isinstance(req, AddMfc):
            if ok:
                self.mfc[obj.key] = obj
                self.log.debug(f"Add {sg(obj.key)} from {obj.iif_name} to"
                               f" {' '.join(obj.oif_names) or '(none)'}")
            else:
                self.log.warning(f"{where}failed adding {fam} multicast route {sg(obj.key)}:"
                                 f" {error}")
        else:
            self.mfc.pop(obj.key, None)
            if ok:
                self.log.debug(f"Del {sg(obj.key)} from {obj.iif_name}")
            else:
                self.log.debug(f"failed removing multicast route {sg(obj.key)}: {error}")

    def on_upcalls(self, upcalls: list[Upcall]) -> None:
        # (*,G) handling comes with the templates; until then, note and ignore.
        for u in upcalls:
            self.log.debug(f"{u.kind} upcall: multicast from {addr(u.family, u.source)} to"
                           f" group {addr(u.family, u.group)} on VIF {u.vif}")
