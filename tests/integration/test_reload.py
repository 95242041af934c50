"""SIGHUP reload: the kernel ends up holding exactly what the new config says,
without disturbing what did not change (SPEC 7, DESIGN "Data flows").

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
While the daemon goes through a sequence of reloads (routes added, a route
removed, OIF sets changed and an interface dropped, a config with an error),
an IPv4 and an IPv6 flow on an unchanged route run without pause and must not
lose a single datagram.  After every reload the MFC read back over rtnetlink
equals the set the config describes, and the VIF/MIF table keeps the slots of
the interfaces that stay.
"""

from __future__ import annotations

import ipaddress
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from .netns import (
    Receiver,
    family_of,
    flow,
    mfc_entry,
    netns_available,
    new_marker,
    read_mfc,
    wait_for,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
SRC = {V4: "10.0.1.2", V6: "fd00:1::2"}  # the sender's address on s-r
READY = "Ready, waiting for client request or kernel event."
RELOADING = "Reloading configuration, please wait ..."
RELOAD_TIMEOUT = 10.0
RECEIVERS = ["A", "B", "C"]
N = 20

# Groups, per family: KEEP carries the continuous flow and never changes;
# GONE is removed in step 2; CHG changes its OIFs in step 3; NEW and NEW2
# are added in step 1.
KEEP = {V4: "225.1.1.1", V6: "ff0e::1:1"}
GONE = {V4: "225.1.1.2", V6: "ff0e::1:2"}
CHG = {V4: "225.1.1.3", V6: "ff0e::1:3"}
NEW = {V4: "225.1.1.4", V6: "ff0e::1:4"}
NEW2 = {V4: "225.1.1.5", V6: "ff0e::1:5"}
A_SRC = {V4: "10.0.2.2", V6: "fd00:2::2"}  # receiver A's address: a second inbound


@dataclass(frozen=True)
class Route:
    iif: str
    source: str
    group: str
    oifs: tuple[str, ...]

    def line(self) -> str:
        return (f"mroute from {self.iif} source {self.source} group {self.group}"
                f" to {' '.join(self.oifs)}")


def both(iif: str, group: dict, oifs: tuple[str, ...], src: dict = SRC) -> list[Route]:
    return [Route(iif, src[f], group[f], oifs) for f in (V4, V6)]


def render(phyints: Sequence[str], routes: Sequence[Route], extra: Sequence[str] = ()) -> str:
    lines = ["# written by test_reload.py"]
    lines += [f"phyint {name} enable" for name in phyints]
    lines += [r.line() for r in routes]
    lines += list(extra)
    return "\n".join(lines) + "\n"


def expected_mfc(routes: list[Route]) -> dict[int, set]:
    want: dict[int, set] = {V4: set(), V6: set()}
    for r in routes:
        want[family_of(r.group)].add(mfc_entry(r.source, r.group, r.iif, r.oifs))
    return want


# The configs of the sequence, each with the routes it describes.
PHY0 = ["r-s", "r-a", "r-b", "r-c"]
R0 = [
    *both("r-s", KEEP, ("r-a",)),
    *both("r-s", GONE, ("r-b",)),
    *both("r-s", CHG, ("r-b", "r-c")),
]
# (1) add routes, one of them from another inbound interface
R1 = [*R0, *both("r-s", NEW, ("r-a", "r-c")), *both("r-a", NEW2, ("r-b",), src=A_SRC)]
# (2) remove a route
R2 = [r for r in R1 if r.group not in GONE.values()]
# (3) CHG: r-c removed, r-a added; NEW loses r-c too and r-c is no longer
#     named anywhere, so its VIF and MIF go
R3 = [
    Route(r.iif, r.source, r.group, ("r-a", "r-b")) if r.group in CHG.values()
    else Route(r.iif, r.source, r.group, ("r-a",)) if r.group in NEW.values()
    else r
    for r in R2
]
PHY3 = ["r-s", "r-a", "r-b"]


# --------------------------------------------------------------------------
# helpers


def reload(daemon, config: str, timeout: float = RELOAD_TIMEOUT) -> str:
    """Write config, SIGHUP, wait until the daemon says it is ready again.

    Returns the part of the log this reload wrote."""
    before = daemon.log()
    readies = before.count(READY)
    daemon.conf.write_text(config)
    daemon.proc.send_signal(signal.SIGHUP)
    done = wait_for(lambda: daemon.log().count(READY) > readies, timeout, interval=0.01)
    log = daemon.log()
    assert done, f"reload did not finish within {timeout}s; log:\n{log}"
    assert daemon.proc.poll() is None, f"smcrouted exited during reload; log:\n{log}"
    part = log[len(before):]
    assert part.count(RELOADING) == 1, part
    return part


def mfc(topo) -> dict[int, set]:
    return {f: read_mfc(topo.router, f) for f in (V4, V6)}


def assert_mfc(topo, routes: list[Route], what: str) -> None:
    got, want = mfc(topo), expected_mfc(routes)
    for f in (V4, V6):
        assert got[f] == want[f], (f"{what}, IPv{4 if f == V4 else 6}:"
                                   f" missing {want[f] - got[f]}, extra {got[f] - want[f]}")


def read_vifs(pid: int) -> dict[int, dict[str, int]]:
    """{family: {ifname: vif}} from /proc/PID/net/ip_mr_vif and ip6_mr_vif."""
    out: dict[int, dict[str, int]] = {}
    for family, name in ((V4, "ip_mr_vif"), (V6, "ip6_mr_vif")):
        with open(f"/proc/{pid}/net/{name}") as f:
            rows = f.read().splitlines()[1:]  # header first
        out[family] = {row.split()[1]: int(row.split()[0]) for row in rows if row.strip()}
    return out


def read_counters(pid: int) -> dict[tuple[str, str], int]:
    """{(source, group): packets} of resolved MFC entries, both families, from
    /proc/PID/net/ip_mr_cache and ip6_mr_cache.  A route deleted and added
    again starts counting from zero."""
    out: dict[tuple[str, str], int] = {}
    for name in ("ip_mr_cache", "ip6_mr_cache"):
        with open(f"/proc/{pid}/net/{name}") as f:
            rows = f.read().splitlines()[1:]
        for row in rows:
            # Group Origin Iif Pkts Bytes Wrong Oifs; IPv4 addresses are the
            # raw big-endian words printed as host-order hex
            group, origin, iif, pkts = row.split()[:4]
            if int(iif) < 0:
                continue  # unresolved
            if name == "ip_mr_cache":
                group, origin = (socket.inet_ntoa(int(a, 16).to_bytes(4, sys.byteorder))
                                 for a in (group, origin))
            else:
                group, origin = (str(ipaddress.ip_address(a)) for a in (group, origin))
            out[(origin, group)] = int(pkts)
    return out


def mentions(log_part: str, routes: list[Route]) -> list[str]:
    """Log lines reporting a kernel change (add, delete, update ...) of one of
    routes' groups; the config's own lines (a debug echo) aside."""
    group = re.compile("|".join(rf"(?<![\w:.]){re.escape(r.group)}(?![\w:.])" for r in routes))
    change = re.compile(r"\b(add|del|remov|install|updat|replac|chang|modif)", re.IGNORECASE)
    return [ln for ln in log_part.splitlines()
            if group.search(ln) and change.search(ln) and "mroute from" not in ln]


def keep_untouched(daemon, part: str, last: dict) -> dict:
    """The KEEP routes were not deleted (their kernel counters did not restart)
    and the reload did not mention them (no re-add either); returns the new
    counters."""
    now = read_counters(daemon.pid)
    keep = [r for r in R0 if r.group in KEEP.values()]
    for r in keep:
        sg = (r.source, r.group)
        assert sg in now, f"{sg} missing from the kernel: {now}"
        assert now[sg] >= last.get(sg, 0), f"{sg} counters restarted: {last[sg]} -> {now[sg]}"
    touched = mentions(part, keep)
    assert not touched, f"reload touched an unchanged route: {touched}"
    return now


class SeqFlow:
    """A continuous numbered flow S -> group, counted at one receiver.

    A sender thread sends ``rate`` datagrams per second (bounded by
    ``max_seconds``) until stopped; a receiver thread drains at once so that
    its socket buffer never overflows.  ``lost()`` compares sequence numbers.
    """

    def __init__(self, topo, group: str, role: str, port: int, rate: int = 300,
                 max_seconds: float = 30.0):
        self.family = family_of(group)
        self.topo, self.group, self.port = topo, group, port
        self.interval = 1.0 / rate
        self.max_count = int(rate * max_seconds)
        self.marker = new_marker()
        self.receiver = Receiver(topo.ns[role], topo.leaf_if(role), group, port, self.marker)
        self.seen: set[int] = set()
        self.sent = 0
        self.errors: list[BaseException] = []
        self._stop_send = threading.Event()
        self._stop_recv = threading.Event()
        self._sock = self._open_sender()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._send,), daemon=True),
            threading.Thread(target=self._guard, args=(self._recv,), daemon=True),
        ]

    def _open_sender(self) -> socket.socket:
        sender, ifname = self.topo.sender, self.topo.leaf_if("S")
        index = sender.ifindex(ifname)
        source = self.topo.source(self.family)
        sock = sender.socket(self.family)
        try:
            if self.family == V4:
                sock.bind((source, 0))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
                mreqn = socket.inet_aton("0.0.0.0") + socket.inet_aton(source)
                mreqn += index.to_bytes(4, "little")
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                self._dest: tuple = (self.group, self.port)
            else:
                sock.bind((source, 0, 0, 0))
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 8)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                self._dest = (self.group, self.port, 0, index)
        except BaseException:
            sock.close()
            raise
        return sock

    def _guard(self, target) -> None:
        try:
            target()
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def _send(self) -> None:
        next_at = time.monotonic()
        while not self._stop_send.is_set() and self.sent < self.max_count:
            self._sock.sendto(self.marker + b" %d" % self.sent, self._dest)
            self.sent += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop_send.wait(delay)

    def _recv(self) -> None:
        sock = self.receiver.sock
        prefix = self.marker + b" "
        while not self._stop_recv.is_set():
            select.select([sock], [], [], 0.05)
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                if data.startswith(prefix):
                    self.seen.add(int(data[len(prefix):]))

    def start(self) -> SeqFlow:
        for t in self._threads:
            t.start()
        return self

    def received(self) -> int:
        return len(self.seen)

    def stop_sending(self, timeout: float = 3.0) -> None:
        self._stop_send.set()
        self._threads[0].join(timeout)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop sending, give the last datagrams time to arrive, stop receiving."""
        self.stop_sending(timeout)
        wait_for(lambda: len(self.seen) >= self.sent, timeout, interval=0.02)
        self._stop_recv.set()
        self._threads[1].join(timeout)

    def close(self) -> None:
        self._stop_send.set()
        self._stop_recv.set()
        for t in self._threads:
            if t.is_alive():
                t.join(2.0)
        self._sock.close()
        self.receiver.close()

    def lost(self) -> list[int]:
        return sorted(set(range(self.sent)) - self.seen)


# --------------------------------------------------------------------------
# tests


def test_reload_sequence_keeps_unchanged_flows_and_matches_config(topo, smcrouted):
    daemon = smcrouted(render(PHY0, R0))
    assert_mfc(topo, R0, "at start")
    vifs0 = read_vifs(daemon.pid)
    for f in (V4, V6):
        assert set(vifs0[f]) == set(PHY0), vifs0  # one VIF/MIF per interface named

    flows = []
    try:
        for i, f in enumerate((V4, V6)):
            flows.append(SeqFlow(topo, KEEP[f], "A", port=6000 + i).start())
        # both flows get through before the first reload
        assert wait_for(lambda: all(fl.received() >= 20 for fl in flows), 5.0), \
            [(fl.group, fl.sent, fl.received(), fl.errors) for fl in flows]

        counters = read_counters(daemon.pid)

        # (1) routes added; the new ones forward
        part = reload(daemon, render(PHY0, R1))
        counters = keep_untouched(daemon, part, counters)
        assert_mfc(topo, R1, "after adding routes")
        assert read_vifs(daemon.pid) == vifs0
        for f in (V4, V6):
            got = flow(topo, NEW[f], RECEIVERS, {"A": N, "C": N}, count=N)
            assert got == {"A": N, "B": 0, "C": N}, f"IPv{4 if f == V4 else 6} {got}"
            got = flow(topo, CHG[f], RECEIVERS, {"B": N, "C": N}, count=N)
            assert got == {"A": 0, "B": N, "C": N}, f"IPv{4 if f == V4 else 6} {got}"

        # (2) a route removed
        part = reload(daemon, render(PHY0, R2))
        counters = keep_untouched(daemon, part, counters)
        assert_mfc(topo, R2, "after removing a route")
        assert read_vifs(daemon.pid) == vifs0

        # (3) OIF sets changed; r-c is no longer used anywhere
        part = reload(daemon, render(PHY3, R3))
        counters = keep_untouched(daemon, part, counters)
        assert_mfc(topo, R3, "after changing OIF sets")
        vifs3 = read_vifs(daemon.pid)
        for f in (V4, V6):
            assert "r-c" not in vifs3[f], f"r-c still has a VIF/MIF: {vifs3}"
            assert vifs3[f] == {n: v for n, v in vifs0[f].items() if n != "r-c"}, (vifs0, vifs3)
        for f in (V4, V6):
            # r-c removed from CHG, r-a added
            got = flow(topo, CHG[f], RECEIVERS, {"A": N, "B": N}, count=N)
            assert got == {"A": N, "B": N, "C": 0}, f"IPv{4 if f == V4 else 6} {got}"

        # (4) a config with an error that would otherwise remove a lot
        before = mfc(topo)
        bad_lines = [*[r.line() for r in R3 if r.group in KEEP.values()], "mroute to r-a"]
        bad = render(["r-s", "r-a"], [], bad_lines)
        bad_line_no = bad.splitlines().index("mroute to r-a") + 1
        part = reload(daemon, bad)
        counters = keep_untouched(daemon, part, counters)
        assert mfc(topo) == before
        assert_mfc(topo, R3, "after a rejected config")
        assert read_vifs(daemon.pid) == vifs3
        assert_error_reported(part, str(daemon.conf), bad_line_no, "mroute to r-a")

        for fl in flows:
            fl.stop_sending()
        for fl in flows:
            fl.stop()
        for fl in flows:
            assert not fl.errors, fl.errors
            assert fl.sent >= 300, (fl.group, fl.sent)  # the flow ran through the reloads
            lost = fl.lost()
            assert not lost, (f"{fl.group}: {len(lost)} of {fl.sent} datagrams lost"
                              f" (first {lost[:10]})")
    finally:
        for fl in flows:
            fl.close()
    assert daemon.proc.poll() is None, daemon.log()

    # the removed route no longer forwards (checked last: the kernel keeps an
    # unresolved entry for unrouted traffic, which would spoil exact MFC checks)
    for f in (V4, V6):
        got = flow(topo, GONE[f], RECEIVERS, {}, count=N)
        assert got == {"A": 0, "B": 0, "C": 0}, f"IPv{4 if f == V4 else 6} {got}"


def assert_error_reported(log_part: str, conf: str, line_no: int, raw: str) -> None:
    assert f"Parse error in {conf}, configuration not applied, keeping the running one" \
        in log_part, log_part
    where = f"{conf} line {line_no}"
    # the daemon may echo every line at debug ("FILE line N: <raw line>"):
    # the error must be a line of its own naming the same place
    errors = [ln for ln in log_part.splitlines()
              if where in ln and not ln.rstrip().endswith(f"{where}: {raw}")]
    assert errors, f"no error naming {where}:\n{log_part}"


@pytest.mark.parametrize(
    "error_line",
    [
        pytest.param("mroute to r-a", id="mroute-without-from-and-group"),
        pytest.param(f"mroute from r-s source {SRC[V4]} group", id="group-without-value"),
        # an error however mgroup support evolves
        pytest.param("mgroup from r-a", id="mgroup-without-group"),
    ],
)
def test_rejected_reload_changes_nothing(topo, smcrouted, error_line):
    daemon = smcrouted(render(PHY0, R1))
    assert_mfc(topo, R1, "at start")
    before, vifs = mfc(topo), read_vifs(daemon.pid)
    # Everything else in the new file is a valid, very different config.
    lines = [*(r.line() for r in R3 if r.group in KEEP.values()), error_line,
             *(r.line() for r in both("r-s", {V4: "225.9.9.9", V6: "ff0e::9:9"}, ("r-b",)))]
    bad = render(["r-s", "r-b"], [], lines)
    part = reload(daemon, bad)
    assert mfc(topo) == before
    assert read_vifs(daemon.pid) == vifs
    assert_error_reported(part, str(daemon.conf), bad.splitlines().index(error_line) + 1,
                          error_line)
    # still serving: a good reload afterwards is applied
    reload(daemon, render(PHY0, R2))
    assert_mfc(topo, R2, "after the next, good reload")
    assert daemon.proc.poll() is None, daemon.log()


def test_reload_of_same_config_touches_nothing(topo, smcrouted):
    """An unchanged config changes nothing in the kernel: no route is deleted
    (the kernel's per-entry counters keep counting), none is re-added (the
    daemon does not mention it), VIFs stay, and the flow loses nothing."""
    daemon = smcrouted(render(PHY0, R1))
    fl = SeqFlow(topo, KEEP[V4], "A", port=6100).start()
    try:
        assert wait_for(lambda: fl.received() >= 20, 5.0), (fl.sent, fl.received(), fl.errors)
        vifs = read_vifs(daemon.pid)
        counters = read_counters(daemon.pid)
        for _ in range(3):
            part = reload(daemon, render(PHY0, R1))
            assert_mfc(topo, R1, "after reloading the same config")
            assert read_vifs(daemon.pid) == vifs
            assert "Parse error" not in part, part
            assert not mentions(part, R1), f"unchanged routes touched: {mentions(part, R1)}"
            now = read_counters(daemon.pid)
            assert all(now.get(sg, -1) >= n for sg, n in counters.items()), (counters, now)
            counters = now
        fl.stop()
        assert not fl.errors, fl.errors
        assert not fl.lost(), f"{len(fl.lost())} of {fl.sent} lost"
    finally:
        fl.close()
