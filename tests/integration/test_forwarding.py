"""smcrouted forwards real multicast between namespaces, per its (S,G) routes.

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
"""

from __future__ import annotations

import signal
import socket

import pytest

from .netns import flow, mfc_entry, netns_available, read_mfc, wait_for

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
SRC = {V4: "10.0.1.2", V6: "fd00:1::2"}  # the sender's address on s-r
OTHER_SRC = {V4: "10.0.1.3", V6: "fd00:1::3"}  # a second address, no route
G_AB = {V4: "225.1.2.3", V6: "ff0e::1:3"}  # routed to r-a and r-b
G_B = {V4: "225.1.2.4", V6: "ff0e::1:4"}  # routed to r-b only
G_NONE = {V4: "225.1.2.99", V6: "ff0e::1:99"}  # no route at all
RECEIVERS = ["A", "B", "C"]
N = 20

CONFIG = f"""\
# r-c has a VIF but is in no OIF set
phyint r-s enable
phyint r-a enable
phyint r-b enable
phyint r-c enable
mroute from r-s source {SRC[V4]} group {G_AB[V4]} to r-a r-b
mroute from r-s source {SRC[V4]} group {G_B[V4]} to r-b
mroute from r-s source {SRC[V6]} group {G_AB[V6]} to r-a r-b
mroute from r-s source {SRC[V6]} group {G_B[V6]} to r-b
"""

EXPECTED_MFC = {
    V4: {
        mfc_entry(SRC[V4], G_AB[V4], "r-s", ["r-a", "r-b"]),
        mfc_entry(SRC[V4], G_B[V4], "r-s", ["r-b"]),
    },
    V6: {
        mfc_entry(SRC[V6], G_AB[V6], "r-s", ["r-a", "r-b"]),
        mfc_entry(SRC[V6], G_B[V6], "r-s", ["r-b"]),
    },
}

FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]
USERS = [pytest.param((), id="root"), pytest.param(("-p", "nobody"), id="p-nobody")]


def test_mfc_holds_exactly_the_configured_routes(topo, smcrouted):
    smcrouted(CONFIG)
    assert read_mfc(topo.router, V4) == EXPECTED_MFC[V4]
    assert read_mfc(topo.router, V6) == EXPECTED_MFC[V6]


@pytest.mark.parametrize("args", USERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sg_routes_forward_to_their_oifs_only(topo, smcrouted, family, args):
    smcrouted(CONFIG, args)
    got = flow(topo, G_AB[family], RECEIVERS, {"A": N, "B": N}, count=N)
    assert got == {"A": N, "B": N, "C": 0}
    got = flow(topo, G_B[family], RECEIVERS, {"B": N}, count=N)
    assert got == {"A": 0, "B": N, "C": 0}


@pytest.mark.parametrize("family", FAMILIES)
def test_group_without_route_is_not_forwarded(topo, smcrouted, family):
    smcrouted(CONFIG)
    got = flow(topo, G_NONE[family], RECEIVERS, {}, count=N)
    assert got == {"A": 0, "B": 0, "C": 0}
    # The configured routes are untouched; whatever the unrouted flow left
    # in the MFC (a stop filter, or the kernel's unresolved entry) has no OIF.
    mfc = read_mfc(topo.router, family)
    assert EXPECTED_MFC[family] <= mfc
    extra = mfc - EXPECTED_MFC[family]
    assert all(e.group == G_NONE[family] and not e.oifs for e in extra), extra


@pytest.mark.parametrize("family", FAMILIES)
def test_other_source_same_group_is_not_forwarded(topo, smcrouted, family):
    """An (S,G) route is for that source only."""
    plen = "24" if family == V4 else "64"
    topo.sender.ip("addr", "add", f"{OTHER_SRC[family]}/{plen}", "dev", "s-r",
                   *(["nodad"] if family == V6 else []))  # fmt: skip
    smcrouted(CONFIG)
    got = flow(topo, G_AB[family], RECEIVERS, {}, count=N, source=OTHER_SRC[family])
    assert got == {"A": 0, "B": 0, "C": 0}
    got = flow(topo, G_AB[family], RECEIVERS, {"A": N, "B": N}, count=N)
    assert got == {"A": N, "B": N, "C": 0}


@pytest.mark.parametrize("args", USERS)
def test_reload_changes_forwarding(topo, smcrouted, args):
    """SIGHUP re-reads the config; with -p the helper still installs routes
    after the privilege drop."""
    daemon = smcrouted(CONFIG, args)
    new = CONFIG.replace(f"group {G_B[V4]} to r-b", f"group {G_B[V4]} to r-c").replace(
        f"group {G_B[V6]} to r-b", f"group {G_B[V6]} to r-c"
    )
    daemon.conf.write_text(new)
    daemon.proc.send_signal(signal.SIGHUP)
    want = {
        family: (EXPECTED_MFC[family] - {mfc_entry(SRC[family], G_B[family], "r-s", ["r-b"])})
        | {mfc_entry(SRC[family], G_B[family], "r-s", ["r-c"])}
        for family in (V4, V6)
    }
    wait_for(lambda: all(read_mfc(topo.router, f) == want[f] for f in (V4, V6)), 3.0)
    for family in (V4, V6):
        assert read_mfc(topo.router, family) == want[family]
        got = flow(topo, G_B[family], RECEIVERS, {"C": N}, count=N)
        assert got == {"A": 0, "B": 0, "C": N}
    assert daemon.proc.poll() is None, daemon.log()
