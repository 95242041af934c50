"""The helper's request loop: each request through the op table
(policy/ops.py), one reply datagram per request datagram; upcalls, the
(*,G) fast path and mrdisc solicitations forwarded as they come."""

from __future__ import annotations

import fcntl
import select
import socket
import struct

from smcroute.ipc import codec
from smcroute.policy import ops
from smcroute.privileged.kernel import Mroute, parse_solicit, parse_upcall4, parse_upcall6

UPCALLS_PER_WAKEUP = 8192  # bounded work per wakeup; the rest waits in the kernel
UPCALLS_PER_DATAGRAM = 128
# Every upcall is an unresolved kernel entry (holding packets) until the
# controller answers it. Upcalls are read only while less than this many
# bytes sent to the controller are still unread, so a controller that falls
# behind leaves them in the kernel's bounded queue (the mroute sockets'
# rcvbuf), where the excess is dropped with its entry: work is dropped, not
# state (issue 17).
CHANNEL_BACKLOG = 8 * 1024
BACKLOG_RECHECK_MS = 1  # poll(2)'s least; the kernel queue covers such a hold
SIOCOUTQ = 0x5411


class ProtocolViolation(Exception):
    pass


class Server:
    def __init__(self, chan: socket.socket, mroute: Mroute, state: ops.State) -> None:
        self.chan = chan
        self.mroute = mroute
        self.state = state

    def run(self) -> int:
        """Serve until the controller closes its end; return the exit status."""
        poller = select.poll()
        socks = {self.chan.fileno(): None, self.mroute.sock4.fileno(): 4,
                 self.mroute.sock6.fileno(): 6, self.mroute.mrdisc4.fileno(): 0}
        for fd in socks:
            poller.register(fd, select.POLLIN)
        kernel = (self.mroute.sock4.fileno(), self.mroute.sock6.fileno())
        while True:
            held = self.backlogged()  # upcalls wait in the kernel while held
            for fd in kernel:
                poller.modify(fd, 0 if held else select.POLLIN)
            for fd, events in poller.poll(BACKLOG_RECHECK_MS if held else None):
                family = socks[fd]
                if family:
                    self.forward_upcalls(family)
                elif family == 0:
                    self.forward_solicitations()
                elif not events & select.POLLIN or not self.serve_one():
                    return 0  # the controller is gone

    def backlogged(self) -> bool:
        """Has the controller not yet read CHANNEL_BACKLOG bytes we sent?"""
        unread = fcntl.ioctl(self.chan.fileno(), SIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("@i", unread)[0] >= CHANNEL_BACKLOG

    def serve_one(self) -> bool:
        data, _, flags, _ = self.chan.recvmsg(codec.MAX_DATAGRAM + 1)
        if not data:  # the end, or an empty datagram: only poll tells them apart
            poller = select.poll()
            poller.register(self.chan, select.POLLIN)
            if any(ev & select.POLLHUP for _, ev in poller.poll(0)):
                return False
            raise ProtocolViolation("empty datagram")
        if flags & socket.MSG_TRUNC or len(data) > codec.MAX_DATAGRAM:
            raise ProtocolViolation("datagram exceeds the size limit")
        try:
            batch = ops.parse_batch(codec.decode(data))
        except (codec.DecodeError, ops.Violation) as exc:
            raise ProtocolViolation(str(exc)) from None
        self.send("replies", [self.execute(r) for r in batch])
        return True

    def execute(self, r: dict) -> dict:
        return ops.execute(self.mroute, self.state, r)

    def send(self, kind: str, items: list) -> None:
        self.chan.sendall(codec.encode({"t": kind, kind: items}))

    def forward_solicitations(self) -> None:
        """Pass on the mrdisc solicitations among the IGMP packets (bounded):
        [4, "solicit", vif, sender, destination] for one of our VIFs."""
        batch = []
        for _ in range(UPCALLS_PER_DATAGRAM):
            try:
                data, ifindex = self.mroute.recv_mrdisc()
            except BlockingIOError:
                break
            except OSError:
                continue
            vifs = [v for v, index in self.state.vifs[4].items() if index == ifindex]
            if vifs and (sender := parse_solicit(data)) is not None:
                batch.append([4, "solicit", vifs[0], sender, bytes(data[16:20])])
        if batch:
            self.send("upcalls", batch)

    def install_fast(self, family: int, vif: int, source: bytes, group: bytes) -> int | None:
        """The (*,G) fast path: install a new flow the controller's templates
        cover, under add_mfc's rules. Returns the template's index, or None:
        the controller decides (and learns why). The flow's first packets
        wait for this: nothing else comes first."""
        st = self.state
        index = st.match(family, vif, source, group)
        if index is None or ops.source_problem(family, source):
            return None
        try:
            ops.install(self.mroute, st, family, source, group, vif, st.templates[index][6])
        except (ops.Refusal, OSError):
            return None
        st.used[index] += 1
        return index

    def forward_upcalls(self, family: int) -> None:
        """Read every pending upcall (bounded) and pass them on in batches."""
        sock = self.mroute.sock4 if family == 4 else self.mroute.sock6
        parse = parse_upcall4 if family == 4 else parse_upcall6
        batch: list[list] = []
        for _ in range(UPCALLS_PER_WAKEUP):
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            except OSError:  # e.g. ENOBUFS after an overrun: keep reading
                continue
            if (parsed := parse(data)) is None:
                continue
            kind, vif, source, group = parsed
            if kind == "nocache" and (index := self.install_fast(family, vif, source, group)) \
                    is not None:
                batch.append([family, "learned", vif, source, group, self.state.generation,
                              index])
            else:
                batch.append([family, kind, vif, source, group])
            if len(batch) >= UPCALLS_PER_DATAGRAM:
                self.send("upcalls", batch)
                batch = []
                if self.backlogged():
                    return
        if batch:
            self.send("upcalls", batch)
