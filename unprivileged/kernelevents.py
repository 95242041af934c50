"""The daemon core's handlers of what the helper says: kernel upcalls (and
flows its fast path installed), the replies to our batches, and the
results of the controller's own group memberships. No I/O."""

from __future__ import annotations

import errno
from collections.abc import Mapping

from smcroute.ipc.helper import (
    AddMfc,
    AddVif,
    AnyReply,
    Counts,
    DelMfc,
    DelVif,
    Mrdisc,
    SetTemplates,
    SgCount,
    Upcall,
)
from smcroute.unprivileged.corestate import CoreState
from smcroute.unprivileged.effects import Effect, Script
from smcroute.unprivileged.flows import Decision
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.ledger import Op
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.model import Mfc, MfcKey, addr, is_star, sg
from smcroute.unprivileged.mrdisc import QUIET


class KernelEvents(CoreState):
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
        ledger, plan = self.ledger, self.plan
        if learned:
            self._book_fast(learned, names, now)
        if rest:
            for d in self.flows.decide(rest, now, plan, names, ledger.mfc):
                ops.append(ledger.add_mfc(d.flow.entry, d))
            self._said_flows()
            if self.flows.reclaim:  # the same templates anew: their reserve comes back
                ops += self._fast_ops(self.flows.fast.routes, self.flows.fast.wire)
        # traffic of a configured (S,G) the kernel does not hold (it refused
        # it before): the configuration's entry, once more
        again = {k for u in [*rest, *learned] if u.kind in ("nocache", "learned")
                 and (k := MfcKey(u.family, u.source, u.group)) in plan.mfc
                 and k not in ledger.mfc and not ledger.busy(k)}
        if again:
            ops += self._transition(again, vifs=False)
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
            # ours replaces the helper's: in flight, or the configuration's
            mine = key in ledger.mfc or ledger.busy(key) or key in self.plan.mfc
            flow = flows.fast_learned(u, names.get((u.family, u.vif)), self.plan.vifs, now,
                                      book=not mine, key=key)
            if flow is None:
                if not mine:
                    stale.append(ledger.del_mfc(key))
                continue
            if mine:
                continue
            ledger.mfc[key] = flow.entry
            if self.level >= PRIORITY["info"]:
                self._log("info", "audit", op="add_mfc", what=f"{sg(key)} from {flow.iif_name}",
                          cause="upcall (helper fast path)", result="ok")
            if self.settings.script:
                self._out.append(Script("install", addr(key.source), addr(key.group)))
        self._send(stale, "fast path, rules since changed")

    def answered(self, batch_id: int, replies: list[AnyReply], now: float) -> list[Effect]:
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
                        oifs = [n for n in m.oif_names if n != m.iif_name or not is_star(key)]
                        self._log("debug", f"Add {sg(key)} from {m.iif_name} to"
                                           f" {' '.join(oifs) or '(none)'}")
                    if isinstance(d, Decision) and not d.flow.stop:
                        self._installed(d)
                    continue
                m = op.after
                assert isinstance(m, Mfc)
                where = f"{m.where}: " if m.where and not isinstance(d, Decision) else ""
                if isinstance(d, Decision) and answer.errno == errno.ENOSPC:  # a flood: throttled
                    flows.quiet("mfc cap", f"the helper's MFC cap is reached, learned route"
                                           f" {sg(key)} refused: {answer.error}", now)
                else:
                    self._log("warning", f"{where}failed adding IPv{key.family} multicast"
                                         f" route {sg(key)}: {answer.error}")
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
            elif isinstance(req, SetTemplates):
                flows.fast_settled(req.generation)
            elif isinstance(req, SgCount) and job is not None and isinstance(answer, Counts):
                job.counts[MfcKey(req.family, req.source, req.group)] = answer
        if refused:
            self._refused(refused)
            self._said_flows()
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
            self._send(self._transition(cleanup, vifs=False), "cleanup")

    def _installed(self, d: Decision) -> None:
        """A learned route the kernel took (from an upcall)."""
        key = d.flow.key
        if d.prior is not None:
            word = "WRONGVIF" if key.family == 4 else "WRONGMIF"
            self._log("notice", f"Moved {sg(key)} inbound to {d.flow.iif_name} after {word}")
        if self.settings.script:
            self._out.append(Script("install", addr(key.source), addr(key.group)))

    def _vif_done(self, op: Op, answer: AnyReply, ok: bool) -> None:
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

    def _audit_op(self, op: Op, answer: AnyReply, ok: bool, cause: str) -> None:
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
