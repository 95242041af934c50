"""The control socket server: framing, peer credentials, authorization,
timeouts. What a request does is the controller's business (handler).

Hostile or broken clients get an error reply or a closed connection: frames
are size-checked before they are buffered, a client that stalls is dropped
after IDLE_TIMEOUT, at most MAX_CLIENTS are served at once, and each client
is its own task, so none can starve another.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from smcroute.ipc.codec import DecodeError, EncodeError
from smcroute.ipc.control import BadRequest, ControlRequest, parse_request, reply
from smcroute.ipc.stream import MAX_FRAME, FrameDecoder, encode_frame
from smcroute.policy.control import Access, Peer, authorize, may_connect

MAX_CLIENTS = 32
IDLE_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
SO_PEERGROUPS = 59

Handler = Callable[[Peer, list[ControlRequest]], Awaitable[list[dict[str, Any]]]]


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    try:  # CPython caps getsockopt buffers at 1024 bytes: 256 groups
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:  # more groups than that (ERANGE): ask /proc, the same list
        groups = _proc_groups(pid)
    return Peer(uid, gid, pid, tuple(groups))


def _proc_groups(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


class ControlServer:
    def __init__(self, sock: socket.socket, access: Access, handler: Handler,
                 refused: Callable[[Peer, ControlRequest | None, str], None],
                 after_reply: Callable[[], None]) -> None:
        self.sock = sock
        self.access = access
        self.handler = handler
        self.refused = refused  # audit hook: (peer, request or None, reason)
        self.after_reply = after_reply  # e.g. "kill": stop once the client has its answer
        self.clients = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        self.server = await asyncio.start_unix_server(self._client, sock=self.sock)

    def close(self) -> None:
        if self.server:
            self.server.close()

    async def _send(self, writer: asyncio.StreamWriter, *msgs: dict[str, Any]) -> None:
        """Write the replies (all at once: a batch of answers is one write)."""
        frames = []
        for msg in msgs:
            try:
                frames.append(encode_frame(msg, MAX_FRAME * 64))
            except EncodeError as exc:
                frames.append(encode_frame(reply(False, f"reply too large: {exc}")))
        writer.write(b"".join(frames))
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            writer.transport.abort()  # a client that does not read: drop it, buffer and all
            raise

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            if self.clients > MAX_CLIENTS:
                await self._send(writer, reply(False, "too many clients, try again later"))
                return
            if not may_connect(peer, self.access):
                reason = authorize(peer, self.access, "") or "Permission denied"
                self.refused(peer, None, reason)
                await self._send(writer, reply(False, reason))
                return
            await self._serve(peer, reader, writer)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, peer: Peer, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while True:
            data = await asyncio.wait_for(reader.read(256 * 1024), IDLE_TIMEOUT)
            if not data:
                return
            try:
                messages = decoder.feed(data)
            except DecodeError as exc:
                await self._send(writer, reply(False, f"malformed request: {exc}"))
                return
            broken = decoder.error  # a bad frame after good ones: answer those first
            batch: list[ControlRequest] = []
            answers: list[dict[str, Any] | None] = []
            for msg in messages:
                try:
                    req = parse_request(msg)
                except BadRequest as exc:
                    answers.append(reply(False, f"malformed request: {exc}"))
                    continue
                if reason := authorize(peer, self.access, req.cmd):
                    self.refused(peer, req, reason)
                    answers.append(reply(False, reason))
                    continue
                batch.append(req)
                answers.append(None)
            done = iter(await self.handler(peer, batch) if batch else [])
            await self._send(writer, *(a if a is not None else next(done) for a in answers))
            self.after_reply()
            if broken is not None:
                await self._send(writer, reply(False, f"malformed request: {broken}"))
                return
