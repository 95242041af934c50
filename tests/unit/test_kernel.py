"""smcroute.privileged.kernel: struct layouts, upcall parsing and MFC packing (no sockets)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smcroute.privileged import kernel
from smcroute.privileged.kernel import mfcctl, parse_upcall4, parse_upcall6

X86_64 = sys.maxsize > 2**32 and struct.calcsize("@L") == 8

SRC4 = ipaddress.IPv4Address("10.0.0.1").packed
GRP4 = ipaddress.IPv4Address("225.1.2.3").packed
SRC6 = ipaddress.IPv6Address("2001:db8::1").packed
GRP6 = ipaddress.IPv6Address("ff05::42").packed


mfc = mfcctl


# -- struct layouts -----------------------------------------------------------------------------


def test_struct_sizes() -> None:
    assert kernel.VIFCTL.size == 16
    assert kernel.MFCCTL.size == 60
    assert kernel.MIF6CTL.size == 12
    assert kernel.SOCKADDR_IN6.size == 28
    assert kernel.MF6CCTL.size == 92
    if X86_64:
        assert kernel.SIOC_SG_REQ.size == 32
        assert kernel.SIOC_SG_REQ6.size == 80


def test_constants() -> None:
    assert (kernel.MRT_INIT, kernel.MRT_DONE, kernel.MRT_ADD_VIF, kernel.MRT_DEL_VIF,
            kernel.MRT_ADD_MFC, kernel.MRT_DEL_MFC) == (200, 201, 202, 203, 204, 205)
    assert kernel.MRT_PIM == 208 and kernel.MRT_TABLE == 209
    assert (kernel.MRT6_INIT, kernel.MRT6_ADD_MIF, kernel.MRT6_DEL_MIF, kernel.MRT6_ADD_MFC,
            kernel.MRT6_DEL_MFC, kernel.MRT6_TABLE) == (200, 202, 203, 204, 205, 209)
    assert kernel.SIOCGETSGCNT == 0x89E1
    assert kernel.VIFF_USE_IFINDEX == 0x8
    assert kernel.MAXVIFS == 32


def test_vifctl_layout() -> None:
    ctl = kernel.VIFCTL.pack(5, kernel.VIFF_USE_IFINDEX, 3, 0, 42, b"\0" * 4)
    assert ctl[0:2] == struct.pack("=H", 5)  # vifc_vifi
    assert ctl[2] == 0x8  # vifc_flags
    assert ctl[3] == 3  # vifc_threshold
    assert ctl[4:8] == b"\0" * 4  # vifc_rate_limit
    assert ctl[8:12] == struct.pack("=i", 42)  # vifc_lcl_ifindex
    assert ctl[12:16] == b"\0" * 4  # vifc_rmt_addr


def test_mif6ctl_layout() -> None:
    ctl = kernel.MIF6CTL.pack(7, 0, 9, 42, 0)
    assert ctl[0:2] == struct.pack("=H", 7)  # mif6c_mifi
    assert ctl[2] == 0 and ctl[3] == 9  # flags, threshold
    assert ctl[4:6] == struct.pack("=H", 42)  # mif6c_pifi
    assert ctl[8:12] == b"\0" * 4  # vifc_rate_limit after 2 bytes of padding


# -- MFC packing --------------------------------------------------------------------------------


def test_mfcctl_ipv4() -> None:
    ctl = mfc(4, SRC4, GRP4, 3, ((0, 1), (5, 64), (31, 255)))
    assert len(ctl) == 60
    assert ctl[0:4] == SRC4  # mfcc_origin
    assert ctl[4:8] == GRP4  # mfcc_mcastgrp
    assert ctl[8:10] == struct.pack("=H", 3)  # mfcc_parent
    ttls = ctl[10:42]
    expected = bytearray(32)
    expected[0], expected[5], expected[31] = 1, 64, 255
    assert ttls == bytes(expected)
    assert ctl[42:] == bytes(18)  # padding, counters, expire all zero


def test_mfcctl_ipv4_no_oifs() -> None:
    ctl = mfc(4, SRC4, GRP4, 0, ())
    assert ctl[10:42] == bytes(32)
    assert ctl == kernel.MFCCTL.pack(SRC4, GRP4, 0, bytes(32), 0, 0, 0, 0)


def test_mf6cctl_ipv6() -> None:
    ctl = mfc(6, SRC6, GRP6, 2, ((0, 1), (1, 5), (31, 200)))
    assert len(ctl) == 92
    origin, group = ctl[0:28], ctl[28:56]
    for sin6, addr in ((origin, SRC6), (group, GRP6)):
        family, port, flowinfo, raw, scope = kernel.SOCKADDR_IN6.unpack(sin6)
        assert family == socket.AF_INET6
        assert (port, flowinfo, scope) == (0, 0, 0)
        assert raw == addr
    assert ctl[56:58] == struct.pack("=H", 2)  # mf6cc_parent
    assert ctl[58:60] == b"\0\0"  # padding before the if_set
    words = struct.unpack("=8I", ctl[60:92])
    assert words[0] == (1 << 0) | (1 << 1) | (1 << 31)
    assert words[1:] == (0,) * 7


def test_mf6cctl_ignores_ttls() -> None:
    assert mfc(6, SRC6, GRP6, 0, ((3, 1),)) == mfc(6, SRC6, GRP6, 0, ((3, 255),))
    assert mfc(6, SRC6, GRP6, 0, ())[60:] == bytes(32)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 31), st.dictionaries(st.integers(0, 31), st.integers(1, 255)))
def test_property_mfc_bits(iif: int, oifs: dict[int, int]) -> None:
    pairs = tuple(sorted(oifs.items()))
    ctl4 = mfc(4, SRC4, GRP4, iif, pairs)
    assert struct.unpack_from("=H", ctl4, 8)[0] == iif
    assert [ctl4[10 + v] for v in range(32)] == [oifs.get(v, 0) for v in range(32)]
    ctl6 = mfc(6, SRC6, GRP6, iif, pairs)
    assert struct.unpack_from("=H", ctl6, 56)[0] == iif
    bits = struct.unpack_from("=I", ctl6, 60)[0]
    assert {v for v in range(32) if bits >> v & 1} == set(oifs)


# -- upcalls ---------------------------------------------------------------------------------------


def igmpmsg(msgtype: int, vif: int, src: bytes = SRC4, dst: bytes = GRP4,
            mbz: int = 0) -> bytes:
    """struct igmpmsg: two unused words, msgtype, mbz, vif, vif_hi, src, dst."""
    return (b"\0" * 8 + bytes([msgtype, mbz, vif & 0xFF, vif >> 8]) + src + dst)


def mrt6msg(msgtype: int, mif: int, src: bytes = SRC6, dst: bytes = GRP6, mbz: int = 0) -> bytes:
    """struct mrt6msg: mbz, msgtype, mif (u16), pad (u32), src, dst."""
    return bytes([mbz, msgtype]) + struct.pack("=H", mif) + b"\0" * 4 + src + dst


@pytest.mark.parametrize(("msgtype", "kind"), [(1, "nocache"), (2, "wrongvif"), (3, "wholepkt"),
                                               (4, "wholepkt")])
def test_parse_upcall4(msgtype: int, kind: str) -> None:
    assert parse_upcall4(igmpmsg(msgtype, 7)) == (kind, 7, SRC4, GRP4)


def test_parse_upcall4_high_vif_byte_and_trailing_data() -> None:
    assert parse_upcall4(igmpmsg(1, 0x0102)) == ("nocache", 0x0102, SRC4, GRP4)
    assert parse_upcall4(igmpmsg(2, 31) + b"packet data") == ("wrongvif", 31, SRC4, GRP4)
    assert parse_upcall4(bytearray(igmpmsg(1, 3))) == ("nocache", 3, SRC4, GRP4)
    parsed = parse_upcall4(memoryview(igmpmsg(1, 3)))
    assert parsed is not None
    assert type(parsed[2]) is bytes and type(parsed[3]) is bytes


def ip_igmp_packet() -> bytes:
    """An ordinary IGMPv2 membership report as the raw IGMP socket sees it."""
    header = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 32, 1, 0, 1, 2, 0,
                         ipaddress.IPv4Address("10.0.0.2").packed, GRP4)
    router_alert = b"\x94\x04\x00\x00"
    igmp = struct.pack("!BBH4s", 0x16, 0, 0, GRP4)
    return header + router_alert + igmp


@pytest.mark.parametrize("data", [
    b"",
    b"\0" * 19,
    igmpmsg(1, 0)[:19],
    igmpmsg(0, 0),  # unknown message type
    igmpmsg(5, 0),
    igmpmsg(1, 0, mbz=2),  # protocol byte of an IP header: IGMP
    ip_igmp_packet(),
], ids=lambda d: f"{len(d)}-bytes")
def test_parse_upcall4_ignores_other_data(data: bytes) -> None:
    assert parse_upcall4(data) is None


@pytest.mark.parametrize(("msgtype", "kind"), [(1, "nocache"), (2, "wrongvif"), (3, "wholepkt")])
def test_parse_upcall6(msgtype: int, kind: str) -> None:
    assert parse_upcall6(mrt6msg(msgtype, 9)) == (kind, 9, SRC6, GRP6)


def test_parse_upcall6_mif_is_native_u16_and_trailing_data() -> None:
    assert parse_upcall6(mrt6msg(1, 0x0201)) == ("nocache", 0x0201, SRC6, GRP6)
    assert parse_upcall6(mrt6msg(2, 31) + b"more") == ("wrongvif", 31, SRC6, GRP6)


def icmpv6_mld_report() -> bytes:
    return struct.pack("!BBHHH", 143, 0, 0, 0, 1) + b"\x04\x00\x00\x00" + GRP6


@pytest.mark.parametrize("data", [
    b"",
    b"\0" * 39,
    mrt6msg(1, 0)[:39],
    mrt6msg(0, 0),
    mrt6msg(4, 0),
    mrt6msg(1, 0, mbz=1),
    icmpv6_mld_report(),
    bytes([128, 0]) + b"\0" * 38,  # echo request
], ids=lambda d: f"{len(d)}-bytes")
def test_parse_upcall6_ignores_other_data(data: bytes) -> None:
    assert parse_upcall6(data) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_property_upcall_parsers_never_raise(data: bytes) -> None:
    r4 = parse_upcall4(data)
    if r4 is not None:
        assert len(data) >= 20 and data[9] == 0
        assert r4[0] in ("nocache", "wrongvif", "wholepkt")
        assert len(r4[2]) == 4 and len(r4[3]) == 4
        assert 0 <= r4[1] <= 0xFFFF
    r6 = parse_upcall6(data)
    if r6 is not None:
        assert len(data) >= 40 and data[0] == 0
        assert r6[0] in ("nocache", "wrongvif", "wholepkt")
        assert len(r6[2]) == 16 and len(r6[3]) == 16
        assert 0 <= r6[1] <= 0xFFFF


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 2, 3, 4]), st.integers(0, 0xFFFF), st.binary(min_size=4, max_size=4),
       st.binary(min_size=4, max_size=4))
def test_property_upcall4_round_trip(msgtype: int, vif: int, src: bytes, dst: bytes) -> None:
    assert parse_upcall4(igmpmsg(msgtype, vif, src, dst)) == (
        kernel.IGMPMSG_TYPES[msgtype], vif, src, dst)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.integers(0, 0xFFFF), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16))
def test_property_upcall6_round_trip(msgtype: int, mif: int, src: bytes, dst: bytes) -> None:
    assert parse_upcall6(mrt6msg(msgtype, mif, src, dst)) == (
        kernel.MRT6MSG_TYPES[msgtype], mif, src, dst)
