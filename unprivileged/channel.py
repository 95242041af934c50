"""The controller's end of the helper channel: one protocol, two drivers.

Protocol has no I/O: a batch of requests becomes datagrams (at most
PIPELINE requests each, screened with the helper's own policy first: a
request the helper would take as a protocol violation is answered here
with EINVAL instead of costing us the helper); a datagram from the helper
becomes events. The helper answers every request datagram with one reply
datagram, in order, so replies are matched FIFO; upcalls may come in
between. A batch is answered as a whole, and batches in the order sent.

BlockingChannel drives it at start-up, before the event loop exists (it
keeps early upcalls for later); channel_async drives it inside the loop.
No asyncio here: importing it is not free, and start-up does not need it.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from smcroute.ipc import codec
from smcroute.ipc.helper import (
    UPCALL_KINDS,
    AnyReply,
    BadReply,
    Reply,
    Request,
    Upcall,
    parse_reply,
    to_wire,
)
from smcroute.policy import ops
from smcroute.policy.limits import ADDR_LEN


class HelperLost(Exception):
    """The helper is gone, or said something no correct helper says."""


class Answered(NamedTuple):
    """Every reply to one batch, in request order."""

    batch: int
    replies: list[AnyReply]


class Upcalls(NamedTuple):
    upcalls: list[Upcall]


class Fatal(NamedTuple):
    """The helper's last word before it exits."""

    reason: str


Event = Answered | Upcalls | Fatal


class _Batch:
    __slots__ = ("answers", "id", "open", "replies", "reqs", "sizes")

    def __init__(self, batch: int, reqs: Sequence[Request]) -> None:
        self.id = batch
        self.reqs = reqs
        self.replies: list[AnyReply | None] = []  # None: the helper's to give
        self.sizes: deque[int] = deque()  # requests per datagram not answered
        self.answers: list[Any] = []
        self.open = True  # datagrams still to be made


def _upcall(item: Any) -> Upcall:
    """An upcall as the schema says it (ipc.helper), or HelperLost."""
    if type(item) is not list or len(item) not in (5, 7):
        raise HelperLost("garbled upcall from the helper")
    family, kind, vif, source, group, *fast = item
    if (family not in ADDR_LEN or type(family) is not int or kind not in UPCALL_KINDS
            or type(vif) is not int or not 0 <= vif < 65536
            or type(source) is not bytes or len(source) != ADDR_LEN[family]
            or type(group) is not bytes or len(group) != ADDR_LEN[family]
            or (len(fast) == 2) != (kind == "learned")
            or not all(type(n) is int for n in fast)):
        raise HelperLost("garbled upcall from the helper")
    return Upcall(family, kind, vif, source, group, *fast)


class Protocol:
    PIPELINE = 256  # requests per datagram: the helper starts on one while we prepare the next

    def __init__(self) -> None:
        self._batches: deque[_Batch] = deque()  # in the order sent
        self.fatal: str | None = None

    @property
    def waiting(self) -> int:
        return len(self._batches)

    def send(self, batch: int, reqs: Sequence[Request]) -> Iterator[bytes]:
        """The datagrams for a batch, to be sent in order, each made when
        asked for (so that the helper works on the first while we make the
        next); all must be taken. The answer comes from receive() (or
        from ready(), if the helper has nothing to say)."""
        b = _Batch(batch, reqs)
        self._batches.append(b)
        return self._datagrams(b)

    def _datagrams(self, b: _Batch) -> Iterator[bytes]:
        reqs = b.reqs
        for start in range(0, len(reqs), self.PIPELINE):
            wire = []
            for req in reqs[start:start + self.PIPELINE]:
                msg = to_wire(req)
                try:
                    ops.parse(msg)
                except ops.Violation as exc:
                    b.replies.append(Reply(req.id, False, errno.EINVAL,
                                           f"refused by policy: {exc}"))
                    continue
                b.replies.append(None)
                wire.append(msg)
            if wire:
                b.sizes.append(len(wire))
                yield codec.encode(wire)
        b.open = False

    def ready(self) -> list[Answered]:
        """Batches answered in full, in the order they were sent."""
        done = []
        while self._batches and not self._batches[0].sizes and not self._batches[0].open:
            b = self._batches.popleft()
            it = iter(b.answers)
            replies: list[AnyReply] = []
            for req, local in zip(b.reqs, b.replies, strict=True):
                try:
                    replies.append(local if local is not None else parse_reply(req, next(it)))
                except BadReply as exc:
                    raise HelperLost(f"garbled reply from the helper: {exc}") from None
            done.append(Answered(b.id, replies))
        return done

    def receive(self, data: bytes) -> list[Event]:
        """The events in one datagram from the helper (HelperLost if it
        is not something a correct helper sends)."""
        if not data:
            raise HelperLost(self.fatal or "the helper closed the channel")
        try:
            msg = codec.decode(data)
            kind = msg["t"]
            if kind == "replies":
                answers = msg["replies"]
                waiting = next((b for b in self._batches if b.sizes), None)
                if waiting is None or type(answers) is not list \
                        or len(answers) != waiting.sizes[0]:
                    raise HelperLost("the helper answered with the wrong number of replies")
                waiting.sizes.popleft()
                waiting.answers += answers
                return list(self.ready())
            if kind == "upcalls":
                return [Upcalls([_upcall(item) for item in msg["upcalls"]])]
            if kind == "fatal":
                self.fatal = str(msg["error"])
                return [Fatal(self.fatal)]
        except (codec.DecodeError, KeyError, TypeError) as exc:
            raise HelperLost(f"garbled message from the helper: {exc}") from None
        raise HelperLost(f"unknown message type {kind!r} from the helper")


class BlockingChannel:
    """The helper channel at start-up: blocking calls, upcalls kept for later."""

    TIMEOUT = 30.0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = Protocol()
        self.backlog: list[Upcalls] = []
        self._batches = 0

    def call(self, reqs: Sequence[Request]) -> list[AnyReply]:
        """Send one batch and wait for its replies, reading while sending:
        the helper may be sending upcalls meanwhile, and neither side may
        block the other."""
        self._batches += 1
        batch = -self._batches  # apart from the core's batch numbers
        datagrams = self.protocol.send(batch, reqs)
        outgoing = next(datagrams, None)
        deadline = time.monotonic() + self.TIMEOUT
        self.sock.setblocking(False)
        try:
            while True:
                for answered in self.protocol.ready():
                    if answered.batch == batch:
                        return answered.replies
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise HelperLost("the helper did not answer in time")
                readable, writable, _ = select.select(
                    [self.sock], [self.sock] if outgoing is not None else [], [], timeout)
                if writable and outgoing is not None:
                    try:
                        self.sock.send(outgoing)
                        outgoing = next(datagrams, None)  # made while the helper works
                    except BlockingIOError:
                        pass
                if readable:
                    for event in self._receive():
                        if isinstance(event, Answered) and event.batch == batch:
                            return event.replies
        except OSError as exc:
            for _ in range(64):  # it may have said why before it went: read that
                try:
                    self._receive()
                except (HelperLost, OSError):
                    break
            raise HelperLost(self.protocol.fatal or f"cannot talk to the helper: {exc}") \
                from None
        finally:
            self.sock.setblocking(True)

    def _receive(self) -> list[Event]:
        try:
            data = self.sock.recv(codec.MAX_DATAGRAM)
        except BlockingIOError:
            return []
        events = self.protocol.receive(data)
        self.backlog += [e for e in events if isinstance(e, Upcalls)]
        return events
