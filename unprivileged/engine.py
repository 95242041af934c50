"""The route engine: from rules and the interface table to kernel state.

No I/O. A Plan is SMCRoute's fold over the configuration, line by line
(SPEC 2, 5.2, 5.4): a VIF/MIF pair is allocated when an interface is first
used, "phyint X disable" frees it and drops what earlier lines routed
through X, equal mroute lines are one rule whose OIFs are merged. What the
daemon does to that state later is a change to the fold, never a new fold:

* add(line) continues it (start-up, reload, and smcroutectl add/join, which
  are lines appended to the configuration);
* remove_rule, remove_oifs and remove_join take a rule (or some of its
  OIFs) out again, exactly as if its lines had never been read; a VIF goes
  when nothing holds it any more.

So an edit costs what it changes, and plan(lines) of the edited lines is
the same Plan (a property test checks it). What changed since the last
take_changes() is tracked for the core: MFC keys, inbound interfaces whose
templates changed, memberships.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from smcroute.policy.limits import FAMILIES, MAX_IFINDEX, MAXVIFS
from smcroute.unprivileged import groups
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.model import (
    INTERFACE,
    NOTE,
    Config,
    Diagnostic,
    Directive,
    Interface,
    Mfc,
    MfcKey,
    Mgroup,
    Mroute,
    Pending,
    Phyint,
    Prefix,
    Vif,
    zero,
)

VifTable = Mapping[object, Vif]  # installed VIFs; only the values matter
# SMCRoute's identity of a route rule: inbound interface as written, source
# and group as written (packed) with their lengths; of a join the same, but
# without the source length. Plain tuples: hashed in C, and used a lot.
RuleKey = tuple[str, bytes | None, int, bytes, int]
GroupKey = tuple[str, bytes, int, bytes | None]
MemberKey = tuple[int, int, bytes | None, bytes]


def rule_key(rule: Mroute) -> RuleKey:
    """A route rule is its inbound interface as written, source and group
    (lengths included): equal lines are one rule."""
    s, g = rule.source, rule.group
    if s is None:
        return rule.iif, None, 0, g.packed, g.length
    return rule.iif, s.packed, s.length, g.packed, g.length


def group_key(rule: Mgroup) -> GroupKey:
    g = rule.group
    return rule.iif, g.packed, g.length, rule.source.packed if rule.source else None


def match(pattern: str, interfaces: Mapping[str, Interface]) -> list[str]:
    """Interface names matching pattern; "eth+" is a prefix wildcard."""
    if pattern.endswith("+"):
        prefix = pattern[:-1]
        return [name for name in interfaces if name.startswith(prefix)]
    name = pattern.split(":", 1)[0]  # alias eth0:1 uses eth0
    return [name] if name in interfaces else []


def _net(prefix: Prefix | None) -> tuple[int, int]:
    """(network, mask) as integers; (0, 0) matches everything."""
    if prefix is None:
        return 0, 0
    bits = prefix.max_length
    mask = ((1 << prefix.length) - 1) << (bits - prefix.length)
    return int(prefix.address) & mask, mask


class Resolved:
    """An mroute line's interfaces, worked out once per (inbound, outbound)
    patterns: large configurations repeat them line after line."""

    __slots__ = ("held", "iifs", "loops", "missing", "names", "oifs", "via")

    def __init__(self, iifs: list[str], pairs: list[tuple[str, str]], missing: tuple[str, ...],
                 thresholds: Mapping[str, int], wildcard: bool) -> None:
        self.iifs = iifs
        self.missing = missing
        via: dict[str, set[str]] = {}
        for name, pattern in pairs:
            via.setdefault(name, set()).add(pattern)
        self.via = {name: frozenset(p) for name, p in via.items()}
        self.oifs = {name: thresholds.get(name, 1) for name in via}
        held = dict.fromkeys(iifs, frozenset(("",)))
        for name, patterns in self.via.items():
            held[name] = held.get(name, frozenset()) | patterns
        self.held = held
        self.names = tuple(held)  # every interface the line holds
        # inbound interfaces that are among the OIFs, named without wildcards
        self.loops = frozenset() if wildcard else frozenset(iifs) & self.via.keys()


class Rule:
    """One route rule: the lines equal to its first, merged. (A plain class
    with slots: a configuration has thousands, and none refers back to it,
    so that a replaced plan is freed at once, not by the cycle collector.)"""

    __slots__ = ("held", "key", "routes", "rule", "seq", "sg", "ssm")

    def __init__(self, seq: int, rule: Mroute, key: RuleKey) -> None:
        self.seq = seq  # its place in the configuration (its first line)
        self.key = key
        self.ssm = rule.is_ssm  # an (S,G) route (else a template)
        self.sg = (MfcKey(rule.family, rule.source.packed, rule.group.packed)
                   if self.ssm and rule.source is not None else None)
        self.rule = rule  # the first line, with the OIF patterns of every line of it
        self.routes: dict[str, Route] = {}  # by inbound interface
        # the interfaces whose VIFs its lines took (and no "phyint disable"
        # freed since), with the patterns that named them ("" for the inbound);
        # frozen sets, replaced on change: shared with the resolution cache
        self.held: dict[str, frozenset[str]] = {}

    def set_rule(self, rule: Mroute) -> None:
        """The rule's OIF patterns changed (its routes keep a copy)."""
        self.rule = rule
        for route in self.routes.values():
            route.rule = rule


class Route:
    """A rule applied to one inbound interface, with the rule's values."""

    __slots__ = ("_net", "family", "iif", "key", "oifs", "rule", "seq", "sg", "ssm", "via")

    def __init__(self, rule: Rule, iif: str, oifs: dict[str, int] | None = None) -> None:
        self.rule = rule.rule
        self.key, self.seq, self.ssm, self.sg = rule.key, rule.seq, rule.ssm, rule.sg
        self.family = rule.rule.family
        self.iif = iif
        self.oifs: dict[str, int] = oifs if oifs is not None else {}  # name -> ttl
        self.via: dict[str, frozenset[str]] = {}  # name -> the OIF patterns naming it
        self._net: tuple[int, int, int, int] | None = None

    @property
    def net(self) -> tuple[int, int, int, int]:
        """(group net, mask, source net, mask) for covers(); templates only."""
        if self._net is None:
            self._net = (*_net(self.rule.group), *_net(self.rule.source))
        return self._net

    def covers(self, source: int, group: int) -> bool:
        gnet, gmask, snet, smask = self.net
        return group & gmask == gnet and source & smask == snet


@dataclass(eq=False)
class Join:
    """One mgroup rule (later equal lines are refused: "Already joined")."""

    rule: Mgroup
    members: dict[MemberKey, Membership] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # interfaces it holds VIFs on


@dataclass
class Changes:
    """What a plan changed since the last take_changes(), for the core."""

    mfc: set[MfcKey] = field(default_factory=set)  # configured (S,G) entries
    inbound: set[tuple[int, str]] = field(default_factory=set)  # templates or VIF of these
    memberships: set[MemberKey] = field(default_factory=set)
    pending: list[Pending] = field(default_factory=list)  # lines that began to wait
    vifs: bool = False  # a VIF/MIF was allocated or freed


class Slots:
    """VIF and MIF slots, allocated in first-use order (SPEC 5.2, 14.2).

    An interface that keeps its ifindex keeps its installed slots, also when
    renamed. A new one takes the lowest slot that no installed VIF holds: a
    slot being freed by this same change is not reused until the next one,
    so adds never wait for deletes.
    """

    def __init__(self, vifs: dict[tuple[int, str], Vif], installed: Iterable[Vif]) -> None:
        self.vifs = vifs  # the plan's: (family, name) -> Vif
        self.taken: set[tuple[int, int]] = set()
        self.changed = False  # since take_changes()
        self.installed(installed)

    def installed(self, vifs: Iterable[Vif]) -> None:
        """What the kernel holds now (before an edit is planned)."""
        vifs = list(vifs)
        self.by_name = {(v.family, v.name): v for v in vifs}
        self.by_index = {(v.family, v.ifindex): v for v in vifs}
        self.held = {(v.family, v.vif) for v in vifs}

    def ensure(self, name: str, index: int, threshold: int) -> list[str]:
        """Give name a VIF and a MIF (both or neither, but that an ifindex
        above the MIF's 16 bits gets no MIF); the reasons if not."""
        if (4, name) in self.vifs:
            return []
        pair: list[Vif] = []
        full = []
        for family in FAMILIES:
            if index > MAX_IFINDEX[family]:
                continue
            old = self.by_name.get((family, name))
            if old is None or old.ifindex != index:
                old = self.by_index.get((family, index))
            if old is not None and (family, old.vif) not in self.taken:
                pair.append(replace(old, name=name))
                continue
            free = next((s for s in range(MAXVIFS) if (family, s) not in self.taken
                         and (family, s) not in self.held), None)
            if free is None:
                full.append(f"Not enough available {'VIFs' if family == 4 else 'MIFs'}"
                            f" to create {name}")
                continue
            pair.append(Vif(family, free, name, index, threshold))
        if full:
            return full
        for vif in pair:
            self.vifs[(vif.family, name)] = vif
            self.taken.add((vif.family, vif.vif))
        self.changed = True
        return []

    def release(self, name: str) -> bool:
        gone = False
        for family in FAMILIES:
            vif = self.vifs.pop((family, name), None)
            if vif is not None:
                self.taken.discard((family, vif.vif))
                gone = True
        self.changed |= gone
        return gone


class Plan:
    """The kernel state and the rules the configuration (with smcroutectl's
    edits) stands for, kept by folding its lines in order."""

    def __init__(self, interfaces: Mapping[str, Interface], installed: VifTable | Iterable[Vif]
                 = (), default_enable: bool = True, kernel_star_g: bool = False) -> None:
        self.interfaces = interfaces
        self.default_enable = default_enable
        self.kernel_star_g = kernel_star_g  # --kernel-star-g: see star_entries()
        self.star: dict[MfcKey, Mfc] = {}  # kernel (*,G) entries, also in self.mfc
        self.vifs: dict[tuple[int, str], Vif] = {}
        self.slots = Slots(self.vifs, installed.values() if isinstance(installed, Mapping)
                           else installed)
        self.rules: dict[RuleKey, Rule] = {}  # in configuration order
        self.template_rules: dict[RuleKey, Rule] = {}  # the (*,G) and range ones
        self.joins: dict[GroupKey, Join] = {}
        self.mfc: dict[MfcKey, Mfc] = {}  # the configured (S,G) entries
        self.memberships: dict[MemberKey, Membership] = {}
        self.pending: list[Pending] = []
        self.diagnostics: list[Diagnostic] = []
        self.mrdisc: set[str] = set()  # interfaces with mrdisc on
        self.thresholds: dict[str, int] = {}
        self.changes = Changes()
        self._seq = itertools.count()
        self._contrib: dict[MfcKey, list[Route]] = {}  # (S,G) routes per entry, in rule order
        self._templates: dict[tuple[int, str], list[Route]] = {}  # per inbound, in rule order
        # what holds each interface's VIF: ("mroute", RuleKey), ("mgroup",
        # GroupKey) or ("phyint", n); a VIF goes when nothing holds it
        self._holders: dict[str, set[tuple[str, object]]] = {}
        self._member_by: dict[MemberKey, list[GroupKey]] = {}
        # Interfaces resolved per (inbound, outbound) patterns, and (S,G)
        # entries' VIF lists per (family, inbound, OIFs): valid until slots
        # or thresholds change (_phyint, _release).
        self._known: dict[tuple[int, str, tuple[str, ...]], Resolved] = {}
        self._merged: dict[tuple[int, str, tuple[tuple[str, int], ...]],
                           tuple[int, tuple[tuple[int, int], ...], tuple[str, ...]]] = {}

    # -- views ----------------------------------------------------------------

    @property
    def templates(self) -> list[Route]:
        """(*,G) and range rules, per inbound interface, in configuration order."""
        return [r for rule in self.template_rules.values() for r in rule.routes.values()]

    @property
    def ssm(self) -> list[Route]:
        return [r for rule in self.rules.values() if rule.ssm for r in rule.routes.values()]

    @property
    def groups(self) -> list[Mgroup]:
        return [j.rule for j in self.joins.values()]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.error]

    def templates_at(self, family: int, iif: str) -> list[Route]:
        """The templates for traffic arriving on iif, first match first."""
        return self._templates.get((family, iif), [])

    def match(self, family: int, iif: str, source: bytes, group: bytes) -> Route | None:
        """The first template for this inbound interface covering (S,G)."""
        candidates = self._templates.get((family, iif))
        if not candidates:
            return None
        s = int.from_bytes(source, "big")
        g = int.from_bytes(group, "big")
        for route in candidates:
            if route.covers(s, g):
                return route
        return None

    def covers_group(self, family: int, iif: str, group: bytes) -> bool:
        """Does any template for traffic arriving on iif cover group (for
        any source)?"""
        g = int.from_bytes(group, "big")
        for route in self._templates.get((family, iif), ()):
            gnet, gmask, _, _ = route.net
            if g & gmask == gnet:
                return True
        return False

    def take_changes(self) -> Changes:
        if self.kernel_star_g and (self.changes.inbound or self.slots.changed):
            star = star_entries(self)
            for key in [*star, *(k for k in self.star if k not in star)]:  # rule order
                if self.star.get(key) != star.get(key):
                    self.changes.mfc.add(key)
                    if key in star:
                        self.mfc[key] = star[key]
                    else:
                        self.mfc.pop(key, None)
            self.star = star
        changes, self.changes = self.changes, Changes()
        changes.vifs, self.slots.changed = self.slots.changed, False
        return changes

    # -- the fold -------------------------------------------------------------

    def fold(self, directives: Iterable[Directive]) -> Plan:
        for d in directives:
            self.add(d)
        return self

    def add(self, d: Directive) -> None:
        """Read one more line."""
        if isinstance(d, Mroute):
            self._mroute(d)
        elif isinstance(d, Mgroup):
            self._mgroup(d)
        else:
            self._phyint(d)

    def _pend(self, p: Pending) -> None:
        self.pending.append(p)
        self.changes.pending.append(p)

    def _note(self, message: str, d: Directive, kind: str) -> None:
        self.diagnostics.append(Diagnostic(message, d.where, kind))

    def _usable(self, name: str, role: str, d: Directive) -> bool:
        """Give name its VIFs; False (said why) if it cannot have them."""
        iface = self.interfaces[name]
        if not iface.multicast:
            self._note(f"{role} {name} is not multicast capable", d, INTERFACE)
            return False
        full = self.slots.ensure(name, iface.index, self.thresholds.get(name, 1))
        for why in full:
            self._note(why, d, INTERFACE)
        if not full and isinstance(d, Mroute) and d.family == 6 and (6, name) not in self.vifs:
            self._note(f"{role} {name} has ifindex {iface.index}, above {MAX_IFINDEX[6]}:"
                       " the kernel cannot route IPv6 through it", d, INTERFACE)
            return False
        return not full

    def _hold(self, name: str, holder: tuple[str, object]) -> None:
        self._holders.setdefault(name, set()).add(holder)

    def _unhold(self, name: str, holder: tuple[str, object]) -> None:
        holders = self._holders.get(name)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self._holders[name]
            self._release(name)

    def _release(self, name: str) -> None:
        if self.slots.release(name):
            self._known.clear()
            self._merged.clear()
            self.changes.inbound.update((f, name) for f in FAMILIES)

    def _multicast(self, names: list[str]) -> bool:
        """Does any of these interfaces exist with the MULTICAST flag?"""
        return any(self.interfaces[n].multicast for n in names)

    def _phyint(self, d: Phyint) -> None:
        self._known.clear()
        self._merged.clear()
        names = match(d.pattern, self.interfaces)
        if not names:
            self._note(f"phyint {d.pattern} does not exist (yet?) on this system", d, INTERFACE)
        enable = self.default_enable if d.enable is None else d.enable
        holder = ("phyint", next(self._seq))  # phyint lines are never edited
        for name in names:
            if d.threshold is not None:
                self.thresholds[name] = d.threshold
            if not enable:
                self.mrdisc.discard(name)
                self._prune(name)
            elif self._usable(name, "phyint", d):
                self._hold(name, holder)
                if d.mrdisc:
                    self.mrdisc.add(name)
                else:
                    self.mrdisc.discard(name)

    def _prune(self, name: str) -> None:
        """phyint NAME disable: its VIFs go; routes from it go, it leaves
        every OIF list (joins stay: they need no VIF)."""
        for kind, key in self._holders.pop(name, ()):
            if kind == "mgroup" and (join := self.joins.get(key)) is not None:
                join.names.discard(name)
            rule = self.rules.get(key) if kind == "mroute" else None
            if rule is None:
                continue
            rule.held.pop(name, None)
            for route in list(rule.routes.values()):
                if route.iif == name:
                    del rule.routes[route.iif]
                    self._withdraw(route)
                elif name in route.oifs:
                    del route.oifs[name]
                    del route.via[name]
                    self._changed(route)
        self._release(name)

    def _resolve(self, d: Mroute) -> Resolved | None:
        """The line's interfaces; None: the inbound interface is missing
        (the line is pending)."""
        said = len(self.diagnostics)
        iifs = match(d.iif, self.interfaces)
        if not self._multicast(iifs):  # SPEC 8.2: wait for the MULTICAST flag too
            self._pend(Pending(d, (d.iif,), inbound=True))
            return None
        iifs = [n for n in iifs if self._usable(n, "mroute: inbound", d)]
        pairs: list[tuple[str, str]] = []
        missing: list[str] = []
        for pattern in d.oifs:
            names = match(pattern, self.interfaces)
            if not self._multicast(names):
                missing.append(pattern)
            pairs += [(n, pattern) for n in names if self._usable(n, "mroute: outbound", d)]
        wildcard = d.iif.endswith("+") or any(o.endswith("+") for o in d.oifs)
        resolved = Resolved(iifs, pairs, tuple(missing), self.thresholds, wildcard)
        if len(self.diagnostics) == said:
            self._known[(d.family, d.iif, d.oifs)] = resolved
        return resolved

    def _mroute(self, d: Mroute) -> None:
        resolved = self._known.get((d.family, d.iif, d.oifs)) or self._resolve(d)
        if resolved is None:
            return
        if resolved.missing:
            self._pend(Pending(d, resolved.missing))
        key = rule_key(d)
        rule = self.rules.get(key)
        holder = ("mroute", key)
        if rule is None:
            rule = self.rules[key] = Rule(next(self._seq), d, key)
            if not rule.ssm:
                self.template_rules[key] = rule
            rule.held = dict(resolved.held)
        else:  # an equal line: its OIFs join the rule's (SPEC 5.4)
            rule.set_rule(replace(rule.rule, oifs=rule.rule.oifs + tuple(
                o for o in d.oifs if o not in rule.rule.oifs)))
            held = rule.held
            for name, patterns in resolved.held.items():
                held[name] = held[name] | patterns if name in held else patterns
        holders = self._holders
        for name in resolved.names:
            if name in holders:
                holders[name].add(holder)
            else:
                holders[name] = {holder}
        for iif in resolved.iifs:
            if iif in resolved.loops:
                self._note("mroute: Same outbound interface (OIF) as inbound (IIF) may"
                           " cause routing loops.", d, NOTE)
            route = rule.routes.get(iif)
            if route is None:
                route = rule.routes[iif] = Route(rule, iif, dict(resolved.oifs))
                route.via = dict(resolved.via)
                self._insert(route)
                continue
            route.oifs.update(resolved.oifs)  # a later line's TTL wins
            via = route.via
            for name, patterns in resolved.via.items():
                via[name] = via[name] | patterns if name in via else patterns
            self._changed(route)

    def _mgroup(self, d: Mgroup) -> None:
        if error := groups.too_large(d):
            self.diagnostics.append(Diagnostic(error, d.where))
            return
        names = match(d.iif, self.interfaces)
        if not self._multicast(names):
            self._pend(Pending(d, (d.iif,), inbound=True))
            return
        key = group_key(d)
        if key in self.joins:
            self.diagnostics.append(Diagnostic(
                f"Already joined {groups.text(d)} on {d.iif}, line ignored", d.where))
            return
        join = self.joins[key] = Join(d)
        for name in names:
            if not self._usable(name, "mgroup: interface", d):
                continue
            self._hold(name, ("mgroup", key))
            join.names.add(name)
            for m in groups.expand(d, name, self.interfaces[name].index):
                if m.key in join.members:
                    continue
                join.members[m.key] = m
                holders = self._member_by.setdefault(m.key, [])
                holders.append(key)
                if len(holders) == 1:
                    self.memberships[m.key] = m
                    self.changes.memberships.add(m.key)

    # -- (S,G) entries and templates ----------------------------------------------

    def _insert(self, route: Route) -> None:
        """A new route of a rule: into the (S,G) entry or the templates."""
        if route.ssm:
            key = self._sg(route)
            routes = self._contrib.setdefault(key, [])
            if not routes or routes[-1].seq < route.seq:
                routes.append(route)  # (the usual case: a new rule comes last)
            else:
                bisect.insort(routes, route, key=lambda r: r.seq)
            first = routes[0]
            if first is not route and first.iif != route.iif:
                rule = route.rule
                self._note(f"mroute: ({rule.source}, {rule.group}) from {route.iif} conflicts"
                           f" with the route from {first.iif} at {first.rule.where}; the"
                           " kernel holds one inbound interface per (S,G), keeping the first",
                           rule, INTERFACE)
            self._merge(key)
        else:
            at = self._templates.setdefault((route.family, route.iif), [])
            bisect.insort(at, route, key=lambda r: r.seq)
            self.changes.inbound.add((route.family, route.iif))

    def _withdraw(self, route: Route) -> None:
        """A route of a rule is gone."""
        if route.ssm:
            key = self._sg(route)
            routes = self._contrib[key]
            routes.remove(route)
            if not routes:
                del self._contrib[key]
            self._merge(key)
        else:
            self._templates[(route.family, route.iif)].remove(route)
            self.changes.inbound.add((route.family, route.iif))

    def _changed(self, route: Route) -> None:
        """A route's OIFs changed."""
        if route.ssm:
            self._merge(self._sg(route))
        else:
            self.changes.inbound.add((route.family, route.iif))

    @staticmethod
    def _sg(route: Route) -> MfcKey:
        assert route.sg is not None  # ssm
        return route.sg

    def _merge(self, key: MfcKey) -> None:
        """The kernel entry for key: the first route's inbound interface, the
        OIFs of every route of it from there (later TTLs win)."""
        self.changes.mfc.add(key)
        routes = self._contrib.get(key)
        if not routes:
            self.mfc.pop(key, None)
            return
        first = routes[0]
        family = key.family
        vifs = self.vifs
        if len(routes) == 1:  # (the usual case: one rule, OIF lists repeated line after line)
            sig = (family, first.iif, tuple(first.oifs.items()))
            merged = self._merged.get(sig)
            if merged is None:
                ordered = sorted((vifs[(family, name)].vif, ttl, name)
                                 for name, ttl in first.oifs.items())
                merged = self._merged[sig] = (vifs[(family, first.iif)].vif,
                                              tuple([(vif, ttl) for vif, ttl, _ in ordered]),
                                              tuple([name for _, _, name in ordered]))
            parent, ttls, names = merged
            self.mfc[key] = Mfc(key, parent, ttls, first.iif, names, first.rule.where)
            return
        oifs = {}  # vif -> (ttl, name)
        for route in routes:
            if route.iif == first.iif:
                for name, ttl in route.oifs.items():
                    oifs[vifs[(family, name)].vif] = ttl, name
        ordered = sorted(oifs.items())
        self.mfc[key] = Mfc(key, vifs[(family, first.iif)].vif,
                            tuple([(vif, ttl) for vif, (ttl, _) in ordered]), first.iif,
                            tuple([name for _, (_, name) in ordered]), first.rule.where)

    # -- edits ------------------------------------------------------------------

    def remove_rule(self, key: RuleKey) -> None:
        """Take a route rule out, as if none of its lines had been read."""
        self.pending = [p for p in self.pending
                        if not (isinstance(p.rule, Mroute) and rule_key(p.rule) == key)]
        rule = self.rules.pop(key, None)
        if rule is None:
            return
        self.template_rules.pop(key, None)
        for route in rule.routes.values():
            self._withdraw(route)
        for name in rule.held:
            self._unhold(name, ("mroute", key))

    def remove_oifs(self, key: RuleKey, patterns: Iterable[str]) -> None:
        """Take some OIF patterns out of a rule (as if its lines never named them)."""
        patterns = set(patterns)
        kept = []
        for p in self.pending:
            if isinstance(p.rule, Mroute) and rule_key(p.rule) == key:
                line = replace(p.rule, oifs=tuple(o for o in p.rule.oifs if o not in patterns))
                missing = p.missing if p.inbound else tuple(
                    m for m in p.missing if m not in patterns)
                if not missing:
                    continue
                p = Pending(line, missing, p.inbound)
            kept.append(p)
        self.pending = kept
        rule = self.rules.get(key)
        if rule is None:
            return
        rule.set_rule(replace(rule.rule, oifs=tuple(o for o in rule.rule.oifs
                                                    if o not in patterns)))
        for route in rule.routes.values():
            for name in [n for n, via in route.via.items() if via <= patterns]:
                del route.oifs[name]
            route.via = {n: via - patterns for n, via in route.via.items() if not via <= patterns}
            self._changed(route)
        for name, via in list(rule.held.items()):
            if via <= patterns:
                del rule.held[name]
                self._unhold(name, ("mroute", key))
            else:
                rule.held[name] = via - patterns

    def remove_join(self, key: GroupKey) -> None:
        """Take an mgroup rule out; memberships it shared with another stay."""
        self.pending = [p for p in self.pending
                        if not (isinstance(p.rule, Mgroup) and group_key(p.rule) == key)]
        join = self.joins.pop(key, None)
        if join is None:
            return
        for mkey in join.members:
            holders = self._member_by[mkey]
            holders.remove(key)
            self.changes.memberships.add(mkey)
            if holders:
                self.memberships[mkey] = self.joins[holders[0]].members[mkey]
            else:
                del self._member_by[mkey]
                del self.memberships[mkey]
        for name in join.names:
            self._unhold(name, ("mgroup", key))


def plan(config: Config, interfaces: Mapping[str, Interface], installed: VifTable | Iterable[Vif]
         = (), default_enable: bool = True, kernel_star_g: bool = False) -> Plan:
    """The fold of a whole configuration, keeping installed VIF slots stable."""
    return Plan(interfaces, installed, default_enable, kernel_star_g).fold(config.directives)


# -- kernel (*,G) entries ---------------------------------------------------------------

# A source-less rule whose group range holds at most this many groups is
# expanded into exact kernel (*,G) entries (an IPv4 /24, an IPv6 /120), and
# ranges give at most RANGE_ENTRIES in all (in configuration order; a range
# past that keeps the per-source path whole): within the helper's cap on
# configured entries, and a plan that stays cheap to recompute.
RANGE_GROUPS = 256
RANGE_ENTRIES = 4096


def star_entries(p: Plan) -> dict[MfcKey, Mfc]:
    """The kernel (*,G) entries of --kernel-star-g: for each source-less rule
    with an exact group, or a group range of at most RANGE_GROUPS groups
    (one entry per group), an entry (0, G) whose parent is its inbound VIF
    and whose TTLs mark the inbound and the outbound VIFs. The kernel uses
    it for traffic that arrives on a marked VIF when it has no (S,G) entry:
    from the parent it forwards to the others (never back to the parent),
    from another marked VIF it drops it (wrong_if, a WRONGVIF upcall at most
    every 3 s).

    So a rule becomes one only where that is what the upcall path would do:
    it is the first template on its inbound interface to cover any source of
    G, no template on an outbound interface covers G (their traffic would be
    dropped, not routed), its inbound interface is not among its outbound
    ones (an (S,G) entry forwards back out there, a (*,G) one does not), and
    no earlier rule took G (the kernel holds one entry per (S,G), so also one
    per (*,G)), nor a configured route with the zero source. The others keep
    the upcall path. Pure; O(entries x group prefix lengths in use)."""
    # per (family, inbound): group mask -> group net -> first rule seq
    cover: dict[tuple[int, str], dict[int, dict[int, int]]] = {}
    candidates: list[Route] = []
    for rule in p.template_rules.values():
        r = rule.rule
        small = r.source is None and 1 << (r.group.max_length - r.group.length) <= RANGE_GROUPS
        for route in rule.routes.values():
            gnet, gmask, _, _ = route.net
            nets = cover.setdefault((route.family, route.iif), {}).setdefault(gmask, {})
            nets[gnet] = min(nets.get(gnet, rule.seq), rule.seq)  # first: the lowest seq
            if small:
                candidates.append(route)

    def first(family: int, name: str, g: int) -> int | None:
        """The seq of the first template on name covering group g, if any."""
        best = None
        for gmask, nets in cover.get((family, name), {}).items():
            seq = nets.get(g & gmask)
            if seq is not None and (best is None or seq < best):
                best = seq
        return best

    out: dict[MfcKey, Mfc] = {}
    vifs = p.vifs
    from_ranges = 0
    for route in sorted(candidates, key=lambda r: r.seq):
        family, group = route.family, route.rule.group
        size = 1 << (group.max_length - group.length)
        if route.iif in route.oifs:
            continue
        if size > 1:  # a range counts whole, taken or not
            if from_ranges + size > RANGE_ENTRIES:
                continue
            from_ranges += size
        parent = vifs[(family, route.iif)].vif
        marks = sorted([(parent, 1, route.iif)] + [(vifs[(family, n)].vif, ttl, n)
                                                   for n, ttl in route.oifs.items()])
        ttls = tuple((v, t) for v, t, _ in marks)
        names = tuple(n for _, _, n in marks)
        gnet = route.net[0]
        for g in range(gnet, gnet + size):
            key = MfcKey(family, zero(family), g.to_bytes(group.max_length // 8, "big"))
            if (key in out or key in p._contrib
                    or first(family, route.iif, g) != route.seq
                    or any(first(family, name, g) is not None for name in route.oifs)):
                continue
            out[key] = Mfc(key, parent, ttls, route.iif, names, route.rule.where)
    return out
