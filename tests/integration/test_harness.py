"""Self-test of the netns harness, independent of smcrouted.

If these fail, the daemon tests cannot be trusted: traffic inside the
namespaces, read_mfc and kernel forwarding are checked here with a minimal
test-only mroute socket driven straight from the test.
"""

from __future__ import annotations

import socket
import struct

import pytest

from .netns import (
    Receiver,
    collect,
    flow,
    mfc_entry,
    netns_available,
    new_marker,
    read_mfc,
    send,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

# linux/mroute.h, linux/mroute6.h
MRT_INIT, MRT_ADD_VIF, MRT_ADD_MFC = 200, 202, 204
VIFF_USE_IFINDEX = 0x8

GROUP = {socket.AF_INET: "225.1.2.3", socket.AF_INET6: "ff0e::1:3"}
FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]


class KernelMrouter:
    """A bare mroute socket in a namespace: VIFs and one (S,G), nothing else.
    Closing the socket makes the kernel drop its VIFs and routes."""

    def __init__(self, ns, family: int, ifnames: list[str]):
        self.family = family
        self.vif = {name: i for i, name in enumerate(ifnames)}
        if family == socket.AF_INET:
            self.level, proto = socket.IPPROTO_IP, socket.IPPROTO_IGMP
        else:
            self.level, proto = socket.IPPROTO_IPV6, socket.IPPROTO_ICMPV6
        self.sock = ns.socket(family, socket.SOCK_RAW, proto)
        self.sock.setsockopt(self.level, MRT_INIT, struct.pack("i", 1))
        for name, vif in self.vif.items():
            index = ns.ifindex(name)
            if family == socket.AF_INET:  # struct vifctl
                ctl = struct.pack("HBBIi4s", vif, VIFF_USE_IFINDEX, 1, 0, index, bytes(4))
            else:  # struct mif6ctl
                ctl = struct.pack("HBBHxxI", vif, 0, 1, index, 0)
            self.sock.setsockopt(self.level, MRT_ADD_VIF, ctl)

    def add(self, source: str, group: str, iif: str, oifs: list[str]) -> None:
        if self.family == socket.AF_INET:  # struct mfcctl
            ttls = bytearray(32)
            for name in oifs:
                ttls[self.vif[name]] = 1
            ctl = struct.pack(
                "4s4sH32sxxIIIi",
                socket.inet_aton(source),
                socket.inet_aton(group),
                self.vif[iif],
                bytes(ttls),
                0, 0, 0, 0,
            )  # fmt: skip
        else:  # struct mf6cctl
            mask = sum(1 << self.vif[name] for name in oifs)
            ctl = (
                _sockaddr_in6(source)
                + _sockaddr_in6(group)
                + struct.pack("Hxx", self.vif[iif])
                + mask.to_bytes(32, "little")
            )
        self.sock.setsockopt(self.level, MRT_ADD_MFC, ctl)

    def close(self) -> None:
        self.sock.close()


def _sockaddr_in6(address: str) -> bytes:
    packed = socket.inet_pton(socket.AF_INET6, address)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16s", 0, 0, packed) + bytes(4)


@pytest.mark.no_mroute
@pytest.mark.parametrize("family", FAMILIES)
def test_multicast_on_one_link(topo, family):
    """S sends on its veth, R receives it on r-s: plain L2, no routing."""
    group, marker = GROUP[family], new_marker()
    rx = Receiver(topo.router, topo.rif("S"), group, 5001, marker)
    try:
        send(topo.sender, topo.source(family), group, 5001, 10, marker, topo.leaf_if("S"))
        assert collect({"R": rx}, {"R": 10}) == {"R": 10}
    finally:
        rx.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_forwarding_and_read_mfc(topo, family):
    """An (S,G) installed by hand forwards to its OIF only and reads back."""
    group, source = GROUP[family], topo.source(family)
    ifs = [topo.rif(r) for r in ("S", "A", "B", "C")]
    assert read_mfc(topo.router, family) == set()
    mrouter = KernelMrouter(topo.router, family, ifs)
    try:
        mrouter.add(source, group, topo.rif("S"), [topo.rif("A"), topo.rif("B")])
        assert read_mfc(topo.router, family) == {mfc_entry(source, group, "r-s", ["r-a", "r-b"])}
        # the default tables: 253 (RT_TABLE_DEFAULT) for IPv4, 254 for IPv6
        table = 253 if family == socket.AF_INET else 254
        assert len(read_mfc(topo.router, family, table=table)) == 1
        assert read_mfc(topo.router, family, table=table + 1) == set()
        got = flow(topo, group, ["A", "B", "C"], {"A": 20, "B": 20})
        assert got == {"A": 20, "B": 20, "C": 0}
    finally:
        mrouter.close()
    assert read_mfc(topo.router, family) == set()
