"""The asyncio controller: wires signals, kernel upcalls, timers (and later
the control socket and netlink) to the engine, and the engine's decisions to
the helper. It holds no privilege at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections import ChainMap, deque
from collections.abc import Coroutine
from typing import Any

from smcroute.ipc.control import ControlRequest, reply
from smcroute.ipc.helper import (
    AddMfc,
    Allow,
    Mrdisc,
    Request,
    SetTemplates,
    SgCount,
    Template,
    Upcall,
)
from smcroute.policy.control import Access, Peer
from smcroute.policy.limits import MAX_TEMPLATES
from smcroute.unprivileged import engine, groups, learn, show
from smcroute.unprivileged.boot import EXIT_HELPER_LOST, Booted, report_helper_lost
from smcroute.unprivileged.channel import HelperLost
from smcroute.unprivileged.channel_async import HelperChannel
from smcroute.unprivileged.commands import IPC, CommandError, Rules, edit
from smcroute.unprivileged.ctlserver import ControlServer
from smcroute.unprivileged.engine import Route
from smcroute.unprivileged.flows import Decision
from smcroute.unprivileged.interfaces import read_interfaces
from smcroute.unprivileged.log import Logger, batched
from smcroute.unprivileged.model import Config, Mfc, MfcKey, Mgroup, Mroute, Vif, addr, sg
from smcroute.unprivileged.mrdisc import MrdiscState
from smcroute.unprivileged.netwatch import LinkWatch
from smcroute.unprivileged.notify import notify
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.pidfile import PidFile
from smcroute.unprivileged.script import ActionScript, usable
from smcroute.unprivileged.state import load_plan, log_diagnostic

EDITS = ("add", "remove", "join", "leave")
READY = "Ready, waiting for client request or kernel event."
RELOADING = "Reloading configuration, please wait ..."
UPCALL_BATCH = 4096
UPCALL_QUEUE = 65_536  # beyond this, upcalls are dropped (the kernel asks again)


class Controller:
    def __init__(self, opts: Options, log: Logger, helper: subprocess.Popen[bytes],
                 booted: Booted, pidfile: PidFile | None,
                 control: tuple[socket.socket, Access] | None = None) -> None:
        self.opts = opts
        self.control_socket = control
        self.kill_requested = False
        self.log = log
        self.helper = helper
        self.booted = booted
        self.state = booted.state
        self.pidfile = pidfile
        self.exit_status = 0
        self.stopping = asyncio.Event()
        self.kernel_lock = asyncio.Lock()  # one change of kernel state at a time
        self.tasks: set[asyncio.Task[Any]] = set()
        self.upcalls: deque[Upcall] = deque(maxlen=UPCALL_QUEUE)
        self.upcall_task: asyncio.Task[None] | None = None
        self.fast_notices: list[Upcall] = []  # flows the helper installed, to book
        self.script: ActionScript | None = None
        self.mrdisc = MrdiscState(opts.mrdisc_interval, log)
        self.notes: set[str] = set()  # diagnostics of the last plan made for a netlink event
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
        if self.opts.script:
            if usable(self.opts.script):
                self.script = ActionScript(self.opts.script, self.log)
            else:
                self.log.err(f"{self.opts.script} is not executable.")
        if self.state.target is not None:  # logged already, at start-up
            self.notes = {str(d) for d in self.state.target.diagnostics}
        async with self.kernel_lock:
            await self.sync_fast_path()
        self.spawn(self.expiry_loop())
        self.spawn(self.mrdisc_loop())
        self.spawn(LinkWatch(self.interfaces_changed, self.log.err).run())
        server = None
        if self.control_socket:
            sock, access = self.control_socket
            server = ControlServer(sock, access, self.control, self.refused, self.after_reply)
            await server.start()
        self.ready()
        if self.booted.applied and self.script:
            self.script.run("reload")
        for sig in early_signals or ():
            if sig == signal.SIGHUP:
                self.request_reload()
            else:
                self.stopping.set()
        if self.opts.exit_delay:
            loop.call_later(self.opts.exit_delay, self.exit_delay_expired)
        await self.stopping.wait()
        notify("STOPPING=1", "STATUS=Exiting.")
        if server:
            server.close()
            self.remove_socket_file()
        for task in list(self.tasks):
            task.cancel()
        if self.script:
            self.script.close()
        self.state.memberships.close()
        self.mrdisc.close()
        if not self.channel.lost:
            await self.teardown()
        self.channel.close()
        self.reap_helper()
        if self.pidfile and (why := self.pidfile.remove()):
            self.log.notice(why)
        self.log.notice("Exiting.")
        return self.exit_status

    def remove_socket_file(self) -> None:
        path = self.opts.sock_path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # the dropped user may not write the directory
            self.log.notice(f"Cannot remove IPC socket {path}: {exc.strerror}")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.tasks.discard)
        return task

    def request_reload(self) -> None:
        self.spawn(self.reload())

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

    async def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config; the kernel ends up holding exactly it (plus
        the learned flows it still covers), or nothing changes. Returns
        whether it was applied, and the errors that stopped it."""
        self.log.notice(RELOADING)
        notify("RELOADING=1", f"STATUS={RELOADING}")
        async with self.kernel_lock:
            loaded = load_plan(self.opts, self.log, self.vifs, initial=False)
            target = loaded.target
            try:
                if target is not None:
                    await self.mrdisc_retire(target)
                    await self.apply(self.state.changes(target))
                    self.state.adopt(target, asyncio.get_running_loop().time())
                    self.state.directives = loaded.config.directives
                    self.notes = {str(d) for d in target.diagnostics}
                    await self.mrdisc_update()
                    await self.sync_fast_path()
            except HelperLost:
                return False, ["the mrouter helper is gone"]
        if target is not None and self.script:
            self.script.run("reload")
        self.ready()
        return target is not None, loaded.errors

    async def teardown(self) -> None:
        """Remove every route and VIF we installed, then let the helper go."""
        try:
            await self.apply(self.state.teardown(), "shutdown")
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

    async def interfaces_changed(self) -> None:
        """Links or addresses changed: re-plan the rules we hold against the
        interfaces there are now (pending lines activate, lines whose
        interface went away wait for it again)."""
        async with self.kernel_lock:
            if self.state.target is None:
                return  # no configuration applied yet
            target = engine.plan(Config(self.state.directives), read_interfaces(), self.vifs,
                                 default_enable=not self.opts.no_vifs)
            for d in target.diagnostics:  # only what this change brought
                if str(d) not in self.notes:
                    log_diagnostic(self.log, d)
            self.notes = {str(d) for d in target.diagnostics}
            if target.errors:
                return
            try:
                await self.mrdisc_retire(target)
                await self.apply(self.state.changes(target), "netlink")
            except HelperLost:
                return
            self.state.adopt(target, asyncio.get_running_loop().time())
            await self.mrdisc_update()
            await self.sync_fast_path()

    # -- kernel -------------------------------------------------------------

    async def apply(self, changes: engine.Changes, cause: str = "config") -> dict[MfcKey, str]:
        """Send the changes as one batch; record what the kernel accepted.
        Returns the MFC entries it refused, with the reason."""
        todo = self.state.requests(changes, self.channel.next_id)
        if not todo:
            return {}
        if (changes.add_vifs or changes.del_vifs) and self.state.flows.fast.wire:
            await self.set_fast([], ())  # no fast install with a VIF slot in flux
        replies = await self.channel.call([req for req, _ in todo])
        return self.state.record_all(todo, replies, cause)

    # -- mrdisc -------------------------------------------------------------

    async def mrdisc_update(self) -> None:
        """After a plan is adopted: mrdisc follows its phyint lines."""
        target = self.state.target
        if target is None:
            return
        await self.mrdisc_send(self.mrdisc.update(target.mrdisc, target.vifs, read_interfaces(),
                                                  self.channel.next_id))

    async def mrdisc_retire(self, target: engine.Plan) -> None:
        """Before target is applied: terminations while the VIFs still exist."""
        await self.mrdisc_send(self.mrdisc.retire(target.mrdisc, target.vifs, read_interfaces(),
                                                  self.channel.next_id))

    async def mrdisc_send(self, reqs: list[Mrdisc]) -> None:
        if not reqs:
            return
        try:
            replies = await self.channel.call(reqs)
        except HelperLost:
            return
        self.mrdisc.check(reqs, replies)
        if self.state.audit:
            for req, answer in zip(reqs, replies, strict=True):
                result = "ok" if answer.get("ok") else f"errno {answer.get('errno')}"
                kind = "termination" if req.terminate else "advertisement"
                self.log.info("audit", op="mrdisc", what=f"{kind} on VIF {req.vif}",
                              cause="mrdisc", result=result)

    async def mrdisc_loop(self) -> None:
        await self.mrdisc_update()
        while True:
            await asyncio.sleep(self.opts.mrdisc_interval)
            await self.mrdisc_send(self.mrdisc.announce(self.channel.next_id))

    # -- (*,G): upcalls, expiry, flush ---------------------------------------

    def on_upcalls(self, upcalls: list[Upcall]) -> None:
        """Kernel upcalls: installed right here when nothing else is going on
        (the kernel holds the flow's first packets until then), else queued.
        Flows the helper's fast path installed are booked likewise."""
        if any(u.kind == "learned" for u in upcalls):
            self.fast_notices += [u for u in upcalls if u.kind == "learned"]
            upcalls = [u for u in upcalls if u.kind != "learned"]
            if not self.kernel_lock.locked():
                self.book_fast()
            elif self.upcall_task is None or self.upcall_task.done():
                self.upcall_task = self.spawn(self.handle_upcalls())
            if not upcalls:
                return
        if not self.upcalls and not self.kernel_lock.locked() and self.channel.can_send_now() \
                and all(u.kind != "solicit" for u in upcalls):
            now = asyncio.get_running_loop().time()
            decisions, reqs = self.decide_upcalls(upcalls, now)
            if not reqs or self.channel.send_now(
                    reqs, lambda replies: self.upcalls_done(decisions, reqs, replies, now)):
                return
            for d in decisions:  # not sent after all: the queue below decides again
                self.state.flows.abandoned(d)
        self.upcalls.extend(upcalls)
        if self.upcall_task is None or self.upcall_task.done():
            self.upcall_task = self.spawn(self.handle_upcalls())

    def decide_upcalls(self, batch: list[Upcall], now: float) -> tuple[list[Decision],
                                                                         list[Request]]:
        """What to install for these upcalls (in flight until upcalls_done)."""
        flows = self.state.flows
        decisions = flows.decide(batch, now, self.state.vif_name,
                                 ChainMap(self.mfc, flows.inflight))
        ch = self.channel
        reqs: list[Request] = [AddMfc(ch.next_id(), d.mfc.key.family, d.mfc.key.source,
                                      d.mfc.key.group, d.mfc.iif, d.mfc.oifs) for d in decisions]
        return decisions, reqs

    def upcalls_done(self, decisions: list[Decision], reqs: list[Request],
                     replies: list[dict[str, Any]], now: float) -> None:
        """The helper's answers to decide_upcalls' requests."""
        flows = self.state.flows
        for d, req, answer in zip(decisions, reqs, replies, strict=True):
            self.state.record(req, d.mfc, answer, "upcall")
            if not answer.get("ok"):
                flows.abandoned(d)
                continue
            flows.installed(d, now)
            if d.rule is None:
                continue
            if d.moved_from is not None:
                word = "WRONGVIF" if d.mfc.key.family == 4 else "WRONGMIF"
                self.log.notice(f"Moved {sg(d.mfc.key)} inbound to {d.flow.iif} after {word}")
            if self.script:
                self.script.run("install", addr(d.mfc.key.source), addr(d.mfc.key.group))
        self.top_up_fast()

    async def handle_upcalls(self) -> None:
        """Install a learned route or a stop filter per new flow, in batches."""
        loop = asyncio.get_running_loop()
        while self.upcalls or self.fast_notices:
            if self.fast_notices:
                async with self.kernel_lock:
                    self.book_fast()
            batch = [self.upcalls.popleft()
                     for _ in range(min(UPCALL_BATCH, len(self.upcalls)))]
            solicits = [u for u in batch if u.kind == "solicit"]
            if solicits:
                batch = [u for u in batch if u.kind != "solicit"]
                await self.mrdisc_send([r for u in solicits
                                        for r in self.mrdisc.announce(self.channel.next_id, u.vif)])
            async with self.kernel_lock:
                now = loop.time()
                decisions, reqs = self.decide_upcalls(batch, now)
                if not reqs:
                    continue
                try:
                    replies = await self.channel.call(reqs)
                except HelperLost:
                    return
                self.upcalls_done(decisions, reqs, replies, now)

    # -- the helper's (*,G) fast path (policy/fastpath.py) ---------------------

    async def sync_fast_path(self) -> None:
        """After a plan is adopted (kernel_lock held): the helper gets the
        templates, if they changed, and room to install flows with them."""
        flows = self.state.flows
        routes, wire = learn.fast_templates(flows.templates.routes, flows.vifs_by_name,
                                            MAX_TEMPLATES)
        if wire != flows.fast.wire or routes != flows.fast.routes:  # (a rule moved lines)
            await self.set_fast(routes, wire)

    async def set_fast(self, routes: list[Route], wire: tuple[Template, ...]) -> None:
        flows = self.state.flows
        generation = flows.fast.generation + 1
        try:
            await self.channel.call([SetTemplates(self.channel.next_id(), generation, wire)])
        except HelperLost:
            return
        flows.fast_reset(generation, routes, wire)
        self.top_up_fast()

    def top_up_fast(self) -> None:
        books = self.state.flows.fast
        limits = self.state.flows.top_up(asyncio.get_running_loop().time())
        if limits is not None:
            self.spawn(self.send_quietly([Allow(self.channel.next_id(), books.generation,
                                                limits)]))

    async def send_quietly(self, reqs: list[Request]) -> None:
        """Requests whose answer changes nothing here (a lost helper is
        handled by on_helper_lost)."""
        with contextlib.suppress(HelperLost):
            await self.channel.call(reqs)

    def book_fast(self) -> None:
        """Book the flows the fast path installed (kernel_lock free or ours)."""
        notices, self.fast_notices = self.fast_notices, []
        flows = self.state.flows
        now = asyncio.get_running_loop().time()
        stale: list[Mfc] = []
        for u in notices:
            iif = self.state.vif_name(u.family, u.vif)
            d = flows.fast_learned(u, iif)
            if d is None:  # installed for templates since replaced
                key = MfcKey(u.family, u.source, u.group)
                if key not in self.mfc:
                    stale.append(Mfc(key, u.vif, (), iif or f"VIF {u.vif}", (), None))
                continue
            m = d.mfc
            req = AddMfc(0, m.key.family, m.key.source, m.key.group, m.iif, m.oifs)
            self.state.record(req, m, {"ok": True}, "upcall (helper fast path)")
            flows.installed(d, now)
            if self.script:
                self.script.run("install", addr(m.key.source), addr(m.key.group))
        if stale:
            self.spawn(self.remove_stale(stale))
        self.top_up_fast()

    async def remove_stale(self, entries: list[Mfc]) -> None:
        """Remove what the fast path installed by templates since replaced:
        the flow's next packet asks again, and the rules of now decide."""
        async with self.kernel_lock:
            gone = tuple(m for m in entries if m.key not in self.mfc)
            with contextlib.suppress(HelperLost):
                await self.apply(engine.Changes(del_mfc=gone), "fast path, rules since changed")

    def expiry_period(self) -> float:
        """Sample often enough that an idle flow goes within ~10% of -c."""
        c = self.opts.cache_timeout
        return max(1.0, c / 10) if c > 0 else 5.0

    async def expiry_loop(self) -> None:
        period = self.expiry_period()
        while True:
            await asyncio.sleep(period)
            if self.opts.cache_timeout > 0:
                self.log.debug("Cache timeout, checking for unused (*,G) routes")
            try:
                await self.expire(float(max(self.opts.cache_timeout, 0)))
            except HelperLost:
                return

    async def expire(self, max_idle: float) -> int:
        """Remove flows idle for max_idle seconds (and expired budget stop
        filters); 0 checks budget stop filters only. Returns how many went."""
        async with self.kernel_lock:
            flows = self.state.flows
            keys = list(flows.flows)
            if not keys:
                return 0
            ch = self.channel
            replies = await ch.call([SgCount(ch.next_id(), k.family, k.source, k.group)
                                     for k in keys])
            counts = {k: r["packets"] - r["wrong_if"]
                      for k, r in zip(keys, replies, strict=True) if r.get("ok")}
            gone = flows.expired(counts, asyncio.get_running_loop().time(), max_idle)
            await self.remove_flows(gone)
            return len(gone)

    async def flush(self) -> int:
        """Remove every learned route and stop filter now (smcroutectl flush)."""
        async with self.kernel_lock:
            keys = list(self.state.flows.flows)
            await self.remove_flows(keys, "flush")
            return len(keys)

    async def remove_flows(self, keys: list[MfcKey], cause: str = "expiry") -> None:
        entries = tuple(self.mfc[k] for k in keys if k in self.mfc)
        if entries:
            for m in entries:
                self.log.debug(f"Removing (*,G) flow {sg(m.key)} from {m.iif_name}")
            await self.apply(engine.Changes(del_mfc=entries), cause)
        self.state.flows.forget(keys)


    # -- control socket ------------------------------------------------------

    def audit(self, peer: Peer, command: str, args: tuple[str, ...], result: str) -> None:
        self.log.notice("control request", peer_uid=peer.uid, peer_gid=peer.gid,
                        peer_pid=peer.pid, command=command, args=" ".join(args) or "-",
                        result=result)

    def refused(self, peer: Peer, req: ControlRequest | None, reason: str) -> None:
        self.audit(peer, req.cmd if req else "connect", req.args if req else (),
                   f"refused: {reason}")

    def after_reply(self) -> None:
        if self.kill_requested:
            self.stopping.set()

    async def control(self, peer: Peer, reqs: list[ControlRequest]) -> list[dict[str, Any]]:
        """Replies to a batch of requests, in order; consecutive route edits
        are applied together (one plan, one helper batch)."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(reqs):
            j = i
            while j < len(reqs) and reqs[j].cmd in EDITS:
                j += 1
            if j > i:
                out += await self.edit(peer, reqs[i:j])
                i = j
                continue
            out.append(await self.control_one(peer, reqs[i]))
            i += 1
        return out

    async def control_one(self, peer: Peer, req: ControlRequest) -> dict[str, Any]:
        if req.cmd == "show":
            return reply(True, "\n".join(await self.show(req)))
        if req.cmd == "reload":
            ok, errors = await self.reload()
            text = "\n".join(errors) if errors else ("" if ok else "reload failed")
        elif req.cmd == "flush":
            ok, text = True, ""
            await self.flush()
        else:  # kill
            ok, text = True, ""
            self.kill_requested = True
        self.audit(peer, req.cmd, req.args, "ok" if ok else text.replace("\n", "; "))
        return reply(ok, text)

    async def edit(self, peer: Peer, reqs: list[ControlRequest]) -> list[dict[str, Any]]:
        """smcroutectl add/remove/join/leave: edit the rules, then one plan
        for all of them."""
        results: list[Mroute | Mgroup | str] = []
        async with self.kernel_lock:
            rules = Rules(self.state.directives)
            interfaces = read_interfaces()
            for req in reqs:
                try:
                    results.append(edit(rules, req, interfaces))
                except CommandError as exc:
                    results.append(str(exc))
            directives = rules.result()
            target = engine.plan(Config(directives), interfaces, self.vifs,
                                 default_enable=not self.opts.no_vifs)
            for d in target.diagnostics:
                if d.where == IPC:
                    log_diagnostic(self.log, d)
            try:
                await self.mrdisc_retire(target)
                failed = await self.apply(self.state.changes(target),
                                          f"smcroutectl uid={peer.uid} pid={peer.pid}")
            except HelperLost:
                failed = {}
            join_errors = self.state.adopt(target, asyncio.get_running_loop().time())
            self.state.directives = directives
            await self.mrdisc_update()
            await self.sync_fast_path()
        out = []
        with batched():
            for req, result in zip(reqs, results, strict=True):
                if isinstance(result, Mgroup):
                    text = "\n".join(e for m, e in join_errors if groups.same(m.rule, result))
                else:
                    text = (result if isinstance(result, str)
                            else self.kernel_refusal(result, failed))
                self.audit(peer, req.cmd, req.args, text or "ok")
                out.append(reply(not text, text))
        return out

    @staticmethod
    def kernel_refusal(rule: Mroute, failed: dict[MfcKey, str]) -> str:
        if not failed or rule.source is None or not rule.is_ssm:
            return ""
        key = MfcKey(rule.family, rule.source.packed, rule.group.packed)
        if key in failed:
            return f"failed adding multicast route ({rule.source}, {rule.group}): {failed[key]}"
        return ""

    async def show(self, req: ControlRequest) -> list[str]:
        what = req.args[0][:1] if req.args else "r"
        if what == "g":
            target = self.state.target
            return show.groups(target.groups if target else [],
                               self.state.memberships.memberships(), req.detail, req.json)
        if what == "i":
            return show.interfaces(read_interfaces().values(), self.vifs.values(), req.json)
        if what == "p":
            return show.pending(self.state.pending, req.json)
        target = self.state.target
        view = show.RouteView(target.templates if target else [], target.ssm if target else [],
                              list(self.mfc.values()),
                              {(v.family, v.vif): v.name for v in self.vifs.values()})
        if req.json:
            return show.routes_json(view)
        counters = None
        if req.detail:
            counters = await self.counters([*self.mfc, *(
                MfcKey(r.rule.family, r.rule.source.packed, r.rule.group.packed)
                for r in view.ssm if r.rule.source is not None)])
        return show.routes(view, read_interfaces(), req.detail, counters)

    async def counters(self, keys: list[MfcKey]) -> show.Counters:
        ch = self.channel
        replies = await ch.call([SgCount(ch.next_id(), k.family, k.source, k.group)
                                 for k in keys])
        table = {k: (r["packets"], r["bytes"]) for k, r in zip(keys, replies, strict=True)
                 if r.get("ok")}
        return lambda key: table.get(key, (0, 0))
