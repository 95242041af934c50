"""Group memberships in the kernel: joins and leaves on a pool of sockets.

Any UDP socket may join, so this runs in the unprivileged controller. The
kernel limits memberships per socket (net.ipv4.igmp_max_memberships groups,
igmp_max_msf / net.ipv6.mld_max_msf sources per group), so joins are spread
over as many sockets as needed; the limits are read from /proc/sys and
ENOBUFS, should they be lower still, moves the join to another socket.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.model import addr

if TYPE_CHECKING:
    from collections.abc import Iterable

MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP = 42, 45
MCAST_JOIN_SOURCE_GROUP, MCAST_LEAVE_SOURCE_GROUP = 46, 47
IP_MULTICAST_ALL, IPV6_MULTICAST_ALL = 49, 29
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
LEVEL = {4: socket.IPPROTO_IP, 6: socket.IPPROTO_IPV6}
UNLIMITED = 1 << 30


def _storage(family: int, packed: bytes) -> bytes:
    """A struct sockaddr_storage holding the address."""
    if family == 4:
        addr = struct.pack("=HH4s", socket.AF_INET, 0, packed)
    else:
        addr = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, packed, 0)
    return addr.ljust(128, b"\0")


def group_req(m: Membership) -> tuple[int, bytes]:
    """(option, struct group_req or group_source_req) for joining m."""
    head = struct.pack("=I4x", m.ifindex)  # gr_interface, then alignment of the storage
    if m.source is None:
        return MCAST_JOIN_GROUP, head + _storage(m.family, m.group)
    return MCAST_JOIN_SOURCE_GROUP, head + _storage(m.family, m.group) + _storage(
        m.family, m.source)


def read_limit(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


@dataclass
class _Socket:
    family: int
    sock: socket.socket
    groups: dict[tuple[int, bytes], set[bytes | None]] = field(default_factory=dict)
    full: bool = False  # the kernel said ENOBUFS: no new group here

    def fits(self, m: Membership, max_groups: int, max_sources: int) -> bool:
        sources = self.groups.get((m.ifindex, m.group))
        if sources is None:
            return not self.full and len(self.groups) < max_groups
        # a group is either any-source or source-specific on one socket
        return None not in sources and m.source is not None and len(sources) < max_sources


class Kernel:
    """Seam for tests: the system calls used."""

    def socket(self, family: int) -> socket.socket:
        sock = socket.socket(FAMILY[family], socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        level = LEVEL[family]
        if family == 4:
            sock.setsockopt(level, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(level, IP_MULTICAST_ALL, 0)
        else:
            sock.setsockopt(level, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(level, IPV6_MULTICAST_ALL, 0)
        # Never bound to a port, the socket receives no datagrams at all, so
        # (unlike SMCRoute) it needs no drop-all socket filter.
        return sock

    def setsockopt(self, sock: socket.socket, level: int, option: int, value: bytes) -> None:
        sock.setsockopt(level, option, value)


class Memberships:
    """What we joined, on which socket; apply() moves it to a target set."""

    def __init__(self, kernel: Kernel | None = None) -> None:
        self.kernel = kernel or Kernel()
        self.max_groups = {4: read_limit("/proc/sys/net/ipv4/igmp_max_memberships", 20),
                           6: UNLIMITED}
        self.max_sources = {4: read_limit("/proc/sys/net/ipv4/igmp_max_msf", 10),
                            6: read_limit("/proc/sys/net/ipv6/mld_max_msf", 64)}
        self.sockets: list[_Socket] = []
        self.joined: dict[tuple[int, int, bytes | None, bytes], tuple[Membership, _Socket]] = {}

    def change(self, leave: Iterable[Membership], join: Iterable[Membership]
               ) -> list[tuple[Membership, str]]:
        """Leave, then join; return the joins that failed, with why."""
        for m in leave:
            if m.key in self.joined:
                self.leave(m.key)
        errors = []
        for m in join:
            if m.key in self.joined:
                continue
            if (error := self.join(m)) is not None:
                errors.append((m, error))
        return errors

    def join(self, m: Membership) -> str | None:
        option, req = group_req(m)
        for _ in range(64):  # bounded: each ENOBUFS retires a socket
            entry = self._socket_for(m)
            try:
                self.kernel.setsockopt(entry.sock, LEVEL[m.family], option, req)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # a kernel limit lower than we read
                    sources = entry.groups.get((m.ifindex, m.group))
                    if sources:
                        self.max_sources[m.family] = max(1, len(sources))
                    else:
                        entry.full = True
                        self.max_groups[m.family] = max(1, len(entry.groups))
                    continue
                self._close_empty()
                if exc.errno == errno.EADDRINUSE:
                    return None  # joined already through an overlapping rule
                return (f"Failed joining group {_text(m)} on {m.ifname}:"
                        f" {os.strerror(exc.errno or 0)}")
            entry.groups.setdefault((m.ifindex, m.group), set()).add(m.source)
            self.joined[m.key] = (m, entry)
            return None
        self._close_empty()
        return f"Failed joining group {_text(m)} on {m.ifname}: no socket would take it"

    def _close_empty(self) -> None:
        """Sockets opened for a join that failed hold nothing: close them."""
        for entry in [e for e in self.sockets if not e.groups]:
            self.sockets.remove(entry)
            entry.sock.close()

    def _socket_for(self, m: Membership) -> _Socket:
        for entry in self.sockets:
            if entry.family == m.family and entry.fits(
                    m, self.max_groups[m.family], self.max_sources[m.family]):
                return entry
        entry = _Socket(m.family, self.kernel.socket(m.family))
        self.sockets.append(entry)
        return entry

    def leave(self, key: tuple[int, int, bytes | None, bytes]) -> None:
        m, entry = self.joined.pop(key)
        option, req = group_req(m)
        leave = MCAST_LEAVE_GROUP if option == MCAST_JOIN_GROUP else MCAST_LEAVE_SOURCE_GROUP
        try:
            self.kernel.setsockopt(entry.sock, LEVEL[m.family], leave, req)
        except OSError:
            pass  # the interface went away, and the membership with it
        sources = entry.groups.get((m.ifindex, m.group), set())
        sources.discard(m.source)
        if not sources:
            entry.groups.pop((m.ifindex, m.group), None)
        if not entry.groups:
            self.sockets.remove(entry)
            entry.sock.close()

    def close(self) -> None:
        for entry in self.sockets:
            entry.sock.close()  # the kernel leaves every group of a closed socket
        self.sockets.clear()
        self.joined.clear()


def _text(m: Membership) -> str:
    return f"({'*' if m.source is None else addr(m.source)}, {addr(m.group)})"
