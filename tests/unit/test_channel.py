"""The controller's end of the helper channel: channel.Protocol (no I/O) and
its two drivers, BlockingChannel (start-up) and channel_async.HelperChannel.

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
from hypothesis import given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec
from smcroute.ipc.helper import (
    AddMfc,
    AddVif,
    Counts,
    DelVif,
    Hello,
    HelloReply,
    Reply,
    Request,
    SgCount,
    Upcall,
    to_wire,
    upcalls_message,
)
from smcroute.policy import ops
from smcroute.policy.limits import MAX_BATCH
from smcroute.privileged.server import Server
from smcroute.unprivileged.channel import (
    Answered,
    BlockingChannel,
    Fatal,
    HelperLost,
    Protocol,
    Upcalls,
)
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


def answers(reqs: list[Request], **extra: Any) -> bytes:
    return codec.encode({"t": "replies", "replies": [{"id": r.id, "ok": True, **extra}
                                                     for r in reqs]})


# -- Protocol ---------------------------------------------------------------------------------


def test_screening_answers_policy_violations_locally_and_sends_the_rest() -> None:
    good1, bad1 = AddVif(1, 4, 0, 2, 1), AddVif(2, 4, 32, 2, 1)  # vif out of range
    bad2 = AddMfc(3, 4, S4, G4, 1, ((1, 1), (1, 2)))  # the same oif twice
    good2 = DelVif(4, 6, 31)
    p = Protocol()
    (datagram,) = list(p.send(7, [good1, bad1, bad2, good2]))
    assert codec.decode(datagram) == [to_wire(good1), to_wire(good2)]
    assert p.ready() == []  # the helper's replies are still to come
    (done,) = p.receive(answers([good1, good2]))
    assert isinstance(done, Answered) and done.batch == 7
    assert [r.id for r in done.replies] == [1, 2, 3, 4]
    assert done.replies[0] == Reply(1, True) and done.replies[3] == Reply(4, True)
    for r in done.replies[1:3]:
        assert (r.ok, r.errno) == (False, errno.EINVAL)
        assert r.error.startswith("refused by policy: ")
    assert "vif: 32 outside" in done.replies[1].error


def test_batches_are_answered_in_the_order_sent() -> None:
    p = Protocol()
    first = vifs(2)
    list(p.send(1, first))
    assert list(p.send(2, [AddVif(9, 5, 0, 2, 1)])) == []  # family 5: answered here...
    assert p.ready() == []  # ...but only after batch 1
    assert p.waiting == 2
    done = p.receive(answers(first))
    assert [d.batch for d in done] == [1, 2]  # type: ignore[union-attr]
    assert p.waiting == 0
    assert list(p.send(3, [])) == [] and p.ready() == [Answered(3, [])]


def test_large_batches_are_pipelined_and_replies_matched_in_order() -> None:
    p = Protocol()
    reqs = vifs(600)
    datagrams = list(p.send(1, reqs))
    assert [len(codec.decode(d)) for d in datagrams] == [256, 256, 88]
    assert Protocol.PIPELINE == 256
    assert p.receive(answers(reqs[:256])) == []
    assert p.receive(answers(reqs[256:512])) == []
    (done,) = p.receive(answers(reqs[512:]))
    assert [r.id for r in done.replies] == [r.id for r in reqs]  # type: ignore[union-attr]


def test_typed_replies() -> None:
    p = Protocol()
    hello, count = Hello(1), SgCount(2, 4, S4, G4)
    list(p.send(1, [hello, count]))
    msg = {"t": "replies", "replies": [
        {"id": 1, "ok": True, "version": 1, "maxvifs": 32, "max_mfc": 9, "table": 0, "pid": 5,
         "sandbox": "landlock ABI 7"},
        {"id": 2, "ok": True, "packets": 3, "bytes": 300, "wrong_if": 1}]}
    (done,) = p.receive(codec.encode(msg))
    assert done.replies == [HelloReply(1, True, version=1, maxvifs=32, max_mfc=9, table=0,
                                       pid=5, sandbox="landlock ABI 7"),
                            Counts(2, True, packets=3, bytes=300, wrong_if=1)]


@pytest.mark.parametrize("reply", [
    {"id": 1, "ok": True, "packets": 3},  # fields of the wrong op
    {"id": 2, "ok": True},  # another request's id
    {"id": 1, "ok": 1},
    {"id": 1, "ok": False, "errno": "2", "error": "x"},
    {"id": 1, "ok": False},
    ["id", 1],
])
def test_a_reply_that_does_not_fit_its_request_loses_the_helper(reply: Any) -> None:
    p = Protocol()
    list(p.send(1, [AddVif(1, 4, 0, 2, 1)]))
    with pytest.raises(HelperLost, match="garbled reply"):
        p.receive(codec.encode({"t": "replies", "replies": [reply]}))


@pytest.mark.parametrize("message", [
    b"",  # EOF
    b"\xc1",  # not msgpack
    codec.encode([1, 2]),  # not a map
    codec.encode({"no": "type"}),
    codec.encode({"t": "replies"}),  # no replies
    codec.encode({"t": "replies", "replies": [{"id": 1, "ok": True}]}),  # nothing asked
    codec.encode({"t": "what"}),  # unknown type: the same for both drivers
    codec.encode({"t": "upcalls", "upcalls": [[4, "nocache", 1, S4]]}),
    codec.encode({"t": "upcalls", "upcalls": [[4, "nocache", 1, S4, bytes(16)]]}),
    codec.encode({"t": "upcalls", "upcalls": [[4, "bogus", 1, S4, G4]]}),
    codec.encode({"t": "upcalls", "upcalls": [[4, "learned", 1, S4, G4]]}),
    codec.encode({"t": "upcalls", "upcalls": [[True, "nocache", 1, S4, G4]]}),
])
def test_what_no_correct_helper_sends_loses_it(message: bytes) -> None:
    with pytest.raises(HelperLost):
        Protocol().receive(message)


def test_upcalls_and_fatal() -> None:
    p = Protocol()
    learned = Upcall(6, "learned", 3, bytes(16), b"\xff" + bytes(15), 7, 0)
    (ev,) = p.receive(codec.encode(upcalls_message([Upcall(4, "nocache", 1, S4, G4), learned])))
    assert ev == Upcalls([Upcall(4, "nocache", 1, S4, G4), learned])
    assert p.receive(codec.encode({"t": "fatal", "error": "bad op"})) == [Fatal("bad op")]
    with pytest.raises(HelperLost, match=r"^bad op$"):
        p.receive(b"")  # the EOF that follows says why


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_events_or_helper_lost(data: bytes) -> None:
    p = Protocol()
    list(p.send(1, vifs(1)))
    try:
        events = p.receive(data)
    except HelperLost:
        return
    assert all(isinstance(e, Answered | Upcalls | Fatal) for e in events)


# -- BlockingChannel ----------------------------------------------------------------------------


def test_one_batch_round_trip() -> None:
    helper = ThreadHelper(accept_all)
    ch = channel(helper)
    reqs = vifs(3)
    assert ch.call(reqs) == [Reply(r.id, True) for r in reqs]
    assert helper.received == [[to_wire(r) for r in reqs]]
    assert ch.backlog == []
    helper.stop()


def test_empty_call_sends_nothing() -> None:
    helper = ThreadHelper(accept_all)
    assert channel(helper).call([]) == []
    helper.stop()
    assert helper.received == []


def test_pipelined_datagrams_are_all_sent_before_the_first_reply() -> None:
    # The helper answers nothing until it holds all three datagrams: a
    # channel that waited for each reply before sending the next datagram
    # would time out here.
    held: list[list[Any]] = []

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        held.append(batch)
        if len(held) == 3:
            for b in held:
                yield ok_replies(b)

    helper = ThreadHelper(respond)
    reqs = vifs(600)
    replies = channel(helper, timeout=3).call(reqs)
    assert [len(b) for b in helper.received] == [256, 256, 88]
    assert [r.id for r in replies] == [r.id for r in reqs]
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
    assert [r.id for r in ch.call(reqs)] == [r.id for r in reqs]
    assert len(helper.received) == 2
    def kept() -> list[int]:
        return [u.vif for e in ch.backlog for u in e.upcalls]

    assert kept() == [m["upcalls"][0][2] for m in sent] and len(sent) == 4
    ch.call(vifs(1, start_id=1000))  # a later call adds to it; nothing is dropped or reordered
    assert kept() == [m["upcalls"][0][2] for m in sent] and len(sent) == 6
    helper.stop()


def test_upcall_flood_while_requests_are_still_being_sent() -> None:
    # The helper forwards upcalls whenever the kernel has some, with blocking
    # writes (privileged/server.py), and reads no request while it writes.
    # A controller that only writes until every datagram is out, and reads
    # nothing meanwhile, deadlocks with it once both directions are full.
    # Small buffers stand in for the real 4 MiB ones.
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
    reqs = vifs(2000)  # 8 datagrams, more than a send buffer's worth
    try:
        replies = ch.call(reqs)
    finally:
        helper.stop()
    assert [r.id for r in replies] == [r.id for r in reqs]
    assert sum(len(e.upcalls) for e in ch.backlog) == 100 * floods


def test_only_violating_requests_send_nothing() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        replies = BlockingChannel(a).call([AddVif(7, 5, 0, 2, 1)])  # family 5
        assert [(r.id, r.errno) for r in replies] == [(7, errno.EINVAL)]
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
    assert [u.vif for e in ch.backlog for u in e.upcalls] == [1]
    helper.stop()


@pytest.mark.parametrize(("respond", "match"), [
    (lambda h, batch: [CLOSE], "the helper closed the channel"),
    (lambda h, batch: [ok_replies(batch[1:])], "wrong number of replies"),
    (lambda h, batch: [b"\xc1"], "garbled message from the helper"),
])
def test_broken_helpers(respond: Any, match: str) -> None:
    helper = ThreadHelper(respond)
    with pytest.raises(HelperLost, match=match):
        channel(helper).call(vifs(3))
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
    server = Server(None, kernel, ops.State())  # type: ignore[arg-type]

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        try:
            reqs = ops.parse_batch(batch)
        except ops.Violation as exc:  # what the helper's main() does
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
        Hello(1), AddVif(2, 4, 0, 2, 1), AddVif(3, 4, 1, 3, 1),
        AddMfc(4, 4, S4, G4, 0, ((0, 1), (1, 1))), AddVif(5, 4, 0, 9, 1)])
    assert isinstance(hello, HelloReply) and hello.maxvifs == 32
    assert add0.ok and add1.ok and mfc.ok  # (the inbound VIF among the OIFs, as SMCRoute)
    assert (dup.ok, dup.errno) == (False, errno.EADDRINUSE)  # refused, not a violation
    assert kernel.vifs[4] == {0: 2, 1: 3}
    assert kernel.mfc == {(4, S4, G4): (0, ((0, 1), (1, 1)))}
    # a request the local policy refuses never reaches the helper
    (refused,) = ch.call([AddMfc(6, 4, S4, G4, 0, ((1, 1), (1, 1)))])
    assert refused.errno == errno.EINVAL
    assert len(helper.received) == 1
    (count,) = ch.call([SgCount(7, 4, S4, G4)])
    assert count == Counts(7, True, packets=0, bytes=0, wrong_if=0)
    helper.stop()


# -- HelperChannel (inside the event loop) -----------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lost: list[str] = []


def run_async(helper: ThreadHelper, body: Any) -> Events:
    events = Events()

    async def main() -> None:
        ch = HelperChannel(BlockingChannel(helper.ours), events.events.append, events.lost.append)
        try:
            await asyncio.wait_for(body(ch, events), 5)
        finally:
            ch.close()

    asyncio.run(main())
    return events


async def until(predicate: Any) -> None:
    for _ in range(300):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_async_batches_upcalls_and_their_order() -> None:
    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        yield upcall(7)
        yield ok_replies(batch)

    helper = ThreadHelper(respond)

    async def body(ch: HelperChannel, events: Events) -> None:
        ch.send(1, vifs(3, start_id=10))
        ch.send(2, vifs(2, start_id=20))
        await until(lambda: len(events.events) == 4)

    events = run_async(helper, body)
    kinds = [(type(e).__name__, getattr(e, "batch", None)) for e in events.events]
    assert kinds == [("Upcalls", None), ("Answered", 1), ("Upcalls", None), ("Answered", 2)]
    assert [r.id for r in events.events[1].replies] == [10, 11, 12]
    assert events.lost == []
    helper.stop()


def test_async_large_batch_is_pipelined_in_datagrams() -> None:
    helper = ThreadHelper(accept_all)
    n = MAX_BATCH + 76

    async def body(ch: HelperChannel, events: Events) -> None:
        ch.send(1, vifs(n, start_id=100))
        await until(lambda: events.events)

    events = run_async(helper, body)
    assert [r.id for r in events.events[0].replies] == list(range(100, 100 + n))
    step = Protocol.PIPELINE
    assert [len(b) for b in helper.received] == [step] * (n // step) + [n % step]
    helper.stop()


def test_async_writes_wait_for_a_full_socket_in_order() -> None:
    # The helper does not read until released: datagrams queue in the
    # channel, and go out in order once the socket takes them again.
    import threading

    release = threading.Event()

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        release.wait(5)
        yield ok_replies(batch)

    helper = ThreadHelper(respond)
    helper.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def body(ch: HelperChannel, events: Events) -> None:
        for batch in range(1, 201):
            ch.send(batch, vifs(10, start_id=batch * 1000))
        assert ch._out  # some are waiting
        release.set()
        await until(lambda: len(events.events) == 200)

    events = run_async(helper, body)
    assert [e.batch for e in events.events] == list(range(1, 201))
    assert [b[0]["id"] for b in helper.received] == [n * 1000 for n in range(1, 201)]
    helper.stop()


def test_async_policy_refusal_is_answered_without_the_helper() -> None:
    helper = ThreadHelper(accept_all)

    async def body(ch: HelperChannel, events: Events) -> None:
        ch.send(1, [AddVif(51, 4, 99, 2, 1)])
        assert [e.batch for e in events.events] == [1]  # at once

    events = run_async(helper, body)
    assert events.events[0].replies[0].errno == errno.EINVAL
    assert helper.received == []
    helper.stop()


def test_async_fatal_then_eof() -> None:
    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        yield {"t": "fatal", "error": "cannot drop privileges: nope"}
        yield CLOSE

    helper = ThreadHelper(respond)

    async def body(ch: HelperChannel, events: Events) -> None:
        ch.send(1, vifs(1))
        await until(lambda: events.lost)
        assert ch.lost == "cannot drop privileges: nope"
        ch.send(2, vifs(1))  # nothing more is written

    events = run_async(helper, body)
    assert events.lost == ["cannot drop privileges: nope"]  # reported once
    assert events.events == [Fatal("cannot drop privileges: nope")]
    helper.stop()


def test_async_garbled_message_loses_the_helper() -> None:
    helper = ThreadHelper(lambda h, batch: [codec.encode({"t": "what"})])

    async def body(ch: HelperChannel, events: Events) -> None:
        ch.send(1, vifs(1))
        await until(lambda: events.lost)

    events = run_async(helper, body)
    assert len(events.lost) == 1 and "unknown message type" in events.lost[0]
    helper.stop()


def test_datagrams_are_made_as_they_are_taken() -> None:
    # (the helper works on the first while we screen and encode the next)
    p = Protocol()
    reqs = vifs(600)
    it = p.send(1, reqs)
    assert len(codec.decode(next(it))) == 256
    assert p.receive(answers(reqs[:256])) == []  # answered, but the batch is not all out
    rest = list(it)
    assert [len(codec.decode(d)) for d in rest] == [256, 88]
    assert p.receive(answers(reqs[256:512])) == []
    (done,) = p.receive(answers(reqs[512:]))
    assert len(done.replies) == 600  # type: ignore[union-attr]
