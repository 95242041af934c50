"""The helper channel inside the event loop: channel.Protocol over a
non-blocking socket. Datagrams go out in order (straight away when the
socket takes them: a new flow's first packets wait for its route); every
event read is handed on at once."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from smcroute.ipc import codec
from smcroute.ipc.helper import Request
from smcroute.unprivileged.channel import BlockingChannel, Event, HelperLost

READS_PER_WAKEUP = 256


class HelperChannel:
    def __init__(self, boot: BlockingChannel, on_event: Callable[[Event], None],
                 on_lost: Callable[[str], None]) -> None:
        self.sock = boot.sock
        self.sock.setblocking(False)
        self.protocol = boot.protocol
        self.on_event = on_event
        self.on_lost = on_lost
        self.lost: str | None = None
        self._out: deque[Iterator[bytes]] = deque()  # batches not yet all sent
        self._next: bytes | None = None  # a datagram made but not yet taken
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, batch: int, reqs: Sequence[Request]) -> None:
        """Send a batch; its answer comes as an event (Answered)."""
        datagrams = self.protocol.send(batch, reqs)
        if self.lost:
            for _ in datagrams:  # (made, so that the protocol knows it is whole)
                pass
            return
        idle = not self._out
        self._out.append(datagrams)
        if idle:
            self._writable()
        for event in self.protocol.ready():  # nothing for the helper to answer
            self.on_event(event)

    def _writable(self) -> None:
        """Send what is queued, in order: each batch's datagrams are made one
        at a time, while the helper works on the one before."""
        while self._out:
            if self._next is None:
                self._next = next(self._out[0], None)
                if self._next is None:  # that batch is all out
                    self._out.popleft()
                    continue
            try:
                self.sock.send(self._next)
            except BlockingIOError:
                self._loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError as exc:
                self._lose(f"cannot write to the helper: {exc.strerror}")
                return
            self._next = None
        self._loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.sock.recv(codec.MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"cannot read from the helper: {exc.strerror}")
                return
            try:
                events = self.protocol.receive(data)
            except HelperLost as exc:
                self._lose(str(exc))
                return
            for event in events:
                self.on_event(event)

    def _lose(self, reason: str) -> None:
        if self.lost:
            return
        self.lost = reason
        self._loop.remove_reader(self.sock.fileno())
        self._loop.remove_writer(self.sock.fileno())
        self.on_lost(reason)

    def close(self) -> None:
        if not self.lost:
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
            self.lost = "closed by the controller"
        self.sock.close()
