"""What the kernel holds on our behalf, with every helper request in flight.

Part of the daemon core: no I/O. The ledger is optimistic: a request
counts as done from the moment it is made, so every transition is planned
against what the kernel will hold once the requests already sent are
carried out (the helper performs them in order). Its reply confirms it or
takes it back, also when later requests for the same VIF slot or MFC entry
are still in flight: each change remembers what it replaced, and a refusal
hands that on to the next change in line.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smcroute.ipc.helper import ABSENT, AddMfc, AddVif, AnyReply, DelMfc, DelVif, Request
from smcroute.unprivileged.model import Mfc, MfcKey, Vif

Slot = tuple[int, int]  # (family, VIF/MIF number)


@dataclass(eq=False)
class Op:
    """One helper request and what it is for."""

    req: Request
    target: Slot | MfcKey | None  # what it changes in the kernel (None: nothing)
    after: Vif | Mfc | None = None  # what target holds once it is done
    before: Vif | Mfc | None = None  # what it held before (handed on by a refusal)
    purpose: Any = None  # the core's: why it was sent


class Ledger:
    def __init__(self) -> None:
        self.vifs: dict[Slot, Vif] = {}
        self.mfc: dict[MfcKey, Mfc] = {}  # in the order installed (show lists it so)
        self._chains: dict[Slot | MfcKey, list[Op]] = {}  # (short: a list)
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def busy(self, target: Slot | MfcKey) -> bool:
        """Is a change of target in flight?"""
        return target in self._chains

    def vif_names(self) -> dict[Slot, str]:
        return {slot: v.name for slot, v in self.vifs.items()}

    def _change(self, req: Request, target: Slot | MfcKey, after: Vif | Mfc | None,
                purpose: Any) -> Op:
        table: dict[Any, Any] = self.mfc if isinstance(target, MfcKey) else self.vifs
        op = Op(req, target, after, table.get(target), purpose)
        if after is None:
            table.pop(target, None)
        else:
            table[target] = after
        chain = self._chains.get(target)
        if chain is None:
            self._chains[target] = [op]
        else:
            chain.append(op)
        return op

    def add_vif(self, v: Vif) -> Op:
        return self._change(AddVif(self.next_id(), v.family, v.vif, v.ifindex, v.threshold),
                            (v.family, v.vif), v, None)

    def del_vif(self, v: Vif) -> Op:
        return self._change(DelVif(self.next_id(), v.family, v.vif), (v.family, v.vif), None,
                            None)

    def add_mfc(self, m: Mfc, purpose: Any = None) -> Op:
        k = m.key
        return self._change(AddMfc(self.next_id(), k.family, k.source, k.group, m.iif, m.oifs),
                            k, m, purpose)

    def del_mfc(self, k: MfcKey, purpose: Any = None) -> Op:
        return self._change(DelMfc(self.next_id(), k.family, k.source, k.group), k, None,
                            purpose)

    def other(self, req: Request, purpose: Any = None) -> Op:
        """A request that changes no VIF or MFC entry (queries, mrdisc, templates)."""
        return Op(req, None, purpose=purpose)

    def settle(self, op: Op, reply: AnyReply) -> bool:
        """Take the reply to op (replies come in request order): True if the
        kernel did what op said; if not, the ledger is put back."""
        ok = reply.ok or (isinstance(op.req, DelVif | DelMfc) and reply.errno in ABSENT)
        if op.target is None:
            return ok
        chain = self._chains[op.target]
        if chain[0] is not op:
            raise RuntimeError(f"reply to request {op.req.id} out of order")
        del chain[0]
        if not chain:
            del self._chains[op.target]
        if not ok:
            if chain:
                chain[0].before = op.before
            else:
                table: dict[Any, Any] = self.mfc if isinstance(op.target, MfcKey) else self.vifs
                if op.before is None:
                    table.pop(op.target, None)
                else:
                    table[op.target] = op.before
        return ok

    def sync_vifs(self, want: Iterable[Vif]) -> tuple[list[Vif], list[Vif]]:
        """The VIFs to add and delete so the kernel holds want; kept ones
        take want's names (an interface renamed keeps its ifindex)."""
        have = {(v.family, v.vif, v.ifindex): v for v in self.vifs.values()}
        wanted = {(v.family, v.vif, v.ifindex): v for v in want}
        for ident, v in wanted.items():
            old = have.get(ident)
            if old is not None and old.name != v.name:
                self.vifs[(v.family, v.vif)] = v
        return ([v for ident, v in wanted.items() if ident not in have],
                [v for ident, v in have.items() if ident not in wanted])
