"""The helper's (*,G) fast path: policy/fastpath.py, the helper's use of it
(privileged/server.py) and the core's books (unprivileged/flows.py, core.py)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec
from smcroute.ipc.helper import AddVif, Allow, SetTemplates, Template, Upcall, to_wire
from smcroute.policy import helper as policy
from smcroute.policy.fastpath import FastPath
from smcroute.privileged.server import Server
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.engine import Plan, plan
from smcroute.unprivileged.flows import FAST_CHUNK, FlowTable, Limits, fast_templates
from smcroute.unprivileged.model import Interface

from .corehelp import Harness
from .fakes import FakeKernel

S4 = bytes([10, 0, 0, 1])
NET = bytes([225, 1, 0, 0])  # 225.1.0.0/16


def b4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def template(iif: int = 0, group: bytes = NET, glen: int = 16, source: bytes = bytes(4),
             slen: int = 0, oifs: tuple[tuple[int, int], ...] = ((1, 1),)) -> Template:
    return Template(4, iif, source, slen, group, glen, oifs)


def loaded(*templates: Template, limits: tuple[int, ...] | None = None,
           generation: int = 1) -> FastPath:
    fast = FastPath()
    fast.load(SetTemplates(1, generation, templates))
    if limits is not None:
        assert fast.allow(Allow(2, generation, limits))
    return fast


# -- policy/fastpath.py ------------------------------------------------------


def test_nothing_is_installed_before_allow() -> None:
    fast = loaded(template())
    assert fast.match(4, 0, S4, b4("225.1.2.3")) is None


def test_first_match_decides_even_without_room() -> None:
    narrow = template(group=b4("225.1.2.0"), glen=24, oifs=((2, 1),))
    wide = template()
    fast = loaded(narrow, wide, limits=(0, 5))
    # the first template covers it and has no room: the controller decides,
    # the second (which has room) must not take it
    assert fast.match(4, 0, S4, b4("225.1.2.3")) is None
    assert fast.match(4, 0, S4, b4("225.1.9.9")) == 1


def test_match_needs_family_inbound_vif_source_and_group() -> None:
    fast = loaded(template(source=b4("10.0.0.0"), slen=8), limits=(5,))
    assert fast.match(4, 0, S4, b4("225.1.2.3")) == 0
    assert fast.match(4, 1, S4, b4("225.1.2.3")) is None  # other inbound VIF
    assert fast.match(4, 0, b4("11.0.0.1"), b4("225.1.2.3")) is None  # source
    assert fast.match(4, 0, S4, b4("225.2.0.1")) is None  # group
    assert fast.match(6, 0, bytes(16), b"\xff" + bytes(15)) is None  # family


def test_limits_are_cumulative_and_per_generation() -> None:
    fast = loaded(template(), limits=(2,))
    for _ in range(2):
        assert fast.match(4, 0, S4, b4("225.1.2.3")) == 0
        fast.take(0)
    assert fast.match(4, 0, S4, b4("225.1.2.3")) is None
    assert not fast.allow(Allow(3, 7, (10,)))  # another generation: ignored
    assert not fast.allow(Allow(3, 1, (10, 10)))  # wrong length: ignored
    assert fast.allow(Allow(3, 1, (1,)))  # lower than before: the limit stays
    assert fast.limits == [2]
    assert fast.allow(Allow(4, 1, (3,)))
    assert fast.match(4, 0, S4, b4("225.1.2.3")) == 0
    fast.load(SetTemplates(5, 2, (template(),)))  # new templates: no room again
    assert fast.match(4, 0, S4, b4("225.1.2.3")) is None


# -- the helper --------------------------------------------------------------


def igmpmsg(msgtype: int, vif: int, src: bytes, dst: bytes) -> bytes:
    return struct.pack("@II", 0, 0) + bytes([msgtype, 0, vif, 0]) + src + dst


class UpcallKernel(FakeKernel):
    """A FakeKernel whose IPv4 mroute socket holds upcalls to read."""

    def __init__(self, upcalls: list[bytes]) -> None:
        super().__init__()
        self.queue = list(upcalls)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError
        return self.queue.pop(0)

    @property
    def sock4(self) -> Any:
        return self


def helper_with(kernel: FakeKernel, *reqs: Any) -> tuple[Server, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = Server(theirs, kernel, policy.HelperState())  # type: ignore[arg-type]
    for req in [AddVif(1, 4, 0, 10, 1), AddVif(2, 4, 1, 11, 1), *reqs]:
        wire = codec.decode(codec.encode(to_wire(req)))
        assert server.execute(policy.parse_request(wire))["ok"]
    return server, ours


def upcalls_sent(ours: socket.socket) -> list[list[Any]]:
    ours.setblocking(False)
    out = []
    while True:
        try:
            msg = codec.decode(ours.recv(65536))
        except BlockingIOError:
            return out
        out += msg["upcalls"]


def test_helper_installs_what_a_template_allows_and_says_so() -> None:
    g1, g2, g3 = b4("225.1.0.1"), b4("225.1.0.2"), b4("225.9.0.1")
    kernel = UpcallKernel([igmpmsg(1, 0, S4, g1), igmpmsg(1, 0, S4, g2),
                           igmpmsg(1, 0, S4, g3), igmpmsg(2, 0, S4, g1)])
    server, ours = helper_with(kernel, SetTemplates(3, 7, (template(),)), Allow(4, 7, (1,)))
    server.forward_upcalls(4)
    assert kernel.mfc == {(4, S4, g1): (0, ((1, 1),))}  # one allowed, so one installed
    assert upcalls_sent(ours) == [
        [4, "learned", 0, S4, g1, 7, 0],
        [4, "nocache", 0, S4, g2],  # no room left: the controller decides
        [4, "nocache", 0, S4, g3],  # no template: the controller decides
        [4, "wrongvif", 0, S4, g1],  # never on the fast path
    ]
    assert (4, S4, g1) in server.state.mfc  # counted against the MFC cap


def test_helper_fast_path_keeps_the_checks_of_add_mfc() -> None:
    g1, g2 = b4("225.1.0.1"), b4("225.1.0.2")
    # oif VIF 5 was never added; and a broadcast source is not a source
    kernel = UpcallKernel([igmpmsg(1, 0, S4, g1), igmpmsg(1, 0, b"\xff" * 4, g2)])
    server, ours = helper_with(kernel, SetTemplates(3, 1, (template(oifs=((5, 1),)),)),
                               Allow(4, 1, (10,)))
    server.forward_upcalls(4)
    assert kernel.mfc == {}
    assert [u[1] for u in upcalls_sent(ours)] == ["nocache", "nocache"]
    assert server.state.fast.used == [0]


def test_helper_fast_path_respects_the_mfc_cap() -> None:
    kernel = UpcallKernel([igmpmsg(1, 0, S4, b4("225.1.0.1"))])
    server, ours = helper_with(kernel, SetTemplates(3, 1, (template(),)), Allow(4, 1, (10,)))
    server.state.max_mfc = 0
    server.forward_upcalls(4)
    assert kernel.mfc == {}
    assert [u[1] for u in upcalls_sent(ours)] == ["nocache"]


# -- the controller's books ----------------------------------------------------

CONFIG = """\
phyint a enable
phyint b enable
mroute from a group 225.1.0.0/16 to b
mroute from a source 10.0.0.0/8 group 225.2.0.0/16 to b
"""
IFACES = {"a": Interface("a", 10, True), "b": Interface("b", 11, True)}


def table(limits: Limits) -> tuple[FlowTable, Any, Any, Plan]:
    target = plan(parse_text(CONFIG, "t.conf"), IFACES, {})
    flows = FlowTable(limits)
    routes, wire = fast_templates(target, 64)
    return flows, routes, wire, target


def test_templates_for_the_helper_are_networks_in_config_order() -> None:
    _, routes, wire, target = table(Limits())
    assert [r.rule[3] for r in routes] == [b4("225.1.0.0"), b4("225.2.0.0")]  # (rule keys)
    assert wire[0] == Template(4, 0, bytes(4), 0, NET, 16, ((1, 1),))
    assert wire[1] == Template(4, 0, b4("10.0.0.0"), 8, b4("225.2.0.0"), 16, ((1, 1),))
    for t in wire:  # and the helper's policy accepts them
        policy.parse_request(to_wire(SetTemplates(1, 1, (t,))))
    assert fast_templates(target, 1)[0] == routes[:1]
    target.vifs.clear()
    assert fast_templates(target, 64) == ((), ())  # no VIFs: nothing (a prefix)


def test_reserve_is_paid_with_tokens_and_counts_against_the_budget() -> None:
    flows, routes, wire, target = table(Limits(max_learned=10_000, max_per_rule=1000,
                                               upcall_rate=1000))
    flows.fast_reset(1, routes, wire)
    limits = flows.top_up(0.0)
    assert limits == (FAST_CHUNK, FAST_CHUNK)
    assert flows.reserved_total == 2 * FAST_CHUNK
    assert flows.bucket.tokens == 1000 - 2 * FAST_CHUNK
    assert flows.top_up(0.0) is None  # reserves are full
    f = flows.fast_learned(Upcall(4, "learned", 0, S4, b4("225.1.0.1"), 1, 0), "a",
                           target.vifs, 0.0)
    assert f is not None and f.rule == routes[0].rule and f.entry.oif_names == ("b",)
    assert (flows.total, flows.reserved_total) == (1, 2 * FAST_CHUNK - 1)
    # an old generation's flow or a wrong inbound interface is not booked
    for u, iif in ((Upcall(4, "learned", 0, S4, b4("225.1.0.2"), 0, 0), "a"),
                   (Upcall(4, "learned", 0, S4, b4("225.1.0.2"), 1, 0), "b")):
        assert flows.fast_learned(u, iif, target.vifs, 0.0) is None


@pytest.mark.parametrize("limits", [
    Limits(max_learned=100), Limits(max_per_rule=100), Limits(upcall_rate=1)])
def test_no_reserve_near_a_cap_or_without_tokens(limits: Limits) -> None:
    flows, routes, wire, _ = table(limits)
    flows.fast_reset(1, routes, wire)
    assert flows.top_up(0.0) is None  # every flow is decided by the controller, exactly


# -- the core: templates pushed, flows booked, stale ones removed ---------------------------------

RELOADED = CONFIG + "mroute from a group 225.9.0.0/16 to b\n"  # one more template


def test_the_core_keeps_the_helper_fast_path_in_step() -> None:
    h = Harness(CONFIG, IFACES)
    helper = h.server.state
    g1, g2 = b4("225.1.0.1"), b4("225.1.0.2")
    assert helper.fast.templates == h.core.flows.fast.wire != ()
    assert helper.fast.limits == [FAST_CHUNK, FAST_CHUNK]  # room, paid with tokens
    # a flow the helper installed is booked like one we installed
    h.upcall("nocache", 4, 0, S4, g1)
    key = next(k for k in h.core.ledger.mfc if k.group == g1)
    assert h.core.ledger.mfc[key].oif_names == ("b",) and key in h.core.flows.flows
    # the templates change: a new generation; the old one's flows are removed
    index = h.server.install_fast(4, 0, S4, g2)
    assert index is not None
    late = Upcall(4, "learned", 0, S4, g2, helper.fast.generation, index)
    h.reload(RELOADED)
    assert helper.fast.generation == h.core.flows.fast.generation > late.generation
    h.perform(h.core.upcalls([late], h.now))
    assert (4, S4, g2) not in h.kernel.mfc
    assert all(k.group != g2 for k in h.core.ledger.mfc)
    # the flow booked before the change stays, re-planned like any learned route
    assert h.core.ledger.mfc[key].oif_names == ("b",) and key in h.core.flows.flows
    h.check_settled()


# -- budgets hold, whoever installs ----------------------------------------------------------------

ops = st.lists(st.tuples(st.sampled_from(["top_up", "helper", "controller", "forget", "tick"]),
                         st.integers(0, 1), st.integers(1, 80)), max_size=60)


@settings(max_examples=80, deadline=None)
@given(st.integers(150, 400), st.integers(100, 300), st.integers(50, 500), ops)
# a reserve for one rule, then the other rule's flows up to the total cap
@example(200, 300, 500, [("top_up", 0, 1)] + [("controller", 1, 80)] * 3)
# a reserve, then the same rule's flows up to its own cap
@example(400, 200, 500, [("top_up", 0, 1)] + [("controller", 0, 80)] * 3)
def test_budgets_hold_with_the_fast_path(max_learned: int, max_per_rule: int, rate: int,
                                         steps: list[tuple[str, int, int]]) -> None:
    """Whatever the order of reserves, helper installs, controller
    decisions and forgotten flows: learned routes plus reserves never exceed
    a budget, and the reserves are what the helper may still install."""
    flows, routes, wire, target = table(Limits(max_learned=max_learned,
                                               max_per_rule=max_per_rule, upcall_rate=rate))
    flows.fast_reset(1, routes, wire)
    now, serial = 0.0, iter(range(10**6))

    def new_group(rule: int) -> bytes:  # a fresh (S,G) under template `rule`
        return ((0xE1010000 if rule == 0 else 0xE1020000) + next(serial)).to_bytes(4, "big")

    for op, i, n in steps:
        if op == "top_up":
            flows.top_up(now)
        elif op == "tick":
            now += n / 10
        elif op == "helper":  # it installs within its limit; the controller books each
            for _ in range(min(n, flows.fast.limits[i] - flows.fast.used[i])):
                u = Upcall(4, "learned", 0, S4, new_group(i), flows.fast.generation, i)
                assert flows.fast_learned(u, "a", target.vifs, now) is not None
        elif op == "controller":
            batch = [Upcall(4, "nocache", 0, S4, new_group(i)) for _ in range(n)]
            flows.decide(batch, now, target, {(4, 0): "a"}, {})
        elif op == "forget":
            flows.remove(list(flows.flows)[:n])
        reserve = {r.rule: 0 for r in routes}
        for route, used, limit in zip(routes, flows.fast.used, flows.fast.limits, strict=True):
            assert used <= limit
            reserve[route.rule] += limit - used
        assert reserve == {rule: flows.reserved[rule] for rule in reserve}
        assert flows.total + flows.reserved_total <= max_learned
        for rule in reserve:
            assert flows.learned[rule] + flows.reserved[rule] <= max_per_rule
