"""Multicast router discovery (RFC 4286), IPv4: the controller decides when,
the helper sends (request "mrdisc": a VIF it owns and the interval field).

An interface with `phyint IF enable mrdisc` gets an advertisement at once,
then every -m seconds, and one right away when a solicitation arrives; a
termination when mrdisc is turned off for it. The controller joins
224.0.0.2 (where solicitations go) and 224.0.0.106 on those interfaces so
the kernel delivers solicitations to the helper's IGMP socket.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import TYPE_CHECKING

from smcroute.ipc.helper import Mrdisc
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.membership import Memberships
from smcroute.unprivileged.model import Interface, Mgroup, Prefix, Vif, Where

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from smcroute.unprivileged.log import Logger

GROUPS = (bytes([224, 0, 0, 2]), bytes([224, 0, 0, 106]))  # all-routers, all-snoopers
QUIET = (errno.ENETDOWN, errno.ENETUNREACH)  # the interface is down: nothing to say


def _joins(names: Iterable[str], interfaces: Mapping[str, Interface]
           ) -> dict[tuple[int, int, bytes | None, bytes], Membership]:
    out = {}
    for name in names:
        if name in interfaces:
            for group in GROUPS:
                rule = Mgroup(Where("mrdisc", 0), name, None,
                              Prefix(ipaddress.IPv4Address(group), 32))
                m = Membership(name, interfaces[name].index, 4, None, group, rule)
                out[m.key] = m
    return out


class MrdiscState:
    def __init__(self, interval: int, log: Logger) -> None:
        self.interval = interval
        self.log = log
        self.enabled: dict[str, int] = {}  # interface name -> IPv4 VIF slot
        self.joins = Memberships()

    def update(self, wanted: Iterable[str], vifs: Mapping[tuple[int, str], Vif],
               interfaces: Mapping[str, Interface], next_id: Callable[[], int]) -> list[Mrdisc]:
        """After a plan is applied: advertise at once on interfaces where
        mrdisc starts (retire() has already ended it where it stops);
        returns the helper requests."""
        now = {name: vifs[(4, name)].vif for name in wanted if (4, name) in vifs}
        reqs = [Mrdisc(next_id(), vif, self.interval, False)
                for name, vif in now.items() if self.enabled.get(name) != vif]
        self.enabled = now
        for _, error in self.joins.apply(_joins(now, interfaces)):
            self.log.warning(error)
        return reqs

    def retire(self, wanted: Iterable[str], vifs: Mapping[tuple[int, str], Vif],
               interfaces: Mapping[str, Interface], next_id: Callable[[], int]) -> list[Mrdisc]:
        """Terminations for interfaces leaving mrdisc, to send before their
        VIFs go (vifs: the plan about to be applied); none where the
        interface itself has gone."""
        wanted = set(wanted)
        going = {name: vif for name, vif in self.enabled.items()
                 if name not in wanted or vifs.get((4, name)) is None
                 or vifs[(4, name)].vif != vif}
        for name in going:
            del self.enabled[name]
        return [Mrdisc(next_id(), vif, self.interval, True)
                for name, vif in going.items() if name in interfaces]

    def announce(self, next_id: Callable[[], int], vif: int | None = None) -> list[Mrdisc]:
        """Advertisements for every mrdisc VIF, or just vif (a solicitation)."""
        return [Mrdisc(next_id(), v, self.interval, False) for v in self.enabled.values()
                if vif is None or v == vif]

    def check(self, reqs: Iterable[Mrdisc], replies: Iterable[dict[str, object]]) -> None:
        for req, reply in zip(reqs, replies, strict=True):
            if not reply.get("ok") and reply.get("errno") not in QUIET:
                kind = 0x32 if req.terminate else 0x30
                self.log.warning(f"Failed sending IGMP control message 0x{kind:02x} on VIF"
                                 f" {req.vif}: {reply.get('error')}")

    def close(self) -> None:
        self.joins.close()
