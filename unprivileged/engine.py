"""The route engine: from a Config and the interface table to kernel state.

Pure functions. plan() says what the kernel should hold (VIF/MIF slots, MFC
entries) and what waits for interfaces; diff() says which helper operations
take the installed state there, touching nothing that stays the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from smcroute.policy.limits import MAXVIFS
from smcroute.unprivileged import groups
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.model import (
    Config,
    Diagnostic,
    Interface,
    Mfc,
    MfcKey,
    Mgroup,
    Mroute,
    Pending,
    Phyint,
    Vif,
)

FAMILIES = (4, 6)
VifTable = Mapping[object, Vif]  # installed VIFs; only the values matter


def match(pattern: str, interfaces: Mapping[str, Interface]) -> list[str]:
    """Interface names matching pattern; "eth+" is a prefix wildcard."""
    if pattern.endswith("+"):
        prefix = pattern[:-1]
        return [name for name in interfaces if name.startswith(prefix)]
    name = pattern.split(":", 1)[0]  # alias eth0:1 uses eth0
    return [name] if name in interfaces else []


@dataclass
class Route:
    """A config mroute line applied to one inbound interface."""

    rule: Mroute
    iif: str
    oifs: dict[str, int]  # name -> ttl


@dataclass
class Plan:
    vifs: dict[tuple[int, str], Vif] = field(default_factory=dict)
    mfc: dict[MfcKey, Mfc] = field(default_factory=dict)
    templates: list[Route] = field(default_factory=list)  # (*,G) and range rules
    ssm: list[Route] = field(default_factory=list)  # (S,G) rules, before merging into mfc
    groups: list[Mgroup] = field(default_factory=list)  # joins whose interface exists
    mrdisc: set[str] = field(default_factory=set)  # interfaces with mrdisc on
    memberships: dict[tuple[int, int, bytes | None, bytes], Membership] = field(
        default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.error]


def plan(config: Config, interfaces: Mapping[str, Interface], installed: VifTable,
         default_enable: bool = True) -> Plan:
    """Decide the kernel state for config, keeping installed VIF slots stable.

    Directives are processed in order, as SMCRoute does: a VIF/MIF pair is
    allocated when an interface is first used, and "phyint X disable" frees
    it and drops what earlier lines routed through X.
    """
    out = Plan()
    note = out.diagnostics.append
    thresholds: dict[str, int] = {}
    slots = _Slots(out, interfaces, installed.values())
    routes: list[Route] = []

    def usable(name: str, role: str, rule: Mroute | Phyint | Mgroup) -> bool:
        if not interfaces[name].multicast:
            note(Diagnostic(f"{role} {name} is not multicast capable", rule.where, error=False))
            return False
        return slots.ensure(name, thresholds.get(name, 1), rule)

    # Interfaces resolved per (inbound, outbound) pattern: large configs repeat
    # them line after line. A result is reused only while no phyint line has
    # changed slots or thresholds, and only if it said nothing (no warning).
    known: dict[tuple[str, tuple[str, ...]], tuple[list[str], list[str], list[str]]] = {}

    def resolve(d: Mroute) -> tuple[list[str], list[str], list[str]] | None:
        said = len(out.diagnostics)
        iifs = match(d.iif, interfaces)
        if not _multicast(iifs, interfaces):  # SPEC 8.2: wait for the MULTICAST flag too
            out.pending.append(Pending(d, (d.iif,), inbound=True))
            return None
        iifs = [name for name in iifs if usable(name, "mroute: inbound", d)]
        oifs: list[str] = []
        missing: list[str] = []
        for pattern in d.oifs:
            names = match(pattern, interfaces)
            if not _multicast(names, interfaces):
                missing.append(pattern)
            oifs += [n for n in names if n not in oifs and usable(n, "mroute: outbound", d)]
        if len(out.diagnostics) == said:
            known[(d.iif, d.oifs)] = (iifs, oifs, missing)
        return iifs, oifs, missing

    for d in config.directives:
        if isinstance(d, Mgroup):
            _mgroup(out, d, interfaces, usable)
            continue
        if isinstance(d, Phyint):
            known.clear()
            names = match(d.pattern, interfaces)
            if not names:
                note(Diagnostic(f"phyint {d.pattern} does not exist (yet?) on this system",
                                d.where, error=False))
            enable = default_enable if d.enable is None else d.enable
            for name in names:
                if d.threshold is not None:
                    thresholds[name] = d.threshold
                if enable and usable(name, "phyint", d):
                    if d.mrdisc:
                        out.mrdisc.add(name)
                    else:
                        out.mrdisc.discard(name)
                elif not enable:
                    out.mrdisc.discard(name)
                    slots.release(name)
                    routes = _prune(routes, name)
            continue
        resolved = resolve(d) if (d.iif, d.oifs) not in known else known[(d.iif, d.oifs)]
        if resolved is None:
            continue
        iifs, oifs, missing = resolved
        for iif in iifs:
            if iif in oifs and not (d.iif.endswith("+") or any(o.endswith("+") for o in d.oifs)):
                note(Diagnostic(f"mroute: outbound {iif} is also the inbound interface: not"
                                " forwarded back where it came from", d.where, error=False))
            routes.append(Route(d, iif, {o: thresholds.get(o, 1) for o in oifs if o != iif}))
        if missing:
            out.pending.append(Pending(d, tuple(missing)))

    for route in routes:
        if route.rule.is_ssm:
            out.ssm.append(route)
            _add_route(out, route)
        else:
            out.templates.append(route)
    return out


def _multicast(names: list[str], interfaces: Mapping[str, Interface]) -> bool:
    """Does any of these interfaces exist with the MULTICAST flag?"""
    return any(interfaces[n].multicast for n in names)


def _mgroup(out: Plan, d: Mgroup, interfaces: Mapping[str, Interface],
            usable: Callable[[str, str, Mgroup], bool]) -> None:
    """A join: every membership it stands for, on every matching interface."""
    if error := groups.too_large(d):
        out.diagnostics.append(Diagnostic(error, d.where))
        return
    names = match(d.iif, interfaces)
    if not _multicast(names, interfaces):
        out.pending.append(Pending(d, (d.iif,), inbound=True))
        return
    if any(groups.same(d, g) for g in out.groups):
        out.diagnostics.append(Diagnostic(
            f"Already joined {groups.text(d)} on {d.iif}, line ignored", d.where, error=False))
        return
    out.groups.append(d)
    for name in names:
        if usable(name, "mgroup: interface", d):
            for m in groups.expand(d, name, interfaces[name].index):
                out.memberships.setdefault(m.key, m)


def _prune(routes: list[Route], name: str) -> list[Route]:
    """Forget an interface: routes from it go, it leaves every OIF list."""
    kept = [r for r in routes if r.iif != name]
    for r in kept:
        r.oifs.pop(name, None)
    return kept


class _Slots:
    """VIF and MIF slots, allocated in first-use order (SPEC 5.2, 14.2).

    An interface that keeps its ifindex keeps its installed slots, also when
    renamed. A new one takes the lowest slot that no installed VIF holds: a
    slot being freed by this same change is not reused until the next one,
    so adds never wait for deletes.
    """

    def __init__(self, out: Plan, interfaces: Mapping[str, Interface],
                 installed: Iterable[Vif]) -> None:
        self.out = out
        self.interfaces = interfaces
        installed = list(installed)
        self.by_name = {(v.family, v.name): v for v in installed}
        self.by_index = {(v.family, v.ifindex): v for v in installed}
        self.held = {(v.family, v.vif) for v in installed}
        self.taken: set[tuple[int, int]] = set()

    def ensure(self, name: str, threshold: int, rule: Mroute | Phyint | Mgroup) -> bool:
        """Give name a VIF and a MIF (both or neither); False if the table is full."""
        if (4, name) in self.out.vifs:
            return True
        index = self.interfaces[name].index
        pair: list[Vif] = []
        full = False
        for family in FAMILIES:
            old = self.by_name.get((family, name))
            if old is None or old.ifindex != index:
                old = self.by_index.get((family, index))
            if old is not None and (family, old.vif) not in self.taken:
                pair.append(replace(old, name=name))
                continue
            free = [s for s in range(MAXVIFS)
                    if (family, s) not in self.taken and (family, s) not in self.held]
            if not free:
                kind = "VIFs" if family == 4 else "MIFs"
                self.out.diagnostics.append(Diagnostic(
                    f"Not enough available {kind} to create {name}", rule.where, error=False))
                full = True
                continue
            pair.append(Vif(family, free[0], name, index, threshold))
        if full:
            return False
        for vif in pair:
            self.out.vifs[(vif.family, name)] = vif
            self.taken.add((vif.family, vif.vif))
        return True

    def release(self, name: str) -> None:
        for family in FAMILIES:
            vif = self.out.vifs.pop((family, name), None)
            if vif is not None:
                self.taken.discard((family, vif.vif))


def _add_route(out: Plan, route: Route) -> None:
    rule = route.rule
    family = rule.family
    assert rule.source is not None  # only (S,G) reach the kernel from the config
    key = MfcKey(family, rule.source.packed, rule.group.packed)
    iif = out.vifs[(family, route.iif)].vif
    oifs = {out.vifs[(family, n)].vif: ttl for n, ttl in route.oifs.items()}
    names = dict(route.oifs)
    old = out.mfc.get(key)
    if old is not None:
        if old.iif != iif:
            out.diagnostics.append(Diagnostic(
                f"mroute: ({rule.source}, {rule.group}) from {route.iif} conflicts with the"
                f" route from {old.iif_name} at {old.where}; the kernel holds one inbound"
                " interface per (S,G), keeping the first", rule.where, error=False))
            return
        oifs = {**dict(old.oifs), **oifs}
        names = {**dict.fromkeys(old.oif_names), **names}
    out.mfc[key] = Mfc(key, iif, tuple(sorted(oifs.items())), route.iif,
                       tuple(n for n in names), old.where if old else rule.where)


@dataclass(frozen=True)
class Changes:
    """Helper operations, in the order they must run.

    MFC deletes come before adds so a reload near the MFC cap does not
    overshoot it; VIFs are added first and deleted last.
    """

    add_vifs: tuple[Vif, ...] = ()
    del_mfc: tuple[Mfc, ...] = ()
    set_mfc: tuple[Mfc, ...] = ()
    del_vifs: tuple[Vif, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add_vifs or self.set_mfc or self.del_mfc or self.del_vifs)


def _identity(v: Vif) -> tuple[int, int, int]:
    """What the kernel knows of a VIF; the name is ours."""
    return v.family, v.vif, v.ifindex


def diff(installed_vifs: VifTable, installed_mfc: Mapping[MfcKey, Mfc], target: Plan) -> Changes:
    """What to do so the kernel holds exactly target, and nothing else changes."""
    have = {_identity(v): v for v in installed_vifs.values()}
    want = {_identity(v): v for v in target.vifs.values()}
    set_mfc = [m for k, m in target.mfc.items()
               if k not in installed_mfc or installed_mfc[k].kernel != m.kernel]
    del_mfc = [m for k, m in installed_mfc.items() if k not in target.mfc]
    return Changes(add_vifs=tuple(v for k, v in want.items() if k not in have),
                   del_mfc=tuple(del_mfc), set_mfc=tuple(set_mfc),
                   del_vifs=tuple(v for k, v in have.items() if k not in want))
