"""smcroutectl add/remove/join/leave: arguments to rules, and rule edits
(SPEC 3.4, 5.4, 5.5, 6.1, 6.3). Part of the daemon core: no I/O.

An edit changes the configuration's lines and the plan together, in step:
the plan of the edited lines is the plan edited. Rules added at run time
live until the next reload (as in SMCRoute: "smcroutectl changes are lost
on reload -- by design").
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import replace

from smcroute.ipc.control import ControlRequest
from smcroute.policy.limits import MAX_OIFS
from smcroute.policy.ops import is_multicast
from smcroute.unprivileged import groups
from smcroute.unprivileged.config import (
    ConfigError,
    addresses,
    check_ifname,
    checked,
    parse_prefix,
)
from smcroute.unprivileged.engine import Plan, group_key, match, rule_key
from smcroute.unprivileged.model import Directive, Mgroup, Mroute, Prefix, Where

IPC = Where("ipc", 0)


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


class Lines:
    """The configuration's lines with smcroutectl's edits (they last until
    the next reload, as in SMCRoute), indexed by rule identity: an edit
    finds its rule's lines at once, whatever the size of the file."""

    def __init__(self, directives: Iterable[Directive] = ()) -> None:
        self.lines: dict[int, Directive] = dict(enumerate(directives))
        self._ids = itertools.count(len(self.lines))
        self._index: dict[tuple[str, object], list[int]] | None = None

    @property
    def index(self) -> dict[tuple[str, object], list[int]]:
        """identity -> line ids; made at the first edit (a reload needs none)."""
        if self._index is None:
            self._index = {}
            for i, d in self.lines.items():
                if (ident := self.identity(d)) is not None:
                    self._index.setdefault(ident, []).append(i)
        return self._index

    def __iter__(self) -> Iterator[Directive]:
        return iter(self.lines.values())

    def __len__(self) -> int:
        return len(self.lines)

    @staticmethod
    def identity(rule: Directive) -> tuple[str, object] | None:
        if isinstance(rule, Mroute):
            return "mroute", rule_key(rule)
        if isinstance(rule, Mgroup):
            return "mgroup", group_key(rule)
        return None

    def append(self, d: Directive) -> None:
        i = next(self._ids)
        self.lines[i] = d
        if self._index is not None and (ident := self.identity(d)) is not None:
            self._index.setdefault(ident, []).append(i)

    def of(self, rule: Mroute | Mgroup) -> list[Directive]:
        ident = self.identity(rule)
        return [self.lines[i] for i in self.index.get(ident, ())] if ident else []

    def drop(self, rule: Mroute | Mgroup) -> None:
        for i in self.index.pop(self.identity(rule), ()):  # type: ignore[arg-type]
            del self.lines[i]

    def replace(self, rule: Mroute, oifs: tuple[str, ...]) -> None:
        """Every line of rule without these OIF patterns."""
        for i in self.index.get(self.identity(rule), ()):  # type: ignore[arg-type]
            line = self.lines[i]
            assert isinstance(line, Mroute)
            self.lines[i] = replace(line, oifs=tuple(o for o in line.oifs if o not in oifs))


def _add(lines: Lines, plan: Plan, rule: Mroute) -> None:
    """A line appended: new OIFs of an equal rule merge into it (SPEC 5.4)."""
    if not match(rule.iif, plan.interfaces):
        raise CommandError(f"ipc: mroute: inbound {rule.iif} is not a known phyint")
    lines.append(rule)
    plan.add(rule)


def _remove(lines: Lines, plan: Plan, rule: Mroute) -> None:
    """Remove the equal rule, or only the OIFs rule names from it."""
    mine = lines.of(rule)
    if not mine:
        raise CommandError(f"mroute: no route from {rule.iif} {_sg(rule)} to remove")
    if not rule.oifs:
        lines.drop(rule)
        plan.remove_rule(rule_key(rule))
        return
    written = {o for line in mine if isinstance(line, Mroute) for o in line.oifs}
    unknown = [o for o in rule.oifs if o not in written]
    if unknown:
        raise CommandError(f"mroute: {' '.join(unknown)} is not an outbound interface"
                           f" of the route from {rule.iif} {_sg(rule)}")
    lines.replace(rule, rule.oifs)
    plan.remove_oifs(rule_key(rule), rule.oifs)


def _join(lines: Lines, plan: Plan, rule: Mgroup) -> None:
    names = match(rule.iif, plan.interfaces)
    if not names:
        raise CommandError(f"unknown interface {rule.iif}")
    if not any(plan.interfaces[n].multicast for n in names):
        raise CommandError(f"interface {rule.iif} is not multicast capable")
    if lines.of(rule):
        raise CommandError(f"Already joined {groups.error_text(rule)} on {rule.iif}")
    lines.append(rule)
    plan.add(rule)


def _leave(lines: Lines, plan: Plan, rule: Mgroup) -> None:
    """Leave a join, also one from the configuration file."""
    if not lines.of(rule):
        raise CommandError(f"No group {groups.error_text(rule)} on {rule.iif} to leave")
    lines.drop(rule)
    plan.remove_join(group_key(rule))


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


def edit(lines: Lines, plan: Plan, req: ControlRequest) -> Mroute | Mgroup:
    """Apply one add/remove/join/leave request to the lines and the plan
    (CommandError if it cannot be, and then nothing changed)."""
    if req.cmd in ("add", "remove"):
        rule = route_from_args(req.args)
        (_add if req.cmd == "add" else _remove)(lines, plan, rule)
        return rule
    join = group_from_args(req.args, req.cmd)
    (_join if req.cmd == "join" else _leave)(lines, plan, join)
    return join
