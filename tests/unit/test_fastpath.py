"""The helper's (*,G) fast path: the templates and allow ops and
State.match (policy/ops.py), the helper's use of them (install_fast and
forward_upcalls, privileged/server.py) and the core's books
(unprivileged/flows.py, core.py)."""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import struct
import threading
import time
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec
from smcroute.ipc.helper import AddVif, Allow, SetTemplates, Template, Upcall, to_wire
from smcroute.policy import ops
from smcroute.privileged import server as server_module
from smcroute.privileged.server import UPCALLS_PER_DATAGRAM, Server
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.core import Settings
from smcroute.unprivileged.engine import Plan, plan
from smcroute.unprivileged.flows import FAST_CHUNK, FlowTable, Limits, fast_templates
from smcroute.unprivileged.model import Interface

from .corehelp import Harness
from .fakes import FakeKernel

S4 = bytes([10, 0, 0, 1])
NET = bytes([225, 1, 0, 0])  # 225.1.0.0/16
S6 = ipaddress.IPv6Address("2001:db8::1").packed
NET6 = ipaddress.IPv6Address("ff05::").packed  # ff05::/16


def b4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def b6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def template(iif: int = 0, group: bytes = NET, glen: int = 16, source: bytes = bytes(4),
             slen: int = 0, oifs: tuple[tuple[int, int], ...] = ((1, 1),)) -> Template:
    return Template(4, iif, source, slen, group, glen, oifs)


def template6(iif: int = 0, group: bytes = NET6, glen: int = 16, source: bytes = bytes(16),
              slen: int = 0, oifs: tuple[tuple[int, int], ...] = ((1, 1),)) -> Template:
    return Template(6, iif, source, slen, group, glen, oifs)


def send(state: ops.State, req: Any, kernel: FakeKernel | None = None) -> dict[str, Any]:
    """One request as the controller sends it, executed: its reply."""
    r = ops.parse(codec.decode(codec.encode(to_wire(req))))
    return ops.execute(kernel or FakeKernel(), state, r)


def loaded(*templates: Template, limits: tuple[int, ...] | None = None,
           generation: int = 1) -> ops.State:
    state = ops.State()
    assert send(state, SetTemplates(1, generation, templates)) == {"id": 1, "ok": True}
    if limits is not None:
        assert send(state, Allow(2, generation, limits)) == {"id": 2, "ok": True}
        assert state.limits == list(limits)
    return state


def server_with(*reqs: Any, kernel: FakeKernel | None = None, chan: Any = None) -> Server:
    """A helper with VIFs 0 and 1 (ifindex 10, 11) of both families, and reqs done."""
    server = Server(chan, kernel or FakeKernel(), ops.State())  # type: ignore[arg-type]
    for req in [AddVif(1, 4, 0, 10, 1), AddVif(2, 4, 1, 11, 1), AddVif(3, 6, 0, 10, 1),
                AddVif(4, 6, 1, 11, 1), *reqs]:
        wire = codec.decode(codec.encode(to_wire(req)))
        assert server.execute(ops.parse(wire))["ok"]
    return server


# -- policy/ops.py: templates, allow, State.match --------------------------------------


def test_templates_replace_the_fast_path() -> None:
    narrow = template(group=b4("225.1.2.0"), glen=24, oifs=((2, 1),))
    on_1 = template(iif=1)
    wide = template(source=b4("10.0.0.0"), slen=8, oifs=((1, 1), (0, 1)))
    v6 = template6()
    state = loaded(narrow, on_1, wide, v6, generation=7)
    assert state.generation == 7
    assert state.templates == (
        (4, 0, 0, 0, 0xE1010200, 0xFFFFFF00, ((2, 1),)),
        (4, 1, 0, 0, 0xE1010000, 0xFFFF0000, ((1, 1),)),
        (4, 0, 0x0A000000, 0xFF000000, 0xE1010000, 0xFFFF0000, ((0, 1), (1, 1))),
        (6, 0, 0, 0, int.from_bytes(NET6, "big"), ((1 << 16) - 1) << 112, ((1, 1),)))
    # the templates of each (family, inbound VIF), in order
    assert state.by_vif == {(4, 0): [0, 2], (4, 1): [1], (6, 0): [3]}
    assert state.used == state.limits == [0, 0, 0, 0]  # nothing may be installed yet
    # new templates: all of it anew
    send(state, Allow(2, 7, (1, 2, 3, 4)))
    state.used[0] = 1
    assert send(state, SetTemplates(3, 8, (template(iif=3),))) == {"id": 3, "ok": True}
    assert (state.generation, state.by_vif, state.used, state.limits) == (
        8, {(4, 3): [0]}, [0], [0])
    send(state, SetTemplates(4, 9, ()))
    assert (state.templates, state.by_vif, state.used, state.limits) == ((), {}, [], [])
    assert state.match(4, 3, S4, b4("225.1.0.1")) is None


def test_nothing_is_installed_before_allow() -> None:
    state = loaded(template())
    assert state.match(4, 0, S4, b4("225.1.2.3")) is None
    send(state, Allow(2, 1, (1,)))
    assert state.match(4, 0, S4, b4("225.1.2.3")) == 0


def test_first_match_decides_even_without_room() -> None:
    narrow = template(group=b4("225.1.2.0"), glen=24, oifs=((2, 1),))
    wide = template()
    state = loaded(narrow, wide, limits=(0, 5))
    # the first template covers it and has no room: the controller decides,
    # the second (which has room) must not take it
    assert state.match(4, 0, S4, b4("225.1.2.3")) is None
    assert state.match(4, 0, S4, b4("225.1.9.9")) == 1
    # with room, the first one wins over a later one that covers it too
    send(state, Allow(3, 1, (5, 5)))
    assert state.match(4, 0, S4, b4("225.1.2.3")) == 0


def test_match_needs_family_inbound_vif_source_and_group() -> None:
    state = loaded(template(source=b4("10.0.0.0"), slen=8), limits=(5,))
    assert state.match(4, 0, S4, b4("225.1.2.3")) == 0
    assert state.match(4, 0, b4("10.255.255.255"), b4("225.1.255.255")) == 0
    assert state.match(4, 1, S4, b4("225.1.2.3")) is None  # other inbound VIF
    assert state.match(4, 0, b4("11.0.0.1"), b4("225.1.2.3")) is None  # source
    assert state.match(4, 0, b4("9.255.255.255"), b4("225.1.2.3")) is None
    assert state.match(4, 0, S4, b4("225.2.0.1")) is None  # group
    assert state.match(4, 0, S4, b4("225.0.255.255")) is None
    assert state.match(6, 0, bytes(16), b"\xff" + bytes(15)) is None  # family


def test_match_by_inbound_vif_first() -> None:
    # a template of another inbound VIF is never considered, whatever its order
    state = loaded(template(iif=1, oifs=((0, 1),)), template(iif=0), limits=(5, 5))
    assert state.match(4, 0, S4, b4("225.1.0.1")) == 1
    assert state.match(4, 1, S4, b4("225.1.0.1")) == 0
    assert state.match(4, 2, S4, b4("225.1.0.1")) is None
    # and an IPv6 template on VIF 0 is not IPv4's VIF 0
    state = loaded(template6(iif=0), template(iif=0), limits=(5, 5))
    assert state.match(4, 0, S4, b4("225.1.0.1")) == 1
    assert state.match(6, 0, S6, b6("ff05::1")) == 0
    assert state.match(6, 1, S6, b6("ff05::1")) is None


def test_any_source_and_ipv6_prefixes() -> None:
    state = loaded(template6(source=b6("2001:db8::"), slen=32, group=b6("ff0e::"), glen=16),
                   template6(), template(group=b4("224.0.0.0"), glen=4), limits=(1, 1, 1))
    assert state.match(6, 0, S6, b6("ff0e::1234")) == 0
    assert state.match(6, 0, b6("2001:db9::1"), b6("ff0e::1234")) is None  # no other covers it
    assert state.match(6, 0, b6("fe80::1"), b6("ff05::1:2")) == 1  # any source
    assert state.match(6, 0, bytes(16), b6("ff05::")) == 1
    assert state.match(6, 0, S6, b6("ff06::")) is None
    for group in ("224.0.0.0", "239.255.255.255", "225.1.2.3"):  # 224/4: all of it
        assert state.match(4, 0, b4("192.0.2.1"), b4(group)) == 2


def test_limits_are_cumulative_and_per_generation() -> None:
    server = server_with(SetTemplates(5, 1, (template(),)), Allow(6, 1, (2,)))
    state = server.state
    groups = [b4(f"225.1.0.{i}") for i in range(1, 10)]
    assert server.install_fast(4, 0, S4, groups[0]) == 0
    assert server.install_fast(4, 0, S4, groups[1]) == 0
    assert state.used == [2]
    assert server.install_fast(4, 0, S4, groups[2]) is None  # no room left
    assert state.match(4, 0, S4, groups[2]) is None
    assert state.used == [2]
    for req in (Allow(7, 7, (10,)),  # another generation: ignored
                Allow(8, 1, (10, 10)),  # wrong length: ignored
                Allow(9, 1, ()),
                Allow(10, 1, (1,))):  # lower than before: the limit stays
        assert send(state, req) == {"id": req.id, "ok": True}  # (harmless, so not an error)
        assert state.limits == [2]
    assert send(state, Allow(11, 1, (3,))) == {"id": 11, "ok": True}
    assert state.limits == [3]
    assert server.install_fast(4, 0, S4, groups[2]) == 0
    assert server.install_fast(4, 0, S4, groups[3]) is None
    assert state.used == [3]
    # new templates: no room again, and a late allow of the old ones is ignored
    send(state, SetTemplates(12, 2, (template(),)))
    assert (state.used, state.limits) == ([0], [0])
    assert server.install_fast(4, 0, S4, groups[4]) is None
    send(state, Allow(13, 1, (50,)))
    assert state.limits == [0]
    assert server.install_fast(4, 0, S4, groups[4]) is None
    send(state, Allow(14, 2, (1,)))
    assert server.install_fast(4, 0, S4, groups[4]) == 0


def test_each_template_has_its_own_room() -> None:
    server = server_with(SetTemplates(5, 1, (template(group=b4("225.1.0.0")),
                                             template(group=b4("225.2.0.0")))),
                         Allow(6, 1, (1, 2)))
    assert server.install_fast(4, 0, S4, b4("225.1.0.1")) == 0
    assert server.install_fast(4, 0, S4, b4("225.1.0.2")) is None  # its room is used up
    assert server.install_fast(4, 0, S4, b4("225.2.0.1")) == 1  # the other's is not
    assert server.install_fast(4, 0, S4, b4("225.2.0.2")) == 1
    assert server.install_fast(4, 0, S4, b4("225.2.0.3")) is None
    assert server.state.used == [1, 2] and server.state.limits == [1, 2]


def test_allow_keeps_the_larger_limit_per_template() -> None:
    state = loaded(template(), template(iif=1), template6(), generation=4)
    send(state, Allow(2, 4, (5, 0, 3)))
    send(state, Allow(3, 4, (2, 7, 3)))
    assert state.limits == [5, 7, 3]


# -- the helper --------------------------------------------------------------


def igmpmsg(msgtype: int, vif: int, src: bytes, dst: bytes) -> bytes:
    return struct.pack("@II", 0, 0) + bytes([msgtype, 0, vif, 0]) + src + dst


def mrt6msg(msgtype: int, mif: int, src: bytes, dst: bytes) -> bytes:
    return bytes([0, msgtype]) + struct.pack("@H", mif) + bytes(4) + src + dst


class Queue:
    """A mroute socket holding upcalls to read."""

    def __init__(self, upcalls: list[bytes]) -> None:
        self.queue = list(upcalls)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError
        return self.queue.pop(0)


class UpcallKernel(FakeKernel):
    """A FakeKernel whose mroute sockets hold upcalls to read."""

    def __init__(self, upcalls: list[bytes], upcalls6: list[bytes] | None = None) -> None:
        super().__init__()
        self.sock4 = Queue(upcalls)
        self.sock6 = Queue(upcalls6 or [])


def helper_with(kernel: FakeKernel, *reqs: Any) -> tuple[Server, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return server_with(*reqs, kernel=kernel, chan=theirs), ours


def upcalls_sent(ours: socket.socket) -> list[list[Any]]:
    ours.setblocking(False)
    out = []
    while True:
        try:
            msg = codec.decode(ours.recv(65536))
        except BlockingIOError:
            return out
        assert msg["t"] == "upcalls"
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
    assert S4 + g1 in server.state.mfc  # counted against the MFC cap
    assert server.state.used == [1]


def test_learned_upcalls_name_the_template_and_its_generation() -> None:
    g1, g2 = b4("225.2.0.1"), b4("225.1.0.1")
    kernel = UpcallKernel([igmpmsg(1, 1, S4, g1), igmpmsg(1, 0, S4, g2)])
    server, ours = helper_with(kernel, SetTemplates(3, 42, (
        template(), template(iif=1, group=b4("225.2.0.0"), oifs=((0, 9),)))),
        Allow(4, 42, (5, 5)))
    server.forward_upcalls(4)
    assert upcalls_sent(ours) == [[4, "learned", 1, S4, g1, 42, 1],
                                  [4, "learned", 0, S4, g2, 42, 0]]
    # the route: the upcall's VIF inbound, the template's oifs
    assert kernel.mfc == {(4, S4, g1): (1, ((0, 9),)), (4, S4, g2): (0, ((1, 1),))}
    assert server.state.used == [1, 1]
    for upcall in upcalls_sent(ours):  # what the controller reads back
        assert Upcall(*upcall).kind == "learned"


def test_helper_fast_path_ipv6() -> None:
    g1, g2 = b6("ff05::1"), b6("ff0e::1")
    kernel = UpcallKernel([], [mrt6msg(1, 0, S6, g1), mrt6msg(1, 0, S6, g2),
                               mrt6msg(1, 1, S6, g1)])
    server, ours = helper_with(kernel, SetTemplates(3, 2, (template6(),)), Allow(4, 2, (5,)))
    server.forward_upcalls(6)
    assert kernel.mfc == {(6, S6, g1): (0, ((1, 1),))}
    assert upcalls_sent(ours) == [[6, "learned", 0, S6, g1, 2, 0], [6, "nocache", 0, S6, g2],
                                  [6, "nocache", 1, S6, g1]]
    # an IPv4 upcall on the same VIF number is not covered by it
    assert server.install_fast(4, 0, S4, b4("225.1.0.1")) is None


# -- privileged/server.py: upcalls wait in the kernel while the controller is behind ---


def test_upcalls_wait_in_the_kernel_while_the_controller_is_behind() -> None:
    groups = [(0xE1000000 + i).to_bytes(4, "big") for i in range(3000)]
    kernel = UpcallKernel([igmpmsg(1, 0, S4, g) for g in groups])
    server, ours = helper_with(kernel)
    server.forward_upcalls(4)
    assert server.backlogged()  # the controller has not read them
    left = len(kernel.sock4.queue)
    assert 0 < 3000 - left <= 2 * UPCALLS_PER_DATAGRAM  # at most one datagram past the mark
    sent = upcalls_sent(ours)  # the controller catches up ...
    assert [u[4] for u in sent] == groups[:3000 - left]  # ... in order, none lost
    assert not server.backlogged()
    for _ in range(100):  # bounded: each call forwards at least one datagram
        server.forward_upcalls(4)
        sent += upcalls_sent(ours)
        if not kernel.sock4.queue:
            break
    assert [u[4] for u in sent] == groups


class CountingSocket:
    """A real datagram socket standing in for a mroute socket (poll needs a
    descriptor), counting the reads the helper makes on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.reads = sock, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return self.sock.recv(size)


def test_the_request_loop_holds_upcalls_without_spinning(monkeypatch: Any) -> None:
    """run(): over the backlog mark the mroute sockets are not polled (no
    busy loop on a readable socket it does not read) while requests are
    still served; once the controller has read, upcalls flow again."""
    monkeypatch.setattr(server_module, "CHANNEL_BACKLOG", 1)  # one datagram holds
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    kernel = UpcallKernel([])
    kernel.sock4, kernel.sock6, kernel.mrdisc4 = (CountingSocket(b) for _, b in pairs)
    kernel.sock4.sock.setblocking(False)
    n = UPCALLS_PER_DATAGRAM + 10
    for i in range(n):
        pairs[0][0].send(igmpmsg(1, 0, S4, (0xE1000000 + i).to_bytes(4, "big")))
    server, ours = helper_with(kernel)
    done: list[int] = []

    def serve() -> None:
        try:
            done.append(server.run())
        except ConnectionResetError:  # (main() takes it as the end too)
            done.append(0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert select.select([ours], [], [], 5)[0]  # the first datagram is out ...
        time.sleep(0.2)  # ... and unread: many poll rounds, not one more mroute read
        assert kernel.sock4.reads == UPCALLS_PER_DATAGRAM
        ours.send(codec.encode([to_wire(AddVif(9, 4, 2, 12, 1))]))  # requests still served
        ours.settimeout(5)
        first = codec.decode(ours.recv(codec.MAX_DATAGRAM))
        assert len(first["upcalls"]) == UPCALLS_PER_DATAGRAM
        reply = codec.decode(ours.recv(codec.MAX_DATAGRAM))
        assert reply == {"t": "replies", "replies": [{"id": 9, "ok": True}]}
        rest = codec.decode(ours.recv(codec.MAX_DATAGRAM))  # read: upcalls flow again
        assert [u[4] for u in rest["upcalls"]] == \
            [(0xE1000000 + i).to_bytes(4, "big") for i in range(UPCALLS_PER_DATAGRAM, n)]
    finally:
        ours.close()
        thread.join(5)
        for a, b in pairs:
            a.close()
            b.close()
    assert done == [0]


def test_helper_fast_path_keeps_the_checks_of_add_mfc() -> None:
    g1, g2, g3 = b4("225.1.0.1"), b4("225.1.0.2"), b4("225.1.0.3")
    # oif VIF 5 was never added
    kernel = UpcallKernel([igmpmsg(1, 0, S4, g1)])
    server, ours = helper_with(kernel, SetTemplates(3, 1, (template(oifs=((5, 1),)),)),
                               Allow(4, 1, (10,)))
    server.forward_upcalls(4)
    assert kernel.mfc == {}
    assert [u[1] for u in upcalls_sent(ours)] == ["nocache"]
    assert server.state.used == [0]
    # a broadcast or multicast source is not a source, whatever the template
    kernel = UpcallKernel([igmpmsg(1, 0, b"\xff" * 4, g2), igmpmsg(1, 0, b4("224.0.0.1"), g3)])
    server, ours = helper_with(kernel, SetTemplates(3, 1, (template(),)), Allow(4, 1, (10,)))
    server.forward_upcalls(4)
    assert kernel.mfc == {}
    assert [u[1] for u in upcalls_sent(ours)] == ["nocache", "nocache"]
    assert server.state.used == [0] and server.state.mfc == set()
    # the inbound VIF must be one we added: templates of VIF 2 match, but no VIF 2
    server = server_with(SetTemplates(3, 1, (template(iif=2),)), Allow(4, 1, (10,)))
    assert server.state.match(4, 2, S4, g1) == 0
    assert server.install_fast(4, 2, S4, g1) is None
    assert server.state.used == [0]


def test_helper_fast_path_respects_the_mfc_cap() -> None:
    kernel = UpcallKernel([igmpmsg(1, 0, S4, b4("225.1.0.1"))])
    server, ours = helper_with(kernel, SetTemplates(3, 1, (template(),)), Allow(4, 1, (10,)))
    server.state.max_mfc = 0
    server.forward_upcalls(4)
    assert kernel.mfc == {}
    assert [u[1] for u in upcalls_sent(ours)] == ["nocache"]
    assert server.state.used == [0]
    # the fast path's flows count against the cap like add_mfc's
    server.state.max_mfc = 1
    assert server.install_fast(4, 0, S4, b4("225.1.0.1")) == 0
    assert server.install_fast(4, 0, S4, b4("225.1.0.2")) is None
    add = {"op": "add_mfc", "id": 9, "family": 4, "source": S4, "group": b4("225.3.0.1"),
           "iif": 0, "oifs": []}
    assert server.execute(ops.parse(add))["errno"] == errno.ENOSPC
    assert server.state.used == [1]


def test_helper_fast_path_kernel_error_leaves_it_to_the_controller() -> None:
    g1 = b4("225.1.0.1")
    kernel = UpcallKernel([igmpmsg(1, 0, S4, g1)])
    kernel.refuse.add((4, S4, g1))
    server, ours = helper_with(kernel, SetTemplates(3, 1, (template(),)), Allow(4, 1, (10,)))
    server.forward_upcalls(4)
    assert upcalls_sent(ours) == [[4, "nocache", 0, S4, g1]]
    assert kernel.mfc == {} and server.state.mfc == set() and server.state.used == [0]


def test_helper_fast_path_flows_are_deleted_like_any() -> None:
    g1 = b4("225.1.0.1")
    server = server_with(SetTemplates(3, 1, (template(),)), Allow(4, 1, (10,)))
    assert server.install_fast(4, 0, S4, g1) == 0
    delete = {"op": "del_mfc", "id": 9, "family": 4, "source": S4, "group": g1}
    assert server.execute(ops.parse(delete)) == {"id": 9, "ok": True}
    assert server.state.mfc == set() and server.mroute.mfc == {}  # type: ignore[attr-defined]
    assert server.state.used == [1]  # the limits are cumulative: no room comes back


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
        (parsed,) = ops.parse(to_wire(SetTemplates(1, 1, (t,))))["templates"]
        assert parsed[:2] == (t.family, t.iif) and parsed[6] == t.oifs
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
    books = h.core.flows.fast
    assert books.wire != () and helper.generation == books.generation
    assert helper.templates == ops.parse(to_wire(SetTemplates(0, books.generation,
                                                              books.wire)))["templates"]
    assert helper.limits == [FAST_CHUNK, FAST_CHUNK]  # room, paid with tokens
    # a flow the helper installed is booked like one we installed
    h.upcall("nocache", 4, 0, S4, g1)
    key = next(k for k in h.core.ledger.mfc if k.group == g1)
    assert h.core.ledger.mfc[key].oif_names == ("b",) and key in h.core.flows.flows
    # the templates change: a new generation; the old one's flows are removed
    index = h.server.install_fast(4, 0, S4, g2)
    assert index is not None
    late = Upcall(4, "learned", 0, S4, g2, helper.generation, index)
    h.reload(RELOADED)
    assert helper.generation == h.core.flows.fast.generation > late.generation
    h.perform(h.core.upcalls([late], h.now))
    assert (4, S4, g2) not in h.kernel.mfc
    assert all(k.group != g2 for k in h.core.ledger.mfc)
    # the flow booked before the change stays, re-planned like any learned route
    assert h.core.ledger.mfc[key].oif_names == ("b",) and key in h.core.flows.flows
    h.check_settled()


# -- budgets hold, whoever installs ----------------------------------------------------------------

STEPS = st.lists(st.tuples(st.sampled_from(["top_up", "helper", "controller", "forget", "tick"]),
                         st.integers(0, 1), st.integers(1, 80)), max_size=60)


@settings(max_examples=80, deadline=None)
@given(st.integers(150, 400), st.integers(100, 300), st.integers(50, 500), STEPS)
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


# -- budgets usable to the last flow ---------------------------------------------------------------

IDLE_RULES = [f"mroute from a group 225.{i}.0.0/16 to b\n" for i in range(10, 19)]


@pytest.mark.parametrize("idle", [0, 9])
@pytest.mark.parametrize("max_learned", [200, 1000])
def test_a_flood_fills_the_learned_budget_exactly(idle: int, max_learned: int) -> None:
    """With rules that see no traffic holding fast-path reserve, a flood at
    one rule still gets exactly max_learned learned routes: the reserve that
    stands in the way is taken back (the same templates anew), and what the
    kernel holds never exceeds the budget, reserves and retiring ones counted."""
    settings = Settings(conf_path="/etc/smcroute.conf",
                        limits=Limits(max_learned=max_learned, max_per_rule=max_learned))
    h = Harness(CONFIG + "".join(IDLE_RULES[:idle]), IFACES, settings=settings)
    flows = h.core.flows
    # every template got reserve at the start (unless the budget is too small for that)
    assert sum(flows.fast.limits) > 0 or max_learned < FAST_CHUNK * (len(flows.fast.routes) + 1)
    for i in range(3 * max_learned):
        h.nocache("10.0.0.1", f"225.1.{i // 250}.{i % 250 + 1}", "a")
        learned = sum(1 for k, m in h.kernel.mfc.items() if m[1] and any(k[1]))
        assert learned <= max_learned
        assert flows.total + flows.reserved_total + sum(flows.retiring.values()) <= max_learned
        if i % 97 == 0:
            h.tick(0.05)  # tokens come back
    assert flows.total == max_learned
    assert sum(1 for k, m in h.kernel.mfc.items() if m[1] and any(k[1])) == max_learned
    h.check()
