"""smcroutectl add/remove/join/leave: arguments to rules, and rule edits
(SPEC 3.4, 5.4, 5.5, 6.1, 6.3).

Pure functions. Rules added at run time live until the next reload (as in
SMCRoute: "smcroutectl changes are lost on reload -- by design").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from smcroute.ipc.control import ControlRequest
from smcroute.unprivileged import groups
from smcroute.unprivileged.config import (
    ConfigError,
    addresses,
    check_ifname,
    parse_address,
)
from smcroute.unprivileged.engine import match
from smcroute.unprivileged.model import Directive, Interface, Mgroup, Mroute, Where

IPC = Where("ipc", 0)
MAX_OIFS = 32


class CommandError(ValueError):
    """The request cannot be carried out; the text says why."""


def route_from_args(args: tuple[str, ...]) -> Mroute:
    """IIF [SOURCE[/LEN]] GROUP[/LEN] [OIF ...] -> a rule.

    The second word decides: a multicast address is the group (any source),
    anything else the source, followed by the group.
    """
    if len(args) < 2:
        raise CommandError("mroute: expected IIF [SOURCE-IP[/LEN]] GROUP[/LEN] [OIF ...]")
    iif, first = args[0], args[1]
    address = parse_address(first.partition("/")[0])
    if address is None:
        raise CommandError(f"mroute: invalid source/group address: {first}")
    if address.is_multicast:
        source_text, group_text, oifs = None, first, args[2:]
    else:
        if len(args) < 3:
            raise CommandError(f"mroute: missing multicast group after source {first}")
        group = parse_address(args[2].partition("/")[0])
        if group is None or not group.is_multicast:
            raise CommandError(f"mroute: invalid multicast group: {args[2]}")
        source_text, group_text, oifs = first, args[2], args[3:]
    if len(oifs) > MAX_OIFS:
        raise CommandError(f"mroute: {len(oifs)} outbound interfaces, at most {MAX_OIFS}")
    try:
        for name in (iif, *oifs):
            check_ifname(name)
        source, group_prefix = addresses(source_text, group_text, "mroute")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    return Mroute(IPC, iif, source, group_prefix, tuple(oifs))


def _same(a: Mroute, b: Mroute) -> bool:
    """The same rule: inbound, source and group as written, prefix lengths included."""
    return (a.iif, a.source, a.group) == (b.iif, b.source, b.group)


def add_rule(directives: tuple[Directive, ...], rule: Mroute) -> tuple[Directive, ...]:
    """Merge rule's OIFs into an equal rule, or append it."""
    out = list(directives)
    for i, d in enumerate(out):
        if isinstance(d, Mroute) and _same(d, rule):
            merged = d.oifs + tuple(o for o in rule.oifs if o not in d.oifs)
            out[i] = replace(d, oifs=merged)
            return tuple(out)
    return (*out, rule)


def remove_rule(directives: tuple[Directive, ...], rule: Mroute) -> tuple[Directive, ...]:
    """Remove the equal rule, or only the OIFs rule names from it."""
    out = list(directives)
    for i, d in enumerate(out):
        if isinstance(d, Mroute) and _same(d, rule):
            if not rule.oifs:
                del out[i]
                return tuple(out)
            unknown = [o for o in rule.oifs if o not in d.oifs]
            if unknown:
                raise CommandError(f"mroute: {' '.join(unknown)} is not an outbound interface"
                                   f" of the route from {d.iif} ({_sg(d)})")
            out[i] = replace(d, oifs=tuple(o for o in d.oifs if o not in rule.oifs))
            return tuple(out)
    raise CommandError(f"mroute: no route from {rule.iif} {_sg(rule)} to remove")


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


def join_rule(directives: tuple[Directive, ...], rule: Mgroup) -> tuple[Directive, ...]:
    if any(isinstance(d, Mgroup) and groups.same(d, rule) for d in directives):
        raise CommandError(f"Already joined {groups.error_text(rule)} on {rule.iif}")
    return (*directives, rule)


def leave_rule(directives: tuple[Directive, ...], rule: Mgroup) -> tuple[Directive, ...]:
    """Leave a join, also one from the configuration file."""
    for i, d in enumerate(directives):
        if isinstance(d, Mgroup) and groups.same(d, rule):
            return directives[:i] + directives[i + 1:]
    raise CommandError(f"No group {groups.error_text(rule)} on {rule.iif} to leave")


def edit_directives(directives: tuple[Directive, ...], req: ControlRequest,
                    interfaces: Mapping[str, Interface]
                    ) -> tuple[tuple[Directive, ...], Mroute | Mgroup]:
    """Apply one add/remove/join/leave request to the rules."""
    if req.cmd in ("add", "remove"):
        rule = route_from_args(req.args)
        if req.cmd == "remove":
            return remove_rule(directives, rule), rule
        if not match(rule.iif, interfaces):
            raise CommandError(f"ipc: mroute: inbound {rule.iif} is not a known phyint")
        return add_rule(directives, rule), rule
    join = group_from_args(req.args, req.cmd)
    if req.cmd == "leave":
        return leave_rule(directives, join), join
    names = match(join.iif, interfaces)
    if not names:
        raise CommandError(f"unknown interface {join.iif}")
    if not any(interfaces[n].multicast for n in names):
        raise CommandError(f"interface {join.iif} is not multicast capable")
    return join_rule(directives, join), join
