"""The helper's request loop: validate, perform, reply; forward upcalls."""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from typing import Any

from smcroute.ipc import codec
from smcroute.ipc.helper import (
    ABSENT,
    PROTOCOL_VERSION,
    AddMfc,
    AddVif,
    DelMfc,
    DelVif,
    Hello,
    Modules,
    Mrdisc,
    Request,
    SgCount,
    Upcall,
    error_reply,
    ok_reply,
    upcalls_message,
)
from smcroute.policy import helper as policy
from smcroute.policy.limits import MAXVIFS
from smcroute.privileged.kernel import (
    MRDISC_ADVERT,
    MRDISC_TERMINATE,
    Mroute,
    parse_solicit,
    parse_upcall4,
    parse_upcall6,
)

UPCALLS_PER_WAKEUP = 8192  # bounded work per wakeup; the rest waits in the kernel
UPCALLS_PER_DATAGRAM = 1000


class ProtocolViolation(Exception):
    pass


class Server:
    def __init__(self, chan: socket.socket, mroute: Mroute, state: policy.HelperState,
                 sandbox: str = "none: not applied") -> None:
        self.chan = chan
        self.mroute = mroute
        self.state = state
        self.sandbox = sandbox  # what privileged/sandbox.py applied, for hello

    def run(self) -> int:
        """Serve until the controller closes its end; return the exit status."""
        poller = select.poll()
        socks = {self.chan.fileno(): None, self.mroute.sock4.fileno(): 4,
                 self.mroute.sock6.fileno(): 6, self.mroute.mrdisc4.fileno(): 0}
        for fd in socks:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                family = socks[fd]
                if family:
                    self.forward_upcalls(family)
                elif family == 0:
                    self.forward_solicitations()
                elif events & select.POLLIN:
                    if not self.serve_one():
                        return 0
                else:  # POLLHUP/POLLERR without data: the controller is gone
                    return 0

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
            batch = policy.parse_batch(codec.decode(data))
        except (codec.DecodeError, policy.Violation) as exc:
            raise ProtocolViolation(str(exc)) from None
        replies = [self.execute(req) for req in batch]
        self.send({"t": "replies", "replies": replies})
        return True

    def send(self, msg: dict[str, Any]) -> None:
        self.chan.sendall(codec.encode(msg))

    def execute(self, req: Request) -> dict[str, Any]:
        if isinstance(req, Hello):
            return ok_reply(req.id, version=PROTOCOL_VERSION, maxvifs=MAXVIFS,
                            max_mfc=self.state.max_mfc, table=self.mroute.table,
                            pid=os.getpid(), sandbox=self.sandbox)
        if isinstance(req, Modules):
            return ok_reply(req.id, modules=sorted(sys.modules))
        try:
            policy.check(req, self.state)
            if isinstance(req, Mrdisc) and not self.state.mrdisc_allowed(req.vif,
                                                                         time.monotonic()):
                raise policy.Refusal(errno.EAGAIN, f"mrdisc rate limit of vif {req.vif}")
        except policy.Refusal as exc:
            return error_reply(req.id, exc.errno, exc.text)
        try:
            result = self.perform(req)
        except OSError as exc:
            err = exc.errno or errno.EIO
            if isinstance(req, DelVif | DelMfc) and err in ABSENT:
                # Already gone from the kernel (a VIF goes with its device): forget
                # it too, or its slot would stay taken in our state forever.
                self.state.apply(req)
            return error_reply(req.id, err, os.strerror(err))
        self.state.apply(req)
        return ok_reply(req.id, **result)

    def perform(self, req: Request) -> dict[str, Any]:
        m = self.mroute
        if isinstance(req, AddVif):
            m.add_vif(req.family, req.vif, req.ifindex, req.threshold)
        elif isinstance(req, DelVif):
            m.del_vif(req.family, req.vif)
        elif isinstance(req, AddMfc):
            m.add_mfc(req.family, req.source, req.group, req.iif, req.oifs)
        elif isinstance(req, DelMfc):
            m.del_mfc(req.family, req.source, req.group)
        elif isinstance(req, Mrdisc):
            kind = MRDISC_TERMINATE if req.terminate else MRDISC_ADVERT
            m.send_mrdisc(self.state.vifs[4][req.vif], kind, 0 if req.terminate else req.interval)
        elif isinstance(req, SgCount):
            packets, nbytes, wrong_if = m.sg_count(req.family, req.source, req.group)
            return {"packets": packets, "bytes": nbytes, "wrong_if": wrong_if}
        return {}

    def solicitation(self, data: bytes, ifindex: int) -> Upcall | None:
        """An mrdisc solicitation on one of our VIFs, as an upcall."""
        sender = parse_solicit(data)
        if sender is None:
            return None
        vifs = [v for v, index in self.state.vifs[4].items() if index == ifindex]
        return Upcall(4, "solicit", vifs[0], sender, bytes(data[16:20])) if vifs else None

    def forward_solicitations(self) -> None:
        """Pass on the mrdisc solicitations among the IGMP packets (bounded)."""
        batch: list[Upcall] = []
        for _ in range(UPCALLS_PER_DATAGRAM):
            try:
                data, ifindex = self.mroute.recv_mrdisc()
            except BlockingIOError:
                break
            except OSError:
                continue
            if (upcall := self.solicitation(data, ifindex)) is not None:
                batch.append(upcall)
        if batch:
            self.send(upcalls_message(batch))

    def install_fast(self, family: int, vif: int, source: bytes, group: bytes) -> int | None:
        """The (*,G) fast path (policy/fastpath.py): install a new flow the
        controller's templates cover, under add_mfc's rules. Returns the
        template's index, or None: the controller decides (and learns why).
        The flow's first packets wait for this: nothing else comes first."""
        fast = self.state.fast
        index = fast.match(family, vif, source, group)
        if index is None or policy.source_problem(family, source):
            return None
        oifs = fast.templates[index].oifs
        try:
            policy.check_mfc(self.state, family, source, group, vif, oifs)
            self.mroute.add_mfc(family, source, group, vif, oifs)
        except (policy.Refusal, OSError):
            return None
        self.state.apply(AddMfc(0, family, source, group, vif, oifs))
        fast.take(index)
        return index

    def forward_upcalls(self, family: int) -> None:
        """Read every pending upcall (bounded) and pass them on in batches."""
        sock = self.mroute.sock4 if family == 4 else self.mroute.sock6
        parse = parse_upcall4 if family == 4 else parse_upcall6
        batch: list[Upcall] = []
        for _ in range(UPCALLS_PER_WAKEUP):
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            except OSError:  # e.g. ENOBUFS after an overrun: keep reading
                continue
            parsed = parse(data)
            if parsed is None:
                continue
            kind, vif, source, group = parsed
            if kind == "nocache" and (index := self.install_fast(family, vif, source, group)) \
                    is not None:
                batch.append(Upcall(family, "learned", vif, source, group,
                                    self.state.fast.generation, index))
            else:
                batch.append(Upcall(family, kind, vif, source, group))
            if len(batch) >= UPCALLS_PER_DATAGRAM:
                self.send(upcalls_message(batch))
                batch = []
        if batch:
            self.send(upcalls_message(batch))
