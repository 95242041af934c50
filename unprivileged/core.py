"""The daemon core: all of smcrouted's state, and one handler per event.

No I/O, no clock, no asyncio (in the style of h11): events go in, effects
come out (effects.py), and an executor performs them and feeds back what
came of them (controller.py at run time, boot.py at start-up). The state:

* lines: the configuration with smcroutectl's edits (commands.Lines);
* plan: what they stand for on the interfaces there are (engine.Plan);
* ledger: what the kernel holds, with every helper request in flight;
* flows: learned routes and stop filters, budgets, the fast path's books;
* mrdisc: the advertisement schedule; joined: the group memberships;
* batches and jobs: helper batches in flight and the control requests
  waiting for them.

Every change of kernel state, whatever caused it (start-up, reload,
interfaces, smcroutectl, upcalls, expiry), goes through one transition
that compares the plan and the flows with the ledger and builds a single
ordered batch. Requests in flight are state, so nothing that happens
while they are (another edit, a reload, an upcall, a reply) can lose
track of what the kernel holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from smcroute.ipc.control import reply
from smcroute.ipc.helper import SgCount
from smcroute.unprivileged.commands import Lines
from smcroute.unprivileged.corestate import EDITS, READY, RELOADING, Job, Settings, pending_text
from smcroute.unprivileged.ctlrequests import Requests
from smcroute.unprivileged.effects import (
    Answer,
    Effect,
    LoadConfig,
    Notify,
    Ready,
    ReturnMemory,
    Script,
)
from smcroute.unprivileged.engine import Plan
from smcroute.unprivileged.kernelevents import KernelEvents
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.model import Config, Interface, MfcKey, sg

__all__ = ["EDITS", "READY", "RELOADING", "Core", "Settings", "pending_text"]


class Core(KernelEvents, Requests):
    """The daemon's state (corestate.CoreState) with every event handler:
    configuration and interfaces (here), the helper (kernelevents), the
    control socket (ctlrequests), time, shutdown."""

    # -- events: configuration ----------------------------------------------------

    def start(self, config: Config, interfaces: Mapping[str, Interface],
              now: float) -> list[Effect]:
        """The configuration at start-up: every good line is applied, every
        bad one is logged and skipped."""
        self.now = now
        self._load(config, interfaces, None, initial=True)
        self._next_expiry = now + self.settings.expiry_period
        return self._done()

    def hangup(self) -> list[Effect]:
        """SIGHUP: read the configuration again."""
        self._reload(None)
        return self._done()

    def _reload(self, token: int | None) -> None:
        self._log("notice", RELOADING)
        self._out += [Notify(("RELOADING=1", f"STATUS={RELOADING}")), LoadConfig(token)]

    def load(self, config: Config, interfaces: Mapping[str, Interface], now: float,
             token: int | None = None) -> list[Effect]:
        """The configuration read for a reload: all of it, or nothing."""
        self.now = now
        self._load(config, interfaces, token, initial=False)
        return self._done()

    def _load(self, config: Config, interfaces: Mapping[str, Interface], token: int | None,
              initial: bool) -> None:
        path = self.settings.conf_path
        plan = Plan(interfaces, self.ledger.vifs.values(), self.settings.default_enable,
                    self.settings.kernel_star_g)
        plan.fold(config.directives)
        diagnostics = [*config.diagnostics, *plan.diagnostics]
        for d in diagnostics:
            self._diagnostic(d)
        errors = [str(d) for d in diagnostics if d.error]
        unreadable = any(d.where is None and d.error for d in config.diagnostics)

        def answer(ok: bool, text: str = "") -> None:
            if token is None:
                return
            if token in self._reloads:
                peer, req = self._reloads.pop(token)
                self._audit(peer, req, "ok" if ok else text.replace("\n", "; "))
            self._out.append(Answer(token, (reply(ok, text),)))

        def finish(job: Job) -> None:
            if self.settings.script and not errors:
                self._out.append(Script("reload"))
            if not initial:
                self._out.append(Ready())
                answer(True)

        if errors and not initial:
            self._log("warning", f"Parse error in {path}, configuration not applied,"
                                 " keeping the running one")
            self._out.append(Ready())
            answer(False, "\n".join(errors))
            return
        if unreadable:
            self._log("notice", "Continuing anyway, waiting for client to connect.")
        elif errors:
            self._log("warning", f"Parse error in {path}")
        self.interfaces = dict(interfaces)
        self.lines = Lines(config.directives)
        job = self._job(finish)
        self._adopt(plan, "config", job)
        if job.waiting == 0:
            finish(job)

    def interfaces_changed(self, interfaces: Mapping[str, Interface], now: float
                           ) -> list[Effect]:
        """Links or addresses changed: the same lines on the interfaces there
        are now (pending lines activate, lines whose interface went away wait
        for it again)."""
        self.now = now
        self._interfaces(interfaces, always=True)
        return self._done()

    def _interfaces(self, interfaces: Mapping[str, Interface], always: bool = False) -> None:
        """always: plan again even if the table is the same (a VIF slot
        freed by the last change may be used now)."""
        if interfaces == self.interfaces and not always:
            return
        self.interfaces = dict(interfaces)
        if not self.configured:
            return
        plan = Plan(self.interfaces, self.ledger.vifs.values(), self.settings.default_enable,
                    self.settings.kernel_star_g)
        plan.fold(self.lines)
        for d in plan.diagnostics:  # only what this change brought
            if str(d) not in self._said:
                self._diagnostic(d)
        self._adopt(plan, "netlink", None)

    # -- events: time -------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Periodic work that is due: mrdisc advertisements, the expiry sample."""
        self.now = now
        self._said_refusals(now)
        self._send([self._mrdisc_op(v, False) for v in self.mrdisc.due(now)], "mrdisc")
        if self._next_expiry is not None and now >= self._next_expiry and not self._counting:
            self._next_expiry = now + self.settings.expiry_period
            if self.settings.cache_timeout > 0:
                self._log("debug", "Cache timeout, checking for unused (*,G) routes")
            self._expire(now, float(max(self.settings.cache_timeout, 0)))
        return self._done()

    def _count(self, keys: list[MfcKey], finish: Callable[[Job], None]) -> None:
        job = self._job(finish)
        ledger = self.ledger
        self._send([ledger.other(SgCount(ledger.next_id(), k.family, k.source, k.group))
                    for k in keys], "counters", job)
        if job.waiting == 0:
            finish(job)

    def _expire(self, started: float, max_idle: float) -> None:
        """Remove flows idle for max_idle seconds (and budget stop filters
        past their lifetime; max_idle 0: only those). Only the counters
        that can decide something are read (FlowTable.due)."""
        if not self.flows:
            return
        keys = self.flows.due(started, max_idle, self.settings.expiry_period)
        self._counting = True

        def finish(job: Job) -> None:
            self._counting = False
            counts = {k: c.packets - c.wrong_if for k, c in job.counts.items()}
            self._remove_flows(self.flows.expired(counts, started, max_idle, keys), "expiry")

        self._count(keys, finish)

    def _remove_flows(self, keys: list[MfcKey], cause: str, job: Job | None = None) -> None:
        gone = self.flows.remove(keys)
        if self.level >= PRIORITY["debug"]:
            for flow in gone:
                self._log("debug", f"Removing (*,G) flow {sg(flow.key)} from {flow.iif_name}")
        self._send(self._transition([f.key for f in gone], vifs=False), cause, job)
        if self.flows.shrunk():
            self.flows.compact()
            self.ledger.mfc = dict(self.ledger.mfc)
            self._out.append(ReturnMemory())

    def shutdown(self) -> list[Effect]:
        """Remove every route and VIF we installed (the sockets go with the executor)."""
        ledger = self.ledger
        ops = [ledger.del_mfc(k) for k in list(ledger.mfc)]
        ops += [ledger.del_vif(v) for v in list(ledger.vifs.values())]
        self._send(ops, "shutdown")
        return self._done()
