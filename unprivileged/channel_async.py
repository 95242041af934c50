"""The helper channel inside the event loop: batches out, FIFO replies in,
upcalls to a callback (see channel.py for the protocol)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from smcroute.ipc import codec
from smcroute.ipc.helper import Request, Upcall
from smcroute.policy.limits import MAX_BATCH
from smcroute.unprivileged.channel import BlockingChannel, HelperLost, merge, screen

READS_PER_WAKEUP = 256


class HelperChannel:
    def __init__(self, boot: BlockingChannel, on_upcalls: Callable[[list[Upcall]], None],
                 on_lost: Callable[[str], None]) -> None:
        sock = boot.sock
        sock.setblocking(False)
        self.sock = sock
        self.on_upcalls = on_upcalls
        self.on_lost = on_lost
        self.lost: str | None = None
        self.fatal: str | None = None  # the helper's own last word, if any
        self._ids = boot.ids
        self._waiting: deque[asyncio.Future[list[dict[str, Any]]]] = deque()
        self._send_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        for msg in boot.backlog:  # upcalls that came while we were starting
            self._loop.call_soon(self._dispatch, msg)

    def next_id(self) -> int:
        return next(self._ids)

    def can_send_now(self) -> bool:
        return not self.lost and not self._send_lock.locked()

    def send_now(self, reqs: Sequence[Request],
                 done: Callable[[list[dict[str, Any]]], None]) -> bool:
        """Send without awaiting (from a callback, where every loop turn is
        latency); done(replies) runs when they arrive. False: not sent, the
        socket is busy; use call()."""
        replies, wire = screen(reqs)
        if not self.can_send_now() or len(wire) > MAX_BATCH:
            return False
        if wire:
            try:
                self.sock.send(codec.encode(wire))
            except BlockingIOError:
                return False
            except OSError as exc:
                self._lose(f"cannot write to the helper: {exc.strerror}")
                return True
        future: asyncio.Future[list[dict[str, Any]]] = self._loop.create_future()

        def finished(f: asyncio.Future[list[dict[str, Any]]]) -> None:
            if not f.cancelled() and f.exception() is None:
                done(merge(replies, f.result()))

        future.add_done_callback(finished)
        if wire:
            self._waiting.append(future)
        else:
            future.set_result([])
        return True

    PIPELINE = 256  # requests per datagram: the helper starts on one while we prepare the next

    async def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        """Send requests, return one reply per request, in order. Datagrams
        are screened, encoded and sent one after the other without waiting
        for answers, which are collected at the end."""
        replies: list[dict[str, Any] | None] = []
        pending: list[tuple[asyncio.Future[list[dict[str, Any]]], int]] = []
        for start in range(0, len(reqs), self.PIPELINE):
            known, batch = screen(reqs[start:start + self.PIPELINE])
            replies += known
            if batch:
                pending.append((await self._send(batch), len(batch)))
        answers: list[dict[str, Any]] = []
        for future, size in pending:
            got = await future
            if len(got) != size:
                raise HelperLost("the helper answered a batch with the wrong number of replies")
            answers += got
        return merge(replies, answers)

    async def _send(self, batch: list[dict[str, Any]]) -> asyncio.Future[list[dict[str, Any]]]:
        """Send one datagram; the future gets its replies."""
        if self.lost:
            raise HelperLost(self.lost)
        future: asyncio.Future[list[dict[str, Any]]] = self._loop.create_future()
        data = codec.encode(batch)
        async with self._send_lock:
            self._waiting.append(future)
            try:
                await self._loop.sock_sendall(self.sock, data)
            except OSError as exc:
                self._lose(f"cannot write to the helper: {exc.strerror}")
        return future

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.sock.recv(codec.MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"cannot read from the helper: {exc.strerror}")
                return
            if not data:
                self._lose(self.fatal or "the helper closed the channel")
                return
            try:
                self._dispatch(codec.decode(data))
            except (codec.DecodeError, KeyError, TypeError, ValueError) as exc:
                self._lose(f"garbled message from the helper: {exc}")
                return

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "replies":
            if not self._waiting:
                raise ValueError("a reply nobody asked for")
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(list(msg["replies"]))
        elif kind == "upcalls":
            self.on_upcalls([Upcall(*item) for item in msg["upcalls"]])
        elif kind == "fatal":
            self.fatal = str(msg["error"])
        else:
            raise ValueError(f"unknown message type {kind!r}")

    def _lose(self, reason: str) -> None:
        if self.lost:
            return
        self.lost = reason
        self._loop.remove_reader(self.sock.fileno())
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(HelperLost(reason))
        self.on_lost(reason)

    def close(self) -> None:
        if not self.lost:
            self._loop.remove_reader(self.sock.fileno())
            self.lost = "closed by the controller"
        self.sock.close()
