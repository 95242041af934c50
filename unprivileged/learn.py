"""(*,G) templates: which rule a kernel upcall matches, and what to install.

Pure functions over value objects. A flow is an (S,G) the kernel asked
about on one inbound interface: a template (source-less or range rule)
that matches it, first in config order, gives it that rule's OIFs (a
learned route); otherwise it gets a stop filter, an entry without OIFs, so
the kernel stops asking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from smcroute.ipc.helper import Template
from smcroute.unprivileged.engine import Plan, Route
from smcroute.unprivileged.model import Mfc, MfcKey, Mroute, Prefix, Vif


@dataclass(frozen=True)
class Flow:
    key: MfcKey
    iif: str  # the interface it arrived on
    stop: bool  # True: a stop filter (no OIFs)
    budget: bool = False  # a stop filter because a budget was exhausted: it expires
    rule: Mroute | None = None  # the template that gave a learned route its OIFs


def _net(prefix: Prefix | None) -> tuple[int, int]:
    """(network, mask) as integers; (0, 0) matches everything."""
    if prefix is None:
        return 0, 0
    bits = prefix.max_length
    mask = ((1 << prefix.length) - 1) << (bits - prefix.length)
    return int(prefix.address) & mask, mask


class Templates:
    """Template routes in config order, compiled for a fast first match."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._compiled = [(r, r.rule.family, r.iif, *_net(r.rule.group), *_net(r.rule.source))
                          for r in routes]

    def match(self, family: int, iif: str, source: bytes, group: bytes) -> Route | None:
        """The first template for this inbound interface covering (S,G)."""
        s = int.from_bytes(source, "big")
        g = int.from_bytes(group, "big")
        for route, fam, rif, gnet, gmask, snet, smask in self._compiled:
            if fam == family and rif == iif and g & gmask == gnet and s & smask == snet:
                return route
        return None


def _wire_net(prefix: Prefix | None, family: int) -> tuple[bytes, int]:
    size = 4 if family == 4 else 16
    net, _ = _net(prefix)
    return net.to_bytes(size, "big"), prefix.length if prefix else 0


def fast_templates(routes: list[Route], vifs: Mapping[tuple[int, str], Vif],
                   most: int) -> tuple[list[Route], tuple[Template, ...]]:
    """The templates for the helper's fast path, in order: the first `most`
    (or up to the first whose interfaces have no VIF): a prefix of the list
    keeps first-match order, as the controller decides what it leaves out."""
    kept: list[Route] = []
    wire: list[Template] = []
    for route in routes[:most]:
        family = route.rule.family
        try:
            iif = vifs[(family, route.iif)].vif
            oifs = tuple(sorted((vifs[(family, n)].vif, ttl) for n, ttl in route.oifs.items()))
        except KeyError:
            break
        kept.append(route)
        wire.append(Template(family, iif, *_wire_net(route.rule.source, family),
                             *_wire_net(route.rule.group, family), oifs))
    return kept, tuple(wire)


def entry(flow: Flow, route: Route | None, vifs: Mapping[tuple[int, str], Vif]) -> Mfc:
    """The MFC entry for a flow: the rule's OIFs, or none for a stop filter."""
    family = flow.key.family
    oifs = {} if route is None else route.oifs
    return Mfc(flow.key, vifs[(family, flow.iif)].vif,
               tuple(sorted((vifs[(family, n)].vif, ttl) for n, ttl in oifs.items())),
               flow.iif, tuple(oifs), route.rule.where if route else None)


def decide(templates: Templates, vifs: Mapping[tuple[int, str], Vif], key: MfcKey,
           iif: str) -> tuple[Flow, Mfc, Route | None]:
    """A new flow from an upcall: learned route if a template matches, else stop filter."""
    route = templates.match(key.family, iif, key.source, key.group)
    flow = Flow(key, iif, stop=route is None, rule=route.rule if route else None)
    return flow, entry(flow, route, vifs), route


def replan(target: Plan, flows: Mapping[MfcKey, Flow], max_learned: int,
           max_per_rule: int) -> dict[MfcKey, Flow]:
    """Carry the known flows over to a new plan; add their entries to it.

    A configured (S,G) route wins over a flow with the same key. A learned
    route whose rule is gone goes (new traffic asks again); a stop filter
    that a new rule covers becomes a learned route, within the budgets
    (learned routes first, so they keep their place; what does not fit
    becomes an expiring budget stop filter); other stop filters stay.
    """
    templates = Templates(target.templates)
    kept: dict[MfcKey, Flow] = {}
    total = 0
    per_rule: Counter[Mroute] = Counter()
    # learned routes before stop filters: an upgrade must not push one out
    for key, flow in sorted(flows.items(), key=lambda kv: kv[1].stop):
        if key in target.mfc or (key.family, flow.iif) not in target.vifs:
            continue
        route = templates.match(key.family, flow.iif, key.source, key.group)
        if route is None and not flow.stop:
            continue
        budget = flow.budget and flow.stop
        if route is not None and (budget or total >= max_learned
                                  or per_rule[route.rule] >= max_per_rule):
            route, budget = None, True
        if route is not None:
            total += 1
            per_rule[route.rule] += 1
        new = Flow(key, flow.iif, stop=route is None, budget=budget,
                   rule=route.rule if route else None)
        kept[key] = new
        target.mfc[key] = entry(new, route, target.vifs)
    return kept
