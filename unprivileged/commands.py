"""smcroutectl add/remove/join/leave: arguments to rules, and rule edits
(SPEC 3.4, 5.4, 5.5, 6.1, 6.3).

Pure functions. Rules added at run time live until the next reload (as in
SMCRoute: "smcroutectl changes are lost on reload -- by design").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from smcroute.ipc.control import ControlRequest
from smcroute.policy.helper import is_multicast
from smcroute.unprivileged import groups
from smcroute.unprivileged.config import (
    ConfigError,
    addresses,
    check_ifname,
    checked,
    parse_prefix,
)
from smcroute.unprivileged.engine import match
from smcroute.unprivileged.model import Directive, Interface, Mgroup, Mroute, Prefix, Where

IPC = Where("ipc", 0)
MAX_OIFS = 32


class CommandError(ValueError):
    """The request cannot be carried out; the text says why."""


def _prefix(text: str, error: str) -> Prefix:
    try:
        return parse_prefix(text, "address")
    except ConfigError as exc:  # the address (SMCRoute's text) or its /LEN
        raise CommandError(f"mroute: {exc}" if "prefix length" in str(exc) else error) from None


def route_from_args(args: tuple[str, ...]) -> Mroute:
    """IIF [SOURCE[/LEN]] GROUP[/LEN] [OIF ...] -> a rule.

    The second word decides: a multicast address is the group (any source),
    anything else the source, followed by the group.
    """
    if len(args) < 2:
        raise CommandError("mroute: expected IIF [SOURCE-IP[/LEN]] GROUP[/LEN] [OIF ...]")
    iif, first = args[0], args[1]
    head = _prefix(first, f"mroute: invalid source/group address: {first}")
    if is_multicast(head.family, head.packed):
        source, group, group_text, oifs = None, head, first, args[2:]
    else:
        if len(args) < 3:
            raise CommandError(f"mroute: missing multicast group after source {first}")
        group = _prefix(args[2], f"mroute: invalid multicast group: {args[2]}")
        if not is_multicast(group.family, group.packed):
            raise CommandError(f"mroute: invalid multicast group: {args[2]}")
        source, group_text, oifs = head, args[2], args[3:]
    if len(oifs) > MAX_OIFS:
        raise CommandError(f"mroute: {len(oifs)} outbound interfaces, at most {MAX_OIFS}")
    try:
        check_ifname(iif)
        for name in oifs:
            check_ifname(name)
        source, group_prefix = checked(source, group, group_text, "mroute")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    return Mroute(IPC, iif, source, group_prefix, oifs)


class Rules:
    """The rules (config plus smcroutectl edits) being edited, indexed so
    that a batch of edits costs one pass, not one pass per edit."""

    def __init__(self, directives: tuple[Directive, ...]) -> None:
        self.items: list[Directive | None] = list(directives)
        # key -> positions of the rules with that identity, first one first
        # (a file may repeat a line; the first is the one edits find)
        self.index: dict[tuple[object, ...], list[int]] = {}
        for i, d in enumerate(self.items):
            if isinstance(d, Mroute | Mgroup):
                self.index.setdefault(self._key(d), []).append(i)

    @staticmethod
    def _key(rule: Mroute | Mgroup) -> tuple[object, ...]:
        """SMCRoute's identity: a route by inbound, source and group as written
        (lengths included); a join likewise, but without the source length."""
        if isinstance(rule, Mroute):
            return ("mroute", rule.iif, rule.source, rule.group)
        return ("mgroup", rule.iif, rule.group, rule.source.address if rule.source else None)

    def find(self, rule: Mroute | Mgroup) -> int | None:
        places = self.index.get(self._key(rule))
        return places[0] if places else None

    def put(self, i: int | None, rule: Mroute | Mgroup) -> None:
        if i is None:
            self.items.append(rule)
            self.index.setdefault(self._key(rule), []).append(len(self.items) - 1)
        else:
            self.items[i] = rule

    def delete(self, i: int) -> None:
        rule = self.items[i]
        assert isinstance(rule, Mroute | Mgroup)
        self.items[i] = None
        places = self.index[self._key(rule)]
        places.remove(i)
        if not places:
            del self.index[self._key(rule)]

    def result(self) -> tuple[Directive, ...]:
        return tuple(d for d in self.items if d is not None)

    def add(self, rule: Mroute) -> None:
        """Merge rule's OIFs into an equal rule, or append it."""
        i = self.find(rule)
        if i is None:
            self.put(None, rule)
            return
        old = self.items[i]
        assert isinstance(old, Mroute)
        self.put(i, replace(old, oifs=old.oifs + tuple(o for o in rule.oifs
                                                       if o not in old.oifs)))

    def remove(self, rule: Mroute) -> None:
        """Remove the equal rule, or only the OIFs rule names from it."""
        i = self.find(rule)
        if i is None:
            raise CommandError(f"mroute: no route from {rule.iif} {_sg(rule)} to remove")
        old = self.items[i]
        assert isinstance(old, Mroute)
        if not rule.oifs:
            self.delete(i)
            return
        unknown = [o for o in rule.oifs if o not in old.oifs]
        if unknown:
            raise CommandError(f"mroute: {' '.join(unknown)} is not an outbound interface"
                               f" of the route from {old.iif} ({_sg(old)})")
        self.put(i, replace(old, oifs=tuple(o for o in old.oifs if o not in rule.oifs)))

    def join(self, rule: Mgroup) -> None:
        if self.find(rule) is not None:
            raise CommandError(f"Already joined {groups.error_text(rule)} on {rule.iif}")
        self.put(None, rule)

    def leave(self, rule: Mgroup) -> None:
        """Leave a join, also one from the configuration file."""
        i = self.find(rule)
        if i is None:
            raise CommandError(f"No group {groups.error_text(rule)} on {rule.iif} to leave")
        self.delete(i)


def _sg(rule: Mroute) -> str:
    return f"({rule.source or '*'}, {rule.group})"


def group_from_args(args: tuple[str, ...], verb: str) -> Mgroup:
    """IIF [SOURCE[/LEN]] GROUP[/LEN] -> a join rule."""
    if len(args) not in (2, 3):
        raise CommandError(f"{verb}: expected IIF [SOURCE-IP[/LEN]] GROUP[/LEN]")
    iif, source_text, group_text = (args[0], None, args[1]) if len(args) == 2 else args
    try:
        check_ifname(iif)
        source, group = addresses(source_text, group_text, verb)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    rule = Mgroup(IPC, iif, source, group)
    if error := groups.too_large(rule):
        raise CommandError(error)
    return rule


def edit(rules: Rules, req: ControlRequest, interfaces: Mapping[str, Interface]
         ) -> Mroute | Mgroup:
    """Apply one add/remove/join/leave request to the rules."""
    if req.cmd in ("add", "remove"):
        rule = route_from_args(req.args)
        if req.cmd == "remove":
            rules.remove(rule)
            return rule
        if not match(rule.iif, interfaces):
            raise CommandError(f"ipc: mroute: inbound {rule.iif} is not a known phyint")
        rules.add(rule)
        return rule
    join = group_from_args(req.args, req.cmd)
    if req.cmd == "leave":
        rules.leave(join)
        return join
    names = match(join.iif, interfaces)
    if not names:
        raise CommandError(f"unknown interface {join.iif}")
    if not any(interfaces[n].multicast for n in names):
        raise CommandError(f"interface {join.iif} is not multicast capable")
    rules.join(join)
    return join
