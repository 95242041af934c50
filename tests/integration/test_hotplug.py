"""Interfaces that come and go (SPEC 2.7-2.8, 5.2, 8, 14.2; issue 7).

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
Interfaces are added to the router while the daemon runs: a veth pair to a
new namespace (Topology.connect: r-<role> in R, <role>-r in the new
namespace, which is destroyed with the topology).  The daemon follows
rtnetlink link/address events: config lines whose interfaces do not exist
yet wait on the pending list and are activated when the interfaces appear;
lines whose interface vanishes go back to the pending list and return by
themselves when it is re-created (no reload).  VIFs are allocated on first
use, lowest free slot, at most 32.

What the kernel holds is read back from R: the MFC (read_mr_cache for cheap
polling, read_mfc for names), the VIF/MIF tables (/proc/<pid>/net/ip_mr_vif,
ip6_mr_vif) and the memberships (/proc/<pid>/net/igmp, igmp6); real
multicast is sent through the router and counted at the receivers.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping

import pytest

from .netns import (
    MrCacheEntry,
    Receiver,
    Topology,
    collect,
    family_of,
    mfc_entry,
    netns_available,
    new_marker,
    read_igmp,
    read_mfc,
    read_mr_cache,
    read_mr_vifs,
    run,
    send,
    wait_for,
    wait_links_ready,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
SRC = {V4: "10.0.1.2", V6: "fd00:1::2"}  # the sender S on s-r
HOTPLUG = 1.0  # SPEC 8.3 (pending.sh): one second after the interface appears
SETTLE = 5.0  # bound for things the spec gives no deadline for
N = 20  # datagrams per flow
READY = "Ready, waiting for client request or kernel event."
MAXVIFS = 32

# Subnets of the links added by the tests (the topology uses 1..4).
NET_T, NET_U, NET_W = 10, 11, 12


# -- helpers ----------------------------------------------------------------------


def traffic(topo: Topology, sender: str, group: str, expect: Mapping[str, int],
            count: int = N, port: int = 5000) -> dict[str, int]:
    """Send ``count`` datagrams to ``group`` from namespace ``sender`` (its
    address on the link to the router, out of that link); return what each
    listener in ``expect`` got on its link to the router.  Waits (bounded)
    until each has its expected count, then a little longer for extras."""
    family = family_of(group)
    marker = new_marker()
    receivers: dict[str, Receiver] = {}
    try:
        for role in expect:
            receivers[role] = Receiver(topo.ns[role], topo.leaf_if(role), group, port, marker)
        link = topo.links[sender]
        send(topo.ns[sender], link.peer_ip(family), group, port, count, marker,
             link.peer_ifname)
        return collect(receivers, expect, timeout=3.0)
    finally:
        for r in receivers.values():
            r.close()


def check_traffic(topo: Topology, sender: str, group: str, expect: Mapping[str, int]) -> None:
    got = traffic(topo, sender, group, expect)
    assert got == expect, f"{group} from {sender}: got {got}, want {expect}"


def resolved(pid: int, family: int) -> dict[tuple[str, str], MrCacheEntry]:
    """{(source, group): entry} of the resolved MFC entries (cheap to poll)."""
    return {(e.source, e.group): e for e in read_mr_cache(pid, family) if e.resolved}


def mfc_both(topo: Topology) -> set:
    return read_mfc(topo.router, V4) | read_mfc(topo.router, V6)


def pending(daemon) -> list[dict]:
    res = daemon.ctl("-j", "show", "pending")
    assert res.returncode == 0, res
    return json.loads(res.stdout)["pending"]


def pending_lines(daemon) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """{(kind, iif, group, oifs)} of the pending list."""
    return {(p["kind"], p["iif"], p["group"], tuple(p["oifs"])) for p in pending(daemon)}


def vif_names(pid: int, prefix: str = "") -> dict[int, dict[str, int]]:
    """{family: {ifname: vif}} of R's VIF/MIF tables, names starting with prefix."""
    return {f: {n: v for n, v in t.items() if n.startswith(prefix)}
            for f, t in read_mr_vifs(pid).items()}


def show_vifs(daemon) -> dict[str, tuple[int | None, int | None]]:
    """{name: (vif, mif)} as smcroutectl -j show interfaces reports them."""
    res = daemon.ctl("-j", "show", "interfaces")
    assert res.returncode == 0, res
    return {i["name"]: (i["vif"], i["mif"]) for i in json.loads(res.stdout)["interfaces"]}


def alive(daemon) -> None:
    assert daemon.proc.poll() is None, f"smcrouted exited:\n{daemon.log()}"


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds


def until(predicate, deadline: float, interval: float = 0.02):
    """Poll predicate until it is truthy or the deadline passes (bounded)."""
    return wait_for(predicate, max(0.0, deadline - time.monotonic()), interval)


def ip_batch(topo: Topology, commands: Iterable[str]) -> None:
    """Run 'ip' commands in the router namespace in one go (ip -batch)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ip") as f:
        f.write("".join(f"{c}\n" for c in commands))
        f.flush()
        run(["ip", "-n", topo.router.name, "-batch", f.name], timeout=30)


# -- 1, 2: routes waiting for an interface -----------------------------------------------

INBOUND_CONF = """\
mroute from r-t source 10.0.10.2 group 225.10.1.1 to r-a
mroute from r-t source fd00:a::2 group ff0e::10:1 to r-a
"""


def test_route_with_late_inbound_interface_forwards(topo, smcrouted):
    """A route whose inbound interface does not exist yet waits on the
    pending list; once the interface appears the route is in the kernel
    within a second, and traffic arriving on it is forwarded."""
    d = smcrouted(INBOUND_CONF)
    assert pending_lines(d) == {("mroute", "r-t", "225.10.1.1", ("r-a",)),
                                ("mroute", "r-t", "ff0e::10:1", ("r-a",))}
    assert mfc_both(topo) == set()

    link = topo.connect("T", NET_T, wait=False)
    end = deadline_after(HOTPLUG)
    want = {V4: (link.peer_ip4, "225.10.1.1"), V6: (link.peer_ip6, "ff0e::10:1")}
    got = until(lambda: all(want[f] in resolved(d.pid, f) for f in (V4, V6)), end)
    assert got, (f"routes from r-t not installed within {HOTPLUG}s of r-t appearing:"
                 f" {read_mr_cache(d.pid, V4)} {read_mr_cache(d.pid, V6)}\n{d.log()}")
    assert mfc_both(topo) == {mfc_entry(link.peer_ip4, "225.10.1.1", "r-t", ["r-a"]),
                              mfc_entry(link.peer_ip6, "ff0e::10:1", "r-t", ["r-a"])}
    assert pending(d) == []
    log = d.log()
    assert (f"{d.conf} line 1: Activated pending mroute from r-t source 10.0.10.2"
            " group 225.10.1.1 to r-a") in log
    assert (f"{d.conf} line 2: Activated pending mroute from r-t source fd00:a::2"
            " group ff0e::10:1 to r-a") in log

    wait_links_ready([(topo.router, "r-t"), (topo.ns["T"], "t-r")])
    for group in ("225.10.1.1", "ff0e::10:1"):
        check_traffic(topo, "T", group, {"A": N, "B": 0})
    alive(d)


OUTBOUND_CONF = """\
mroute from r-s source 10.0.1.2 group 225.10.2.1 to r-a r-u
mroute from r-s source fd00:1::2 group ff0e::10:2 to r-a r-u
"""


def test_route_with_late_outbound_interface_forwards(topo, smcrouted):
    """A route with a missing outbound interface forwards to the others and
    waits on the pending list; when the interface appears it is added to the
    route within a second and receives the traffic too."""
    d = smcrouted(OUTBOUND_CONF)
    assert mfc_both(topo) == {mfc_entry(SRC[V4], "225.10.2.1", "r-s", ["r-a"]),
                              mfc_entry(SRC[V6], "ff0e::10:2", "r-s", ["r-a"])}
    assert pending_lines(d) == {("mroute", "r-s", "225.10.2.1", ("r-a", "r-u")),
                                ("mroute", "r-s", "ff0e::10:2", ("r-a", "r-u"))}
    check_traffic(topo, "S", "225.10.2.1", {"A": N, "B": 0})

    topo.connect("U", NET_U, wait=False)
    end = deadline_after(HOTPLUG)
    keys = {V4: (SRC[V4], "225.10.2.1"), V6: (SRC[V6], "ff0e::10:2")}
    got = until(lambda: all(len(getattr(resolved(d.pid, f).get(keys[f]), "oifs", ())) == 2
                            for f in (V4, V6)), end)
    assert got, (f"r-u not added as outbound within {HOTPLUG}s:"
                 f" {read_mr_cache(d.pid, V4)} {read_mr_cache(d.pid, V6)}\n{d.log()}")
    assert mfc_both(topo) == {mfc_entry(SRC[V4], "225.10.2.1", "r-s", ["r-a", "r-u"]),
                              mfc_entry(SRC[V6], "ff0e::10:2", "r-s", ["r-a", "r-u"])}
    assert pending(d) == []
    assert "Activated pending mroute from r-s source 10.0.1.2 group 225.10.2.1 to r-a r-u" \
        in d.log()

    wait_links_ready([(topo.router, "r-u"), (topo.ns["U"], "u-r")])
    for group in ("225.10.2.1", "ff0e::10:2"):
        check_traffic(topo, "S", group, {"A": N, "U": N, "B": 0})
    alive(d)


# -- 3: an interface deleted and created again ---------------------------------------------

LOST_CONF = """\
mroute from r-s source 10.0.1.2 group 225.10.3.1 to r-a r-b
mroute from r-s source fd00:1::2 group ff0e::10:3:1 to r-a r-b
mroute from r-b source 10.0.3.2 group 225.10.3.2 to r-a
mroute from r-b source fd00:3::2 group ff0e::10:3:2 to r-a
mgroup from r-b group 225.10.3.9
mgroup from r-b group ff0e::10:3:9
"""
LOST_MFC = {
    mfc_entry(SRC[V4], "225.10.3.1", "r-s", ["r-a", "r-b"]),
    mfc_entry(SRC[V6], "ff0e::10:3:1", "r-s", ["r-a", "r-b"]),
    mfc_entry("10.0.3.2", "225.10.3.2", "r-b", ["r-a"]),
    mfc_entry("fd00:3::2", "ff0e::10:3:2", "r-b", ["r-a"]),
}
LOST_MFC_WITHOUT_B = {
    mfc_entry(SRC[V4], "225.10.3.1", "r-s", ["r-a"]),
    mfc_entry(SRC[V6], "ff0e::10:3:1", "r-s", ["r-a"]),
}
LOST_PENDING = {
    ("mroute", "r-s", "225.10.3.1", ("r-a", "r-b")),
    ("mroute", "r-s", "ff0e::10:3:1", ("r-a", "r-b")),
    ("mroute", "r-b", "225.10.3.2", ("r-a",)),
    ("mroute", "r-b", "ff0e::10:3:2", ("r-a",)),
    ("mgroup", "r-b", "225.10.3.9", ()),
    ("mgroup", "r-b", "ff0e::10:3:9", ()),
}


def joined_on_rb(pid: int) -> tuple[bool, bool]:
    """Is R joined to the mgroup groups on r-b (IPv4, IPv6)?"""
    return ("225.10.3.9" in read_igmp(pid, V4).get("r-b", {}),
            "ff0e::10:3:9" in read_igmp(pid, V6).get("r-b", {}))


def test_interface_deleted_and_recreated(topo, smcrouted):
    """Routes and joins of an interface that vanishes go back to the pending
    list; when it is created again (new ifindex) they return by themselves,
    without a reload, and traffic flows as before."""
    d = smcrouted(LOST_CONF)
    assert wait_for(lambda: joined_on_rb(d.pid) == (True, True), SETTLE), read_igmp(d.pid)
    assert mfc_both(topo) == LOST_MFC
    assert pending(d) == []
    check_traffic(topo, "S", "225.10.3.1", {"A": N, "B": N})

    topo.disconnect("B")
    assert wait_for(lambda: mfc_both(topo) == LOST_MFC_WITHOUT_B, SETTLE), (
        f"{mfc_both(topo)}\n{d.log()}")
    assert wait_for(lambda: pending_lines(d) == LOST_PENDING, SETTLE), pending(d)
    text = d.ctl("-p", "show", "pending").stdout
    for line in ("mroute from r-b source 10.0.3.2 group 225.10.3.2 to r-a",
                 "mgroup from r-b group 225.10.3.9"):
        assert re.search(r"^" + line.replace(" ", r"\s+").replace(".", r"\.") + r"\s*$",
                         text, re.M), text
    assert "r-b" not in vif_names(d.pid)[V4] and "r-b" not in vif_names(d.pid)[V6]
    check_traffic(topo, "S", "225.10.3.1", {"A": N})
    alive(d)

    topo.connect("B", 3, wait=False)  # same name and addresses, new ifindex
    end = deadline_after(HOTPLUG)
    keys = {V4: ("10.0.3.2", "225.10.3.2"), V6: ("fd00:3::2", "ff0e::10:3:2")}
    got = until(lambda: all(keys[f] in resolved(d.pid, f) for f in (V4, V6)), end)
    assert got, f"routes from r-b not back within {HOTPLUG}s\n{d.log()}"
    assert wait_for(lambda: mfc_both(topo) == LOST_MFC, SETTLE), mfc_both(topo)
    assert wait_for(lambda: joined_on_rb(d.pid) == (True, True), SETTLE), read_igmp(d.pid)
    assert pending(d) == []
    assert "Reloading configuration" not in d.log()

    wait_links_ready([(topo.router, "r-b"), (topo.ns["B"], "b-r")])
    for group in ("225.10.3.1", "ff0e::10:3:1"):
        check_traffic(topo, "S", group, {"A": N, "B": N, "C": 0})
    for group in ("225.10.3.2", "ff0e::10:3:2"):
        check_traffic(topo, "B", group, {"A": N, "C": 0})
    alive(d)


# -- 4: wildcards pick up new interfaces -----------------------------------------------------

WILDCARD_CONF = """\
phyint r-+ enable
mroute from r-s source 10.0.1.2 group 225.10.4.1 to r-+
mroute from r-s source fd00:1::2 group ff0e::10:4 to r-+
mroute from r-+ group 225.10.4.2 to r-a
"""


def test_wildcard_picks_up_new_interface(topo, smcrouted):
    """`phyint r-+`, an outbound `r-+` and an inbound `r-+` template cover an
    interface that appears later: it gets a VIF and a MIF, is added to the
    route, and traffic arriving on it matches the template."""
    d = smcrouted(WILDCARD_CONF)
    before = vif_names(d.pid, "r-")
    assert set(before[V4]) == set(before[V6]) == {"r-s", "r-a", "r-b", "r-c"}

    topo.connect("W", NET_W, wait=False)
    end = deadline_after(HOTPLUG)
    got = until(lambda: all("r-w" in t for t in vif_names(d.pid, "r-").values()), end)
    assert got, f"r-w has no VIF/MIF within {HOTPLUG}s: {read_mr_vifs(d.pid)}\n{d.log()}"
    after = vif_names(d.pid, "r-")
    for f in (V4, V6):  # the others keep their slots; r-w takes the lowest free one
        assert {n: v for n, v in after[f].items() if n != "r-w"} == before[f]
        assert after[f]["r-w"] == min(set(range(MAXVIFS)) - set(before[f].values()))
    assert show_vifs(d)["r-w"] == (after[V4]["r-w"], after[V6]["r-w"])
    assert wait_for(lambda: mfc_both(topo) == {
        # r-+ covers the inbound r-s too: installed, as SMCRoute does (SPEC 2.6)
        mfc_entry(SRC[V4], "225.10.4.1", "r-s", ["r-s", "r-a", "r-b", "r-c", "r-w"]),
        mfc_entry(SRC[V6], "ff0e::10:4", "r-s", ["r-s", "r-a", "r-b", "r-c", "r-w"]),
    }, SETTLE), mfc_both(topo)

    wait_links_ready([(topo.router, "r-w"), (topo.ns["W"], "w-r")])
    for group in ("225.10.4.1", "ff0e::10:4"):
        check_traffic(topo, "S", group, {"A": N, "W": N})
    # (*,G) template from r-+: traffic arriving on the new r-w is learned.
    # SMCRoute: "expect at least one initial frame to be lost" with (*,G).
    got = traffic(topo, "W", "225.10.4.2", {"A": N - 1, "B": 0})
    assert got["A"] >= N - 1 and got["B"] == 0, got
    assert mfc_entry("10.0.12.2", "225.10.4.2", "r-w", ["r-a"]) in read_mfc(topo.router, V4)
    alive(d)


def test_slots_freed_by_a_vanished_interface_are_reused_later(topo, smcrouted):
    """A vanished interface frees its VIF/MIF; an interface that appears in
    a later change takes the lowest free slot, i.e. that one; the returning
    interface then takes the next free one."""
    # the mgroup line shows (on the pending list) when the daemon saw r-b go
    d = smcrouted("phyint r-+ enable\nmgroup from r-b group 225.10.6.1\n")
    first = vif_names(d.pid, "r-")
    assert set(first[V4]) == {"r-s", "r-a", "r-b", "r-c"}
    assert sorted(first[V4].values()) == [0, 1, 2, 3]
    slot_b = {f: first[f]["r-b"] for f in (V4, V6)}

    topo.disconnect("B")
    # the kernel drops the VIF with the device; wait until the daemon has
    # noticed too, so that r-w below comes in a change of its own
    assert wait_for(lambda: pending_lines(d) == {("mgroup", "r-b", "225.10.6.1", ())},
                    SETTLE), pending(d)
    assert all("r-b" not in t for t in vif_names(d.pid, "r-").values()), read_mr_vifs(d.pid)
    alive(d)

    topo.connect("W", NET_W, wait=False)
    end = deadline_after(HOTPLUG)
    assert until(lambda: all("r-w" in t for t in vif_names(d.pid, "r-").values()), end), (
        f"{read_mr_vifs(d.pid)}\n{d.log()}")
    for f in (V4, V6):
        assert vif_names(d.pid, "r-")[f]["r-w"] == slot_b[f]

    topo.connect("B", 3, wait=False)
    assert wait_for(lambda: all("r-b" in t for t in vif_names(d.pid, "r-").values()),
                    SETTLE), read_mr_vifs(d.pid)
    now = vif_names(d.pid, "r-")
    for f in (V4, V6):
        assert now[f]["r-b"] == 4
        assert {n: v for n, v in now[f].items() if n not in ("r-b", "r-w")} == {
            n: v for n, v in first[f].items() if n != "r-b"}
    assert {n: show_vifs(d)[n] for n in now[V4]} == {n: (now[V4][n], now[V6][n])
                                                     for n in now[V4]}
    alive(d)


# -- 5: VIF numbers across reloads ------------------------------------------------------------

RELOAD_CONFS = [
    # 1: r-a 0, r-b 1, r-c 2
    "phyint r-a enable\nphyint r-b enable\nphyint r-c enable\n",
    # 2: r-b goes (slot 1 freed by this reload), r-s is new: it takes 3, not 1
    "phyint r-a enable\nphyint r-c enable\n"
    "mroute from r-s source 10.0.1.2 group 225.10.5.1 to r-c\n",
    # 3: r-b is back, in a later reload: lowest free slot, 1 again
    "mroute from r-b source 10.0.3.2 group 225.10.5.2 to r-s r-a\n"
    "phyint r-c enable\nphyint r-a enable\n"
    "mroute from r-s source 10.0.1.2 group 225.10.5.1 to r-c\n",
]
RELOAD_VIFS = [
    {"r-a": 0, "r-b": 1, "r-c": 2},
    {"r-a": 0, "r-c": 2, "r-s": 3},
    {"r-a": 0, "r-b": 1, "r-c": 2, "r-s": 3},
]


def test_vif_numbers_stable_across_reloads(topo, smcrouted):
    """SPEC 7 / 14.2 (reload.sh): interfaces kept keep their VIF and MIF;
    new ones take the lowest slots not freed by the same reload."""
    d = smcrouted(RELOAD_CONFS[0])
    for step, (conf, want) in enumerate(zip(RELOAD_CONFS, RELOAD_VIFS, strict=True)):
        if step:
            d.conf.write_text(conf)
            res = d.ctl("reload")
            assert res.returncode == 0, (step, res, d.log())
        got = vif_names(d.pid, "r-")
        assert got == {V4: want, V6: want}, f"after config {step + 1}: {got}"
        shown = show_vifs(d)
        assert {n: shown[n] for n in want} == {n: (v, v) for n, v in want.items()}, shown
    assert read_mfc(topo.router, V4) == {
        mfc_entry(SRC[V4], "225.10.5.1", "r-s", ["r-c"]),
        mfc_entry("10.0.3.2", "225.10.5.2", "r-b", ["r-s", "r-a"]),
    }
    alive(d)


# -- 6: the 33rd interface ---------------------------------------------------------------------

def make_x_links(topo: Topology, numbers: Iterable[int]) -> None:
    """veth pairs xN <-> yN, both ends in the router (in order of N)."""
    ip_batch(topo, [f"link add x{n} type veth peer name y{n}" for n in numbers])


def x_vifs(d) -> dict[int, dict[str, int]]:
    return vif_names(d.pid, "x")


def test_33_interfaces_32_vifs(topo, smcrouted):
    """`phyint x+ enable` over 33 interfaces: 32 VIFs and MIFs, and the log
    names the interface that got none."""
    make_x_links(topo, range(33))
    d = smcrouted("phyint x+ enable\n")
    got = x_vifs(d)
    for f in (V4, V6):
        assert len(got[f]) == MAXVIFS, got[f]
        assert sorted(got[f].values()) == list(range(MAXVIFS))
    (left,) = {f"x{n}" for n in range(33)} - set(got[V4])
    assert left not in got[V6]
    log = d.log()
    assert f"Not enough available VIFs to create {left}" in log, log
    shown = show_vifs(d)
    assert shown[left] == (None, None)
    alive(d)


def test_33rd_interface_hotplugged(topo, smcrouted):
    """32 VIFs in use and a 33rd matching interface appears: it is named in
    the log; once a VIF is freed (its interface is deleted) it gets that
    slot at the next interface change."""
    make_x_links(topo, range(32))
    # the mgroup line shows (on the pending list) when the daemon saw x5 go
    d = smcrouted("phyint x+ enable\nmgroup from x5 group 225.10.6.5\n")
    assert {f: len(t) for f, t in x_vifs(d).items()} == {V4: MAXVIFS, V6: MAXVIFS}

    make_x_links(topo, [32])
    assert wait_for(lambda: "Not enough available VIFs to create x32" in d.log(), SETTLE), (
        d.log())
    assert "x32" not in x_vifs(d)[V4]
    alive(d)

    slot = {f: t["x5"] for f, t in x_vifs(d).items()}
    topo.router.ip("link", "del", "x5")  # and y5
    assert wait_for(lambda: pending_lines(d) == {("mgroup", "x5", "225.10.6.5", ())}, SETTLE), (
        pending(d))
    assert "x5" not in x_vifs(d)[V4]
    # A slot freed by a change may be reused from the next one on: make sure
    # there is a next one.
    topo.router.ip("link", "set", "y0", "up")
    assert wait_for(lambda: "x32" in x_vifs(d)[V4] and "x32" in x_vifs(d)[V6], SETTLE), (
        f"{read_mr_vifs(d.pid)}\n{d.log()}")
    assert {f: t["x32"] for f, t in x_vifs(d).items()} == slot
    assert {f: len(t) for f, t in x_vifs(d).items()} == {V4: MAXVIFS, V6: MAXVIFS}
    alive(d)
