"""The control socket server: framing, peer credentials, authorization,
timeouts. What a request does is the controller's business (handler).

Hostile or broken clients get an error reply or a closed connection. A
peer is authorized at accept, from its SO_PEERCRED credentials: one that
may not connect gets its one-line refusal and is closed at once, never
holding a slot. Slots are kept for root, the daemon's user and the admin
group: peers with read-only access share at most SHARED_CLIENTS of the
MAX_CLIENTS, and every uid but root's and the daemon's holds at most
PER_UID. Frames are size-checked before they are buffered; a client that
says nothing is dropped after IDLE_TIMEOUT (not counting the time its
request is being handled), a frame must be whole FRAME_TIMEOUT after its
first byte (a byte now and then buys no time), a client that does not read
its replies goes after WRITE_TIMEOUT (one that reads them slowly, taking
WRITE_PROGRESS bytes in that time, gets more); a client's requests are answered in
order, one batch at a time, so none can starve another.

Plain non-blocking sockets on the event loop's selector (add_reader):
every smcroutectl command is a connection, and asyncio's transports and
tasks per connection cost more than the request itself.
"""

from __future__ import annotations

import asyncio
import functools
import pwd
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from smcroute.ipc.codec import DecodeError, EncodeError
from smcroute.ipc.control import BadRequest, ControlRequest, parse_request, reply
from smcroute.ipc.stream import MAX_FRAME, FrameDecoder, encode_frame
from smcroute.policy.control import Access, Peer, authorize, may_connect

MAX_CLIENTS = 64
SHARED_CLIENTS = 32  # of them, what peers without full access may hold in all
PER_UID = 8  # per uid, except root's and the daemon's own
IDLE_TIMEOUT = 5.0
FRAME_TIMEOUT = 2.0
WRITE_TIMEOUT = 10.0
# Replies a client must take within WRITE_TIMEOUT to get another: a slow
# reader of a long batch is served, one that takes a byte now and then is not.
WRITE_PROGRESS = 64 * 1024
MAX_QUEUED = 4096  # requests read ahead of the one being answered; beyond, reading pauses
READ_SIZE = 256 * 1024
SO_PEERGROUPS = 59

Replies = list[dict[str, Any]]
# handler(peer, requests, done): done(replies) once answered, in order
Handler = Callable[[Peer, list[ControlRequest], Callable[[Replies], None]], None]


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    try:  # CPython caps getsockopt buffers at 1024 bytes: 256 groups
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:  # more groups than that (ERANGE): ask /proc, the same list
        groups = _proc_groups(pid)
    return Peer(uid, gid, pid, tuple(groups), user_name(uid))


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    """The uid's name, for refusals (cached: a flood asks again and again)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


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
        self.clients: set[_Client] = set()
        self.per_uid: Counter[int] = Counter()  # connections held, by peer uid
        self.shared = 0  # connections held by peers without full access
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self.loop:
            self.loop.remove_reader(self.sock.fileno())
            for client in list(self.clients):
                client.close()
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(64):  # bounded work per wake-up
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: the connection waits in the backlog
                return
            sock.setblocking(False)
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            full = authorize(peer, self.access, "add") is None
            if reason := self.admit(peer, full):
                self.refused(peer, None, reason)
                _refuse(sock, reason)
                continue
            client = _Client(self, sock, peer, full)
            self.clients.add(client)
            self.per_uid[peer.uid] += 1
            self.shared += not client.full
            client.start()

    def admit(self, peer: Peer, full: bool) -> str | None:
        """None if the peer (full: with full access) may have a slot now,
        else why not."""
        access = self.access
        if not may_connect(peer, access):
            return authorize(peer, access, "") or "Permission denied"
        if len(self.clients) >= MAX_CLIENTS or (not full and self.shared >= SHARED_CLIENTS) \
                or (peer.uid not in (0, access.daemon_uid) and self.per_uid[peer.uid] >= PER_UID):
            return "too many clients, try again later"
        return None

    def released(self, client: _Client) -> None:
        self.clients.discard(client)
        self.per_uid[client.peer.uid] -= 1
        if not self.per_uid[client.peer.uid]:
            del self.per_uid[client.peer.uid]
        self.shared -= not client.full


def _refuse(sock: socket.socket, reason: str) -> None:
    """One reply, if the socket takes it now (never buffered), and close."""
    try:
        sock.send(encode_frame(reply(False, reason)))
    except OSError:
        pass
    sock.close()


class _Client:
    def __init__(self, server: ControlServer, sock: socket.socket, peer: Peer,
                 full: bool) -> None:
        self.server = server
        self.peer = peer
        self.full = full  # (else read-only: counted in ControlServer.shared)
        self.sock = sock
        self.loop = server.loop
        assert self.loop is not None
        self.fd = sock.fileno()
        self.decoder = FrameDecoder()
        self.queue: list[Any] = []  # messages not yet answered
        self.out = bytearray()  # replies not yet written
        self.busy = False  # a batch is with the handler
        self.reading = False
        self.closing = False  # close once the replies are out
        self.closed = False
        self.idle: asyncio.TimerHandle | None = None
        self.frame: asyncio.TimerHandle | None = None  # a partial frame's deadline
        self.stalled: asyncio.TimerHandle | None = None
        self.taken = 0  # bytes of replies written since the stall timer started

    def start(self) -> None:
        self._readable()  # the request (and its end) may be here already:
        if not (self.closed or self.closing):  # no wake-up for them
            self._read(len(self.queue) < MAX_QUEUED)

    def _read(self, on: bool) -> None:
        """Read on (giving the client IDLE_TIMEOUT to say more, unless its
        request is being handled), or pause."""
        if self.idle:
            self.idle.cancel()
            self.idle = None
        if self.closed:
            return
        loop = self.loop
        assert loop is not None
        if on and not self.busy:
            self.idle = loop.call_later(IDLE_TIMEOUT, self.close)
        if on and not self.reading:
            loop.add_reader(self.fd, self._readable)
        elif self.reading and not on:
            loop.remove_reader(self.fd)
        self.reading = on

    def _readable(self) -> None:
        chunks = []
        eof = False
        for _ in range(16):  # what is there now, and maybe the end (smcroutectl shuts
            try:             # its side down once it has sent everything)
                chunk = self.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        if chunks:
            self._received(b"".join(chunks))
        if self.closed:
            return
        if eof:
            self._eof()
        elif self.reading:
            self._read(len(self.queue) < MAX_QUEUED)

    def _received(self, data: bytes) -> None:
        try:
            self.queue += self.decoder.feed(data)
        except DecodeError as exc:
            self._last(reply(False, f"malformed request: {exc}"))
            return
        if not self.decoder.pending and self.frame:
            self.frame.cancel()
            self.frame = None
        elif self.decoder.pending and not self.frame:
            assert self.loop is not None
            self.frame = self.loop.call_later(FRAME_TIMEOUT, self.close)
        self._next()

    def _eof(self) -> None:
        """The client is done sending: answer what it asked, then close."""
        self.closing = True
        self._read(False)
        if not self.busy and not self.out and not self.queue:
            self.close()

    def _next(self) -> None:
        """Answer what is queued, one batch at a time."""
        if self.busy or self.closed:
            return
        if not self.queue:
            if self.decoder.error is not None:  # a bad frame after good ones
                self._last(reply(False, f"malformed request: {self.decoder.error}"))
            return
        messages, self.queue = self.queue, []
        server, peer = self.server, self.peer
        batch: list[ControlRequest] = []
        answers: list[dict[str, Any] | None] = []
        for msg in messages:
            try:
                req = parse_request(msg)
            except BadRequest as exc:
                answers.append(reply(False, f"malformed request: {exc}"))
                continue
            if reason := authorize(peer, server.access, req.cmd):
                server.refused(peer, req, reason)
                answers.append(reply(False, reason))
                continue
            batch.append(req)
            answers.append(None)
        if not batch:
            self._answered(answers, [])
            return
        self.busy = True
        if self.idle:  # the handler's time is not the client's
            self.idle.cancel()
            self.idle = None
        server.handler(peer, batch, lambda replies: self._answered(answers, replies))

    def _answered(self, answers: list[dict[str, Any] | None], replies: Replies) -> None:
        self.busy = False
        if self.closed:
            return
        done = iter(replies)
        self._write([a if a is not None else next(done) for a in answers])
        self.server.after_reply()
        if self.closing:
            if self.queue:
                self._next()
            elif not self.out:
                self.close()
            return
        self._read(len(self.queue) < MAX_QUEUED)
        self._next()

    def _write(self, msgs: Replies) -> None:
        """The replies, in one write (a batch of answers is one write)."""
        for msg in msgs:
            try:
                self.out += encode_frame(msg, MAX_FRAME * 64)
            except EncodeError as exc:
                self.out += encode_frame(reply(False, f"reply too large: {exc}"))
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        del self.out[:sent]
        loop = self.loop
        assert loop is not None
        if self.out:
            if self.stalled is None:  # it does not read: drop it if that goes on
                self.stalled = loop.call_later(WRITE_TIMEOUT, self.close)
                self.taken = 0
                loop.add_writer(self.fd, self._flush)
            else:
                self.taken += sent
                if self.taken >= WRITE_PROGRESS:  # it reads, slowly: more time
                    self.stalled.cancel()
                    self.stalled = loop.call_later(WRITE_TIMEOUT, self.close)
                    self.taken = 0
            return
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
            loop.remove_writer(self.fd)
        if self.closing and not self.busy and not self.queue:
            self.close()

    def _last(self, msg: dict[str, Any]) -> None:
        """A last reply, then the connection closes (once it is written)."""
        self.closing = True
        self.queue = []
        self._read(False)
        self._write([msg])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        assert loop is not None
        for timer in (self.idle, self.stalled, self.frame):
            if timer:
                timer.cancel()
        if self.reading:
            loop.remove_reader(self.fd)
        if self.stalled is not None:
            loop.remove_writer(self.fd)
        self.server.released(self)
        self.sock.close()
