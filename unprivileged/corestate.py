"""The daemon core's state and the plumbing its handlers share, with the one
transition every change of kernel state goes through (core.py has the
whole picture). No I/O."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smcroute.ipc.control import ControlRequest
from smcroute.ipc.helper import Allow, Counts, Mrdisc, SetTemplates
from smcroute.policy.control import Peer
from smcroute.policy.limits import MAX_TEMPLATES
from smcroute.unprivileged.budget import Throttle
from smcroute.unprivileged.commands import Lines
from smcroute.unprivileged.effects import Effect, Log, Memberships, Send
from smcroute.unprivileged.engine import MemberKey, Plan
from smcroute.unprivileged.flows import FlowTable, Limits, fast_templates
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.ledger import Ledger, Op
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.model import (
    NOTE,
    Diagnostic,
    Interface,
    Mfc,
    MfcKey,
    Mgroup,
    Mroute,
    Pending,
)
from smcroute.unprivileged.mrdisc import Schedule

EDITS = ("add", "remove", "join", "leave")
READY = "Ready, waiting for client request or kernel event."
RELOADING = "Reloading configuration, please wait ..."


@dataclass(frozen=True)
class Settings:
    conf_path: str = "/etc/smcroute.conf"
    default_enable: bool = True  # a bare "phyint IF" enables (not with -N)
    limits: Limits = field(default_factory=Limits)
    cache_timeout: int = 60  # -c
    mrdisc_interval: int = 20  # -m
    level: int = PRIORITY["notice"]  # what is logged decides what is formatted
    script: bool = False  # an -e script runs
    kernel_star_g: bool = False  # --kernel-star-g

    @property
    def expiry_period(self) -> float:
        """Sample often enough that an idle flow goes within ~10% of -c."""
        c = self.cache_timeout
        return max(1.0, c / 10) if c > 0 else 5.0


@dataclass(eq=False)
class Job:
    """Work that answers when its parts (helper batches, memberships) are done."""

    finish: Callable[[Job], None]
    waiting: int = 0
    refused: dict[MfcKey, str] = field(default_factory=dict)  # add_mfc the kernel refused
    join_errors: list[tuple[Membership, str]] = field(default_factory=list)
    counts: dict[MfcKey, Counts] = field(default_factory=dict)  # sg_count answers


@dataclass(eq=False)
class Batch:
    ops: list[Op]
    cause: str
    job: Job | None


def rule_text(rule: Mroute | Mgroup) -> str:
    """The rule as its configuration line says it (file:line is rule.where)."""
    kind = "mroute" if isinstance(rule, Mroute) else "mgroup"
    text = f"{kind} from {rule.iif}"
    if rule.source is not None:
        text += f" source {rule.source}"
    text += f" group {rule.group}"
    if isinstance(rule, Mroute) and rule.oifs:
        text += " to " + " ".join(rule.oifs)
    return text


def pending_text(p: Pending) -> str:
    """SMCRoute's words, exactly: smcrouted -F prints them as SMCRoute's
    verified output does (SPEC 1.3)."""
    kind = "mroute" if isinstance(p.rule, Mroute) else "mgroup"
    return f"{kind} from {p.rule.iif} group {p.rule.group} pending: interface not available"


def pending_note(p: Pending) -> str:
    """The daemon's notice: where the line is, all of it, and SMCRoute's
    words for waiting (a grep for them still finds it)."""
    where = f"{p.rule.where}: " if p.rule.where.line else ""
    return f"{where}{rule_text(p.rule)} pending: interface not available"


class CoreState:
    """The state and the plumbing every handler shares; the transition."""

    def __init__(self, settings: Settings | None = None,
                 interfaces: Mapping[str, Interface] | None = None) -> None:
        self.settings = s = settings or Settings()
        self.level = s.level
        self.interfaces: dict[str, Interface] = dict(interfaces or {})
        self.lines = Lines()
        self.plan = Plan(self.interfaces, (), s.default_enable, s.kernel_star_g)
        self.ledger = Ledger()
        self.flows = FlowTable(s.limits, verbose=self.level >= PRIORITY["info"],
                               group_stops=s.kernel_star_g)
        self.mrdisc = Schedule(s.mrdisc_interval)
        self.joined: dict[MemberKey, Membership] = {}
        self.batches: dict[int, Batch] = {}
        self.jobs: dict[int, Job] = {}  # by Memberships token
        self.configured = False  # a configuration has been applied
        self._said: set[str] = set()  # the plan's diagnostics, logged already
        self._mrdisc_joins: dict[MemberKey, Membership] = {}
        self._ids = itertools.count(1)
        self._next_expiry: float | None = None
        self._counting = False  # an expiry sample is in flight
        self._reloads: dict[int, tuple[Peer, ControlRequest]] = {}  # smcroutectl reload
        self.refusals = Throttle()  # control-socket refusals, by peer uid
        self._out: list[Effect] = []
        self.now = 0.0  # the time of the event being handled

    # -- plumbing -----------------------------------------------------------------

    def _done(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    def _log(self, level: str, text: str, **fields: Any) -> None:
        if PRIORITY[level] <= self.level:
            self._out.append(Log(level, text, fields))

    def _said_flows(self) -> None:
        for level, text in self.flows.said.lines:
            self._log(level, text)
        self.flows.said.lines.clear()

    def _diagnostic(self, d: Diagnostic) -> None:
        if d.kind == NOTE:
            self._log("info", str(d))
        elif d.where is None and "does not exist" in d.message:
            self._log("notice", str(d))
        else:
            self._log("warning", str(d))

    def _send(self, ops: list[Op], cause: str, job: Job | None = None) -> None:
        if not ops:
            return
        batch = next(self._ids)
        self.batches[batch] = Batch(ops, cause, job)
        if job is not None:
            job.waiting += 1
        self._out.append(Send(batch, tuple(op.req for op in ops)))

    def _job(self, finish: Callable[[Job], None]) -> Job:
        return Job(finish)

    def _settle_job(self, job: Job | None) -> None:
        if job is not None:
            job.waiting -= 1
            if job.waiting <= 0:
                job.finish(job)

    def deadline(self) -> float | None:
        """When tick() has something to do next."""
        times = [t for t in (self.mrdisc.next, self._next_expiry, self.refusals.next)
                 if t is not None]
        return min(times) if times else None

    # -- the one transition -------------------------------------------------------

    def _transition(self, keys: Iterable[MfcKey] | None, templates: bool = False,
                    vifs: bool = True) -> list[Op]:
        """The ordered batch that takes the kernel to the plan and the flows:
        mrdisc terminations (while their VIFs exist), the fast path emptied
        if VIFs change, VIFs added, MFC entries deleted then set (keys: those
        that may have changed; None: all), VIFs deleted, mrdisc
        advertisements where it starts, then the fast path's new templates
        (looked at if templates changed, VIFs did, or keys is None).
        vifs=False: the plan's VIFs (and so mrdisc) did not change."""
        plan, ledger, flows = self.plan, self.ledger, self.flows
        ops = [] if not vifs else [
            self._mrdisc_op(vif, True)
            for vif in self.mrdisc.retire(plan.mrdisc, plan.vifs, self.interfaces)]
        add_vifs, del_vifs = ledger.sync_vifs(plan.vifs.values()) if vifs else ([], [])
        if (add_vifs or del_vifs) and flows.fast.wire:
            ops += self._fast_ops((), ())
        ops += [ledger.add_vif(v) for v in add_vifs]
        full = keys is None
        if keys is None:  # in the plan's order: show lists the kernel table as installed
            keys = dict.fromkeys([*plan.mfc, *flows.flows, *ledger.mfc])
        dels: list[MfcKey] = []
        sets: list[Mfc] = []
        for key in keys:
            flow = None
            want = plan.mfc.get(key)
            if want is None and (flow := flows.get(key)) is not None:
                want = flow.entry
            have = ledger.mfc.get(key)
            if want is None:
                if have is not None:
                    dels.append(key)
            elif have is None or have.kernel != want.kernel:
                sets.append(want)
            elif have is not want and not ledger.busy(key):
                ledger.mfc[key] = want  # the same entry, other names (a rename)
        if len(sets) > 1 and not full:  # new configured entries in configuration order
            rank = {k: i for i, k in enumerate(plan.mfc)}
            sets.sort(key=lambda m: rank.get(m.key, len(rank)))
        ops += [ledger.del_mfc(k) for k in dels]
        ops += [ledger.add_mfc(m) for m in sets]
        ops += [ledger.del_vif(v) for v in del_vifs]
        if vifs:
            ops += [self._mrdisc_op(vif, False)
                    for vif in self.mrdisc.update(plan.mrdisc, plan.vifs, self.now)]
        if templates or full or add_vifs or del_vifs:
            routes, wire = fast_templates(plan, MAX_TEMPLATES)
            if wire != flows.fast.wire or routes != flows.fast.routes:
                ops += self._fast_ops(routes, wire)
                ops += self._top_up(self.now)
        return ops

    def _mrdisc_op(self, vif: int, terminate: bool) -> Op:
        req = Mrdisc(self.ledger.next_id(), vif, self.settings.mrdisc_interval, terminate)
        return self.ledger.other(req)

    def _fast_ops(self, routes: tuple[Any, ...], wire: tuple[Any, ...]) -> list[Op]:
        flows = self.flows
        generation = flows.fast.generation + 1
        ops = [self.ledger.other(SetTemplates(self.ledger.next_id(), generation, wire))]
        flows.fast_reset(generation, routes, wire)
        return ops

    def _top_up(self, now: float) -> list[Op]:
        limits = self.flows.top_up(now)
        if limits is None:
            return []
        return [self.ledger.other(Allow(self.ledger.next_id(), self.flows.fast.generation,
                                        limits))]

    def _members(self, keys: Iterable[MemberKey] | None, job: Job | None = None) -> None:
        """Join and leave so that the memberships are the plan's and mrdisc's."""
        wanted = self.plan.memberships
        mrdisc = self.mrdisc.joins(self.interfaces)
        if keys is None:
            keys = {*wanted, *self.joined, *mrdisc}
        else:
            keys = {*keys, *mrdisc, *self._mrdisc_joins}
        self._mrdisc_joins = mrdisc
        leave, join = [], []
        for key in keys:
            want = wanted.get(key) or mrdisc.get(key)
            have = self.joined.get(key)
            if want is None:
                if have is not None:
                    leave.append(self.joined.pop(key))
            elif have is None:
                join.append(want)
                self.joined[key] = want
            else:
                self.joined[key] = want  # the newest rule, for show
        if leave or join:
            token = next(self._ids)
            if job is not None:
                job.waiting += 1
                self.jobs[token] = job
            self._out.append(Memberships(token, tuple(leave), tuple(join)))

    def _pending_notes(self, before: list[Pending], after: list[Pending]) -> None:
        old = set(before)
        waiting = {self.lines.identity(p.rule) for p in after}
        for p in after:
            if p not in old:
                self._log("notice", pending_note(p))
        for p in before:
            # activated: still configured (the line, wherever it is now) and
            # no longer waiting; a line that went away is not "activated"
            now = self.lines.of(p.rule)
            if now and self.lines.identity(p.rule) not in waiting:
                rule = now[0]
                assert isinstance(rule, Mroute | Mgroup)
                where = f"{rule.where}: " if rule.where.line else ""
                self._log("notice", f"{where}Activated pending {rule_text(rule)}")

    def _adopt(self, plan: Plan, cause: str, job: Job | None) -> None:
        """A new plan of the whole configuration (reload, interfaces)."""
        before = self.plan.pending
        self.plan = plan
        plan.take_changes()
        self._said = {str(d) for d in plan.diagnostics}
        self.flows.rematch(plan)
        self._pending_notes(before, plan.pending)
        self._send(self._transition(None), cause, job)
        self._members(None, job)
        self.configured = True
