"""Multicast router discovery (RFC 4286), IPv4: the schedule. Part of the
daemon core: no I/O; the helper sends (request "mrdisc": a VIF it owns and
the interval field).

An interface with `phyint IF enable mrdisc` gets an advertisement at once,
then every -m seconds, and one when a solicitation arrives (at most one a
second per interface); a termination when mrdisc is turned off for it,
sent while its VIF still exists. The controller joins 224.0.0.2 (where
solicitations go) and 224.0.0.106 on those interfaces so that the kernel
delivers solicitations to the helper's IGMP socket.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Mapping

from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.model import Interface, Mgroup, Prefix, Vif, Where

GROUPS = (bytes([224, 0, 0, 2]), bytes([224, 0, 0, 106]))  # all-routers, all-snoopers
QUIET = (errno.ENETDOWN, errno.ENETUNREACH)  # the interface is down: nothing to say
SOLICITED_GAP = 1.0  # seconds between answers to solicitations, per interface
_WHERE = Where("mrdisc", 0)


class Schedule:
    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.enabled: dict[str, int] = {}  # interface name -> IPv4 VIF slot
        self.next: float | None = None  # the next periodic advertisement
        self._answered: dict[int, float] = {}  # VIF -> last solicited advertisement

    def retire(self, wanted: set[str], vifs: Mapping[tuple[int, str], Vif],
               interfaces: Mapping[str, Interface]) -> list[int]:
        """Before a plan is applied: the VIFs to send a termination on
        (interfaces leaving mrdisc, while their VIFs exist; none where the
        interface itself has gone)."""
        going = {name: vif for name, vif in self.enabled.items()
                 if name not in wanted or (v := vifs.get((4, name))) is None or v.vif != vif}
        for name in going:
            del self.enabled[name]
        return [vif for name, vif in going.items() if name in interfaces]

    def update(self, wanted: set[str], vifs: Mapping[tuple[int, str], Vif],
               now: float) -> list[int]:
        """After retire(): the VIFs to advertise on at once (mrdisc starts)."""
        current = {name: vifs[(4, name)].vif for name in wanted if (4, name) in vifs}
        start = [vif for name, vif in current.items() if self.enabled.get(name) != vif]
        self.enabled = current
        if current and self.next is None:
            self.next = now + self.interval
        return start

    def due(self, now: float) -> list[int]:
        """The periodic advertisements, when it is time."""
        if self.next is None or now < self.next:
            return []
        self.next = now + self.interval if self.enabled else None
        return list(self.enabled.values())

    def solicited(self, vif: int, now: float) -> list[int]:
        if vif not in self.enabled.values() or now - self._answered.get(vif, -1e9) < SOLICITED_GAP:
            return []
        self._answered[vif] = now
        return [vif]

    def joins(self, interfaces: Mapping[str, Interface]
              ) -> dict[tuple[int, int, bytes | None, bytes], Membership]:
        """The memberships mrdisc needs on its interfaces."""
        out = {}
        for name in self.enabled:
            if name in interfaces:
                for group in GROUPS:
                    rule = Mgroup(_WHERE, name, None, Prefix(ipaddress.IPv4Address(group), 32))
                    m = Membership(name, interfaces[name].index, 4, None, group, rule)
                    out[m.key] = m
        return out
