"""The controller's end of the helper channel.

Requests go out in batches (one datagram each); the helper answers every
datagram with one reply datagram, in order, so replies are matched FIFO.
Upcall datagrams may arrive in between. BlockingChannel serves start-up,
before the event loop exists (it keeps early upcalls as a backlog);
channel_async.HelperChannel takes over inside the loop. No asyncio here:
importing it is not free, and start-up does not need it.
"""

from __future__ import annotations

import errno
import itertools
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

from smcroute.ipc import codec
from smcroute.ipc.helper import Request, error_reply, to_wire
from smcroute.policy import helper as policy


class HelperLost(Exception):
    """The helper is gone; the reason says why."""


def screen(reqs: Sequence[Request]) -> tuple[list[dict[str, Any] | None], list[dict[str, Any]]]:
    """Check requests with the helper's own policy before sending them.

    A request the helper would treat as a protocol violation is answered
    here with EINVAL instead of costing us the helper. Returns the replies
    known so far (None where the helper must answer) and what to send.
    """
    replies: list[dict[str, Any] | None] = []
    wire: list[dict[str, Any]] = []
    for req in reqs:
        msg = to_wire(req)
        try:
            policy.parse_request(msg)
        except policy.Violation as exc:
            replies.append(error_reply(req.id, errno.EINVAL, f"refused by policy: {exc}"))
            continue
        replies.append(None)
        wire.append(msg)
    return replies, wire


def merge(replies: list[dict[str, Any] | None],
          answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    it = iter(answers)
    return [r if r is not None else next(it) for r in replies]


class BlockingChannel:
    """The helper channel at start-up: blocking calls, upcalls kept for later."""

    TIMEOUT = 30.0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ids = itertools.count(1)
        self.backlog: list[dict[str, Any]] = []

    def next_id(self) -> int:
        return next(self.ids)

    PIPELINE = 256  # requests per datagram: the helper starts while we encode the rest

    def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        """Send the batches and collect the replies, reading while sending:
        the helper may be sending upcalls meanwhile, and neither side may
        block the other."""
        replies: list[dict[str, Any] | None] = []
        chunks = [reqs[i:i + self.PIPELINE] for i in range(0, len(reqs), self.PIPELINE)]
        outgoing: bytes | None = None  # the next datagram, encoded when it can be sent
        sizes: list[int] = []  # requests per datagram sent
        answers: list[dict[str, Any]] = []
        done = 0  # reply datagrams received
        deadline = time.monotonic() + self.TIMEOUT
        self.sock.setblocking(False)
        try:
            while chunks or outgoing is not None or done < len(sizes):
                if outgoing is None and chunks:
                    # screened and encoded one datagram at a time, so the helper
                    # works on the first while we prepare the next
                    known, batch = screen(chunks.pop(0))
                    replies += known
                    if batch:
                        outgoing = codec.encode(batch)
                        sizes.append(len(batch))
                    continue
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise HelperLost("the helper did not answer in time")
                readable, writable, _ = select.select(
                    [self.sock], [self.sock] if outgoing is not None else [], [], timeout)
                if writable:
                    try:
                        self.sock.send(outgoing)  # type: ignore[arg-type]
                        outgoing = None
                    except BlockingIOError:
                        pass
                if readable:
                    got = self._receive()
                    if got is not None:
                        if done >= len(sizes) or len(got) != sizes[done]:
                            raise HelperLost("the helper answered with the wrong number of"
                                             " replies")
                        answers += got
                        done += 1
        except OSError as exc:
            for _ in range(64):  # it may have said why before it went: read that
                try:
                    self._receive()
                except (HelperLost, OSError):
                    break
            raise HelperLost(self.fatal or f"cannot talk to the helper: {exc}") from None
        finally:
            self.sock.setblocking(True)
        return merge(replies, answers)

    fatal: str | None = None  # the helper's last word, if it said one

    def _receive(self) -> list[dict[str, Any]] | None:
        """One datagram: the replies it carries, or None (an upcall, kept)."""
        try:
            data = self.sock.recv(codec.MAX_DATAGRAM)
        except BlockingIOError:
            return None
        if not data:
            raise HelperLost(self.fatal or "the helper closed the channel")
        try:
            msg = codec.decode(data)
            kind = msg["t"]
            if kind == "replies":
                return list(msg["replies"])
            if kind == "fatal":
                self.fatal = str(msg["error"])
            else:
                self.backlog.append(msg)
        except (codec.DecodeError, KeyError, TypeError) as exc:
            raise HelperLost(f"garbled message from the helper: {exc}") from None
        return None

