"""The kernel's multicast routing API (linux/mroute.h, linux/mroute6.h).

Struct layouts are native (x86-64 and other LP64/ILP32 Linux ABIs alike,
via struct's native alignment). Each method maps to one setsockopt/ioctl
and raises OSError with the kernel's errno.
"""

from __future__ import annotations

# sendmsg() converts a str address with the idna codec, imported on first
# use: import it now, before the sandbox closes the filesystem.
import encodings.idna  # noqa: F401
import fcntl
import functools
import socket
import struct

from smcroute.policy.limits import MAXVIFS

IPPROTO_IP = socket.IPPROTO_IP
IPPROTO_IPV6 = socket.IPPROTO_IPV6
IPPROTO_ICMPV6 = 58
ICMP6_FILTER = 1

MRT_INIT, MRT_DONE, MRT_ADD_VIF, MRT_DEL_VIF, MRT_ADD_MFC, MRT_DEL_MFC = range(200, 206)
MRT_PIM = 208
MRT_TABLE = 209
# The IPv6 options use the same numbers at level IPPROTO_IPV6.
MRT6_INIT, MRT6_DONE, MRT6_ADD_MIF, MRT6_DEL_MIF, MRT6_ADD_MFC, MRT6_DEL_MFC = range(200, 206)
MRT6_PIM = 208
MRT6_TABLE = 209

SIOCGETSGCNT = 0x89E0 + 1  # SIOCPROTOPRIVATE + 1, same value for IPv4 and IPv6
VIFF_USE_IFINDEX = 0x8
IP_PKTINFO = 8
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
IGMP_PROTO = 2
MRDISC_ADVERT, MRDISC_SOLICIT, MRDISC_TERMINATE = 0x30, 0x31, 0x32
MRDISC_GROUP = bytes([224, 0, 0, 106])  # all-snoopers
ROUTER_ALERT = b"\x94\x04\x00\x00"

VIFCTL = struct.Struct("@HBBIi4s")  # vifi, flags, threshold, rate_limit, lcl_ifindex, rmt_addr
MFCCTL = struct.Struct("@4s4sH32sIIIi")  # origin, group, parent, ttls[32], counters, expire
MIF6CTL = struct.Struct("@HBBHI")  # mifi, flags, threshold, pifi, rate_limit
SOCKADDR_IN6 = struct.Struct("@HHI16sI")
MF6CCTL = struct.Struct("@28s28sH8I")  # origin, group, parent, if_set (256 bits)
SIOC_SG_REQ = struct.Struct("@4s4sLLL")
SIOC_SG_REQ6 = struct.Struct("@28s28sLLL")

# Upcall message layouts (struct igmpmsg / struct mrt6msg).
IGMPMSG_TYPES = {1: "nocache", 2: "wrongvif", 3: "wholepkt", 4: "wholepkt"}
MRT6MSG_TYPES = {1: "nocache", 2: "wrongvif", 3: "wholepkt"}


_SIN6_HEAD = SOCKADDR_IN6.pack(socket.AF_INET6, 0, 0, bytes(16), 0)[:8]  # family, port, flowinfo
_SIN6_TAIL = bytes(4)  # scope id


def _sin6(addr: bytes) -> bytes:
    return _SIN6_HEAD + addr + _SIN6_TAIL


def _addrs(family: int, source: bytes, group: bytes) -> tuple[bytes, bytes]:
    """Origin and group as mfcctl / mf6cctl and sioc_sg_req(6) hold them."""
    return (source, group) if family == 4 else (_sin6(source), _sin6(group))


@functools.lru_cache(maxsize=1024)
def _mfc_tail(family: int, iif: int, oifs: tuple[tuple[int, int], ...]) -> bytes:
    """mfcctl / mf6cctl after origin and group: the same for every flow of
    a rule, so a new flow's request is two addresses and this (cached: the
    fast path runs right after a wake-up, when every step costs)."""
    if family == 4:
        ttls = bytearray(MAXVIFS)
        for vif, ttl in oifs:
            ttls[vif] = ttl
        return MFCCTL.pack(bytes(4), bytes(4), iif, bytes(ttls), 0, 0, 0, 0)[8:]
    words = [0] * 8
    for vif, _ttl in oifs:  # IPv6 has an interface set, no per-oif threshold
        words[vif // 32] |= 1 << (vif % 32)
    return MF6CCTL.pack(bytes(28), bytes(28), iif, *words)[56:]


def mfcctl(family: int, source: bytes, group: bytes, iif: int,
           oifs: tuple[tuple[int, int], ...]) -> bytes:
    """The mfcctl (IPv4) or mf6cctl (IPv6) of one (S,G) entry."""
    return b"".join(_addrs(family, source, group)) + _mfc_tail(family, iif, oifs)


def parse_upcall4(data: bytes) -> tuple[str, int, bytes, bytes] | None:
    """(kind, vif, source, group) of an igmpmsg, None for anything else.

    The IPv4 mroute socket also receives ordinary IGMP packets; an upcall
    has a zero byte where an IP header has its protocol field.
    """
    if len(data) < 20 or data[9] != 0 or data[8] not in IGMPMSG_TYPES:
        return None
    vif = data[10] | (data[11] << 8)
    return IGMPMSG_TYPES[data[8]], vif, bytes(data[12:16]), bytes(data[16:20])


def parse_upcall6(data: bytes) -> tuple[str, int, bytes, bytes] | None:
    if len(data) < 40 or data[0] != 0 or data[1] not in MRT6MSG_TYPES:
        return None
    mif = struct.unpack_from("@H", data, 2)[0]
    return MRT6MSG_TYPES[data[1]], mif, bytes(data[8:24]), bytes(data[24:40])


def mrdisc_message(kind: int, interval: int) -> bytes:
    """An RFC 4286 message: type, code (interval), checksum, 4 zero bytes."""
    words = (kind << 8 | interval, 0, 0, 0)
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF
    return struct.pack("!BBHI", kind, interval, checksum, 0)


def parse_solicit(data: bytes) -> bytes | None:
    """The sender of an RFC 4286 solicitation (a whole IPv4 packet), else None."""
    if len(data) < 20 or data[9] != IGMP_PROTO:
        return None
    ihl = (data[0] & 0x0F) * 4
    if len(data) < ihl + 4 or data[ihl] != MRDISC_SOLICIT:
        return None
    return bytes(data[12:16])


class Mroute:
    """The IPv4 and IPv6 mroute sockets of one multicast routing table."""

    def __init__(self, table: int, rcvbuf: int) -> None:
        self.table = table
        self.sock4 = self._open(socket.AF_INET, socket.IPPROTO_IGMP, IPPROTO_IP, MRT_TABLE,
                                MRT_INIT, table, rcvbuf)
        # WRONGVIF upcalls are only sent with MRT_PIM set.
        self.sock4.setsockopt(IPPROTO_IP, MRT_PIM, 1)
        self.mrdisc4 = self._open_mrdisc()
        self.sock6 = self._open(socket.AF_INET6, IPPROTO_ICMPV6, IPPROTO_IPV6, MRT6_TABLE,
                                MRT6_INIT, table, rcvbuf)
        # Upcalls bypass the ICMPv6 filter; real ICMPv6 traffic is of no use here.
        self.sock6.setsockopt(IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
        try:  # WRONGMIF upcalls; needs CONFIG_IPV6_PIMSM_V2, so only if available
            self.sock6.setsockopt(IPPROTO_IPV6, MRT6_PIM, 1)
        except OSError:
            pass

    @staticmethod
    def _open(family: int, proto: int, level: int, opt_table: int, opt_init: int,
              table: int, rcvbuf: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
        try:
            # Upcalls only: no copies of the IGMP/MLD traffic of groups
            # others joined (mrdisc has its own socket).
            if family == socket.AF_INET:
                sock.setsockopt(IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                sock.setsockopt(IPPROTO_IP, IP_MULTICAST_ALL, 0)
            else:
                sock.setsockopt(IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            if table:
                sock.setsockopt(level, opt_table, struct.pack("@I", table))
            sock.setsockopt(level, opt_init, 1)
            # The upcall queue is bounded (smcrouted --upcall-queue). Each
            # queued upcall is an unresolved entry holding packets; past the
            # bound the kernel drops the upcall with its entry, and the
            # flow's next packet asks again.
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except PermissionError:  # (a user namespace: as much as rmem_max allows)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _open_mrdisc() -> socket.socket:
        """A raw IGMP socket for RFC 4286 (not the mroute socket, whose
        upcalls then need no ancillary data): solicitations tell their
        interface (IP_MULTICAST_ALL on: the controller joins 224.0.0.2);
        advertisements are link-local (TTL 1) and carry Router Alert."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.IPPROTO_IGMP)
        try:
            sock.setsockopt(IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(IPPROTO_IP, IP_PKTINFO, 1)
            sock.setsockopt(IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(IPPROTO_IP, socket.IP_OPTIONS, ROUTER_ALERT)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.mrdisc4.close()
        for sock, level, done in ((self.sock4, IPPROTO_IP, MRT_DONE),
                                  (self.sock6, IPPROTO_IPV6, MRT6_DONE)):
            try:
                sock.setsockopt(level, done, 1)
            except OSError:
                pass
            sock.close()

    def _set(self, family: int, option: int, value: bytes) -> None:
        """An MRT_* option (MRT6_* has the same numbers) on the family's socket."""
        if family == 4:
            self.sock4.setsockopt(IPPROTO_IP, option, value)
        else:
            self.sock6.setsockopt(IPPROTO_IPV6, option, value)

    def add_vif(self, family: int, vif: int, ifindex: int, threshold: int) -> None:
        self._set(family, MRT_ADD_VIF, VIFCTL.pack(vif, VIFF_USE_IFINDEX, threshold, 0, ifindex,
                                                   bytes(4)) if family == 4 else
                  MIF6CTL.pack(vif, 0, threshold, ifindex, 0))

    def del_vif(self, family: int, vif: int) -> None:
        self._set(family, MRT_DEL_VIF, VIFCTL.pack(vif, 0, 0, 0, 0, bytes(4)) if family == 4
                  else struct.pack("@H", vif))

    def add_mfc(self, family: int, source: bytes, group: bytes, iif: int,
                oifs: tuple[tuple[int, int], ...]) -> None:
        self._set(family, MRT_ADD_MFC, mfcctl(family, source, group, iif, oifs))

    def del_mfc(self, family: int, source: bytes, group: bytes) -> None:
        self._set(family, MRT_DEL_MFC, mfcctl(family, source, group, 0, ()))

    def send_mrdisc(self, ifindex: int, terminate: bool, interval: int) -> None:
        """An advertisement (or, terminate, a termination) out of ifindex."""
        message = mrdisc_message(MRDISC_TERMINATE, 0) if terminate else \
            mrdisc_message(MRDISC_ADVERT, interval)
        pktinfo = struct.pack("@i4s4s", ifindex, bytes(4), bytes(4))
        self.mrdisc4.sendmsg([message], [(IPPROTO_IP, IP_PKTINFO, pktinfo)], 0,
                             (socket.inet_ntoa(MRDISC_GROUP), 0))

    def recv_mrdisc(self) -> tuple[bytes, int]:
        """(IGMP packet, ifindex it came in on; 0 if the kernel did not say)."""
        data, ancdata, _, _ = self.mrdisc4.recvmsg(2048, socket.CMSG_SPACE(12))
        for level, kind, value in ancdata:
            if level == IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 4:
                return data, struct.unpack_from("@i", value)[0]
        return data, 0

    def sg_count(self, family: int, source: bytes, group: bytes) -> tuple[int, int, int]:
        """(packets, bytes, wrong_if) the kernel counted for one (S,G)."""
        req, sock = (SIOC_SG_REQ, self.sock4) if family == 4 else (SIOC_SG_REQ6, self.sock6)
        buf = bytearray(req.pack(*_addrs(family, source, group), 0, 0, 0))
        fcntl.ioctl(sock.fileno(), SIOCGETSGCNT, buf)
        return req.unpack(buf)[2:]
