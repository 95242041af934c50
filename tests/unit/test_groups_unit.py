"""Group membership without root (SPEC 6, 2.5, 3.4-3.5, 4.4, 4.7):
unprivileged/groups.py (expansion, identity, text), unprivileged/membership.py
over a fake kernel that enforces Linux's per-socket limits, engine.plan()'s
mgroup handling, show.groups() and the join/leave rule edits."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import os
import re
import socket
import struct
from dataclasses import dataclass, field

import pytest
from smcroute.ipc.control import ControlRequest
from smcroute.unprivileged import commands, groups, show
from smcroute.unprivileged.commands import (
    CommandError,
    Lines,
    edit,
    group_from_args,
)
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.engine import plan
from smcroute.unprivileged.membership import (
    MCAST_JOIN_GROUP,
    MCAST_JOIN_SOURCE_GROUP,
    MCAST_LEAVE_GROUP,
    MCAST_LEAVE_SOURCE_GROUP,
    Memberships,
    group_req,
)
from smcroute.unprivileged.model import Config, Interface, Mgroup, Pending

FILE = "/etc/smcroute.conf"



def join_rule(conf, rule):
    lines = Lines(conf)
    commands._join(lines, plan(Config(conf), IFS), rule)
    return tuple(lines)


def leave_rule(conf, rule):
    lines = Lines(conf)
    commands._leave(lines, plan(Config(conf), IFS), rule)
    return tuple(lines)


def edit_directives(conf, req, ifs):
    """One edit through commands.edit, as the core makes them."""
    lines = Lines(conf)
    rule = edit(lines, plan(Config(conf), ifs), req)
    return tuple(lines), rule


def apply(m, target):
    """Memberships to exactly target: leave what it lacks, join what it adds
    (what the core asks of the pool), keeping the newest rule of each."""
    leave = [mm for mm, _ in m.joined.values() if mm.key not in target]
    join = [mm for k, mm in target.items() if k not in m.joined]
    errors = m.change(leave, join)
    for k, mm in target.items():
        if k in m.joined:
            m.joined[k] = (mm, m.joined[k][1])
    return errors


def held(m):
    """What the pool has joined."""
    return [mm for mm, _ in m.joined.values()]


def rules(text: str) -> list[Mgroup]:
    cfg = parse_text(text, FILE)
    assert cfg.errors == (), [str(d) for d in cfg.errors]
    out = [d for d in cfg.directives if isinstance(d, Mgroup)]
    assert out, text
    return out


def rule(text: str) -> Mgroup:
    return rules(text)[0]


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def text_of(address: bytes | None) -> str | None:
    return None if address is None else str(ipaddress.ip_address(address))


# -- groups.py: expansion, size, identity, text ------------------------------------


def test_addresses_of_a_host_is_the_address_as_written():
    r = rule("mgroup from a1 group 225.1.2.40")
    assert groups.addresses(r.group) == [packed("225.1.2.40")]


def test_group_range_starts_at_the_network_address():
    r = rule("mgroup from a1 group 225.1.2.40/24")
    got = [text_of(a) for a in groups.addresses(r.group)]
    assert got == [f"225.1.2.{i}" for i in range(256)]


def test_source_range_starts_at_the_network_address():
    r = rule("mgroup from a1 source 10.0.0.1/26 group 225.1.1.1")
    assert r.source is not None
    got = [text_of(a) for a in groups.addresses(r.source)]
    assert got == [f"10.0.0.{i}" for i in range(64)]


def test_ipv6_range():
    r = rule("mgroup from a1 group ff0e::1:42/124")
    got = [text_of(a) for a in groups.addresses(r.group)]
    assert got == [f"ff0e::1:{i:x}" for i in range(0x40, 0x50)]


@pytest.mark.parametrize("line, n", [
    ("mgroup from a1 group 225.1.1.1", 1),
    ("mgroup from a1 group 225.1.1.1/32", 1),
    ("mgroup from a1 group 225.1.1.1/0", 1),  # /0 means full length (SPEC 2.5)
    ("mgroup from a1 group 225.1.2.40/24", 256),
    ("mgroup from a1 source 10.0.0.1/26 group 225.1.1.1", 64),
    ("mgroup from a1 source 10.0.0.1/26 group 225.1.2.0/24", 64 * 256),
    ("mgroup from a1 group ff0e::/64", 2 ** 64),
    ("mgroup from a1 source fd00::/120 group ff3e::/120", 256 * 256),
])
def test_size(line, n):
    assert groups.size(rule(line)) == n


def test_expand_sources_outer_groups_inner():
    r = rule("mgroup from a+ source 10.0.0.5/31 group 225.1.1.1/31")
    got = groups.expand(r, "a2", 7)
    assert [(text_of(m.source), text_of(m.group)) for m in got] == [
        ("10.0.0.4", "225.1.1.0"), ("10.0.0.4", "225.1.1.1"),
        ("10.0.0.5", "225.1.1.0"), ("10.0.0.5", "225.1.1.1")]
    assert {(m.ifname, m.ifindex, m.family) for m in got} == {("a2", 7, 4)}
    assert all(m.rule is r for m in got)
    assert got[0].key == (7, 4, packed("10.0.0.4"), packed("225.1.1.0"))


def test_expand_asm_has_no_source():
    r = rule("mgroup from a1 group ff0e::42")
    (m,) = groups.expand(r, "a1", 3)
    assert m.source is None and m.family == 6 and m.key == (3, 6, None, packed("ff0e::42"))


def test_membership_identity_ignores_the_rule():
    a = rule("mgroup from a+ group 225.1.1.0/30")
    b = rule("mgroup from a1 group 225.1.1.1")
    shared = [m for m in groups.expand(a, "a1", 3) if m.group == packed("225.1.1.1")]
    assert shared == groups.expand(b, "a1", 3)
    assert hash(shared[0]) == hash(groups.expand(b, "a1", 3)[0])


@pytest.mark.parametrize("a, b, same", [
    ("from a1 group 225.1.1.1", "group 225.1.1.1 from a1", True),
    ("from a1 source 10.0.0.1 group 225.1.1.1", "from a1 source 10.0.0.1/24 group 225.1.1.1",
     True),  # the source length is not compared (SPEC 6.1)
    ("from a1 group 225.1.1.0/24", "from a1 group 225.1.1.0/25", False),
    ("from a1 group 225.1.1.0/24", "from a1 group 225.1.1.7/24", False),  # as written
    ("from a1 group 225.1.1.1", "from a2 group 225.1.1.1", False),
    ("from a+ group 225.1.1.1", "from a1 group 225.1.1.1", False),  # the name string
    ("from a1 group 225.1.1.1", "from a1 source 10.0.0.1 group 225.1.1.1", False),
    ("from a1 source 10.0.0.1 group 225.1.1.1", "from a1 source 10.0.0.2 group 225.1.1.1",
     False),
    ("from a1 source 0.0.0.0 group 225.1.1.1", "from a1 group 225.1.1.1", True),
])
def test_same(a, b, same):
    ra, rb = rule(f"mgroup {a}"), rule(f"mgroup {b}")
    assert groups.same(ra, rb) is same
    assert groups.same(rb, ra) is same


@pytest.mark.parametrize("line, want", [
    ("mgroup from a1 group 225.1.1.1", "(*, 225.1.1.1)"),
    ("mgroup from a1 source 10.0.0.10 group 225.3.2.1", "(10.0.0.10, 225.3.2.1)"),
    ("mgroup from a1 group 225.5.5.4/31", "(*, 225.5.5.4/31)"),
    ("mgroup from a1 source 10.0.0.1/26 group 225.1.2.40/24", "(10.0.0.1/26, 225.1.2.40/24)"),
    ("mgroup from a1 group 225.1.1.1/32", "(*, 225.1.1.1)"),
    ("mgroup from a1 source fd00::1 group ff3e::1", "(fd00::1, ff3e::1)"),
    ("mgroup from a1 group FF0E:0::1:1", "(*, ff0e::1:1)"),
])
def test_text_of_a_rule(line, want):
    assert groups.text(rule(line)) == want


def test_text_of_an_expanded_membership_keeps_the_configured_lengths():
    r = rule("mgroup from a1 source 10.0.0.1/26 group 225.1.2.40/24")
    assert groups.text(r, packed("10.0.0.5"), packed("225.1.2.7")) == (
        "(10.0.0.5/26, 225.1.2.7/24)")
    r = rule("mgroup from a1 group 225.1.1.1")
    assert groups.text(r, None, packed("225.1.1.1")) == "(*, 225.1.1.1)"


# -- membership.py over a fake kernel ------------------------------------------------


class SockAddrStorage(ctypes.Structure):
    _fields_ = [("ss_family", ctypes.c_ushort), ("_pad", ctypes.c_ubyte * 6),
                ("_align", ctypes.c_ulong), ("_rest", ctypes.c_ubyte * 112)]


class GroupReq(ctypes.Structure):
    _fields_ = [("gr_interface", ctypes.c_uint32), ("gr_group", SockAddrStorage)]


class GroupSourceReq(ctypes.Structure):
    _fields_ = [("gsr_interface", ctypes.c_uint32), ("gsr_group", SockAddrStorage),
                ("gsr_source", SockAddrStorage)]


def decode(value: bytes) -> tuple[int, bytes, bytes | None]:
    """(ifindex, group, source) of a struct group_req / group_source_req."""
    (ifindex,) = struct.unpack_from("=I", value, 0)

    def storage(at: int) -> bytes:
        (family,) = struct.unpack_from("=H", value, at)
        if family == socket.AF_INET:
            return value[at + 4:at + 8]
        assert family == socket.AF_INET6, family
        return value[at + 8:at + 24]

    group = storage(GroupReq.gr_group.offset)
    source = storage(GroupSourceReq.gsr_source.offset) if len(value) > ctypes.sizeof(
        GroupReq) else None
    return ifindex, group, source


@dataclass(eq=False)
class FakeSock:
    family: int
    number: int
    closed: bool = False
    # (ifindex, group) -> None (any source) or the set of sources
    groups: dict[tuple[int, bytes], set[bytes] | None] = field(default_factory=dict)

    def close(self) -> None:
        self.closed = True


class JoinKernel:
    """What Linux does with MCAST_(JOIN|LEAVE)_(SOURCE_)GROUP per socket:
    at most max_groups groups per IPv4 socket (igmp_max_memberships) and
    max_sources sources per group per socket (igmp_max_msf, mld_max_msf),
    else ENOBUFS; a group joined twice on one socket is EADDRINUSE; mixing
    any-source and source-specific joins of one group on one socket is
    EINVAL. ``fail`` maps (group text) to an errno to raise instead."""

    def __init__(self, max_groups: int = 20, max_sources: int = 10,
                 max_sources6: int = 64, fail: dict[str, int] | None = None) -> None:
        self.max_groups = max_groups
        self.max_sources = {4: max_sources, 6: max_sources6}
        self.fail = fail or {}
        self.sockets: list[FakeSock] = []
        self.calls: list[tuple[FakeSock, int, int, bytes]] = []

    def socket(self, family: int) -> FakeSock:
        sock = FakeSock(family, len(self.sockets))
        self.sockets.append(sock)
        return sock

    def open(self) -> list[FakeSock]:
        return [s for s in self.sockets if not s.closed]

    def setsockopt(self, sock: FakeSock, level: int, option: int, value: bytes) -> None:
        assert not sock.closed
        family = 4 if level == socket.IPPROTO_IP else 6
        assert level == (socket.IPPROTO_IP if sock.family == 4 else socket.IPPROTO_IPV6)
        self.calls.append((sock, level, option, value))
        ifindex, group, source = decode(value)
        assert len(group) == (4 if family == 4 else 16)
        if (code := self.fail.get(text_of(group))) is not None:
            raise OSError(code, "fake")
        key = (ifindex, group)
        if option == MCAST_JOIN_GROUP:
            assert source is None
            if key in sock.groups:
                raise OSError(errno.EADDRINUSE, "in use")
            if family == 4 and len(sock.groups) >= self.max_groups:
                raise OSError(errno.ENOBUFS, "no buffers")
            sock.groups[key] = None
        elif option == MCAST_JOIN_SOURCE_GROUP:
            assert source is not None
            if key in sock.groups:
                have = sock.groups[key]
                if have is None:
                    raise OSError(errno.EINVAL, "mode mismatch")
                if source in have:
                    raise OSError(errno.EADDRNOTAVAIL, "source joined")
                if len(have) >= self.max_sources[family]:
                    raise OSError(errno.ENOBUFS, "no buffers")
                have.add(source)
            else:
                if family == 4 and len(sock.groups) >= self.max_groups:
                    raise OSError(errno.ENOBUFS, "no buffers")
                if self.max_sources[family] < 1:
                    raise OSError(errno.ENOBUFS, "no buffers")
                sock.groups[key] = {source}
        elif option == MCAST_LEAVE_GROUP:
            if key not in sock.groups or sock.groups[key] is not None:
                raise OSError(errno.EADDRNOTAVAIL, "not joined")
            del sock.groups[key]
        elif option == MCAST_LEAVE_SOURCE_GROUP:
            have = sock.groups.get(key)
            if not have or source not in have:
                raise OSError(errno.EADDRNOTAVAIL, "not joined")
            have.discard(source)
            if not have:
                del sock.groups[key]
        else:
            raise AssertionError(f"unexpected option {option}")

    def joined(self) -> set[tuple[int, bytes, bytes | None]]:
        """Every (ifindex, group, source) some open socket holds."""
        out = set()
        for s in self.open():
            for (ifindex, group), srcs in s.groups.items():
                for src in [None] if srcs is None else srcs:
                    out.add((ifindex, group, src))
        return out


def pool(kernel: JoinKernel, max_groups: int = 20, max_sources: int = 10,
         max_sources6: int = 64) -> Memberships:
    """Memberships over kernel, with limits set (not read from this host)."""
    m = Memberships(kernel=kernel)  # type: ignore[arg-type]
    m.max_groups[4] = max_groups
    m.max_sources[4] = max_sources
    m.max_sources[6] = max_sources6
    return m


def target(*lines: str, ifname: str = "a1", ifindex: int = 3) -> dict:
    out: dict = {}
    for r in rules("\n".join(lines)):
        for m in groups.expand(r, ifname, ifindex):
            out.setdefault(m.key, m)
    return out


def per_socket(kernel: JoinKernel) -> list[int]:
    return [len(s.groups) for s in kernel.open()]


def test_group_req_layout_matches_the_c_structs():
    assert ctypes.sizeof(GroupReq) == 136 and ctypes.sizeof(GroupSourceReq) == 264
    (m4,) = target("mgroup from a1 group 225.1.2.3", ifindex=7).values()
    option, req = group_req(m4)
    assert option == MCAST_JOIN_GROUP and len(req) == ctypes.sizeof(GroupReq)
    c = GroupReq.from_buffer_copy(req)
    assert c.gr_interface == 7 and c.gr_group.ss_family == socket.AF_INET
    assert req[8 + 4:8 + 8] == packed("225.1.2.3")  # sockaddr_in.sin_addr
    (s6,) = target("mgroup from a1 source fd00::9 group ff3e::42", ifindex=9).values()
    option, req = group_req(s6)
    assert option == MCAST_JOIN_SOURCE_GROUP and len(req) == ctypes.sizeof(GroupSourceReq)
    c = GroupSourceReq.from_buffer_copy(req)
    assert c.gsr_interface == 9
    assert c.gsr_group.ss_family == c.gsr_source.ss_family == socket.AF_INET6
    assert decode(req) == (9, packed("ff3e::42"), packed("fd00::9"))
    g, s = GroupSourceReq.gsr_group.offset, GroupSourceReq.gsr_source.offset
    assert req[g + 8:g + 24] == packed("ff3e::42")  # sockaddr_in6.sin6_addr
    assert req[s + 8:s + 24] == packed("fd00::9")


def test_a_group_range_spreads_by_igmp_max_memberships():
    kernel = JoinKernel(max_groups=20)
    m = pool(kernel)
    want = target("mgroup from a1 group 225.1.2.40/24")
    assert apply(m, want) == []
    assert len(kernel.open()) == 13  # ceil(256 / 20)
    assert max(per_socket(kernel)) == 20
    assert kernel.joined() == {(3, k[3], None) for k in want}
    assert {mm.key for mm in held(m)} == set(want)
    assert all(opt == MCAST_JOIN_GROUP and lvl == socket.IPPROTO_IP
               for _, lvl, opt, _ in kernel.calls)
    assert len(kernel.calls) == 256  # no failed attempt: the limit was known


def test_a_source_range_spreads_by_igmp_max_msf():
    kernel = JoinKernel(max_sources=10)
    m = pool(kernel)
    want = target("mgroup from a1 source 10.0.0.1/26 group 225.1.1.1")
    assert apply(m, want) == []
    assert len(kernel.open()) == 7  # ceil(64 / 10)
    assert all(len(srcs) <= 10 for s in kernel.open() for srcs in s.groups.values())
    assert kernel.joined() == {(3, packed("225.1.1.1"), k[2]) for k in want}
    assert all(opt == MCAST_JOIN_SOURCE_GROUP for _, _, opt, _ in kernel.calls)


def test_sources_and_groups_together():
    kernel = JoinKernel()
    m = pool(kernel)
    want = target("mgroup from a1 source 10.0.0.0/28 group 225.1.1.0/28")  # 16 x 16
    assert apply(m, want) == []
    assert len(kernel.joined()) == 256
    for s in kernel.open():
        assert len(s.groups) <= 20
        assert all(len(srcs) <= 10 for srcs in s.groups.values())


def test_ipv6_has_no_group_limit_and_mld_max_msf_sources():
    kernel = JoinKernel(max_sources6=64)
    m = pool(kernel)
    assert apply(m, target("mgroup from a1 group ff0e::100/120")) == []
    assert len(kernel.open()) == 1
    assert apply(m, {**target("mgroup from a1 group ff0e::100/120"),
                    **target("mgroup from a1 source fd00::/121 group ff3e::1")}) == []
    srcs = [len(s.groups.get((3, packed("ff3e::1"))) or ()) for s in kernel.open()]
    assert sorted(n for n in srcs if n) == [64, 64]
    assert all(lvl == socket.IPPROTO_IPV6 for _, lvl, _, _ in kernel.calls)
    assert all(s.family == 6 for s in kernel.open())


def test_families_do_not_share_sockets():
    kernel = JoinKernel()
    m = pool(kernel)
    assert apply(m, {**target("mgroup from a1 group 225.1.1.1"),
                    **target("mgroup from a1 group ff0e::1")}) == []
    assert sorted(s.family for s in kernel.open()) == [4, 6]


def test_any_source_and_source_specific_of_one_group_use_different_sockets():
    kernel = JoinKernel()
    m = pool(kernel)
    both = {**target("mgroup from a1 group 225.1.1.1"),
            **target("mgroup from a1 source 10.0.0.1 group 225.1.1.1"),
            **target("mgroup from a1 source 10.0.0.2 group 225.1.1.1")}
    assert apply(m, both) == []
    assert len(kernel.open()) == 2
    assert len(kernel.joined()) == 3


def test_the_same_group_on_two_interfaces_shares_a_socket():
    kernel = JoinKernel()
    m = pool(kernel)
    want = {**target("mgroup from a1 group 225.1.1.1", ifindex=3),
            **target("mgroup from a1 group 225.1.1.1", ifname="a2", ifindex=4)}
    assert apply(m, want) == []
    assert len(kernel.open()) == 1 and per_socket(kernel) == [2]


def test_enobufs_lowers_the_group_limit_and_moves_on():
    kernel = JoinKernel(max_groups=5)  # the kernel allows fewer than we believe
    m = pool(kernel, max_groups=20)
    want = target("mgroup from a1 group 225.1.1.0/26")  # 64 groups
    assert apply(m, want) == []
    assert kernel.joined() == {(3, k[3], None) for k in want}
    assert m.max_groups[4] == 5
    assert max(per_socket(kernel)) <= 5
    assert len(kernel.open()) == 13  # ceil(64 / 5): no socket wasted
    refused = sum(1 for s, _, opt, v in kernel.calls if opt == MCAST_JOIN_GROUP) - 64
    assert 1 <= refused <= 2  # once learnt, the lower limit is used


def test_enobufs_lowers_the_source_limit_and_moves_on():
    kernel = JoinKernel(max_sources=3)
    m = pool(kernel, max_sources=10)
    want = target("mgroup from a1 source 10.0.0.0/28 group 225.1.1.1")
    assert apply(m, want) == []
    assert len(kernel.joined()) == 16
    assert m.max_sources[4] == 3
    assert len(kernel.open()) == 6  # ceil(16 / 3)


def test_enobufs_everywhere_fails_bounded_and_leaks_no_socket():
    """A kernel that refuses every join (e.g. optmem exhausted): the join
    fails with a message after a bounded number of tries, and no socket
    without memberships stays open."""
    kernel = JoinKernel(max_groups=0)
    m = pool(kernel)
    errors = apply(m, target("mgroup from a1 group 225.1.1.1"))
    assert len(errors) == 1 and "225.1.1.1" in errors[0][1], errors
    assert len(kernel.calls) <= 64
    assert list(held(m)) == []
    assert [s for s in kernel.open() if not s.groups] == [], (
        f"{len(kernel.open())} empty sockets left open")


def test_eaddrinuse_counts_as_joined_already():
    kernel = JoinKernel(fail={"225.1.1.2": errno.EADDRINUSE})
    m = pool(kernel)
    errors = apply(m, target("mgroup from a1 group 225.1.1.1/30"))
    assert errors == []
    assert packed("225.1.1.2") not in {mm.group for mm in held(m)}
    assert len(list(held(m))) == 3


def test_other_errors_are_reported_with_group_interface_and_reason():
    kernel = JoinKernel(fail={"225.1.1.2": errno.EINVAL, "ff0e::2": errno.ENODEV})
    m = pool(kernel)
    want = {**target("mgroup from a1 group 225.1.1.1/30"),
            **target("mgroup from a1 source fd00::1 group ff0e::2")}
    errors = apply(m, want)
    texts = sorted(e for _, e in errors)
    assert texts == [
        f"Failed joining group (*, 225.1.1.2) on a1: {os.strerror(errno.EINVAL)}",
        f"Failed joining group (fd00::1, ff0e::2) on a1: {os.strerror(errno.ENODEV)}"]
    assert {text_of(mm.group) for mm in held(m)} == {"225.1.1.0", "225.1.1.1",
                                                             "225.1.1.3"}
    assert [e[0].key for e in errors if "225" in e[1]] == [(3, 4, None, packed("225.1.1.2"))]


def test_apply_touches_only_the_difference():
    kernel = JoinKernel()
    m = pool(kernel)
    first = target("mgroup from a1 group 225.1.1.1", "mgroup from a1 group 225.1.1.2",
                   "mgroup from a1 source 10.0.0.1 group 225.1.1.3")
    assert apply(m, first) == []
    kernel.calls.clear()
    second = target("mgroup from a1 group 225.1.1.1", "mgroup from a1 group 225.1.1.4",
                    "mgroup from a1 source 10.0.0.1 group 225.1.1.3")
    assert apply(m, second) == []
    touched = [(opt, text_of(decode(v)[1])) for _, _, opt, v in kernel.calls]
    assert touched == [(MCAST_LEAVE_GROUP, "225.1.1.2"), (MCAST_JOIN_GROUP, "225.1.1.4")]
    kernel.calls.clear()
    assert apply(m, second) == [] and kernel.calls == []


def test_apply_keeps_the_newest_rule_for_show():
    kernel = JoinKernel()
    m = pool(kernel)
    old = target("mgroup from a1 group 225.1.1.0/30")
    assert apply(m, old) == []
    new = target("mgroup from a1 group 225.1.1.1")
    kernel.calls.clear()
    assert apply(m, new) == []
    assert len(kernel.calls) == 3  # three leaves, the shared group stays
    (only,) = held(m)
    assert only.rule.group.length == 32


def test_leave_uses_the_joining_socket_and_the_same_request():
    kernel = JoinKernel()
    m = pool(kernel)
    want = target("mgroup from a1 group 225.1.1.0/27",  # 32 groups: two sockets
                  "mgroup from a1 source 10.0.0.1 group 225.1.2.1")
    assert apply(m, want) == []
    joins = {decode(v): (s, v) for s, _, opt, v in kernel.calls}
    kernel.calls.clear()
    assert apply(m, {}) == []
    assert len(kernel.calls) == 33
    for sock, _, opt, value in kernel.calls:
        what = decode(value)
        assert (sock, value) == joins[what]
        assert opt == (MCAST_LEAVE_GROUP if what[2] is None else MCAST_LEAVE_SOURCE_GROUP)
    assert kernel.open() == [] and m.sockets == []
    assert list(held(m)) == []


def test_leave_closes_a_socket_once_empty_and_keeps_the_others():
    kernel = JoinKernel()
    m = pool(kernel)
    all25 = target("mgroup from a1 group 225.1.1.0/27")
    keep = dict(list(all25.items())[:20])  # the first socket's groups
    assert apply(m, all25) == []
    first, second = kernel.open()
    assert len(first.groups) == 20
    assert apply(m, keep) == []
    assert second.closed and not first.closed
    assert kernel.open() == [first] and len(m.sockets) == 1
    # a freed slot is used again before a new socket is opened
    rest = dict(list(keep.items())[1:])
    assert apply(m, rest) == []
    assert apply(m, {**rest, **target("mgroup from a1 group 225.9.9.9")}) == []
    assert len(kernel.sockets) == 2 and kernel.open() == [first]
    assert (3, packed("225.9.9.9")) in first.groups


def test_leaving_one_source_keeps_the_others_of_the_group():
    kernel = JoinKernel()
    m = pool(kernel)
    both = target("mgroup from a1 source 10.0.0.0/31 group 225.1.1.1")
    assert apply(m, both) == []
    one = dict(list(both.items())[:1])
    assert apply(m, one) == []
    assert kernel.joined() == {(3, packed("225.1.1.1"), packed("10.0.0.0"))}
    assert len(kernel.open()) == 1


def test_leave_survives_a_vanished_interface():
    kernel = JoinKernel()
    m = pool(kernel)
    assert apply(m, target("mgroup from a1 group 225.1.1.1")) == []
    kernel.fail["225.1.1.1"] = errno.ENODEV
    assert apply(m, {}) == []
    assert list(held(m)) == [] and kernel.open() == []


def test_close_closes_every_socket():
    kernel = JoinKernel()
    m = pool(kernel)
    assert apply(m, {**target("mgroup from a1 group 225.1.1.0/26"),
                    **target("mgroup from a1 group ff0e::1")}) == []
    assert len(kernel.open()) == 5
    m.close()
    assert kernel.open() == [] and list(held(m)) == []


def test_limits_are_read_from_proc_sys(tmp_path, monkeypatch):
    from smcroute.unprivileged import membership

    read: list[str] = []
    real = membership.read_limit

    def fake(path: str, default: int) -> int:
        read.append(path)
        return {"/proc/sys/net/ipv4/igmp_max_memberships": 7,
                "/proc/sys/net/ipv4/igmp_max_msf": 3,
                "/proc/sys/net/ipv6/mld_max_msf": 5}.get(path, default)

    monkeypatch.setattr(membership, "read_limit", fake)
    m = Memberships(kernel=JoinKernel())  # type: ignore[arg-type]
    assert (m.max_groups[4], m.max_sources[4], m.max_sources[6]) == (7, 3, 5)
    bad = tmp_path / "bad"
    bad.write_text("x\n")
    assert real(str(bad), 20) == 20
    assert real(str(tmp_path / "missing"), 10) == 10
    good = tmp_path / "good"
    good.write_text("42\n")
    assert real(str(good), 20) == 42
    assert set(read) == {"/proc/sys/net/ipv4/igmp_max_memberships",
                         "/proc/sys/net/ipv4/igmp_max_msf", "/proc/sys/net/ipv6/mld_max_msf"}


# -- engine.plan: mgroup lines ---------------------------------------------------------


def interfaces(*names: str) -> dict[str, Interface]:
    """ifindex = position + 1; a name ending in "!" lacks IFF_MULTICAST."""
    out = {}
    for i, spec in enumerate(names):
        name = spec.rstrip("!")
        out[name] = Interface(name, i + 1, not spec.endswith("!"))
    return out


IFS = interfaces("lo!", "a1", "a2", "b1")


def make_plan(text: str, ifs: dict[str, Interface] = IFS):
    cfg = parse_text(text, FILE)
    assert cfg.errors == (), [str(d) for d in cfg.errors]
    return plan(cfg, ifs, {})


def memberships(p) -> set[tuple[str, int, str | None, str]]:
    return {(m.ifname, m.ifindex, text_of(m.source), text_of(m.group))
            for m in p.memberships.values()}


def test_plan_joins_on_every_matching_interface_and_gives_it_a_vif():
    p = make_plan("mgroup from a+ group 225.1.1.1\n"
                  "mgroup from b1 source 10.0.0.1 group ff3e::1\n".replace(
                      "10.0.0.1", "fd00::1"))
    assert memberships(p) == {("a1", 2, None, "225.1.1.1"), ("a2", 3, None, "225.1.1.1"),
                              ("b1", 4, "fd00::1", "ff3e::1")}
    assert [g.iif for g in p.groups] == ["a+", "b1"]
    assert {name for (_, name) in p.vifs} == {"a1", "a2", "b1"}  # SPEC 2.5 step 5
    assert {fam for (fam, _) in p.vifs} == {4, 6}
    assert p.diagnostics == [] and p.pending == [] and p.mfc == {}
    assert all(m.key == k for k, m in p.memberships.items())


def test_plan_missing_interface_is_pending():
    p = make_plan("mgroup from zz group 225.1.1.1\nmgroup from zz+ group 225.1.1.2\n")
    (r1, r2) = rules("mgroup from zz group 225.1.1.1\nmgroup from zz+ group 225.1.1.2\n")
    assert p.pending == [Pending(r1, ("zz",), inbound=True), Pending(r2, ("zz+",), inbound=True)]
    assert p.memberships == {} and p.groups == [] and p.vifs == {}
    assert p.errors == []


def test_plan_duplicate_line_is_an_error_and_joins_once():
    text = ("mgroup from a1 group 225.1.1.1\n"
            "mgroup from a1 source 10.0.0.1 group 225.1.1.2\n"
            "mgroup from a1 group 225.1.1.1\n"
            "mgroup from a1 source 10.0.0.1/24 group 225.1.1.2\n")
    p = make_plan(text)
    assert [g.where.line for g in p.groups] == [1, 2]
    assert p.errors == p.diagnostics  # a repeated join is an error (the line is skipped)
    warned = [(d.where.line, d.message) for d in p.diagnostics]
    assert [line for line, _ in warned] == [3, 4]
    assert "Already joined" in warned[0][1] and "225.1.1.1" in warned[0][1]
    assert "a1" in warned[0][1]
    assert len(p.memberships) == 2
    assert all(m.rule.where.line in (1, 2) for m in p.memberships.values())


def test_plan_overlapping_rules_share_memberships():
    p = make_plan("mgroup from a1 group 225.1.1.0/30\nmgroup from a1 group 225.1.1.1\n"
                  "mgroup from a1 group 225.1.1.3/30\n")
    assert len(p.groups) == 3 and p.diagnostics == []
    assert memberships(p) == {("a1", 2, None, f"225.1.1.{i}") for i in range(4)}


def test_plan_asm_and_ssm_of_one_group_are_two_memberships():
    p = make_plan("mgroup from a1 group 225.1.1.1\n"
                  "mgroup from a1 source 10.0.0.1 group 225.1.1.1\n")
    assert len(p.memberships) == 2


@pytest.mark.parametrize("line, ok", [
    ("mgroup from a1 group 225.1.0.0/18", True),  # 16384: the most a line may mean
    ("mgroup from a1 group 225.1.0.0/17", False),
    ("mgroup from a1 source 10.0.0.0/26 group 225.1.0.0/24", True),  # 64 x 256
    ("mgroup from a1 source 10.0.0.0/25 group 225.1.0.0/24", False),
    ("mgroup from a1 source 10.0.0.0/8 group 225.1.1.1", False),
    ("mgroup from a1 group ff0e::/64", False),  # 2^64: must not try to expand
    ("mgroup from a1 source fd00::/64 group ff0e::/64", False),
    ("mgroup from a1 group ff0e::/114", True),
])
def test_plan_caps_the_expansion_of_a_line(line, ok):
    assert groups.MAX_EXPANSION == 16384
    p = make_plan(f"mgroup from a1 group 225.9.9.9\n{line}\n")
    if ok:
        assert p.errors == []
        assert len(p.memberships) == 1 + groups.size(rule(line))
        return
    (err,) = p.errors
    assert err.where.line == 2 and "16384" in err.message, str(err)
    assert len(p.memberships) == 1  # none of line 2's


def test_plan_caps_the_expansion_on_every_matching_interface_separately():
    # the cap is per line per interface: two interfaces x 16384 is fine
    p = make_plan("mgroup from a+ group 225.1.0.0/18\n")
    assert p.errors == [] and len(p.memberships) == 2 * 16384


def test_plan_caps_the_expansion_even_while_the_interface_is_missing():
    """The cap does not depend on the interfaces: a line over it is an error
    at once, not a pending entry that fails when its interface appears."""
    p = make_plan("mgroup from zz group 225.0.0.0/8\n")
    assert p.pending == [] and len(p.errors) == 1, (p.pending, p.diagnostics)


def test_plan_interface_without_multicast_is_pending():
    """SPEC 8.2: a line waits for its interface to have the MULTICAST flag."""
    p = make_plan("mgroup from lo group 225.1.1.1\n")
    assert p.memberships == {} and p.groups == [] and p.errors == []
    assert [x.rule.iif for x in p.pending] == ["lo"]


def test_plan_phyint_disable_then_mgroup():
    # a later mgroup needs the interface again: it gets its VIF back
    p = make_plan("phyint a1 disable\nmgroup from a1 group 225.1.1.1\n")
    assert (4, "a1") in p.vifs and len(p.memberships) == 1


# -- show.groups ---------------------------------------------------------------------


def show_args(text: str, ifs: dict[str, Interface] = IFS):
    p = make_plan(text, ifs)
    return p.groups, list(p.memberships.values())


def batch_parse(lines: list[str], address: str) -> list[str]:
    return [re.sub(r"\s", "", line) for line in lines if address in line]


SHOW_CONF = """\
mgroup from a1 source 10.0.0.11 group 225.1.1.1
mgroup from a2 group 225.2.2.2
mgroup from a1 source fc00::2 group ff04::111
mgroup from a2 group ff2e::22
mgroup from a+ source 10.0.0.1/30 group 225.3.3.0/31
"""


def test_show_groups_brief_has_one_line_per_rule_batch_parse():
    rules_, joined = show_args(SHOW_CONF)
    lines = show.groups(rules_, joined, False, False)
    assert lines[:2] == ["Group Memberships Table_", f"{'GROUP (S,G)':<42} {'IIF':<16}="]
    assert batch_parse(lines, "225.1.1.1") == ["(10.0.0.11,225.1.1.1)a1"]
    assert batch_parse(lines, "225.2.2.2") == ["(*,225.2.2.2)a2"]
    assert batch_parse(lines, "ff04::111") == ["(fc00::2,ff04::111)a1"]
    assert batch_parse(lines, "ff2e::22") == ["(*,ff2e::22)a2"]
    assert batch_parse(lines, "225.3.3.0") == ["(10.0.0.1/30,225.3.3.0/31)a+"]
    assert len(lines) == 2 + 5


def test_show_groups_detail_lists_every_membership_with_configured_lengths():
    rules_, joined = show_args(SHOW_CONF)
    lines = show.groups(rules_, joined, True, False)
    at = lines.index("Kernel Group Membership Table_")
    assert lines[:at] == show.groups(rules_, joined, False, False)
    kernel = lines[at + 1:]
    assert len(kernel) == 4 + 2 * 4 * 2  # a+ matches a1 and a2: 4 sources x 2 groups
    assert kernel[0] == f"{'(10.0.0.11, 225.1.1.1)':<42} a1"
    wild = [row for row in kernel if "225.3.3." in row]
    assert wild[:2] == [f"{'(10.0.0.0/30, 225.3.3.0/31)':<42} a+",
                        f"{'(10.0.0.0/30, 225.3.3.1/31)':<42} a+"]
    assert f"{'(10.0.0.3/30, 225.3.3.1/31)':<42} a+" in wild
    assert not any(line.endswith("=") for line in kernel)  # no column heading


def test_show_groups_json():
    rules_, joined = show_args(SHOW_CONF)
    (line,) = show.groups(rules_, joined, False, True)
    assert " " not in line
    data = json.loads(line)
    assert show.groups(rules_, joined, True, True) == [line]
    assert data["groups"]["conf"] == [
        {"source": "10.0.0.11", "group": "225.1.1.1", "iif": "a1"},
        {"source": None, "group": "225.2.2.2", "iif": "a2"},
        {"source": "fc00::2", "group": "ff04::111", "iif": "a1"},
        {"source": None, "group": "ff2e::22", "iif": "a2"},
        {"source": "10.0.0.1/30", "group": "225.3.3.0/31", "iif": "a+"}]
    kernel = data["groups"]["kernel"]
    assert len(kernel) == 20
    assert {"source": "10.0.0.2/30", "group": "225.3.3.1/31", "iif": "a+"} in kernel


def test_show_groups_lists_no_pending_rule():
    rules_, joined = show_args("mgroup from zz group 225.1.1.1\n")
    assert show.groups(rules_, joined, True, False) == []
    assert json.loads(show.groups(rules_, joined, False, True)[0]) == {
        "groups": {"conf": [], "kernel": []}}


# -- smcroutectl join / leave: the rule edits ------------------------------------------


def request(cmd: str, *args: str) -> ControlRequest:
    return ControlRequest(cmd, tuple(args))


def test_group_from_args():
    asm = group_from_args(("a1", "225.1.1.1"), "join")
    assert asm.iif == "a1" and asm.source is None and str(asm.group) == "225.1.1.1"
    ssm = group_from_args(("a+", "10.0.0.1/26", "225.1.2.40/24"), "join")
    assert (str(ssm.source), str(ssm.group)) == ("10.0.0.1/26", "225.1.2.40/24")
    for bad in ((), ("a1",), ("a1", "10.0.0.1", "225.1.1.1", "x"), ("a1", "1.2.3.4"),
                ("a1", "224.0.0.9", "225.1.1.1"), ("a1", "fd00::1", "225.1.1.1"),
                ("a1", "10.0.0.1", "ff0e::1"), ("a1", "225.1.1.1/33"),
                ("a" * 16, "225.1.1.1"), ("a1", "junk")):
        with pytest.raises(CommandError):
            group_from_args(bad, "join")


def test_join_rule_refuses_a_duplicate_and_leave_rule_an_unknown():
    conf = tuple(rules("mgroup from a1 group 225.1.1.1\n"
                       "mgroup from a1 source 10.0.0.1 group 225.1.1.2\n"))
    joined = join_rule(conf, group_from_args(("a1", "225.1.1.3"), "join"))
    assert len(joined) == 3
    with pytest.raises(CommandError, match="Already joined"):
        join_rule(conf, group_from_args(("a1", "225.1.1.1"), "join"))
    with pytest.raises(CommandError, match="Already joined"):
        join_rule(conf, group_from_args(("a1", "10.0.0.1/24", "225.1.1.2"), "join"))
    left = leave_rule(joined, group_from_args(("a1", "10.0.0.1", "225.1.1.2"), "leave"))
    assert [str(r.group) for r in left] == ["225.1.1.1", "225.1.1.3"]
    with pytest.raises(CommandError, match=r"No group .* to leave"):
        leave_rule(left, group_from_args(("a1", "10.0.0.1", "225.1.1.2"), "leave"))
    with pytest.raises(CommandError, match="No group"):
        leave_rule(left, group_from_args(("a+", "225.1.1.1"), "leave"))


def test_error_texts_are_smcroutes():
    """SPEC 3.5 [verified]: the texts scripts may match."""
    conf = tuple(rules("mgroup from a1 group 225.1.1.1\n"))
    with pytest.raises(CommandError) as exc:
        join_rule(conf, group_from_args(("a1", "225.1.1.1"), "join"))
    assert str(exc.value) == "Already joined (*,225.1.1.1) on a1"
    with pytest.raises(CommandError) as exc:
        leave_rule(conf, group_from_args(("a1", "225.2.2.2"), "leave"))
    assert str(exc.value) == "No group (*,225.2.2.2) on a1 to leave"
    with pytest.raises(CommandError) as exc:
        edit_directives(conf, request("join", "nosuch", "225.1.1.2"), IFS)
    assert str(exc.value) == "unknown interface nosuch"


def test_edit_directives_join_and_leave():
    conf = tuple(rules("mgroup from a1 group 225.1.1.1\n"))
    out, r = edit_directives(conf, request("join", "a+", "10.0.0.1", "225.1.1.2"), IFS)
    assert isinstance(r, Mgroup) and out[-1] == r and len(out) == 2
    with pytest.raises(CommandError, match="unknown interface zz"):
        edit_directives(conf, request("join", "zz", "225.1.1.2"), IFS)
    with pytest.raises(CommandError, match="unknown interface zz\\+"):
        edit_directives(conf, request("join", "zz+", "225.1.1.2"), IFS)
    out, _ = edit_directives(out, request("leave", "a1", "225.1.1.1"), IFS)
    assert [d.iif for d in out] == ["a+"]
    # leaving on an interface that is gone still finds the rule
    out, _ = edit_directives(out, request("leave", "a+", "10.0.0.1", "225.1.1.2"), {})
    assert out == ()
