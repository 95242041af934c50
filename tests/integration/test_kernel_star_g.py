"""--kernel-star-g: exact-group (*,G) rules as kernel (*,G) entries.

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
S has extra addresses on its link, so that one group gets traffic from
several new sources. That no upcall happened is read from the kernel: it
creates an unresolved (S,G) entry exactly when it sends a NOCACHE upcall,
so a source that never shows in /proc/net/ip_mr_cache (resolved or not)
never cost one.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from contextlib import ExitStack

import pytest

from .netns import (
    McastSender,
    Receiver,
    Ticker,
    collect,
    mfc_entry,
    netns_available,
    new_marker,
    read_mfc,
    read_mr_cache,
    wait_for,
)
from .test_star_g import PORT, RECEIVERS, nothing_arrives, open_receivers, reload

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]
ZERO = {V4: "0.0.0.0", V6: "::"}
GROUP = {V4: "225.30.0.1", V6: "ff0e::30:1"}  # the exact-group rule: to r-a r-b
SECOND = {V4: "225.30.0.2", V6: "ff0e::30:2"}  # added and removed by reload
SSM_SOURCE = {V4: "10.0.1.2", V6: "fd00:1::2"}  # S's own address
SOURCES = {V4: [f"10.0.1.{n}" for n in range(50, 55)],
           V6: [f"fd00:1::{n:x}" for n in range(0x50, 0x55)]}
PHYINTS = "".join(f"phyint r-{x} enable\n" for x in "sabc")
CONFIG = PHYINTS + """\
mroute from r-s group 225.30.0.1 to r-a r-b
mroute from r-s group ff0e::30:1 to r-a r-b
"""
ARGS = ("--kernel-star-g",)


def canon(address: str) -> str:
    return str(ipaddress.ip_address(address))


def add_sources(topo, family: int) -> list[str]:
    """SOURCES on S's link (IPv6 without DAD: usable at once)."""
    dev = topo.leaf_if("S")
    for address in SOURCES[family]:
        if family == V4:
            topo.sender.ip("addr", "add", f"{address}/24", "dev", dev)
        else:
            topo.sender.ip("-6", "addr", "add", f"{address}/64", "dev", dev, "nodad")
    return SOURCES[family]


def from_sources(topo, family, group, sources, per_source, roles=RECEIVERS):
    """Send per_source datagrams from each source; what each receiver got."""
    marker = new_marker()
    with ExitStack() as stack:
        rx = open_receivers(stack, topo, group, marker, roles)
        time.sleep(0.05)
        for source in sources:
            tx = McastSender(topo.sender, source, topo.leaf_if("S"))
            stack.callback(tx.close)
            for seq in range(per_source):
                tx.send(group, PORT, marker + b" %d" % seq)
                time.sleep(0.002)
        want = {r: per_source * len(sources) for r in roles if r in ("A", "B")}
        return collect(rx, want)


def cache_rows(daemon, family, group):
    """/proc's MFC rows for group: (source, resolved, packets, wrong_if)."""
    return {(e.source, e.resolved, e.packets, e.wrong_if)
            for e in read_mr_cache(daemon.pid, family) if e.group == canon(group)}


def sources_in_cache(daemon, family, group) -> set[str]:
    return {e.source for e in read_mr_cache(daemon.pid, family)
            if e.group == canon(group) and e.source != ZERO[family]}


def star_entry(family, group, iif, oifs):
    return mfc_entry(ZERO[family], group, iif, {iif, *oifs})


@pytest.mark.parametrize("family", FAMILIES)
def test_new_sources_forwarded_with_no_learned_entry_and_no_upcall(topo, smcrouted, family):
    daemon = smcrouted(CONFIG, ARGS)
    group = GROUP[family]
    assert read_mfc(topo.router, family) == {star_entry(family, group, "r-s", ["r-a", "r-b"])}
    sources = add_sources(topo, family)
    got = from_sources(topo, family, group, sources, 10)
    assert got == {"A": 50, "B": 50, "C": 0}
    assert sources_in_cache(daemon, family, group) == set(), "an upcall was sent"
    (row,) = cache_rows(daemon, family, group)
    assert row[:2] == (ZERO[family], True) and row[2] >= 50
    # show lists the entry as (*,G), with its counters, and as JSON
    out = daemon.ctl("-d", "show", "routes").stdout
    kernel_rows = out.split("Kernel MFC Table")[1].splitlines()
    line = next(ln for ln in kernel_rows if ln.startswith(f"(*, {canon(group)})"))
    fields = line.split()
    assert fields[2] == "r-s" and int(fields[3]) >= 50 and fields[5:] == ["r-a", "r-b"]
    kernel = json.loads(daemon.ctl("-j", "show", "routes").stdout)["routes"]["kernel"]
    assert {"source": None, "group": canon(group), "iif": "r-s",
            "oifs": ["r-a", "r-b"]} in kernel
    assert "upcall" not in daemon.log().split("Ready, waiting")[-1]
    assert daemon.proc.poll() is None


RANGE = {V4: ("225.30.1.0/31", ["225.30.1.0", "225.30.1.1"]),
         V6: ("ff0e::31:0/127", ["ff0e::31:0", "ff0e::31:1"])}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_small_group_range_is_one_entry_per_group(topo, smcrouted, family):
    prefix, groups = RANGE[family]
    daemon = smcrouted(PHYINTS + f"mroute from r-s group {prefix} to r-a\n", ARGS)
    assert read_mfc(topo.router, family) == {star_entry(family, g, "r-s", ["r-a"])
                                             for g in groups}
    sources = add_sources(topo, family)
    for group in groups:
        assert from_sources(topo, family, group, sources, 4) == {"A": 20, "B": 0, "C": 0}
        assert sources_in_cache(daemon, family, group) == set(), "an upcall was sent"
    out = daemon.ctl("show", "routes").stdout
    assert all(f"(*, {canon(g)})" in out for g in groups), out


@pytest.mark.parametrize("family", FAMILIES)
def test_other_interfaces_get_stop_filters_or_nothing(topo, smcrouted, family):
    """From C (not in the rule) the upcall path gives a stop filter; from A
    (an outbound interface, marked in the entry) the kernel drops it."""
    daemon = smcrouted(CONFIG, ARGS)
    group = GROUP[family]
    c_src, a_src = topo.links["C"].peer_ip(family), topo.links["A"].peer_ip(family)
    with ExitStack() as stack:
        from_c = McastSender(topo.ns["C"], c_src, topo.leaf_if("C"))
        stack.callback(from_c.close)
        from_a = McastSender(topo.ns["A"], a_src, topo.leaf_if("A"))
        stack.callback(from_a.close)
        assert nothing_arrives(topo, family, group, from_c) == {"A": 0, "B": 0, "C": 0}
        stop = mfc_entry(c_src, group, "r-c", [])
        assert wait_for(lambda: stop in read_mfc(topo.router, family), 5.0), \
            read_mfc(topo.router, family)
        assert nothing_arrives(topo, family, group, from_a) == {"A": 0, "B": 0, "C": 0}
    assert canon(a_src) not in sources_in_cache(daemon, family, group)
    ((_, _, _, wrong_if),) = {r for r in cache_rows(daemon, family, group)
                              if r[0] == ZERO[family]}
    assert wrong_if >= 10
    # and the group still flows from S
    assert from_sources(topo, family, group, [SSM_SOURCE[family]], 10) == {
        "A": 10, "B": 10, "C": 0}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_source_specific_route_for_the_group_takes_precedence(topo, smcrouted, family):
    group = GROUP[family]
    config = CONFIG + f"mroute from r-s source {SSM_SOURCE[family]} group {group} to r-c\n"
    daemon = smcrouted(config, ARGS)
    assert read_mfc(topo.router, family) == {
        star_entry(family, group, "r-s", ["r-a", "r-b"]),
        mfc_entry(SSM_SOURCE[family], group, "r-s", ["r-c"])}
    assert from_sources(topo, family, group, [SSM_SOURCE[family]], 10) == {
        "A": 0, "B": 0, "C": 10}
    others = add_sources(topo, family)[:2]
    assert from_sources(topo, family, group, others, 10) == {"A": 20, "B": 20, "C": 0}
    assert sources_in_cache(daemon, family, group) == {canon(SSM_SOURCE[family])}


@pytest.mark.parametrize("family", FAMILIES)
def test_reload_adds_and_removes_entries_hitlessly(topo, smcrouted, family):
    """A flow on the unchanged rule loses nothing while reloads add and
    remove another (*,G) rule; the added one forwards with no upcall."""
    group, second = GROUP[family], SECOND[family]
    daemon = smcrouted(CONFIG, ARGS)
    marker = new_marker()
    with ExitStack() as stack:
        rx = {"A": Receiver(topo.ns["A"], topo.leaf_if("A"), group, PORT, marker)}
        stack.callback(rx["A"].close)
        tx = McastSender(topo.sender, SSM_SOURCE[family], topo.leaf_if("S"))
        stack.callback(tx.close)
        time.sleep(0.05)
        with Ticker(tx, [group], PORT, marker, interval=0.01) as ticker:
            time.sleep(0.2)
            reload(daemon, CONFIG + f"mroute from r-s group {second} to r-c\n")
            assert star_entry(family, second, "r-s", ["r-c"]) in read_mfc(topo.router, family)
            got = from_sources(topo, family, second, [SSM_SOURCE[family]], 10, roles=("C",))
            assert got == {"C": 10}
            reload(daemon, CONFIG)
            time.sleep(0.2)
            sent = ticker.stop()
        got = collect(rx, {"A": sent})
    assert got == {"A": sent}, f"lost {sent - got['A']} of {sent}"
    entries = read_mfc(topo.router, family)
    assert star_entry(family, group, "r-s", ["r-a", "r-b"]) in entries
    assert not any(e.group == canon(second) and e.source == ZERO[family] for e in entries)
    assert sources_in_cache(daemon, family, group) == set()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_group_no_rule_covers_gets_one_stop_entry(topo, smcrouted, family):
    """Five new sources for a group no rule covers: one (*,G) stop entry
    marking only the inbound VIF; nothing forwarded, no stop filter per
    source (the first source's upcall may leave its unresolved entry, which
    the kernel drops after 10 s)."""
    daemon = smcrouted(CONFIG, ARGS)
    group = {V4: "225.31.0.9", V6: "ff0e::31:9"}[family]
    sources = add_sources(topo, family)
    got = from_sources(topo, family, group, sources, 5)
    assert got == {"A": 0, "B": 0, "C": 0}
    want = mfc_entry(ZERO[family], group, "r-s", ["r-s"])
    assert wait_for(lambda: want in read_mfc(topo.router, family), 5.0), \
        read_mfc(topo.router, family)
    got = from_sources(topo, family, group, sources, 5)
    assert got == {"A": 0, "B": 0, "C": 0}
    resolved = {e.source for e in read_mr_cache(daemon.pid, family)
                if e.group == canon(group) and e.resolved}
    assert resolved == {ZERO[family]}
    unresolved = [e for e in read_mr_cache(daemon.pid, family)
                  if e.group == canon(group) and not e.resolved]
    assert len(unresolved) <= 1
    line = next(ln for ln in daemon.ctl("show", "routes").stdout.splitlines()
                if canon(group) in ln)
    assert line.split() == ["(*,", f"{canon(group)})", "r-s"]


FLOOD_RULES = PHYINTS + "mroute from r-s group 225.7.0.0/16 to r-a\n" + "".join(
    f"mroute from r-s group 225.{i}.0.0/16 to r-b\n" for i in range(50, 59)) + \
    "mroute from r-s group ff0e::7:0/112 to r-a\n" + "".join(
    f"mroute from r-s group ff0e::{i:x}:0/112 to r-b\n" for i in range(0x50, 0x59))


def flood_group(family: int, i: int) -> str:
    return f"225.7.{i // 250}.{i % 250 + 1}" if family == V4 else f"ff0e::7:{i + 1:x}"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_flood_above_the_budget_fills_it_exactly(topo, smcrouted, family):
    """--max-learned 2000, ten rules per family (nine see no traffic, each
    given fast-path reserve at start), 5000 new flows at one rule, then 1000
    more: exactly 2000 learned routes, and show still answers. (The second
    wave comes after the reserve the first one found in the way was taken
    back: how much of the first wave is decided before that depends on
    how the upcalls batch up, and on a slow machine all of it may be.)"""
    limit = 2000
    daemon = smcrouted(FLOOD_RULES, ["--max-learned", str(limit)])
    with McastSender(topo.sender, SSM_SOURCE[family], topo.leaf_if("S")) as tx:
        for i in range(6000):
            tx.send(flood_group(family, i), PORT, b"flood")
            if i % 100 == 99:
                time.sleep(0.01)
            if i == 4999:
                time.sleep(2.0)

    def learned():  # (not the groups' overload stops, once the stop filters run out)
        return sum(1 for e in read_mr_cache(daemon.pid, family)
                   if e.resolved and e.oifs and e.source != ZERO[family])

    wait_for(lambda: learned() >= limit, 10.0)
    time.sleep(1.0)  # nothing changes any more: one /proc read is consistent
    assert learned() == limit
    out = daemon.ctl("show", "routes")
    assert out.returncode == 0
    kernel = out.stdout.split("Kernel MFC Table")[1]
    assert sum(1 for ln in kernel.splitlines() if ln.startswith("(") and "r-a" in ln) == limit
    assert daemon.proc.poll() is None


def test_entries_go_to_the_daemons_table_and_follow_interfaces(topo, smcrouted):
    """-t 10: the (*,G) entries are in table 10, none in the default tables;
    when an outbound interface vanishes the entry loses it (and keeps
    forwarding to the other), as a configured route does."""
    daemon = smcrouted(CONFIG, [*ARGS, "-t", "10"])
    for family, default in ((V4, 253), (V6, 254)):
        want = star_entry(family, GROUP[family], "r-s", ["r-a", "r-b"])
        assert wait_for(lambda f=family, w=want: read_mfc(topo.router, f, table=10) == {w},
                        5.0), read_mfc(topo.router, family, table=10)
        assert read_mfc(topo.router, family, table=default) == set()
    topo.router.ip("link", "del", topo.rif("B"))
    for family in (V4, V6):
        want = star_entry(family, GROUP[family], "r-s", ["r-a"])
        assert wait_for(lambda f=family, w=want: read_mfc(topo.router, f, table=10) == {w},
                        5.0), read_mfc(topo.router, family, table=10)
    # (the multicast routing rules that send traffic to table 10 are the
    # operator's: ip rule; here the entry's contents are what is checked)
    assert daemon.proc.poll() is None


# -- overload stops (either mode): answered, not ignored ---------------------------------

OVERLOAD_GROUP = {V4: "225.31.0.1", V6: "ff0e::31:1"}
OVERLOAD_CONFIG = PHYINTS + """\
mroute from r-s group 225.31.0.0/16 to r-a
mroute from r-s group ff0e::31:0/112 to r-a
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_over_the_upcall_rate_the_group_gets_one_stop_entry(topo, smcrouted, family):
    """Today's per-source mode with --upcall-rate 1: the first new sources
    are learned; once over the rate the group gets an overload stop (a
    kernel (*,G) entry marking only r-s) instead of being ignored, so the
    sources after it cost no upcall and leave nothing in the kernel."""
    daemon = smcrouted(OVERLOAD_CONFIG, ("--upcall-rate", "1"))
    group = OVERLOAD_GROUP[family]
    sources = add_sources(topo, family)
    stop = star_entry(family, group, "r-s", [])
    from_sources(topo, family, group, sources[:2], 5, roles=("A",))
    assert wait_for(lambda: stop in read_mfc(topo.router, family), 5.0), \
        read_mfc(topo.router, family)
    asked = sources_in_cache(daemon, family, group)
    from_sources(topo, family, group, sources[2:], 5, roles=("A",))
    assert sources_in_cache(daemon, family, group) <= asked, "an upcall after the stop"
    assert any(e.source == ZERO[family] and e.packets >= 15
               for e in read_mr_cache(daemon.pid, family) if e.group == canon(group))
    assert f"(*, {canon(group)})" in daemon.ctl("show", "routes").stdout
    assert "new flows of the group stopped for now" in daemon.log()
