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

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smcroute.ipc.control import ControlRequest, reply
from smcroute.ipc.helper import (
    AddMfc,
    AddVif,
    Allow,
    Counts,
    DelMfc,
    DelVif,
    Mrdisc,
    Reply,
    SetTemplates,
    SgCount,
    Upcall,
)
from smcroute.policy.control import Peer
from smcroute.policy.limits import MAX_TEMPLATES
from smcroute.unprivileged import groups, show
from smcroute.unprivileged.commands import IPC, CommandError, Lines, edit
from smcroute.unprivileged.effects import (
    Answer,
    Effect,
    LoadConfig,
    Log,
    Memberships,
    Notify,
    Ready,
    Script,
    Send,
    Stop,
)
from smcroute.unprivileged.engine import MemberKey, Plan
from smcroute.unprivileged.flows import Decision, FlowTable, Limits, fast_templates
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.ledger import Ledger, Op
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.model import (
    NOTE,
    Config,
    Diagnostic,
    Interface,
    Mfc,
    MfcKey,
    Mgroup,
    Mroute,
    Pending,
    addr,
    sg,
)
from smcroute.unprivileged.mrdisc import QUIET, Schedule

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


def pending_text(p: Pending) -> str:
    kind = "mroute" if isinstance(p.rule, Mroute) else "mgroup"
    return f"{kind} from {p.rule.iif} group {p.rule.group} pending: interface not available"


def kernel_refusal(rule: Mroute, refused: Mapping[MfcKey, str]) -> str:
    if not refused or rule.source is None or not rule.is_ssm:
        return ""
    key = MfcKey(rule.family, rule.source.packed, rule.group.packed)
    if key in refused:
        return f"failed adding multicast route ({rule.source}, {rule.group}): {refused[key]}"
    return ""


class Core:
    def __init__(self, settings: Settings | None = None,
                 interfaces: Mapping[str, Interface] | None = None) -> None:
        self.settings = s = settings or Settings()
        self.level = s.level
        self.interfaces: dict[str, Interface] = dict(interfaces or {})
        self.lines = Lines()
        self.plan = Plan(self.interfaces, (), s.default_enable)
        self.ledger = Ledger()
        self.flows = FlowTable(s.limits, verbose=self.level >= PRIORITY["info"])
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
        times = [t for t in (self.mrdisc.next, self._next_expiry) if t is not None]
        return min(times) if times else None

    # -- the one transition -------------------------------------------------------

    def _transition(self, keys: Iterable[MfcKey] | None, templates: bool = False
                    ) -> list[Op]:
        """The ordered batch that takes the kernel to the plan and the flows:
        mrdisc terminations (while their VIFs exist), the fast path emptied
        if VIFs change, VIFs added, MFC entries deleted then set (keys: those
        that may have changed; None: all), VIFs deleted, mrdisc
        advertisements where it starts, then the fast path's new templates
        (looked at if templates changed, VIFs did, or keys is None)."""
        plan, ledger, flows = self.plan, self.ledger, self.flows
        ops = [self._mrdisc_op(vif, True)
               for vif in self.mrdisc.retire(plan.mrdisc, plan.vifs, self.interfaces)]
        add_vifs, del_vifs = ledger.sync_vifs(plan.vifs.values())
        if (add_vifs or del_vifs) and flows.fast.wire:
            ops += self._fast_ops((), ())
        ops += [ledger.add_vif(v) for v in add_vifs]
        full = keys is None
        if keys is None:
            keys = {*plan.mfc, *flows.flows, *ledger.mfc}
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
        ops += [ledger.del_mfc(k) for k in dels]
        ops += [ledger.add_mfc(m) for m in sets]
        ops += [ledger.del_vif(v) for v in del_vifs]
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
        new = set(after)
        for p in after:
            if p not in old:
                self._log("notice", pending_text(p))
        for p in before:
            if p not in new and p.rule in self.lines.of(p.rule):
                kind = "mroute" if isinstance(p.rule, Mroute) else "mgroup"
                self._log("notice", f"Activated pending {kind} from {p.rule.iif}"
                                    f" group {p.rule.group}")

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
        plan = Plan(interfaces, self.ledger.vifs.values(), self.settings.default_enable)
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
        plan = Plan(self.interfaces, self.ledger.vifs.values(), self.settings.default_enable)
        plan.fold(self.lines)
        for d in plan.diagnostics:  # only what this change brought
            if str(d) not in self._said:
                self._diagnostic(d)
        self._adopt(plan, "netlink", None)

    # -- events: the kernel -------------------------------------------------------

    def upcalls(self, upcalls: list[Upcall], now: float) -> list[Effect]:
        """Kernel upcalls (and flows the helper's fast path installed)."""
        self.now = now
        ops: list[Op] = []
        rest = []
        learned = []
        for u in upcalls:
            if u.kind == "solicit":
                ops += [self._mrdisc_op(v, False) for v in self.mrdisc.solicited(u.vif, now)]
            elif u.kind == "learned":
                learned.append(u)
            else:
                rest.append(u)
        names = self.ledger.vif_names()
        if learned:
            self._book_fast(learned, names, now)
        if rest:
            ledger = self.ledger
            for d in self.flows.decide(rest, now, self.plan, names, ledger.mfc):
                ops.append(ledger.add_mfc(d.flow.entry, d))
            self._said_flows()
        ops += self._top_up(now)
        self._send(ops, "upcall")
        return self._done()

    def _book_fast(self, learned: list[Upcall], names: Mapping[tuple[int, int], str],
                   now: float) -> None:
        """Book the flows the fast path installed; remove those it installed
        for templates since replaced (the flow's next packet asks again)."""
        stale: list[Op] = []
        ledger, flows = self.ledger, self.flows
        for u in learned:
            key = MfcKey(u.family, u.source, u.group)
            mine = key in ledger.mfc or ledger.busy(key)  # ours replaces the helper's
            flow = flows.fast_learned(u, names.get((u.family, u.vif)), self.plan.vifs, now,
                                      book=not mine)
            if flow is None:
                if not mine:
                    stale.append(ledger.del_mfc(key))
                continue
            if mine:
                continue
            ledger.mfc[key] = flow.entry
            if self.level >= PRIORITY["info"]:
                self._log("info", "audit", op="add_mfc", what=f"{sg(key)} from {flow.iif}",
                          cause="upcall (helper fast path)", result="ok")
            if self.settings.script:
                self._out.append(Script("install", addr(key.source), addr(key.group)))
        self._send(stale, "fast path, rules since changed")

    def answered(self, batch_id: int, replies: list[Reply], now: float) -> list[Effect]:
        """The helper's replies to one batch."""
        self.now = now
        batch = self.batches.pop(batch_id)
        job = batch.job
        ledger, flows = self.ledger, self.flows
        audit = self.level >= PRIORITY["info"]
        debug = self.level >= PRIORITY["debug"]
        refused: list[MfcKey] = []
        for op, answer in zip(batch.ops, replies, strict=True):
            ok = ledger.settle(op, answer)
            req = op.req
            if audit:
                self._audit_op(op, answer, ok, batch.cause)
            if isinstance(req, AddMfc):
                key = MfcKey(req.family, req.source, req.group)
                d = op.purpose
                if ok:
                    if debug:
                        m = op.after
                        assert isinstance(m, Mfc)
                        self._log("debug", f"Add {sg(key)} from {m.iif_name} to"
                                           f" {' '.join(m.oif_names) or '(none)'}")
                    if isinstance(d, Decision) and not d.flow.stop:
                        self._installed(d)
                    continue
                m = op.after
                assert isinstance(m, Mfc)
                where = f"{m.where}: " if m.where and not isinstance(d, Decision) else ""
                self._log("warning", f"{where}failed adding IPv{key.family} multicast route"
                                     f" {sg(key)}: {answer.error}")
                if job is not None:
                    job.refused[key] = answer.error
                if isinstance(d, Decision):
                    flows.failed(d)
                refused.append(key)
            elif isinstance(req, DelMfc):
                if debug:
                    key = MfcKey(req.family, req.source, req.group)
                    self._log("debug", f"Del {sg(key)}" if ok
                              else f"failed removing multicast route {sg(key)}: {answer.error}")
            elif isinstance(req, AddVif | DelVif):
                self._vif_done(op, answer, ok)
            elif isinstance(req, Mrdisc):
                if not ok and answer.errno not in QUIET:
                    kind = 0x32 if req.terminate else 0x30
                    self._log("warning", f"Failed sending IGMP control message 0x{kind:02x} on"
                                         f" VIF {req.vif}: {answer.error}")
            elif isinstance(req, SgCount) and job is not None and isinstance(answer, Counts):
                job.counts[MfcKey(req.family, req.source, req.group)] = answer
        if refused:
            self._refused(refused)
        self._settle_job(job)
        return self._done()

    def _refused(self, keys: list[MfcKey]) -> None:
        """A flow the kernel would not take goes (its budget comes back);
        what the kernel still holds for it is removed. A configured entry
        is tried again at the next plan of the whole configuration."""
        ledger, flows = self.ledger, self.flows
        cleanup = []
        for key in keys:
            flow = flows.get(key)
            if flow is None or ledger.busy(key):
                continue  # (a change in flight settles it)
            have = ledger.mfc.get(key)
            if have is None or have.kernel != flow.entry.kernel:
                flows.remove([key])
                if have is not None:
                    cleanup.append(key)
        if cleanup:
            self._send(self._transition(cleanup), "cleanup")

    def _installed(self, d: Decision) -> None:
        """A learned route the kernel took (from an upcall)."""
        key = d.flow.key
        if d.prior is not None:
            word = "WRONGVIF" if key.family == 4 else "WRONGMIF"
            self._log("notice", f"Moved {sg(key)} inbound to {d.flow.iif} after {word}")
        if self.settings.script:
            self._out.append(Script("install", addr(key.source), addr(key.group)))

    def _vif_done(self, op: Op, answer: Reply, ok: bool) -> None:
        v = op.after if isinstance(op.req, AddVif) else op.before
        if v is None or isinstance(v, Mfc):
            return
        kind = "VIF" if v.family == 4 else "MIF"
        if isinstance(op.req, AddVif):
            if ok:
                self._log("debug", f"Map iface {v.name:<16} => {kind} {v.vif:<2} ifindex"
                                   f" {v.ifindex:2} TTL threshold {v.threshold}")
            else:
                self._log("warning", f"Failed creating {kind} {v.vif} for {v.name}:"
                                     f" {answer.error}")
        elif ok:
            self._log("debug", f"Removed {kind} {v.vif} of {v.name}")

    def _audit_op(self, op: Op, answer: Reply, ok: bool, cause: str) -> None:
        """Every privileged operation: what, on whose behalf, the kernel's answer."""
        obj = op.after if op.after is not None else op.before
        if obj is None:
            if not isinstance(op.req, Mrdisc):
                return
            kind = "termination" if op.req.terminate else "advertisement"
            what = f"{kind} on VIF {op.req.vif}"
        elif isinstance(obj, Mfc):
            what = f"{sg(obj.key)} from {obj.iif_name}"
        else:
            what = f"{'VIF' if obj.family == 4 else 'MIF'} {obj.vif} {obj.name}"
        result = "ok" if ok else f"errno {answer.errno}: {answer.error}"
        self._log("info", "audit", op=op.req.op, what=what, cause=cause, result=result)

    def memberships_done(self, token: int, failures: list[tuple[Membership, str]]
                         ) -> list[Effect]:
        """The joins of a Memberships effect that failed."""
        for m, error in failures:
            if self.joined.get(m.key) is m:
                del self.joined[m.key]
            self._log("err", error)
        job = self.jobs.pop(token, None)
        if job is not None:
            job.join_errors += failures
            self._settle_job(job)
        return self._done()

    # -- events: time -------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Periodic work that is due: mrdisc advertisements, the expiry sample."""
        self.now = now
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
        past their lifetime; max_idle 0: only those)."""
        keys = list(self.flows)
        if not keys:
            return
        self._counting = True

        def finish(job: Job) -> None:
            self._counting = False
            counts = {k: c.packets - c.wrong_if for k, c in job.counts.items()}
            self._remove_flows(self.flows.expired(counts, started, max_idle), "expiry")

        self._count(keys, finish)

    def _remove_flows(self, keys: list[MfcKey], cause: str, job: Job | None = None) -> None:
        gone = self.flows.remove(keys)
        if self.level >= PRIORITY["debug"]:
            for flow in gone:
                self._log("debug", f"Removing (*,G) flow {sg(flow.key)} from {flow.iif}")
        self._send(self._transition([f.key for f in gone]), cause, job)

    # -- events: the control socket -----------------------------------------------

    def control(self, token: int, peer: Peer, reqs: list[ControlRequest],
                interfaces: Mapping[str, Interface], now: float) -> list[Effect]:
        """One control request, or a run of edits (applied together: one
        transition, one helper batch). The answer is an Answer effect."""
        self.now = now
        req = reqs[0]
        if req.cmd in EDITS or req.cmd == "show":  # (a reload brings its own)
            self._interfaces(interfaces)
        if req.cmd in EDITS:
            self._edit(token, peer, reqs)
        elif req.cmd == "show":
            self._show(token, req)
        elif req.cmd == "reload":
            self._reloads[token] = (peer, req)
            self._reload(token)
        elif req.cmd == "flush":
            def flushed(job: Job) -> None:
                self._audit(peer, req, "ok")
                self._out.append(Answer(token, (reply(True),)))

            job = self._job(flushed)
            self._remove_flows(list(self.flows), "flush", job)
            if job.waiting == 0:
                flushed(job)
        else:  # kill
            self._audit(peer, req, "ok")
            self._out += [Answer(token, (reply(True),)), Stop()]
        return self._done()

    def _audit(self, peer: Peer, req: ControlRequest, result: str) -> None:
        self._log("notice", "control request", peer_uid=peer.uid, peer_gid=peer.gid,
                  peer_pid=peer.pid, command=req.cmd, args=" ".join(req.args) or "-",
                  result=result)

    def _edit(self, token: int, peer: Peer, reqs: list[ControlRequest]) -> None:
        """smcroutectl add/remove/join/leave: change the lines and the plan
        in step; the transition sends what that changed, nothing else."""
        plan, flows = self.plan, self.flows
        plan.slots.installed(self.ledger.vifs.values())
        said = len(plan.diagnostics)
        results: list[Mroute | Mgroup | str] = []
        for req in reqs:
            try:
                results.append(edit(self.lines, plan, req))
            except CommandError as exc:
                results.append(str(exc))
        for d in plan.diagnostics[said:]:
            if d.where == IPC:
                self._diagnostic(d)
        del plan.diagnostics[said:]  # (edits must not grow the plan)
        changes = plan.take_changes()
        for p in changes.pending:
            self._log("notice", pending_text(p))
        keys = flows.rematch(plan, flows.at(changes.inbound) | {k for k in changes.mfc
                                                                if k in flows.flows})
        keys |= changes.mfc

        def finish(job: Job) -> None:
            replies = []
            for req, result in zip(reqs, results, strict=True):
                if isinstance(result, Mgroup):
                    text = "\n".join(e for m, e in job.join_errors if groups.same(m.rule, result))
                elif isinstance(result, str):
                    text = result
                else:
                    text = kernel_refusal(result, job.refused)
                self._audit(peer, req, text or "ok")
                replies.append(reply(not text, text))
            self._out.append(Answer(token, tuple(replies)))

        job = self._job(finish)
        self._send(self._transition(keys, bool(changes.inbound)),
                   f"smcroutectl uid={peer.uid} pid={peer.pid}", job)
        if changes.memberships:
            self._members(changes.memberships, job)
        if job.waiting == 0:
            finish(job)

    def _show(self, token: int, req: ControlRequest) -> None:
        what = req.args[0][:1] if req.args else "r"
        plan, ledger = self.plan, self.ledger
        if what == "g":
            joined = [self.joined[k] for k in plan.memberships if k in self.joined]
            text = show.groups(plan.groups, joined, req.detail, req.json)
        elif what == "i":
            text = show.interfaces(self.interfaces.values(), ledger.vifs.values(), req.json)
        elif what == "p":
            text = show.pending(plan.pending, req.json)
        else:
            view = show.RouteView(plan.templates, plan.ssm, list(ledger.mfc.values()),
                                  ledger.vif_names(), plan.vifs)
            if req.json or not req.detail:
                text = (show.routes_json(view) if req.json
                        else show.routes(view, self.interfaces, False))
            else:
                keys = [*ledger.mfc, *(MfcKey(r.family, r.rule.source.packed,
                                              r.rule.group.packed)
                                       for r in view.ssm if r.rule.source is not None)]

                def counted(job: Job) -> None:
                    table = {k: (c.packets, c.bytes) for k, c in job.counts.items()}
                    lines = show.routes(view, self.interfaces, True,
                                        lambda key: table.get(key, (0, 0)))
                    self._out.append(Answer(token, (reply(True, "\n".join(lines)),)))

                self._count(keys, counted)
                return
        self._out.append(Answer(token, (reply(True, "\n".join(text)),)))

    def shutdown(self) -> list[Effect]:
        """Remove every route and VIF we installed (the sockets go with the executor)."""
        ledger = self.ledger
        ops = [ledger.del_mfc(k) for k in list(ledger.mfc)]
        ops += [ledger.del_vif(v) for v in list(ledger.vifs.values())]
        self._send(ops, "shutdown")
        return self._done()
