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
import socket
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
        """Send every batch first, then collect the replies (the helper works
        on one batch while we encode the next)."""
        replies: list[dict[str, Any] | None] = []
        sizes = []
        self.sock.settimeout(self.TIMEOUT)
        try:
            for start in range(0, len(reqs), self.PIPELINE):
                known, batch = screen(reqs[start:start + self.PIPELINE])
                replies += known
                if batch:
                    self.sock.sendall(codec.encode(batch))
                    sizes.append(len(batch))
            answers: list[dict[str, Any]] = []
            for size in sizes:
                got = self._await_replies()
                if len(got) != size:
                    raise HelperLost("the helper answered with the wrong number of replies")
                answers += got
        except OSError as exc:
            raise HelperLost(f"cannot talk to the helper: {exc}") from None
        return merge(replies, answers)

    def _await_replies(self) -> list[dict[str, Any]]:
        fatal = None
        while True:
            data = self.sock.recv(codec.MAX_DATAGRAM)
            if not data:
                raise HelperLost(fatal or "the helper closed the channel")
            try:
                msg = codec.decode(data)
                kind = msg["t"]
                if kind == "replies":
                    return list(msg["replies"])
                if kind == "fatal":
                    fatal = str(msg["error"])
                else:
                    self.backlog.append(msg)
            except (codec.DecodeError, KeyError, TypeError) as exc:
                raise HelperLost(f"garbled message from the helper: {exc}") from None
