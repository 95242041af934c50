"""The route engine: from a Config and the interface table to kernel state.

Pure functions. plan() says what the kernel should hold (VIF/MIF slots, MFC
entries) and what waits for interfaces; diff() says which helper operations
take the installed state there, touching nothing that stays the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from smcroute.policy.limits import MAXVIFS
from smcroute.unprivileged.model import (
    Config,
    Diagnostic,
    Interface,
    Mfc,
    MfcKey,
    Mroute,
    Pending,
    Phyint,
    Vif,
)

FAMILIES = (4, 6)
VifTable = Mapping[tuple[int, str], Vif]  # (family, interface name) -> slot


def match(pattern: str, interfaces: Mapping[str, Interface]) -> list[str]:
    """Interface names matching pattern; "eth+" is a prefix wildcard."""
    if pattern.endswith("+"):
        prefix = pattern[:-1]
        return [name for name in interfaces if name.startswith(prefix)]
    name = pattern.split(":", 1)[0]  # alias eth0:1 uses eth0
    return [name] if name in interfaces else []


@dataclass
class Plan:
    vifs: dict[tuple[int, str], Vif] = field(default_factory=dict)
    mfc: dict[MfcKey, Mfc] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


@dataclass
class _Route:
    rule: Mroute
    iif: str
    oifs: dict[str, int]  # name -> ttl


def plan(config: Config, interfaces: Mapping[str, Interface], installed: VifTable,
         default_enable: bool = True) -> Plan:
    """Decide the kernel state for config, keeping installed VIF slots stable."""
    out = Plan()
    note = out.diagnostics.append
    thresholds: dict[str, int] = {}
    used: dict[str, None] = {}  # interfaces that get a VIF/MIF pair, in first-use order
    routes: list[_Route] = []

    def usable(name: str, role: str, rule: Mroute | Phyint) -> bool:
        if interfaces[name].multicast:
            return True
        note(Diagnostic(f"{role} {name} is not multicast capable", rule.where, error=False))
        return False

    for d in config.directives:
        if isinstance(d, Phyint):
            names = match(d.pattern, interfaces)
            if not names:
                note(Diagnostic(f"phyint {d.pattern} does not exist (yet?) on this system",
                                d.where, error=False))
            enable = default_enable if d.enable is None else d.enable
            for name in names:
                if d.threshold is not None:
                    thresholds[name] = d.threshold
                if not enable:
                    used.pop(name, None)
                    routes = _prune(routes, name)
                elif usable(name, "phyint", d):
                    used.setdefault(name)
            continue
        iifs = match(d.iif, interfaces)
        if not iifs:
            out.pending.append(Pending(d, (d.iif,)))
            continue
        iifs = [name for name in iifs if usable(name, "mroute: inbound", d)]
        used.update(dict.fromkeys(iifs))
        oifs: list[str] = []
        missing: list[str] = []
        for pattern in d.oifs:
            names = match(pattern, interfaces)
            if not names:
                missing.append(pattern)
            oifs += [n for n in names if n not in oifs and usable(n, "mroute: outbound", d)]
        used.update(dict.fromkeys(oifs))
        for iif in iifs:
            if iif in oifs and not (d.iif.endswith("+") or any(o.endswith("+") for o in d.oifs)):
                note(Diagnostic(f"mroute: outbound {iif} is also the inbound interface: not"
                                " forwarded back where it came from", d.where, error=False))
            routes.append(_Route(d, iif, {o: thresholds.get(o, 1) for o in oifs if o != iif}))
        if missing:
            out.pending.append(Pending(d, tuple(missing)))

    for name in _allocate(out, used, interfaces, installed, thresholds):
        routes = _prune(routes, name)
    for route in routes:
        _add_route(out, route)
    return out


def _prune(routes: list[_Route], name: str) -> list[_Route]:
    """Forget an interface: routes from it go, it leaves every OIF list."""
    kept = [r for r in routes if r.iif != name]
    for r in kept:
        r.oifs.pop(name, None)
    return kept


def _allocate(out: Plan, used: Iterable[str], interfaces: Mapping[str, Interface],
              installed: VifTable, thresholds: Mapping[str, int]) -> list[str]:
    """Give every used interface a VIF and a MIF; return those that got none.

    Interfaces that keep their ifindex keep their slots. New ones take the
    lowest slot that no installed VIF holds: a slot being freed by this same
    change is not reused until the next one, so adds never wait for deletes.
    """
    failed: list[str] = []
    for family in FAMILIES:
        held = {v.vif for v in installed.values() if v.family == family}
        taken: set[int] = set()
        new: list[str] = []
        for name in used:
            old = installed.get((family, name))
            if old is not None and old.ifindex == interfaces[name].index:
                out.vifs[(family, name)] = old
                taken.add(old.vif)
            else:
                new.append(name)
        for name in new:
            free = [s for s in range(MAXVIFS) if s not in taken and s not in held]
            if not free:
                if name not in failed:
                    failed.append(name)
                kind = "VIFs" if family == 4 else "MIFs"
                out.diagnostics.append(
                    Diagnostic(f"Not enough available {kind} to create {name}", error=False))
                continue
            slot = free[0]
            taken.add(slot)
            out.vifs[(family, name)] = Vif(family, slot, name, interfaces[name].index,
                                           thresholds.get(name, 1))
    for name in failed:  # a VIF without its MIF twin (or vice versa) is of no use
        for family in FAMILIES:
            out.vifs.pop((family, name), None)
    return failed


def _add_route(out: Plan, route: _Route) -> None:
    rule = route.rule
    family = rule.family
    assert rule.source is not None  # only (S,G) reach the kernel from the config
    key = MfcKey(family, rule.source.address.packed, rule.group.address.packed)
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
    """Helper operations, in the order they must run."""

    add_vifs: tuple[Vif, ...] = ()
    set_mfc: tuple[Mfc, ...] = ()
    del_mfc: tuple[Mfc, ...] = ()
    del_vifs: tuple[Vif, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add_vifs or self.set_mfc or self.del_mfc or self.del_vifs)


def diff(installed_vifs: VifTable, installed_mfc: Mapping[MfcKey, Mfc], target: Plan) -> Changes:
    """What to do so the kernel holds exactly target, and nothing else changes."""
    gone_vifs = [v for k, v in installed_vifs.items() if target.vifs.get(k) != v]
    new_vifs = [v for k, v in target.vifs.items() if installed_vifs.get(k) != v]
    set_mfc = [m for k, m in target.mfc.items()
               if k not in installed_mfc or installed_mfc[k].kernel != m.kernel]
    del_mfc = [m for k, m in installed_mfc.items() if k not in target.mfc]
    return Changes(tuple(new_vifs), tuple(set_mfc), tuple(del_mfc), tuple(gone_vifs))

