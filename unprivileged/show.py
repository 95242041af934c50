"""`smcroutectl show` output (SPEC 4), produced by the daemon; pure.

Lines follow SMCRoute's conventions: a line ending in "_" is a section
title, one ending in "=" a column heading; smcroutectl renders both (4.2).
JSON is one line without spaces (4.7).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from smcroute.policy.limits import MAXVIFS
from smcroute.unprivileged.engine import Route
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.groups import text as grouptext
from smcroute.unprivileged.model import (
    Interface,
    Mfc,
    MfcKey,
    Mgroup,
    Mroute,
    Pending,
    Prefix,
    Vif,
    addr,
    is_star,
)

Counters = Callable[[MfcKey], tuple[int, int]]  # (packets, bytes)


@dataclass(frozen=True)
class RouteView:
    """What `show routes` needs: rules as configured and the kernel entries."""

    templates: list[Route]
    ssm: list[Route]
    kernel: list[Mfc]
    vif_names: Mapping[tuple[int, int], str]  # (family, slot) -> interface name
    slots: Mapping[tuple[int, str], Vif] = field(default_factory=dict)  # the plan's VIFs

    def oifs(self, route: Route) -> list[str]:
        """A rule's OIFs in VIF order, as SMCRoute lists them (SPEC 4.5)."""
        slots, family = self.slots, route.family
        return sorted(route.oifs, key=lambda n: (v.vif if (v := slots.get((family, n)))
                                                  else MAXVIFS))


def _sg_text(source: str | None, group: str) -> str:
    return f"({source or '*'}, {group})"


def _rule_source(prefix: Prefix | None) -> str | None:
    return None if prefix is None else str(prefix)


def _oif_names(m: Mfc, names: Mapping[tuple[int, int], str]) -> list[str]:
    """The entry's outbound interfaces (a kernel (*,G) entry marks its
    inbound VIF too, but never forwards there)."""
    star = is_star(m.key)
    return [names.get((m.key.family, vif), "") for vif, _ in m.oifs
            if not (star and vif == m.iif)]


def _kernel_source(m: Mfc) -> str | None:
    return None if is_star(m.key) else addr(m.key.source)


def routes(view: RouteView, interfaces: Iterable[str], detail: bool,
           counters: Counters | None = None) -> list[str]:
    width = max([len(n) for n in interfaces] + [3])
    if detail:
        heading = f"{'ROUTE (S,G)':<42} {'IIF':<{width}} {'PACKETS':>10} {'BYTES':>10}  OIFS="
    else:
        heading = f"{'ROUTE (S,G)':<42} {'IIF':<{width}}  OIFS="

    def row(sg: str, iif: str, oifs: list[str], key: MfcKey | None) -> str:
        text = f"{sg:<42} {iif:<{width}} "
        if detail:
            packets, nbytes = counters(key) if counters and key else (0, 0)
            text += f"{packets:>10} {nbytes:>10} "
        return text + "".join(f" {name}" for name in oifs)

    out: list[str] = []
    if view.templates:
        out += ["(*,G) Template Rules_", heading]
        out += [row(_sg_text(_rule_source(r.rule.source), str(r.rule.group)), r.iif,
                    view.oifs(r), None) for r in view.templates]
    if view.ssm:
        out += ["(S,G) Rules_", heading]
        for r in view.ssm:
            assert r.rule.source is not None
            key = MfcKey(r.rule.family, r.rule.source.packed, r.rule.group.packed)
            out.append(row(_sg_text(str(r.rule.source), str(r.rule.group)), r.iif,
                           view.oifs(r), key))
    if view.kernel:
        out += ["Kernel MFC Table_", heading]
        rows = [(m, _oif_names(m, view.vif_names)) for m in view.kernel]
        ordered = [r for r in rows if r[1]] + [r for r in rows if not r[1]]
        out += [row(_sg_text(_kernel_source(m), addr(m.key.group)),
                    view.vif_names.get((m.key.family, m.iif), ""), oifs, m.key)
                for m, oifs in ordered]
    return out


def routes_json(view: RouteView) -> list[str]:
    def rule(r: Route) -> dict[str, object]:
        return {"source": _rule_source(r.rule.source), "group": str(r.rule.group),
                "iif": r.iif, "oifs": view.oifs(r)}

    kernel = [{"source": _kernel_source(m), "group": addr(m.key.group),
               "iif": view.vif_names.get((m.key.family, m.iif), ""),
               "oifs": _oif_names(m, view.vif_names)} for m in view.kernel]
    return [_json({"routes": {"asm": [rule(r) for r in view.templates],
                              "ssm": [rule(r) for r in view.ssm], "kernel": kernel}})]


def interfaces(table: Iterable[Interface], vifs: Iterable[Vif], as_json: bool) -> list[str]:
    table = list(table)
    slot = {(v.family, v.name): v.vif for v in vifs}
    if as_json:
        return [_json({"interfaces": [{"index": i.index, "name": i.name,
                                       "vif": slot.get((4, i.name)),
                                       "mif": slot.get((6, i.name))} for i in table]})]
    width = max([len(i.name) for i in table] + [6])

    def num(value: int | None) -> str:
        return "N/A" if value is None else str(value)

    return [f" INDEX {'PHYINT':<{width}}  VIF  MIF="] + [
        f"{i.index:>6} {i.name:<{width}} {num(slot.get((4, i.name))):>4}"
        f" {num(slot.get((6, i.name))):>4}" for i in table]


def pending(entries: Iterable[Pending], as_json: bool) -> list[str]:
    entries = list(entries)
    if as_json:
        return [_json({"pending": [
            {"kind": _kind(p), "iif": p.rule.iif, "source": _rule_source(p.rule.source),
             "group": str(p.rule.group), "oifs": list(_oifs(p))} for p in entries]})]
    if not entries:
        return ["No pending routes or groups"]
    out = ["PENDING ROUTES AND GROUPS"]
    for p in entries:
        r = p.rule
        line = f"{_kind(p):<7} from {r.iif}"
        if r.source is not None:
            line += f" source {r.source}"
        line += f" group {r.group}"
        if _oifs(p):
            line += " to " + " ".join(_oifs(p))
        out.append(line)
    return out


def _kind(p: Pending) -> str:
    return "mroute" if isinstance(p.rule, Mroute) else "mgroup"


def _oifs(p: Pending) -> tuple[str, ...]:
    return p.rule.oifs if isinstance(p.rule, Mroute) else ()


def groups(rules: Iterable[Mgroup], joined: Iterable[Membership], detail: bool,
           as_json: bool) -> list[str]:
    """Configured joins, and with detail (or in JSON) each kernel membership."""
    rules, joined = list(rules), list(joined)
    if as_json:
        def entry(rule: Mgroup, source: bytes | None = None,
                  group: bytes | None = None) -> dict[str, object]:
            text = grouptext(rule, source, group)[1:-1]  # "S, G" of "(S, G)"
            src, grp = text.split(", ")
            return {"source": None if src == "*" else src, "group": grp, "iif": rule.iif}

        return [_json({"groups": {
            "conf": [entry(r) for r in rules],
            "kernel": [entry(m.rule, m.source, m.group) for m in joined]}})]
    if not rules:
        return []
    out = ["Group Memberships Table_", f"{'GROUP (S,G)':<42} {'IIF':<16}="]
    out += [f"{grouptext(r):<42} {r.iif}" for r in rules]
    if detail:
        out.append("Kernel Group Membership Table_")
        out += [f"{grouptext(m.rule, m.source, m.group):<42} {m.rule.iif}" for m in joined]
    return out


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))
