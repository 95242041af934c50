"""Drive the daemon core (core.py) as its executors do, synchronously.

Helper requests go through the real channel protocol (screening, msgpack,
typed replies) to the helper's real request handling (policy +
privileged.server.Server) over a fake kernel. A reply can be held back
(`hold`): the helper has not taken the datagram yet, so other events
(upcalls the helper's fast path installs, edits, reloads) happen while the
requests are in flight; released later, one datagram at a time, as the
real helper takes and answers them.
Memberships go to a fake pool that can be told to fail.
"""

from __future__ import annotations

import errno
import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from smcroute.ipc import codec
from smcroute.ipc.control import ControlRequest
from smcroute.ipc.helper import Upcall, upcalls_message
from smcroute.policy import ops
from smcroute.policy.control import Peer
from smcroute.privileged.server import Server
from smcroute.unprivileged.channel import Answered, Protocol, Upcalls
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.core import Core, Settings
from smcroute.unprivileged.effects import (
    Answer,
    Effect,
    LoadConfig,
    Log,
    Memberships,
    Send,
)
from smcroute.unprivileged.engine import Plan
from smcroute.unprivileged.flows import OVERLOAD_STOPS
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.model import Interface, MfcKey

from .fakes import FakeKernel

FILE = "/etc/smcroute.conf"
ROOT = Peer(0, 0, 100)


def interfaces(*names: str, start: int = 2) -> dict[str, Interface]:
    """Interfaces in ifindex order; a name ending in "!" lacks IFF_MULTICAST."""
    out = {}
    for i, spec in enumerate(names):
        name = spec.rstrip("!")
        out[name] = Interface(name, start + i, not spec.endswith("!"))
    return out


def key(source: str, group: str) -> MfcKey:
    s, g = ipaddress.ip_address(source), ipaddress.ip_address(group)
    return MfcKey(s.version, s.packed, g.packed)


class FakePool:
    """Memberships as the controller's socket pool keeps them."""

    def __init__(self) -> None:
        self.joined: dict[Any, Membership] = {}
        self.fail: set[bytes] = set()  # joins of these groups fail
        self.log: list[tuple[str, Membership]] = []

    def change(self, leave: Iterable[Membership], join: Iterable[Membership]
               ) -> list[tuple[Membership, str]]:
        errors = []
        for m in leave:
            assert m.key in self.joined, f"leave of {m} that was not joined"
            del self.joined[m.key]
            self.log.append(("leave", m))
        for m in join:
            assert m.key not in self.joined, f"join of {m} twice"
            if m.group in self.fail:
                errors.append((m, f"Failed joining group {m.group!r} on {m.ifname}"))
                continue
            self.joined[m.key] = m
            self.log.append(("join", m))
        return errors


class Harness:
    def __init__(self, text: str = "", ifs: Mapping[str, Interface] | None = None,
                 settings: Settings | None = None, start: bool = True, max_mfc: int = 100_000):
        self.kernel = FakeKernel()
        self.server = Server(None, self.kernel, ops.State(max_mfc))  # type: ignore[arg-type]
        self.protocol = Protocol()
        self.core = Core(settings or Settings(conf_path=FILE))
        self.pool = FakePool()
        self.ifs = dict(ifs if ifs is not None else interfaces("a1", "a2", "a3", "b1"))
        self.now = 1000.0
        self.hold = False  # keep datagrams in flight instead of answering them
        self.refused: set[tuple[int, bytes, bytes]] = set()  # kernel.refuse, ever
        self.flight: deque[bytes] = deque()  # datagrams the helper has not taken yet
        self.effects: list[Effect] = []  # everything performed, in order
        self.answers: dict[int, list[dict[str, Any]]] = {}
        self.loads: list[LoadConfig] = []
        self.tokens = iter(range(1, 1 << 30))
        if start:
            self.perform(self.core.start(parse_text(text, FILE), self.ifs, self.now))

    # -- performing ----------------------------------------------------------------

    def perform(self, effects: list[Effect]) -> None:
        queue = deque(effects)
        while queue:
            e = queue.popleft()
            self.effects.append(e)
            if isinstance(e, Send):
                self.flight += self.protocol.send(e.batch, e.requests)
                for answered in self.protocol.ready():  # nothing for the helper to say
                    queue += self.core.answered(answered.batch, answered.replies, self.now)
                if not self.hold:
                    queue += self._deliver_all()
            elif isinstance(e, Memberships):
                queue += self.core.memberships_done(e.token, self.pool.change(e.leave, e.join))
            elif isinstance(e, Answer):
                self.answers[e.token] = list(e.replies)
            elif isinstance(e, LoadConfig):
                self.loads.append(e)

    def helper(self, datagram: bytes) -> bytes:
        """What the helper answers to one datagram (a violation fails the test)."""
        reqs = ops.parse_batch(codec.decode(datagram))
        return codec.encode({"t": "replies", "replies": [self.server.execute(r) for r in reqs]})

    def _deliver_all(self) -> list[Effect]:
        out: list[Effect] = []
        while self.flight:
            out += self._deliver_one()
        return out

    def _deliver_one(self) -> list[Effect]:
        """The helper takes the next datagram; its replies come back."""
        out: list[Effect] = []
        for event in self.protocol.receive(self.helper(self.flight.popleft())):
            assert isinstance(event, Answered)
            out += self.core.answered(event.batch, event.replies, self.now)
        return out

    def release(self, datagrams: int | None = None) -> None:
        """Let the helper take held datagrams (all, or that many), and answer."""
        n = len(self.flight) if datagrams is None else datagrams
        for _ in range(n):
            if self.flight:
                self.perform(self._deliver_one())

    def settle(self) -> None:
        hold, self.hold = self.hold, False
        self.release()
        self.hold = hold

    # -- events --------------------------------------------------------------------

    def reload(self, text: str, ifs: Mapping[str, Interface] | None = None
               ) -> list[dict[str, Any]]:
        """smcroutectl reload of text; returns its answer."""
        token = next(self.tokens)
        if ifs is not None:
            self.ifs = dict(ifs)
        self.perform(self.core.control(token, ROOT, [ControlRequest("reload")], None,
                                       self.now))
        assert self.loads and self.loads[-1].token == token
        self.perform(self.core.load(parse_text(text, FILE), self.ifs, self.now, token))
        return self.answers.get(token, [])

    def ctl(self, cmd: str, *args: str, detail: bool = False, as_json: bool = False,
            peer: Peer = ROOT) -> list[dict[str, Any]]:
        return self.batch([ControlRequest(cmd, tuple(args), detail, as_json)], peer)

    def batch(self, reqs: list[ControlRequest], peer: Peer = ROOT) -> list[dict[str, Any]]:
        """What the controller does: the interfaces read afresh if asked for."""
        token = next(self.tokens)
        fresh = self.ifs if self.core.wants_interfaces(reqs) else None
        self.perform(self.core.control(token, peer, reqs, fresh, self.now))
        return self.answers.get(token, [])

    def show(self, *args: str, detail: bool = False, as_json: bool = False) -> str:
        (r,) = self.ctl("show", *args, detail=detail, as_json=as_json)
        assert r["ok"], r
        return str(r["text"])

    def links(self, ifs: Mapping[str, Interface]) -> None:
        self.ifs = dict(ifs)
        self.perform(self.core.interfaces_changed(self.ifs, self.now))

    def upcall(self, kind: str, family: int, vif: int, source: bytes, group: bytes,
               fast: bool = True) -> None:
        """The kernel reports a flow; the helper's fast path may install it."""
        if kind == "nocache" and fast and (index := self.server.install_fast(
                family, vif, source, group)) is not None:
            u = Upcall(family, "learned", vif, source, group,
                       self.server.state.generation, index)
        else:
            u = Upcall(family, kind, vif, source, group)
        (event,) = self.protocol.receive(codec.encode(upcalls_message([u])))
        assert isinstance(event, Upcalls)
        self.perform(self.core.upcalls(event.upcalls, self.now))

    def nocache(self, source: str, group: str, iif: str, fast: bool = True) -> None:
        k = key(source, group)
        vif = self.core.plan.vifs[(k.family, iif)].vif
        self.upcall("nocache", k.family, vif, k.source, k.group, fast)

    def tick(self, seconds: float = 0.0) -> None:
        self.now += seconds
        self.perform(self.core.tick(self.now))

    # -- looking ---------------------------------------------------------------------

    def logs(self, level: str | None = None) -> list[str]:
        return [e.text for e in self.effects if isinstance(e, Log)
                and (level is None or e.level == level)]

    def sent(self) -> list[Any]:
        return [r for e in self.effects if isinstance(e, Send) for r in e.requests]

    def kernel_mfc(self) -> dict[MfcKey, tuple[int, tuple[tuple[int, int], ...]]]:
        return {MfcKey(*k): v for k, v in self.kernel.mfc.items()}

    def kernel_vifs(self) -> dict[tuple[int, int], int]:
        return {(f, v): i for f, t in self.kernel.vifs.items() for v, i in t.items()}

    def check(self) -> None:
        """What holds after every event (core.py's invariants)."""
        core = self.core
        plan, flows, ledger = core.plan, core.flows, core.ledger
        for k in ledger.mfc:  # every entry is accounted for exactly once
            assert (k in plan.mfc) + (k in flows.flows) == 1, k
        assert set(flows.flows) <= set(ledger.mfc)
        limits = flows.limits
        assert flows.total + flows.reserved_total <= limits.max_learned
        assert all(flows.learned[r] + flows.reserved[r] <= limits.max_per_rule
                   for r in flows.learned)
        # overload stops (one per group, bounded) answer what is over the budgets
        assert flows.stops - flows.overloads <= limits.max_learned
        assert flows.overloads == sum(1 for f in flows.flows.values() if f.overload)
        assert flows.overloads <= OVERLOAD_STOPS
        assert flows.total == sum(1 for f in flows.flows.values() if not f.stop)
        assert flows.stops == sum(1 for f in flows.flows.values() if f.stop)

    def check_settled(self) -> None:
        """Once every reply is in: the kernel holds what the core believes,
        and that is what the lines and the flows imply."""
        self.check()
        core = self.core
        assert not self.flight and not core.batches
        assert self.kernel_mfc() == {k: m.kernel for k, m in core.ledger.mfc.items()}
        assert self.kernel_vifs() == {s: v.ifindex for s, v in core.ledger.vifs.items()}
        # (a configured entry the kernel refused stays out until a full plan)
        refused = {MfcKey(*k) for k in self.kernel.refuse | self.refused}
        want = {k: m.kernel for k, m in core.plan.mfc.items() if k not in refused}
        want.update({k: f.entry.kernel for k, f in core.flows.flows.items()})
        assert {k: m.kernel for k, m in core.ledger.mfc.items()
                if k not in refused or k in core.flows.flows} == want
        assert {(v.family, v.vif): v.ifindex for v in core.plan.vifs.values()} == \
            self.kernel_vifs()
        fresh = Plan(core.interfaces, core.ledger.vifs.values(),
                     core.settings.default_enable).fold(core.lines)
        assert same_plan(core.plan, fresh)
        wanted = dict(core.plan.memberships)
        wanted.update(core.mrdisc.joins(core.interfaces))
        assert set(self.pool.joined) == set(core.joined) <= set(wanted)


def same_plan(a: Plan, b: Plan) -> bool:
    """Equal in everything the core uses of a plan."""
    def routes(p: Plan) -> list[Any]:
        return [(r.rule.iif, r.rule.source, r.rule.group, r.iif, r.oifs) for r in
                p.templates + p.ssm]

    assert a.vifs == b.vifs
    assert a.mfc == b.mfc and {k: (m.iif_name, m.oif_names) for k, m in a.mfc.items()} == \
        {k: (m.iif_name, m.oif_names) for k, m in b.mfc.items()}
    assert routes(a) == routes(b)
    assert sorted(map(repr, a.pending)) == sorted(map(repr, b.pending))
    assert a.memberships == b.memberships
    assert a.mrdisc == b.mrdisc
    assert [j.rule for j in a.joins.values()] == [j.rule for j in b.joins.values()]
    return True


__all__ = ["FILE", "ROOT", "FakePool", "Harness", "errno", "interfaces", "key"]
