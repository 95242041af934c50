"""Stand-ins shared by the unit tests: a logger that records, a kernel that
keeps VIF tables in dicts, and a helper "process" that is a thread on the
other end of a real SOCK_SEQPACKET socketpair speaking smcroute.ipc.codec."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from smcroute.ipc import codec


class FakeLog:
    """Records (method, event) for every call, whatever the method's name."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **kw: Any) -> None:
            self.lines.append((level, event))
        return log

    def at(self, level: str) -> list[str]:
        return [event for lvl, event in self.lines if lvl == level]


class FakeKernel:
    """The kernel's VIF tables as far as MRT_ADD_VIF/MRT_DEL_VIF go (SPEC 5.2).

    When a device is unregistered the kernel deletes its VIF/MIF on its own;
    a later MRT_DEL_VIF of that slot fails with EADDRNOTAVAIL.
    """

    table = 0

    def __init__(self) -> None:
        self.vifs: dict[int, dict[int, int]] = {4: {}, 6: {}}
        self.mfc: dict[tuple[int, bytes, bytes], tuple[int, tuple[tuple[int, int], ...]]] = {}
        self.counts = {}
        self.mrdisc = []
        self.refuse = set()

    def add_vif(self, family: int, vif: int, ifindex: int, threshold: int) -> None:
        if vif in self.vifs[family]:
            raise OSError(errno.EADDRINUSE, "in use")
        self.vifs[family][vif] = ifindex

    def del_vif(self, family: int, vif: int) -> None:
        if vif not in self.vifs[family]:
            raise OSError(errno.EADDRNOTAVAIL, "no such vif")
        del self.vifs[family][vif]

    def add_mfc(self, family: int, source: bytes, group: bytes, iif: int,
                oifs: tuple[tuple[int, int], ...]) -> None:
        if (family, source, group) in self.refuse:
            raise OSError(errno.ENOMEM, "refused")
        # copies of its own, as the real kernel keeps none of ours (so that a
        # memory count by allocation site does not charge what it keeps to
        # the code that made it: bench/bench_flow_memory.py)
        key = (family, bytes(bytearray(source)), bytes(bytearray(group)))
        self.mfc[key] = (iif, tuple((vif, ttl) for vif, ttl in oifs))

    def del_mfc(self, family: int, source: bytes, group: bytes) -> None:
        if self.mfc.pop((family, source, group), None) is None:
            raise OSError(errno.ENOENT, "no such route")

    counts: dict[tuple[int, bytes, bytes], tuple[int, int, int]]
    mrdisc: list[tuple[int, int, int]]  # (ifindex, kind, interval) sent
    refuse: set[tuple[int, bytes, bytes]]  # add_mfc of these fails (ENOMEM)

    def sg_count(self, family: int, source: bytes, group: bytes) -> tuple[int, int, int]:
        return self.counts.get((family, source, group), (0, 0, 0))

    def send_mrdisc(self, ifindex: int, kind: int, interval: int) -> None:
        self.mrdisc.append((ifindex, kind, interval))

    def unregister(self, ifindex: int) -> None:
        for table in self.vifs.values():
            for vif in [v for v, i in table.items() if i == ifindex]:
                del table[vif]


CLOSE = object()  # yielded by a responder: close the helper's end and stop
Responder = Callable[["ThreadHelper", list[Any]], Iterable[Any]]


class ThreadHelper:
    """A fake helper: a thread serving its end of a SEQPACKET socketpair.

    For every datagram received (decoded, appended to .received) the
    responder yields what to send back: a dict (encoded with the codec),
    raw bytes, or CLOSE.
    """

    def __init__(self, respond: Responder) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.respond = respond
        self.received: list[list[Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send(self, msg: Any) -> None:
        self.theirs.send(msg if isinstance(msg, bytes) else codec.encode(msg))

    def _run(self) -> None:
        try:
            while True:
                data = self.theirs.recv(codec.MAX_DATAGRAM)
                if not data:
                    return
                batch = codec.decode(data)
                self.received.append(batch)
                for out in self.respond(self, batch):
                    if out is CLOSE:
                        return
                    self.send(out)
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self.theirs.close()

    def stop(self) -> None:
        """Close our end (the helper sees EOF) and wait for the thread."""
        self.ours.close()
        self.thread.join(5)
        assert not self.thread.is_alive()
        if self.error is not None and not isinstance(self.error, OSError):
            raise self.error


def ok_replies(batch: list[Any]) -> dict[str, Any]:
    return {"t": "replies", "replies": [{"id": r["id"], "ok": True} for r in batch]}


def accept_all(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
    yield ok_replies(batch)
