"""Learned (*,G) routes and stop filters: upcall decisions, budgets, expiry.

No asyncio and no I/O: the controller feeds upcalls, counters and the
clock in, and sends the resulting MFC changes to the helper.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smcroute.ipc.helper import Template, Upcall
from smcroute.unprivileged import learn
from smcroute.unprivileged.budget import Throttle, TokenBucket
from smcroute.unprivileged.engine import Plan, Route
from smcroute.unprivileged.learn import Flow, Templates
from smcroute.unprivileged.model import Mfc, MfcKey, Mroute, Vif, addr

if TYPE_CHECKING:
    from smcroute.unprivileged.log import Logger


@dataclass(frozen=True)
class Decision:
    flow: Flow
    mfc: Mfc
    moved_from: str | None = None  # WRONGVIF: the inbound interface it had

    @property
    def rule(self) -> Mroute | None:
        """The template that matched; None for a stop filter."""
        return self.flow.rule


@dataclass
class Activity:
    created: float
    changed: float
    count: int | None = None  # valid packets (packets - wrong_if) at the last sample


FAST_CHUNK = 64  # new flows per template the helper may install ahead of our books


@dataclass
class FastBooks:
    """What the helper's fast path holds (policy/fastpath.py): templates of
    one generation and, per template, the flows it may install (cumulative
    limits) and has installed as far as we heard. limits - used is held in
    reserve: it counts against the budgets like an installed flow."""

    generation: int
    routes: list[Route]
    wire: tuple[Template, ...]
    used: list[int] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.used = [0] * len(self.routes)
        self.limits = [0] * len(self.routes)


@dataclass
class Limits:
    max_learned: int = 50_000
    max_per_rule: int = 20_000
    upcall_rate: int = 10_000
    budget_stop_lifetime: float = 60.0


def _text(key: MfcKey) -> tuple[str, str]:
    return addr(key.source), addr(key.group)


@dataclass
class FlowTable:
    log: Logger
    limits: Limits = field(default_factory=Limits)
    verbose: bool = False  # per-upcall info lines (formatting them costs)
    flows: dict[MfcKey, Flow] = field(default_factory=dict)
    activity: dict[MfcKey, Activity] = field(default_factory=dict)
    templates: Templates = field(default_factory=lambda: Templates([]))
    vifs_by_name: dict[tuple[int, str], Vif] = field(default_factory=dict)
    throttle: Throttle = field(default_factory=Throttle)
    _next: dict[MfcKey, Flow] = field(default_factory=dict)
    # Budget bookkeeping, kept incrementally (a flood must not cost O(flows)
    # per upcall), counting installed and in-flight decisions alike.
    learned: Counter[Mroute] = field(default_factory=Counter)  # learned routes per rule
    total: int = 0  # learned routes
    stops: int = 0  # stop filters
    inflight: dict[MfcKey, Decision] = field(default_factory=dict)
    # the helper's fast path (fast_reset)
    fast: FastBooks = field(init=False)
    reserved: Counter[Mroute] = field(init=False)  # reserves per rule
    reserved_total: int = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.limits.upcall_rate, self.limits.upcall_rate)
        self.fast_reset(0, [], ())

    def _count(self, rule: Mroute | None, step: int) -> None:
        if rule is None:
            self.stops += step
        else:
            self.learned[rule] += step
            self.total += step

    # -- plans (startup, reload) -------------------------------------------

    def replan(self, target: Plan) -> None:
        """Carry the flows into target (adds their MFC entries to it)."""
        self._next = learn.replan(target, self.flows, self.limits.max_learned,
                                  self.limits.max_per_rule)
        self._target = target

    def adopt(self, installed: Mapping[MfcKey, Mfc], now: float) -> None:
        """After the kernel took target: keep what it holds."""
        self.templates = Templates(self._target.templates)
        self.vifs_by_name = dict(self._target.vifs)
        self.flows = {k: f for k, f in self._next.items() if k in installed}
        self.activity = {k: self.activity.get(k) or Activity(now, now) for k in self.flows}
        self.learned = Counter(f.rule for f in self.flows.values() if f.rule is not None)
        self.total = sum(self.learned.values())
        self.stops = len(self.flows) - self.total
        for d in self.inflight.values():
            self._count(d.rule, 1)

    # -- upcalls -----------------------------------------------------------

    def decide(self, upcalls: Iterable[Upcall], now: float,
               vif_name: Callable[[int, int], str | None],
               installed: Mapping[MfcKey, Mfc]) -> list[Decision]:
        """What to install for a batch of upcalls (duplicates dropped). The
        decisions count against the budgets until installed() or abandoned()."""
        out: list[Decision] = []
        seen: set[MfcKey] = set()
        for u in upcalls:
            key = MfcKey(u.family, u.source, u.group)
            if key in seen:
                continue
            seen.add(key)
            iif = vif_name(u.family, u.vif)
            if iif is None:
                self._quiet("novif", f"No matching interface for VIF {u.vif}, cannot handle"
                                     f" {u.kind} upcalls", now)
                continue
            if u.kind == "wrongvif":
                moved = self._wrongvif(key, iif, installed)
                if moved:
                    self._count(moved.rule, 1)
                    self.inflight[key] = moved
                    out.append(moved)
                continue
            if u.kind != "nocache":
                s, g = _text(key)
                self._quiet("pim", f"Receiving PIM register data from {s}, group {g}", now)
                continue
            if key in installed:
                continue  # an upcall that was queued before we installed it
            if not self.bucket.take(now):
                self._quiet("rate", f"upcall budget of {self.limits.upcall_rate}/s exhausted:"
                                    " new flows ignored for now", now)
                continue
            route = self.templates.match(key.family, iif, key.source, key.group)
            budget = False
            if route is not None and (
                    self.total + self.reserved_total >= self.limits.max_learned
                    or self.learned[route.rule] + self.reserved[route.rule]
                    >= self.limits.max_per_rule):
                self._quiet("learned", f"learned route budget exhausted ({route.rule.where}):"
                                       " new flows get expiring stop filters", now)
                route, budget = None, True
            if route is None and self.stops >= self.limits.max_learned:
                self._quiet("stops", f"stop filter budget of {self.limits.max_learned}"
                                     " exhausted: new flows ignored for now", now)
                continue
            flow = learn.Flow(key, iif, stop=route is None, budget=budget,
                              rule=route.rule if route else None)
            if route is None and self.verbose and not budget:
                s, g = _text(key)
                self.log.info(f"Multicast from {s}, group {g}, on {iif} does not match"
                              " any (*,G) rule")
            d = Decision(flow, learn.entry(flow, route, self.vifs_by_name))
            self._count(d.rule, 1)
            self.inflight[key] = d
            out.append(d)
        return out

    # -- the helper's fast path --------------------------------------------

    def fast_reset(self, generation: int, routes: list[Route],
                   wire: tuple[Template, ...]) -> None:
        """The helper was sent these templates: no reserve until top_up()."""
        self.fast = FastBooks(generation, routes, wire)
        self.reserved = Counter()
        self.reserved_total = 0

    def top_up(self, now: float) -> tuple[int, ...] | None:
        """Raise the fast path's limits where a template's reserve runs low:
        paid for with upcall tokens (at most half of those there are), and
        only while the budgets have ample room (near a cap every flow is
        decided here, exactly). New cumulative limits, or None."""
        books, limits = self.fast, self.limits
        changed = False
        for i, route in enumerate(books.routes):
            reserve = books.limits[i] - books.used[i]
            if reserve > FAST_CHUNK // 2:
                continue
            rule_room = limits.max_per_rule - self.learned[route.rule] - self.reserved[route.rule]
            total_room = limits.max_learned - self.total - self.reserved_total
            if rule_room < 2 * FAST_CHUNK or total_room < FAST_CHUNK * (len(books.routes) + 1):
                continue
            grant = self.bucket.take_share(FAST_CHUNK - reserve, now)
            if grant <= 0:
                break
            books.limits[i] += grant
            self.reserved[route.rule] += grant
            self.reserved_total += grant
            changed = True
        return tuple(books.limits) if changed else None

    def fast_learned(self, u: Upcall, iif: str | None) -> Decision | None:
        """A flow the helper installed itself: book it (installed() next).
        None if it was installed for templates since replaced: the caller
        removes it, and the flow's next packet asks again."""
        books = self.fast
        if u.generation != books.generation or not 0 <= u.index < len(books.routes):
            return None
        route = books.routes[u.index]
        if iif != route.iif or books.used[u.index] >= books.limits[u.index]:
            return None
        books.used[u.index] += 1
        self.reserved[route.rule] -= 1
        self.reserved_total -= 1
        flow = Flow(MfcKey(u.family, u.source, u.group), iif, stop=False, rule=route.rule)
        self._count(route.rule, 1)
        return Decision(flow, learn.entry(flow, route, self.vifs_by_name))

    def _wrongvif(self, key: MfcKey, iif: str, installed: Mapping[MfcKey, Mfc]
                  ) -> Decision | None:
        """Traffic of a learned (S,G) arrives on another interface: move it
        there if a rule allows it. Configured (S,G) routes are not moved."""
        flow = self.flows.get(key)
        word = "WRONGVIF" if key.family == 4 else "WRONGMIF"
        if flow is None or flow.iif == iif:
            if self.verbose:
                s, g = _text(key)
                self.log.info(f"Multicast from {s}, group {g} on wrong VIF, iface {iif}"
                              f" ({word}), not a learned route: left alone")
            return None
        route = self.templates.match(key.family, iif, key.source, key.group)
        if route is None:
            if self.verbose:
                s, g = _text(key)
                self.log.info(f"Multicast from {s}, group {g} on wrong VIF, iface {iif}")
            return None
        new = learn.Flow(key, iif, stop=False, rule=route.rule)
        return Decision(new, learn.entry(new, route, self.vifs_by_name), moved_from=flow.iif)

    def installed(self, d: Decision, now: float) -> None:
        """The kernel took the decision's entry."""
        key = d.flow.key
        self.inflight.pop(key, None)
        old = self.flows.get(key)
        if old is not None:  # a WRONGVIF move replaces a flow: uncount the old one
            self._count(old.rule, -1)
        self.flows[key] = d.flow
        self.activity[key] = Activity(now, now)

    def abandoned(self, d: Decision) -> None:
        """The kernel refused the decision's entry."""
        if self.inflight.pop(d.flow.key, None) is not None:
            self._count(d.rule, -1)

    # -- expiry ------------------------------------------------------------

    def expired(self, counts: Mapping[MfcKey, int], now: float, max_idle: float) -> list[MfcKey]:
        """Flows to remove: idle (valid packet count unchanged) for max_idle
        seconds, or budget stop filters past their lifetime."""
        gone = []
        for key, flow in self.flows.items():
            act = self.activity.setdefault(key, Activity(now, now))
            count = counts.get(key)
            if count is not None and act.count is not None and count != act.count:
                act.changed = now
            if count is not None:
                act.count = count
            if flow.budget:
                if now - act.created >= self.limits.budget_stop_lifetime:
                    gone.append(key)
            elif max_idle > 0 and now - act.changed >= max_idle:
                gone.append(key)
        return gone

    def forget(self, keys: Iterable[MfcKey]) -> None:
        for key in keys:
            flow = self.flows.pop(key, None)
            if flow is not None:
                self._count(flow.rule, -1)
            self.activity.pop(key, None)

    def _quiet(self, what: str, text: str, now: float) -> None:
        if n := self.throttle.hit(what, now):
            self.log.warning(text + (f" ({n} times)" if n > 1 else ""))

