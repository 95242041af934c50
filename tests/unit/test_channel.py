"""The controller's end of the helper channel (channel.py, channel_async.py).

Real SOCK_SEQPACKET socketpairs; the helper is a thread (tests/unit/fakes.py)
speaking smcroute.ipc.codec, sometimes backed by the helper's real request
handling (policy + privileged.server.Server) over a fake kernel.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterable
from typing import Any

import pytest
from smcroute.ipc import codec
from smcroute.ipc.helper import (
    AddMfc,
    AddVif,
    DelVif,
    Hello,
    Request,
    Upcall,
    to_wire,
    upcalls_message,
)
from smcroute.policy import helper as policy
from smcroute.policy.limits import MAX_BATCH
from smcroute.privileged.server import Server
from smcroute.unprivileged.channel import BlockingChannel, HelperLost, merge, screen
from smcroute.unprivileged.channel_async import HelperChannel

from .fakes import CLOSE, FakeKernel, ThreadHelper, accept_all, ok_replies

S4, G4 = bytes([10, 0, 0, 1]), bytes([225, 1, 2, 3])


def vifs(n: int, start_id: int = 1) -> list[Request]:
    """n well-formed requests with ids start_id, start_id + 1, ..."""
    return [AddVif(start_id + i, 4, i % 32, 1 + i, 1) for i in range(n)]


def upcall(vif: int) -> dict[str, Any]:
    return upcalls_message([Upcall(4, "nocache", vif, S4, G4)])


def channel(helper: ThreadHelper, timeout: float = 5.0) -> BlockingChannel:
    ch = BlockingChannel(helper.ours)
    ch.TIMEOUT = timeout  # a broken channel fails the test instead of hanging it
    return ch


# -- screen / merge ---------------------------------------------------------------------------


def test_screen_answers_policy_violations_and_keeps_the_rest() -> None:
    good1, bad1 = AddVif(1, 4, 0, 2, 1), AddVif(2, 4, 32, 2, 1)  # vif out of range
    bad2 = AddMfc(3, 4, S4, G4, 1, ((1, 1),))  # iif among the oifs
    good2 = DelVif(4, 6, 31)
    replies, wire = screen([good1, bad1, bad2, good2])
    assert wire == [to_wire(good1), to_wire(good2)]
    assert replies[0] is None and replies[3] is None
    for reply, req in ((replies[1], bad1), (replies[2], bad2)):
        assert reply is not None
        assert reply["id"] == req.id and reply["ok"] is False
        assert reply["errno"] == errno.EINVAL
        assert reply["error"].startswith("refused by policy: ")
    assert "vif 32" in replies[1]["error"]  # type: ignore[index]
    assert screen([]) == ([], [])


def test_merge_fills_the_gaps_in_order() -> None:
    refused = {"id": 2, "ok": False}
    assert merge([None, refused, None], [{"id": 1}, {"id": 3}]) == [
        {"id": 1}, refused, {"id": 3}]
    assert merge([refused], []) == [refused]
    assert merge([], []) == []


# -- BlockingChannel ----------------------------------------------------------------------------


def test_ids_count_from_one() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        ch = BlockingChannel(a)
        assert [ch.next_id() for _ in range(3)] == [1, 2, 3]


def test_one_batch_round_trip() -> None:
    helper = ThreadHelper(accept_all)
    ch = channel(helper)
    reqs = vifs(3)
    replies = ch.call(reqs)
    assert replies == [{"id": r.id, "ok": True} for r in reqs]
    assert helper.received == [[to_wire(r) for r in reqs]]
    assert ch.backlog == []
    helper.stop()


def test_empty_call_sends_nothing() -> None:
    helper = ThreadHelper(accept_all)
    assert channel(helper).call([]) == []
    helper.stop()
    assert helper.received == []


def test_pipelined_batches_replies_matched_in_order() -> None:
    # The helper answers nothing until it holds all three datagrams: a
    # channel that waited for each reply before sending the next batch
    # would time out here.
    expected_batches = 3
    held: list[list[Any]] = []

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        held.append(batch)
        if len(held) == expected_batches:
            for n, b in enumerate(held):
                yield {"t": "replies",
                       "replies": [{"id": r["id"], "ok": True, "batch": n} for r in b]}

    helper = ThreadHelper(respond)
    ch = channel(helper, timeout=3)
    reqs = vifs(600)
    replies = ch.call(reqs)
    assert [len(b) for b in helper.received] == [256, 256, 88]
    assert BlockingChannel.PIPELINE == 256
    assert [r["id"] for r in replies] == [r.id for r in reqs]
    assert [r["batch"] for r in replies] == [0] * 256 + [1] * 256 + [2] * 88
    helper.stop()


def test_upcalls_in_between_are_kept_in_the_backlog() -> None:
    sent: list[dict[str, Any]] = []

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        for vif in range(2):
            msg = upcall(len(sent) * 10 + vif)
            sent.append(msg)
            yield msg
        yield ok_replies(batch)

    helper = ThreadHelper(respond)
    ch = channel(helper)
    reqs = vifs(300)
    assert [r["id"] for r in ch.call(reqs)] == [r.id for r in reqs]
    assert len(helper.received) == 2
    assert ch.backlog == sent and len(sent) == 4
    # a later call adds to the backlog; nothing is dropped or reordered
    ch.call(vifs(1, start_id=1000))
    assert ch.backlog == sent and len(sent) == 6
    helper.stop()


def test_upcall_flood_while_requests_are_still_being_sent() -> None:
    # The helper forwards upcalls whenever the kernel has some, with blocking
    # writes (privileged/server.py), and reads no request while it writes.
    # A controller that only writes until every batch is out, and reads
    # nothing meanwhile, deadlocks with it once both directions are full.
    # Small buffers stand in for the real 4 MiB ones (smcrouted.py: about
    # 4 MiB of start-up requests, ~70k routes, during a burst of ~4 MiB of
    # upcalls).
    flood = upcalls_message([Upcall(4, "nocache", 1, S4, G4)] * 100)
    floods = 50

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        if len(helper.received) == 1:
            yield from [flood] * floods  # new flows arrive while we start
        yield ok_replies(batch)

    helper = ThreadHelper(respond)
    for sock in (helper.ours, helper.theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    ch = channel(helper, timeout=0.5)
    reqs = vifs(2000)  # 8 batches, more than a send buffer's worth
    try:
        replies = ch.call(reqs)
    finally:
        helper.stop()
    assert [r["id"] for r in replies] == [r.id for r in reqs]
    assert ch.backlog == [flood] * floods


def test_policy_violating_request_gets_einval_without_being_sent() -> None:
    helper = ThreadHelper(accept_all)
    ch = channel(helper)
    good1, bad, good2 = AddVif(1, 4, 0, 2, 1), AddVif(2, 4, 0, 2, 0), DelVif(3, 4, 0)
    replies = ch.call([good1, bad, good2])
    assert helper.received == [[to_wire(good1), to_wire(good2)]]
    assert replies[0] == {"id": 1, "ok": True} and replies[2] == {"id": 3, "ok": True}
    assert replies[1]["id"] == 2 and replies[1]["ok"] is False
    assert replies[1]["errno"] == errno.EINVAL
    assert "threshold" in replies[1]["error"]
    helper.stop()


def test_only_violating_requests_send_nothing() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        replies = BlockingChannel(a).call([AddVif(7, 5, 0, 2, 1)])  # family 5
        assert [(r["id"], r["errno"]) for r in replies] == [(7, errno.EINVAL)]
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)


def test_fatal_then_eof_raises_helper_lost_with_its_text() -> None:
    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        yield upcall(1)
        yield {"t": "fatal", "error": "protocol violation, exiting: bad op"}
        yield CLOSE

    helper = ThreadHelper(respond)
    ch = channel(helper)
    with pytest.raises(HelperLost) as info:
        ch.call(vifs(2))
    assert str(info.value) == "protocol violation, exiting: bad op"
    assert ch.backlog == [upcall(1)]
    helper.stop()


def test_eof_without_a_word() -> None:
    helper = ThreadHelper(lambda h, batch: [CLOSE])
    with pytest.raises(HelperLost, match="the helper closed the channel"):
        channel(helper).call(vifs(1))
    helper.stop()


def test_wrong_number_of_replies() -> None:
    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        yield ok_replies(batch[1:])

    helper = ThreadHelper(respond)
    with pytest.raises(HelperLost, match="wrong number of replies"):
        channel(helper).call(vifs(3))
    helper.stop()


@pytest.mark.parametrize("garbage", [
    b"\xc1",  # not msgpack
    codec.encode([1, 2]),  # not a map
    codec.encode({"no": "type"}),
    codec.encode({"t": "replies"}),  # no replies
])
def test_garbled_message_from_the_helper(garbage: bytes) -> None:
    helper = ThreadHelper(lambda h, batch: [garbage])
    with pytest.raises(HelperLost, match="garbled message from the helper"):
        channel(helper).call(vifs(1))
    helper.stop()


def test_helper_that_does_not_answer() -> None:
    helper = ThreadHelper(lambda h, batch: [])
    with pytest.raises(HelperLost, match="did not answer in time"):
        channel(helper, timeout=0.05).call(vifs(1))
    helper.stop()


def test_helper_already_gone() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.close()
    with a, pytest.raises(HelperLost, match="cannot talk to the helper"):
        BlockingChannel(a).call(vifs(1))


# -- against the helper's real request handling -------------------------------------------------


def real_helper(kernel: FakeKernel) -> ThreadHelper:
    server = Server(None, kernel, policy.HelperState())  # type: ignore[arg-type]

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        try:
            reqs = policy.parse_batch(batch)
        except policy.Violation as exc:  # what the helper's main() does
            yield {"t": "fatal", "error": f"protocol violation, exiting: {exc}"}
            yield CLOSE
            return
        yield {"t": "replies", "replies": [server.execute(r) for r in reqs]}

    return ThreadHelper(respond)


def test_blocking_channel_with_the_real_server() -> None:
    kernel = FakeKernel()
    helper = real_helper(kernel)
    ch = channel(helper)
    hello, add0, add1, mfc, dup = ch.call([
        Hello(ch.next_id()), AddVif(ch.next_id(), 4, 0, 2, 1), AddVif(ch.next_id(), 4, 1, 3, 1),
        AddMfc(ch.next_id(), 4, S4, G4, 0, ((1, 1),)), AddVif(ch.next_id(), 4, 0, 9, 1)])
    assert hello["ok"] and hello["id"] == 1 and hello["maxvifs"] == 32
    assert add0["ok"] and add1["ok"] and mfc["ok"]
    assert (dup["ok"], dup["errno"]) == (False, errno.EADDRINUSE)  # refused, not a violation
    assert kernel.vifs[4] == {0: 2, 1: 3}
    assert kernel.mfc == {(4, S4, G4): (0, ((1, 1),))}
    # a request the local policy refuses never reaches the helper
    (refused,) = ch.call([AddMfc(ch.next_id(), 4, S4, G4, 0, ((0, 1),))])
    assert refused["errno"] == errno.EINVAL
    assert len(helper.received) == 1
    helper.stop()


# -- HelperChannel (inside the event loop) -----------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.upcalls: list[Upcall] = []
        self.lost: list[str] = []


def run_async(helper: ThreadHelper, backlog: list[dict[str, Any]], body: Any) -> Events:
    events = Events()

    async def main() -> None:
        boot = BlockingChannel(helper.ours)
        boot.backlog = list(backlog)
        for _ in range(5):
            boot.next_id()  # ids go on from where start-up left them
        ch = HelperChannel(boot, events.upcalls.extend, events.lost.append)
        try:
            await asyncio.wait_for(body(ch, events), 5)
        finally:
            ch.close()

    asyncio.run(main())
    return events


def test_async_backlog_first_then_calls_and_upcalls() -> None:
    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        yield upcall(7)
        yield ok_replies(batch)

    helper = ThreadHelper(respond)

    async def body(ch: HelperChannel, events: Events) -> None:
        assert ch.next_id() == 6
        await asyncio.sleep(0)  # the backlog is dispatched by the loop
        assert [u.vif for u in events.upcalls] == [1, 2]
        reqs = vifs(3, start_id=ch.next_id())
        assert [r["id"] for r in await ch.call(reqs)] == [r.id for r in reqs]
        for _ in range(100):
            if len(events.upcalls) == 3:
                break
            await asyncio.sleep(0.01)

    events = run_async(helper, [upcall(1), upcall(2)], body)
    assert [u.vif for u in events.upcalls] == [1, 2, 7]
    assert events.upcalls[2] == Upcall(4, "nocache", 7, S4, G4)
    assert events.lost == []
    helper.stop()


def test_async_large_call_is_pipelined_in_datagrams() -> None:
    helper = ThreadHelper(accept_all)

    async def body(ch: HelperChannel, events: Events) -> None:
        reqs = vifs(MAX_BATCH + 76, start_id=100)
        replies = await ch.call(reqs)
        assert [r["id"] for r in replies] == [r.id for r in reqs]

    run_async(helper, [], body)
    step = HelperChannel.PIPELINE
    assert [len(b) for b in helper.received] == (
        [step] * ((MAX_BATCH + 76) // step) + [(MAX_BATCH + 76) % step])
    helper.stop()


def test_async_policy_refusal_is_local() -> None:
    helper = ThreadHelper(accept_all)

    async def body(ch: HelperChannel, events: Events) -> None:
        replies = await ch.call([AddVif(50, 4, 0, 2, 1), AddVif(51, 4, 99, 2, 1)])
        assert replies[0] == {"id": 50, "ok": True}
        assert (replies[1]["id"], replies[1]["errno"]) == (51, errno.EINVAL)

    run_async(helper, [], body)
    assert helper.received == [[to_wire(AddVif(50, 4, 0, 2, 1))]]
    helper.stop()


def test_async_fatal_then_eof() -> None:
    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        yield {"t": "fatal", "error": "cannot drop privileges: nope"}
        yield CLOSE

    helper = ThreadHelper(respond)

    async def body(ch: HelperChannel, events: Events) -> None:
        with pytest.raises(HelperLost, match="cannot drop privileges: nope"):
            await ch.call(vifs(1))
        assert ch.lost == "cannot drop privileges: nope"
        assert events.lost == ["cannot drop privileges: nope"]
        with pytest.raises(HelperLost):  # and every later call fails at once
            await ch.call(vifs(1))

    events = run_async(helper, [], body)
    assert events.lost == ["cannot drop privileges: nope"]  # reported once
    helper.stop()


def test_async_garbled_message_loses_the_helper() -> None:
    helper = ThreadHelper(lambda h, batch: [codec.encode({"t": "what"})])

    async def body(ch: HelperChannel, events: Events) -> None:
        with pytest.raises(HelperLost, match="garbled"):
            await ch.call(vifs(1))

    events = run_async(helper, [], body)
    assert len(events.lost) == 1 and "garbled" in events.lost[0]
    helper.stop()
