"""Multicast router discovery and multiple routing tables (issue 8).

mrdisc (SPEC 10, RFC 4286): with `phyint IF enable mrdisc` the router
advertises itself on IF: at once when mrdisc starts there, every -m seconds
after, and right away when a solicitation arrives; a termination when it
stops.  The frames are captured on the wire (AF_PACKET) at the far ends of
the router's links, in A (a-r) and B (b-r), and every field is checked.

Tables and identities (SPEC 1.1, 5.1, 11.3, 14.3): `-t ID` selects the
kernel's multicast routing table and `-i NAME` the PID file and control
socket (/var/run/NAME.pid, /var/run/NAME.sock).  Two daemons with their own
table and identity run side by side in the router namespace, each holding
only its own routes; a third on a table already taken exits at once naming
the table, and the first is not disturbed.

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
"""

from __future__ import annotations

import itertools
import secrets
import select
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

import pytest

from .conftest import SMCROUTECTL
from .netns import Netns, mfc_entry, netns_available, packet_socket, read_mfc, wait_for

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
SRC = {V4: "10.0.1.2", V6: "fd00:1::2"}  # the sender S on s-r
R_A = "10.0.2.1"  # the router's address on r-a (primary, and only, IPv4 address)
R_B = "10.0.3.1"
INTERVAL = 4  # -m 4: the shortest interval allowed
ADVERT, SOLICIT, TERMINATE = 0x30, 0x31, 0x32
ALL_SNOOPERS, ALL_ROUTERS = "224.0.0.106", "224.0.0.2"
ROUTER_ALERT = bytes([0x94, 0x04, 0x00, 0x00])
DEFAULT_TABLE = {V4: 253, V6: 254}  # RT_TABLE_DEFAULT / RT6_TABLE_DFLT (RT_TABLE_MAIN)


# -- RFC 4286 messages on the wire -----------------------------------------------------------


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class Igmp:
    """An IPv4 IGMP packet seen on the wire (any type)."""

    at: float  # time.monotonic() when read (resolution of the polling, ~0.1 s)
    outgoing: bool  # sent by the capturing namespace itself
    eth_dst: bytes
    src: str
    dst: str
    ttl: int
    options: bytes
    total_length: int
    df: bool
    payload: bytes  # the IGMP message

    @property
    def kind(self) -> int:
        return self.payload[0]

    @property
    def code(self) -> int:
        return self.payload[1]

    def problems(self, kind: int, code: int, src: str) -> list[str]:
        """How this frame differs from an RFC 4286 message kind/code from src."""
        want = {
            "type": (self.kind, kind),
            "code": (self.code, code),
            "IGMP length": (len(self.payload), 8),
            "checksum valid": (inet_checksum(self.payload) == 0, True),
            "reserved bytes": (self.payload[4:8], bytes(4)),
            "TTL": (self.ttl, 1),
            "IP options": (self.options, ROUTER_ALERT),
            "IP total length": (self.total_length, 20 + len(ROUTER_ALERT) + 8),
            "destination": (self.dst, ALL_SNOOPERS),
            "Ethernet destination": (self.eth_dst, bytes.fromhex("01005e00006a")),
            "source": (self.src, src),
        }
        return [f"{name}: {got!r}, want {exp!r}" for name, (got, exp) in want.items()
                if got != exp]


def parse_igmp(frame: bytes, at: float, outgoing: bool) -> Igmp | None:
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_IGMP or len(ip) < ihl:
        return None
    total = struct.unpack_from("!H", ip, 2)[0]
    flags = struct.unpack_from("!H", ip, 6)[0]
    payload = ip[ihl:total]
    if len(payload) < 4:
        return None
    return Igmp(at, outgoing, frame[0:6], socket.inet_ntoa(ip[12:16]),
                socket.inet_ntoa(ip[16:20]), ip[8], ip[20:ihl], total,
                bool(flags & 0x4000), payload)


class IgmpCapture:
    """Every IPv4 IGMP packet on ``ifname`` in ``ns``, both directions (an
    AF_PACKET socket opened inside that namespace); ifname None: on every
    interface of ns, also those created later.  Open it before the packets
    are expected."""

    def __init__(self, ns: Netns, ifname: str | None):
        self.ns, self.ifname = ns, ifname
        self.sock = packet_socket(ns, ifname)
        self.seen: list[Igmp] = []

    def poll(self, timeout: float = 0.0) -> None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        while ready:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            msg = parse_igmp(frame, time.monotonic(), addr[2] == socket.PACKET_OUTGOING)
            if msg is not None:
                self.seen.append(msg)

    def received(self, kind: int | None = None) -> list[Igmp]:
        """Received (not sent) RFC 4286 messages, or only those of ``kind``."""
        self.poll()
        return [m for m in self.seen if not m.outgoing and m.kind in (ADVERT, TERMINATE)
                and (kind is None or m.kind == kind)]

    def wait(self, kind: int, count: int, timeout: float) -> list[Igmp]:
        """Until ``count`` messages of ``kind`` were received (bounded)."""
        deadline = time.monotonic() + timeout
        while len(got := self.received(kind)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.poll(min(left, 0.05))
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def captures(topo):
    """IgmpCapture on a-r (in A) and b-r (in B), open before the daemon starts."""
    caps = {role: IgmpCapture(topo.ns[role], topo.leaf_if(role)) for role in ("A", "B")}
    try:
        yield caps
    finally:
        for c in caps.values():
            c.close()


def solicit(ns: Netns, ifname: str) -> None:
    """Send an RFC 4286 solicitation out of ifname: type 0x31 to 224.0.0.2,
    TTL 1, Router Alert, from a raw IGMP socket in ns."""
    msg = bytearray(struct.pack("!BBH", SOLICIT, 0, 0))
    struct.pack_into("!H", msg, 2, inet_checksum(bytes(msg)))
    with ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP) as sock:
        mreqn = struct.pack("4s4si", bytes(4), bytes(4), ns.ifindex(ifname))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ROUTER_ALERT)
        sock.sendto(bytes(msg), (ALL_ROUTERS, 0))


def assert_rfc4286(messages: list[Igmp], kind: int, code: int, src: str) -> None:
    for m in messages:
        assert not (p := m.problems(kind, code, src)), f"{m}: {p}"


MRDISC_CONF = "phyint r-a enable mrdisc\nphyint r-b enable\n"


# -- mrdisc ---------------------------------------------------------------------------------


def test_mrdisc_advertisements(topo, smcrouted, captures):
    """-m 4 and mrdisc on r-a only: A sees one advertisement when the daemon
    starts and then one every 4 s, all well formed; B sees none."""
    a, b = captures["A"], captures["B"]
    d = smcrouted(MRDISC_CONF, ["-m", str(INTERVAL)])
    ready = time.monotonic()
    first = a.wait(ADVERT, 1, 2.0)
    assert first, f"no advertisement on r-a at start; A saw {a.seen}\n{d.log()}"
    assert first[0].at - ready < 2.0
    got = a.wait(ADVERT, 2, 2.5 * INTERVAL)
    assert len(got) >= 2, f"{got}\n{d.log()}"
    assert_rfc4286(got, ADVERT, INTERVAL, R_A)
    assert all(m.df for m in got)  # as SMCRoute sends them (SPEC 10)
    gaps = [y.at - x.at for x, y in itertools.pairwise(got)]
    assert all(INTERVAL - 1.0 < g < INTERVAL + 1.5 for g in gaps), gaps
    assert b.received() == [], b.received()
    assert d.proc.poll() is None


def test_mrdisc_solicitation_gets_an_answer(topo, smcrouted, captures):
    """A solicitation from A is answered with an advertisement at once, long
    before the next periodic one would be due."""
    a, b = captures["A"], captures["B"]
    d = smcrouted(MRDISC_CONF, ["-m", str(INTERVAL)])
    assert a.wait(ADVERT, 1, 2.0), f"no advertisement at start\n{d.log()}"
    time.sleep(0.5)
    count = len(a.received(ADVERT))
    sent = time.monotonic()
    solicit(topo.ns["A"], topo.leaf_if("A"))
    got = a.wait(ADVERT, count + 1, 1.0)
    assert len(got) == count + 1, f"no answer within 1 s; A saw {a.seen}\n{d.log()}"
    assert got[-1].at - sent <= 1.0
    assert_rfc4286(got, ADVERT, INTERVAL, R_A)
    # the solicitation was for r-a only
    assert b.received() == []


def test_mrdisc_termination_on_reload(topo, smcrouted, captures):
    """mrdisc removed from r-a (its VIF stays) and added on r-b by a
    reload: a termination on r-a and no advertisement after it; an
    advertisement on r-b at once."""
    a, b = captures["A"], captures["B"]
    d = smcrouted(MRDISC_CONF, ["-m", str(INTERVAL)])
    assert a.wait(ADVERT, 1, 2.0), f"no advertisement at start\n{d.log()}"
    d.conf.write_text("phyint r-a enable\nphyint r-b enable mrdisc\n")
    res = d.ctl("reload")
    assert res.returncode == 0, res
    reloaded = time.monotonic()
    term = a.wait(TERMINATE, 1, 1.0)
    assert term, f"no termination on r-a; A saw {a.seen}\n{d.log()}"
    assert_rfc4286(term, TERMINATE, 0, R_A)
    started = b.wait(ADVERT, 1, 1.0)
    assert started, f"no advertisement on r-b when mrdisc started there\n{d.log()}"
    assert_rfc4286(started, ADVERT, INTERVAL, R_B)
    # quiet on r-a for longer than an interval; r-b goes on advertising
    time.sleep(max(0.0, reloaded + INTERVAL + 1.0 - time.monotonic()))
    assert [m for m in a.received() if m.at > term[0].at] == [], a.received()
    assert len(a.received(TERMINATE)) == 1
    assert len(b.received(ADVERT)) >= 2, b.received()
    assert d.proc.poll() is None


def test_mrdisc_termination_when_interface_dropped(topo, smcrouted, captures):
    """The phyint line of an mrdisc interface removed altogether (its VIF
    goes, SPEC 5.2 deletion): a termination is still sent there first, and
    nothing after; no errors about it."""
    a = captures["A"]
    d = smcrouted(MRDISC_CONF, ["-m", str(INTERVAL)])
    assert a.wait(ADVERT, 1, 2.0), f"no advertisement at start\n{d.log()}"
    d.conf.write_text("phyint r-b enable\n")
    res = d.ctl("reload")
    assert res.returncode == 0, res
    reloaded = time.monotonic()
    term = a.wait(TERMINATE, 1, 1.0)
    assert term, f"no termination on r-a; A saw {a.seen}\n{d.log()}"
    assert_rfc4286(term, TERMINATE, 0, R_A)
    time.sleep(max(0.0, reloaded + INTERVAL + 0.5 - time.monotonic()))
    assert [m for m in a.received() if m.at > term[0].at] == [], a.received()
    assert "Failed sending IGMP control message" not in d.log()


def test_mrdisc_follows_the_interface(topo, smcrouted):
    """The mrdisc interface is deleted and created again: no complaints
    while it is gone (nothing can be sent there), and advertisements resume
    on the new one, with its address, without a reload."""
    cap = IgmpCapture(topo.ns["A"], None)  # every interface of A, a-r re-created too
    try:
        d = smcrouted(MRDISC_CONF, ["-m", str(INTERVAL)])
        assert cap.wait(ADVERT, 1, 2.0), f"no advertisement at start\n{d.log()}"
        topo.disconnect("A")
        time.sleep(1.0)  # the daemon notices (netlink); bounded, nothing to poll for
        before = len(cap.received(ADVERT))
        topo.connect("A", 2)  # same name and addresses; returns when ready
        up = time.monotonic()
        got = cap.wait(ADVERT, before + 1, INTERVAL + 1.0)
        assert len(got) > before, f"no advertisement on the new r-a; A saw {cap.seen}\n{d.log()}"
        assert got[before].at - up <= INTERVAL + 1.0
        assert_rfc4286(got[before:], ADVERT, INTERVAL, R_A)
        assert "Failed sending IGMP control message" not in d.log()
        assert "Reloading configuration" not in d.log()
        assert d.proc.poll() is None
    finally:
        cap.close()


@pytest.mark.no_mroute
@pytest.mark.parametrize("value", ["3", "181", "x"])
def test_mrdisc_interval_out_of_range(topo, smcrouted, value):
    """-m outside 4..180: message on stderr and exit 1 at once (SPEC 1.1)."""
    d = smcrouted("", ["-m", value], ready=False, split_stderr=True)
    assert d.wait_exit(10) == 1, d.log()
    assert "Invalid mrdisc announcement interval, 4-180." in d.stderr()


# -- tables and identities --------------------------------------------------------------------


def ident() -> str:
    return f"smcpy-t-{secrets.token_hex(4)}"


def ctl_ident(d, name: str, *args: str) -> subprocess.CompletedProcess:
    """smcroutectl -i NAME ARGS in the daemon's namespace (no -u: the socket
    is /var/run/NAME.sock)."""
    argv = ["ip", "netns", "exec", d.ns.name, str(SMCROUTECTL), "-i", name, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


TABLE_CONF = {
    10: """\
mroute from r-s source 10.0.1.2 group 225.20.1.1 to r-a
mroute from r-s source fd00:1::2 group ff0e::20:1 to r-a
""",
    20: """\
mroute from r-s source 10.0.1.2 group 225.20.2.1 to r-b
mroute from r-s source fd00:1::2 group ff0e::20:2 to r-b
mroute from r-s source 10.0.1.2 group 225.20.1.1 to r-c
""",
}
TABLE_MFC = {
    (10, V4): {mfc_entry(SRC[V4], "225.20.1.1", "r-s", ["r-a"])},
    (10, V6): {mfc_entry(SRC[V6], "ff0e::20:1", "r-s", ["r-a"])},
    (20, V4): {mfc_entry(SRC[V4], "225.20.2.1", "r-s", ["r-b"]),
               mfc_entry(SRC[V4], "225.20.1.1", "r-s", ["r-c"])},
    (20, V6): {mfc_entry(SRC[V6], "ff0e::20:2", "r-s", ["r-b"])},
}


def tables_hold(topo, want: dict[tuple[int, int], set]) -> dict[tuple[int, int], set]:
    """The differences between what the tables in ``want`` hold and it."""
    diff = {}
    for (table, family), entries in want.items():
        got = read_mfc(topo.router, family, table=table)
        if got != entries:
            diff[(table, family)] = got
    return diff


def test_two_daemons_two_tables(topo, smcrouted):
    """-t 10 -i X and -t 20 -i Y side by side: each table holds exactly its
    daemon's routes (the same (S,G) may differ between them), the default
    tables none; smcroutectl -i X reaches X (socket /var/run/X.sock)."""
    names = {10: ident(), 20: ident()}
    daemons = {t: smcrouted(TABLE_CONF[t], ["-t", str(t)], ident=names[t]) for t in (10, 20)}
    for d in daemons.values():
        assert d.pidfile.read_text() == f"{d.pid}\n"  # /var/run/NAME.pid
        assert d.sock.exists()
    assert wait_for(lambda: not tables_hold(topo, TABLE_MFC), 5.0), tables_hold(topo, TABLE_MFC)
    for f in (V4, V6):
        assert read_mfc(topo.router, f, table=DEFAULT_TABLE[f]) == set()

    # smcroutectl -i NAME finds each daemon by its identity alone
    for t, other in ((10, 20), (20, 10)):
        res = ctl_ident(daemons[t], names[t], "-t", "show", "routes")
        assert res.returncode == 0, res
        mine = {e.group for f in (V4, V6) for e in TABLE_MFC[(t, f)]}
        theirs = {e.group for f in (V4, V6) for e in TABLE_MFC[(other, f)]} - mine
        assert all(g in res.stdout for g in mine), res.stdout
        assert not any(g in res.stdout for g in theirs), res.stdout
    res = ctl_ident(daemons[10], names[10], "add", "r-s", SRC[V4], "225.20.1.9", "r-c")
    assert res.returncode == 0, res
    added = mfc_entry(SRC[V4], "225.20.1.9", "r-s", ["r-c"])
    want = {**TABLE_MFC, (10, V4): TABLE_MFC[(10, V4)] | {added}}
    assert wait_for(lambda: not tables_hold(topo, want), 5.0), tables_hold(topo, want)

    # stopping one leaves the other's table alone
    assert daemons[10].stop() == 0
    # its PID file: removed, or where the daemon may not remove it (uid 0
    # confined, /var/run being shared: SECURITY.md) left empty
    pid = daemons[10].pidfile
    assert not pid.exists() or pid.read_text() == "", pid.read_text()
    assert ctl_ident(daemons[10], names[10], "show").returncode != 0
    assert wait_for(lambda: read_mfc(topo.router, V4, table=10) == set(), 5.0)
    assert read_mfc(topo.router, V6, table=10) == set()
    assert not tables_hold(topo, {k: v for k, v in TABLE_MFC.items() if k[0] == 20})
    assert ctl_ident(daemons[20], names[20], "show").returncode == 0
    assert daemons[20].proc.poll() is None


def test_busy_table_exits_naming_it(topo, smcrouted):
    """A daemon started on a table that another daemon holds exits non-zero
    at once, naming the table; the first keeps its routes and control
    socket."""
    first_name = ident()
    first = smcrouted(TABLE_CONF[10], ["-t", "10"], ident=first_name)
    want = {k: v for k, v in TABLE_MFC.items() if k[0] == 10}
    assert wait_for(lambda: not tables_hold(topo, want), 5.0), tables_hold(topo, want)

    second = smcrouted(TABLE_CONF[20], ["-t", "10"], ident=ident(), ready=False,
                       split_stderr=True)
    status = second.wait_exit(5.0)
    assert status not in (None, 0), f"exit {status}\n{second.log()}"
    assert "table 10" in second.stderr(), second.log()

    assert first.proc.poll() is None, first.log()
    assert not tables_hold(topo, want), tables_hold(topo, want)
    assert ctl_ident(first, first_name, "show").returncode == 0
    # and the one that gave up leaves nothing behind
    assert not second.pidfile.exists(), second.pidfile
    assert not second.sock.exists(), f"stale control socket {second.sock}"


def test_busy_table_same_identity_leaves_first_alone(topo, smcrouted):
    """The same mistake with the same -i (a second `smcrouted -i X` while X
    runs): the second exits naming the table and must not take the first's
    PID file or control socket with it."""
    name = ident()
    first = smcrouted(TABLE_CONF[10], ["-t", "10"], ident=name)
    second = smcrouted(TABLE_CONF[20], ["-t", "10"], ident=name, ready=False,
                       split_stderr=True)
    status = second.wait_exit(5.0)
    assert status not in (None, 0), f"exit {status}\n{second.log()}"
    assert "table 10" in second.stderr(), second.log()

    assert first.proc.poll() is None, first.log()
    want = {k: v for k, v in TABLE_MFC.items() if k[0] == 10}
    assert not tables_hold(topo, want), tables_hold(topo, want)
    res = ctl_ident(first, name, "show")
    assert res.returncode == 0, f"first daemon unreachable as -i {name}: {res}"
    assert first.pidfile.exists() and first.pidfile.read_text() == f"{first.pid}\n"
