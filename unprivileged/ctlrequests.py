"""The daemon core's handlers of control requests (smcroutectl): show,
add/remove/join/leave, flush, reload, kill. No I/O."""

from __future__ import annotations

from collections.abc import Mapping

from smcroute.ipc.control import ControlRequest, reply
from smcroute.policy.control import Peer
from smcroute.unprivileged import groups, show
from smcroute.unprivileged.commands import IPC, CommandError, edit
from smcroute.unprivileged.config import parse_address
from smcroute.unprivileged.corestate import EDITS, CoreState, Job, pending_note
from smcroute.unprivileged.effects import Answer, Effect, Stop
from smcroute.unprivileged.engine import match
from smcroute.unprivileged.model import Interface, MfcKey, Mgroup, Mroute


def kernel_refusal(rule: Mroute, refused: Mapping[MfcKey, str]) -> str:
    if not refused or rule.source is None or not rule.is_ssm:
        return ""
    key = MfcKey(rule.family, rule.source.packed, rule.group.packed)
    if key in refused:
        return f"failed adding multicast route ({rule.source}, {rule.group}): {refused[key]}"
    return ""




MAX_AUDIT_ARGS = 200  # characters of a refused request's arguments in its audit line


class Requests(CoreState):
    # -- events: the control socket -----------------------------------------------

    def wants_interfaces(self, reqs: list[ControlRequest]) -> bool:
        """Do these requests need the interface table read afresh? An edit
        that names an interface we do not know (it may have just appeared:
        netlink news are debounced), and `show interfaces`."""
        for req in reqs:
            if req.cmd == "show":
                return bool(req.args) and req.args[0][:1] == "i"
            if req.cmd in ("add", "join"):
                for word in req.args:
                    if parse_address(word.partition("/")[0]) is None and not match(
                            word, self.interfaces):
                        return True
        return False

    def control(self, token: int, peer: Peer, reqs: list[ControlRequest],
                interfaces: Mapping[str, Interface] | None, now: float) -> list[Effect]:
        """One control request, or a run of edits (applied together: one
        transition, one helper batch). The answer is an Answer effect.
        interfaces: the table read afresh, if wants_interfaces() said so."""
        self.now = now
        req = reqs[0]
        if interfaces is not None:
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
            self._out += [Stop(), Answer(token, (reply(True),))]
        return self._done()

    def refused(self, peer: Peer, req: ControlRequest | None, reason: str,
                now: float) -> list[Effect]:
        """The control socket refused a peer (a connection, or a request).
        Audited, but at most one line per peer uid per 10 s: the first in
        full (its arguments cut short), then how many more came."""
        self.now = now
        if n := self.refusals.hit(str(peer.uid), now):
            args = " ".join(req.args) if req and req.args else "-"
            self._log("notice", "control request", peer_uid=peer.uid, peer_gid=peer.gid,
                      peer_pid=peer.pid, command=req.cmd[:32] if req else "connect",
                      args=args if len(args) <= MAX_AUDIT_ARGS else
                      args[:MAX_AUDIT_ARGS] + "...", result=f"refused: {reason}",
                      **({"refused": n} if n > 1 else {}))
        return self._done()

    def _said_refusals(self, now: float) -> None:
        """The refusals counted since a uid's last line, once 10 s have passed."""
        for uid, n in self.refusals.due(now):
            self._log("notice", "control requests refused", peer_uid=int(uid), refused=n,
                      seconds=int(self.refusals.interval))

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
            self._log("notice", pending_note(p))
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
        self._send(self._transition(keys, bool(changes.inbound), changes.vifs),
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
