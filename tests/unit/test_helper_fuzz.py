"""The helper fuzzed end to end: datagrams go through the real request loop
(Server.serve_one), the real policy, the real struct packing of
privileged/kernel.py and the real reply encoding; only the kernel is
replaced, at the setsockopt/ioctl/sendmsg call.

Every datagram must end in a reply datagram with one reply per request, or
in a ProtocolViolation (the helper then exits, and says why): anything else
(struct.error, EncodeError, KeyError...) is a crash. Every call that reaches
the fake kernel is decoded and checked against the kernel structs' ranges,
so an invalid request that got through is caught as well.

SMCROUTE_FUZZ_EXAMPLES sets the number of cases per test (scripts/fuzz-helper
runs long campaigns).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec
from smcroute.policy import ops
from smcroute.policy.limits import MAX_BATCH, MAXVIFS
from smcroute.privileged import kernel
from smcroute.privileged.server import ProtocolViolation, Server

from .test_policy_helper import any_value, msgpack_values, mutated_requests, valid_requests

EXAMPLES = int(os.environ.get("SMCROUTE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class FakeSocket:
    """A kernel socket: checks what it is given, may fail with an errno."""

    def __init__(self, calls: list[tuple[Any, ...]], errors: Iterator[int]) -> None:
        self.calls = calls
        self.errors = errors

    def fileno(self) -> int:
        return -1

    def _maybe_fail(self) -> None:
        err = next(self.errors, 0)
        if err:
            raise OSError(err, os.strerror(err))

    def setsockopt(self, level: int, opt: int, value: bytes) -> None:
        check_kernel_call(level, opt, value)
        self.calls.append((level, opt, value))
        self._maybe_fail()

    def sendmsg(self, buffers: list[bytes], ancdata: list[Any], flags: int, addr: Any) -> int:
        (ifindex,) = struct.unpack_from("@i", ancdata[0][2])
        assert ifindex >= 1, ifindex
        self.calls.append(("mrdisc", ifindex))
        self._maybe_fail()
        return sum(map(len, buffers))


def check_kernel_call(level: int, opt: int, value: bytes) -> None:
    """What reached the kernel is within its structs' ranges."""
    if level == kernel.IPPROTO_IP and opt in (kernel.MRT_ADD_VIF, kernel.MRT_DEL_VIF):
        vif, _flags, threshold, _rate, ifindex, _ = kernel.VIFCTL.unpack(value)
        assert vif < MAXVIFS and (opt == kernel.MRT_DEL_VIF or (ifindex >= 1 and threshold >= 1))
    elif level == kernel.IPPROTO_IPV6 and opt == kernel.MRT6_ADD_MIF:
        mif, _flags, threshold, pifi, _rate = kernel.MIF6CTL.unpack(value)
        assert mif < MAXVIFS and pifi >= 1 and threshold >= 1
    elif level == kernel.IPPROTO_IPV6 and opt == kernel.MRT6_DEL_MIF:
        assert struct.unpack("@H", value)[0] < MAXVIFS
    elif opt in (kernel.MRT_ADD_MFC, kernel.MRT_DEL_MFC):  # same numbers for IPv6
        size = kernel.MFCCTL.size if level == kernel.IPPROTO_IP else kernel.MF6CCTL.size
        assert len(value) == size
        parent = struct.unpack_from("@H", value, 8 if level == kernel.IPPROTO_IP else 56)[0]
        assert parent < MAXVIFS
    else:
        raise AssertionError(f"unexpected setsockopt {level}/{opt}")


def fake_ioctl(fd: int, request: int, buf: bytearray) -> int:
    assert request == kernel.SIOCGETSGCNT
    layout = kernel.SIOC_SG_REQ if len(buf) == kernel.SIOC_SG_REQ.size else kernel.SIOC_SG_REQ6
    src, grp, *_ = layout.unpack(buf)
    # the largest counters the kernel can report: the longest reply
    buf[:] = layout.pack(src, grp, 2**64 - 1, 2**64 - 1, 2**64 - 1)
    return 0


@contextmanager
def helper(errors: list[int]) -> Iterator[tuple[socket.socket, Server, list[tuple[Any, ...]]]]:
    calls: list[tuple[Any, ...]] = []
    failing = iter(errors)
    mroute = kernel.Mroute.__new__(kernel.Mroute)
    mroute.table = 0
    mroute.sock4, mroute.sock6, mroute.mrdisc4 = (FakeSocket(calls, failing) for _ in range(3))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * codec.MAX_DATAGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * codec.MAX_DATAGRAM)
    try:
        with mock.patch.object(kernel.fcntl, "ioctl", fake_ioctl):
            yield ours, Server(theirs, mroute, ops.State(50)), calls
    finally:
        ours.close()
        theirs.close()


def serve(datagrams: list[bytes], errors: list[int]) -> None:
    """Feed datagrams to one helper; check each outcome and the state after."""
    with helper(errors) as (ours, server, _calls):
        for data in datagrams:
            ours.send(data)
            try:
                assert server.serve_one() is True
            except ProtocolViolation:
                return  # the helper exits: the end of this run
            reply = codec.decode(ours.recv(codec.MAX_DATAGRAM))
            batch = codec.decode(data)
            assert reply["t"] == "replies" and len(reply["replies"]) == len(batch)
            for req, rep in zip(batch, reply["replies"], strict=True):
                assert rep["id"] == req["id"] and type(rep["ok"]) is bool
            state = server.state
            assert len(state.mfc) <= state.max_mfc
            for family in (4, 6):
                assert all(0 <= v < MAXVIFS for v in state.vifs[family])
                assert len(set(state.vifs[family].values())) == len(state.vifs[family])


ERRORS = st.lists(st.sampled_from([0, 0, 0, errno.EINVAL, errno.ENOENT, errno.EADDRINUSE,
                                   errno.ENOBUFS]), max_size=20)


@FUZZ
@given(st.lists(st.lists(valid_requests(), min_size=1, max_size=40), min_size=1, max_size=6),
       ERRORS)
def test_well_formed_batches_never_crash_the_helper(batches: list[list[Any]],
                                                    errors: list[int]) -> None:
    serve([codec.encode(b) for b in batches], errors)


@FUZZ
@given(st.lists(st.lists(mutated_requests(), min_size=0, max_size=20) | msgpack_values
                | any_value, min_size=1, max_size=6), ERRORS)
def test_mutated_batches_never_crash_the_helper(batches: list[Any], errors: list[int]) -> None:
    serve([codec.encode(b) for b in batches], errors)


@FUZZ
@given(st.lists(valid_requests(), min_size=1, max_size=20), st.data())
@example([{"op": "hello", "id": 1}], None)
def test_mangled_bytes_never_crash_the_helper(batch: list[Any], data: Any) -> None:
    raw = bytearray(codec.encode(batch))
    if data is not None:
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        raw = raw[:data.draw(st.integers(1, len(raw)))]
    serve([bytes(raw)], [])


def test_the_largest_replies_fit_in_a_datagram() -> None:
    # one modules (the one long reply a batch may hold) and sg_count replies
    # with the largest counters, the longest short reply there is
    sg = {"op": "sg_count", "family": 6, "source": bytes(15) + b"\1",
          "group": b"\xff\x0e" + bytes(14)}
    batch = [{"op": "modules", "id": 0}] + [{**sg, "id": 2**63 - 1 - i}
                                            for i in range(MAX_BATCH - 1)]
    with helper([]) as (ours, server, _):
        ours.send(codec.encode(batch))
        assert server.serve_one()
        replies = codec.decode(ours.recv(codec.MAX_DATAGRAM))["replies"]
    assert len(replies) == MAX_BATCH and all(r["ok"] for r in replies)


@pytest.mark.parametrize("batch", [
    [{"op": "modules", "id": i} for i in range(MAX_BATCH)],  # once a 1.37 MB reply
    [{"op": "modules", "id": 1}, {"op": "hello", "id": 2}, {"op": "modules", "id": 3}],
])
def test_more_than_one_long_reply_is_a_violation(batch: list[Any]) -> None:
    with helper([]) as (ours, server, _), pytest.raises(ProtocolViolation, match="more than one"):
        ours.send(codec.encode(batch))
        server.serve_one()


def test_an_ipv6_ifindex_beyond_16_bits_is_a_violation_not_a_crash() -> None:
    add = {"op": "add_vif", "id": 1, "family": 6, "vif": 0, "ifindex": 70000, "threshold": 1}
    with helper([]) as (ours, server, calls), pytest.raises(ProtocolViolation, match="ifindex"):
        ours.send(codec.encode([add]))
        server.serve_one()
    assert calls == []
    assert ops.parse({**add, "family": 4})["ifindex"] == 70000  # IPv4's is an int


def test_an_empty_datagram_is_a_violation_and_eof_is_the_end() -> None:
    with helper([]) as (ours, server, _):
        ours.send(b"")
        with pytest.raises(ProtocolViolation, match="empty datagram"):
            server.serve_one()
    with helper([]) as (ours, server, _):
        ours.close()
        assert server.serve_one() is False


def test_duplicate_map_keys_are_a_violation() -> None:
    # {"op": "del_vif", "id": 1, "family": 4, "vif": 0, "vif": 31}, by hand:
    # msgpack's packer cannot write a duplicate key
    body = b"".join(codec.encode(x) for x in ("op", "del_vif", "id", 1, "family", 4,
                                              "vif", 0, "vif", 31))
    data = b"\x91" + bytes([0x80 | 5]) + body
    with helper([]) as (ours, server, _), pytest.raises(ProtocolViolation, match="duplicate"):
        ours.send(data)
        server.serve_one()


def test_mrdisc_is_rate_limited_per_vif() -> None:
    with helper([]) as (ours, server, calls):
        server.state.vifs[4][0] = 7
        server.state.vifs[4][1] = 8
        sent = []
        for vif in (0, 0, 1):
            batch = [{"op": "mrdisc", "id": i, "vif": vif, "interval": 20, "terminate": False}
                     for i in range(100)]
            ours.send(codec.encode(batch))
            server.serve_one()
            replies = codec.decode(ours.recv(codec.MAX_DATAGRAM))["replies"]
            sent.append(sum(r["ok"] for r in replies))
            assert {r["errno"] for r in replies if not r["ok"]} == {errno.EAGAIN}
    # a burst of 8 per VIF, then about 2 a second: the second batch of VIF 0
    # comes microseconds later; VIF 1 has its own
    assert sent[0] == 8 and sent[1] <= 1 and sent[2] == 8
    assert len([c for c in calls if c[0] == "mrdisc"]) == sum(sent)
