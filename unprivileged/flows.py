"""Learned (*,G) routes and stop filters: upcall decisions, budgets, expiry,
and the books of the helper's fast path. Part of the daemon core: no I/O,
the clock is passed in.

A flow is an (S,G) the kernel asked about on one inbound interface: the
first template (source-less or range rule, config order) that covers it
gives it that rule's OIFs (a learned route); otherwise it gets a stop
filter, an entry without OIFs, so the kernel stops asking. A flow is in
the table from the moment it is decided (its add_mfc may still be in
flight: the core's ledger knows); failed() takes a refused one back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from smcroute.ipc.helper import Template, Upcall
from smcroute.unprivileged.budget import Throttle, TokenBucket
from smcroute.unprivileged.engine import Plan, Route, RuleKey
from smcroute.unprivileged.model import Mfc, MfcKey, Prefix, Vif, Where, addr, is_star, zero
from smcroute.unprivileged.options import OVERLOAD_STOPS

FAST_CHUNK = 64  # new flows per template the helper may install ahead of our books
COMPACT_AT = 4096  # flows at a peak from which memory is worth handing back
# How long an overload stop (see _overload) lasts: the kernel's own hold on
# an unanswered flow is 10 s.
OVERLOAD_LIFETIME = 10.0


_SHAPES: dict[tuple[object, ...], tuple[int, tuple[tuple[int, int], ...], tuple[str, ...]]] = {}


def _shape(family: int, iif: str, oifs: Iterable[tuple[str, int]],
           vifs: Mapping[tuple[int, str], Vif]
           ) -> tuple[int, tuple[tuple[int, int], ...], tuple[str, ...]]:
    """(parent VIF, (VIF, ttl) pairs, OIF names), in VIF order; the flows of
    one rule share these tuples (a flood makes many)."""
    parent = vifs[(family, iif)].vif
    pairs = tuple(sorted((vifs[(family, name)].vif, ttl, name) for name, ttl in oifs))
    shape = _SHAPES.get((parent, pairs))
    if shape is None:
        if len(_SHAPES) >= 4096:  # (bounded: rules and slots change)
            _SHAPES.clear()
        shape = _SHAPES[(parent, pairs)] = (parent, tuple((v, t) for v, t, _ in pairs),
                                            tuple(n for _, _, n in pairs))
    return shape


BUDGET = object()  # Flow._origin of a budget stop filter


class Flow(Mfc):
    """A flow: the MFC entry the kernel holds for it (it is one: the ledger
    holds the flow itself), what it was decided from, and its activity.
    One object per flow, not three (issue 17): a flood makes many.

    Two flows are equal when the same decision was made for the same
    (S,G) (entry, inbound interface, rule, budget); the activity (since,
    count) is not compared, and it is the one mutable part."""

    __slots__ = ("_origin", "count", "since")
    # The template that gave a learned route its OIFs, None for a stop
    # filter, BUDGET for a stop filter made because a budget was exhausted
    # (it expires): rule and budget in one slot (issue 17).
    _origin: RuleKey | object | None
    # None: not yet seen by expiry. Then, for a budget stop filter, when it
    # was first seen (its lifetime counts from there; its counters are never
    # read); for any other flow, when its valid packet count last moved. One
    # slot for both: a flood makes many flows (issue 17).
    since: float | None
    count: int | None  # valid packets at the last sample

    def __init__(self, key: MfcKey, iif: str, oifs: Iterable[tuple[str, int]],
                 where: Where | None, vifs: Mapping[tuple[int, str], Vif],
                 rule: RuleKey | None = None, budget: bool = False) -> None:
        parent, pairs, names = _shape(key.family, iif, oifs, vifs)
        super().__init__(key, parent, pairs, iif, names, where)
        if budget and rule is not None:
            raise ValueError("a budget stop filter has no rule")
        object.__setattr__(self, "_origin", BUDGET if budget else rule)
        self.since, self.count = None, None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return (self.key, self.iif, self.oifs, self.iif_name, self.rule, self.budget) == \
            (other.key, other.iif, other.oifs, other.iif_name, other.rule, other.budget)

    __hash__ = Mfc.__hash__

    def __setattr__(self, name: str, value: object) -> None:
        # The entry (Mfc's fields) and the decision stay frozen; the activity
        # slots are set here (Mfc's own frozen __setattr__ cannot serve a
        # subclass of a slots dataclass).
        if name not in ("since", "count"):
            raise AttributeError(f"a flow's {name} cannot change")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (f"Flow({self.key!r}, {self.iif_name}, {self.oif_names}, rule={self.rule},"
                f" budget={self.budget})")

    @property
    def rule(self) -> RuleKey | None:
        """The template that gave a learned route its OIFs (None: a stop filter)."""
        return None if self._origin is BUDGET else self._origin  # type: ignore[return-value]

    @property
    def budget(self) -> bool:
        """A stop filter because a budget was exhausted: it expires."""
        return self._origin is BUDGET

    @property
    def entry(self) -> Mfc:
        """What the kernel holds for it: the flow itself."""
        return self

    @property
    def stop(self) -> bool:
        return self._origin is None or self._origin is BUDGET

    @property
    def overload(self) -> bool:
        """A group's stop entry made because the daemon was over a budget."""
        return self.budget and not any(self.key.source)


@dataclass(frozen=True)
class FastTemplate:
    """A template as the helper's fast path got it: the flows it installs
    are booked with this, whatever the rules are by the time we hear."""

    rule: RuleKey
    iif: str
    oifs: tuple[tuple[str, int], ...]
    where: Where


def _wire_net(prefix: Prefix | None, family: int) -> tuple[bytes, int]:
    size = 4 if family == 4 else 16
    if prefix is None:
        return bytes(size), 0
    bits = prefix.max_length
    mask = ((1 << prefix.length) - 1) << (bits - prefix.length)
    return (int(prefix.address) & mask).to_bytes(size, "big"), prefix.length


def fast_templates(plan: Plan, most: int) -> tuple[tuple[FastTemplate, ...],
                                                   tuple[Template, ...]]:
    """The templates for the helper's fast path, in order: the first `most`
    (or up to the first whose interfaces have no VIF): a prefix of the list
    keeps first-match order, as the controller decides what it leaves out."""
    kept: list[FastTemplate] = []
    wire: list[Template] = []
    vifs = plan.vifs
    for rule in plan.template_rules.values():
        for route in rule.routes.values():
            if len(kept) >= most:
                return tuple(kept), tuple(wire)
            family = route.family
            try:
                iif = vifs[(family, route.iif)].vif
                oifs = tuple(sorted((vifs[(family, n)].vif, ttl) for n, ttl in route.oifs.items()))
            except KeyError:
                return tuple(kept), tuple(wire)
            kept.append(FastTemplate(route.key, route.iif, tuple(route.oifs.items()),
                                     rule.rule.where))
            wire.append(Template(family, iif, *_wire_net(route.rule.source, family),
                                 *_wire_net(route.rule.group, family), oifs))
    return tuple(kept), tuple(wire)


@dataclass
class FastBooks:
    """What the helper's fast path holds (policy/ops.py, privileged/server.py): templates of
    one generation and, per template, the flows it may install (cumulative
    limits) and has installed as far as we heard. limits - used is held in
    reserve: it counts against the budgets like an installed flow."""

    generation: int
    routes: tuple[FastTemplate, ...]
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
    overload_lifetime: float = OVERLOAD_LIFETIME


@dataclass(frozen=True)
class Decision:
    """A flow decided from an upcall; prior is what it replaces (WRONGVIF)."""

    flow: Flow
    prior: Flow | None = None


@dataclass
class Said:
    """What the flow table has to say: (level, text) lines, throttled."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, level: str, text: str) -> None:
        self.lines.append((level, text))


class FlowTable:
    def __init__(self, limits: Limits | None = None, verbose: bool = False,
                 group_stops: bool = False) -> None:
        self.limits = limits or Limits()
        self.verbose = verbose  # per-upcall info lines (formatting them costs)
        self.group_stops = group_stops  # --kernel-star-g: see _group_stop()
        self.flows: dict[MfcKey, Flow] = {}
        self.throttle = Throttle()
        self.bucket = TokenBucket(self.limits.upcall_rate, self.limits.upcall_rate)
        self.said = Said()
        # Budget bookkeeping, kept incrementally (a flood must not cost
        # O(flows) per upcall).
        self.learned: Counter[RuleKey] = Counter()  # learned routes per rule
        self.total = 0  # learned routes
        self.stops = 0  # stop filters
        self.overloads = 0  # overload stops, of those (see _overload)
        # Reserve of replaced fast-path generations, by generation: the helper
        # may still spend it until it has answered their replacement (its
        # reply comes after every flow it installed before). Counted in the
        # budgets until then, so the kernel never holds more than they allow.
        self.retiring: dict[int, int] = {}
        self.reclaim = False  # reserve blocks a flow the budgets have room for
        self.reserved_total = 0
        self.peak = 0  # most flows since the last compact()
        self.high = 0  # most flows since the table was last empty
        self.fast_reset(0, (), ())

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self) -> Iterator[MfcKey]:
        return iter(self.flows)

    def get(self, key: MfcKey) -> Flow | None:
        return self.flows.get(key)

    # -- the table --------------------------------------------------------------

    def _put(self, flow: Flow, now: float | None = None) -> None:
        """Add or replace a flow: new activity from now, else the replaced
        flow's (if any) carries over."""
        old = self.flows.get(flow.key)
        if old is not None:
            self._take(old)
            if now is None and old is not flow:
                _carry(old, flow)
        self.flows[flow.key] = flow
        if len(self.flows) > self.peak:
            self.peak = len(self.flows)
            self.high = max(self.high, self.peak)
        if flow.rule is None:
            self.stops += 1
            self.overloads += flow.overload
        else:
            self.learned[flow.rule] += 1
            self.total += 1
        if now is not None:
            flow.since, flow.count = now, None

    def _take(self, flow: Flow) -> None:
        """Uncount a flow (the caller removes or replaces it)."""
        if flow.rule is None:
            self.stops -= 1
            self.overloads -= flow.overload
        else:
            self.learned[flow.rule] -= 1
            if not self.learned[flow.rule]:
                del self.learned[flow.rule]
            self.total -= 1

    def remove(self, keys: Iterable[MfcKey]) -> list[Flow]:
        """Forget these flows (expired, flushed, or their VIF is gone)."""
        gone = []
        for key in keys:
            flow = self.flows.pop(key, None)
            if flow is not None:
                self._take(flow)
                gone.append(flow)
        return gone

    def shrunk(self) -> bool:
        """Are there far fewer flows than at the peak (worth compacting)? Or
        are the last of a flood's flows gone (what a compaction on the way
        down left behind is worth handing back too)?"""
        if not self.flows:
            return self.high >= COMPACT_AT
        return self.peak >= COMPACT_AT and len(self.flows) <= self.peak // 4

    def compact(self) -> None:
        """Rebuild the tables: a dict keeps the size of its peak, however
        many entries left it."""
        self.flows = dict(self.flows)
        self.peak = len(self.flows)
        if not self.flows:
            self.high = 0

    def failed(self, d: Decision) -> bool:
        """The kernel refused a decision's entry: back to what was there.
        False if the flow has been replaced or removed since."""
        if self.flows.get(d.flow.key) != d.flow:  # (a rematch may have made an equal one)
            return False
        if d.prior is None:
            self.remove([d.flow.key])
        else:
            self._put(d.prior)
        return True

    # -- upcalls ----------------------------------------------------------------

    @property
    def held(self) -> int:
        """Learned routes plus every reserve the helper holds or may still spend."""
        return self.total + self.reserved_total + sum(self.retiring.values())

    def _room(self, rule: RuleKey) -> bool:
        """May one more learned route of rule be added (reserves count)? If
        only the fast path's reserve stands in the way, ask for it back."""
        limits = self.limits
        if (self.held < limits.max_learned
                and self.learned[rule] + self.reserved[rule] < limits.max_per_rule):
            return True
        if self.reserved_total and self.total + sum(self.retiring.values()) < \
                limits.max_learned and self.learned[rule] < limits.max_per_rule:
            self.reclaim = True
        return False

    def decide(self, upcalls: Iterable[Upcall], now: float, plan: Plan,
               vif_name: Mapping[tuple[int, int], str],
               installed: Mapping[MfcKey, Mfc]) -> list[Decision]:
        """What to install for a batch of upcalls (duplicates dropped). The
        decided flows are in the table at once (counted against the budgets)."""
        out: list[Decision] = []
        seen: set[MfcKey] = set()
        for u in upcalls:
            key = MfcKey(u.family, u.source, u.group)
            if key in seen:
                continue
            seen.add(key)
            iif = vif_name.get((u.family, u.vif))
            if iif is None:
                self.quiet("novif", f"No matching interface for VIF {u.vif}, cannot handle"
                                     f" {u.kind} upcalls", now)
                continue
            if u.kind == "wrongvif":
                if (d := self._wrongvif(key, iif, plan)) is not None:
                    self._put(d.flow, now)
                    out.append(d)
                continue
            if u.kind != "nocache":
                self.quiet("pim", f"Receiving PIM register data from {addr(key.source)},"
                                   f" group {addr(key.group)}", now)
                continue
            if key in installed or key in plan.mfc:
                continue  # queued before we installed it, or the config's (S,G)
            if self.group_stops and (d := self._group_stop(key, iif, plan, installed, now)):
                if d is not True:
                    self._put(d.flow, now)
                    out.append(d)
                continue
            if not self.bucket.take(now):
                self.quiet("rate", f"upcall budget of {self.limits.upcall_rate}/s exhausted:"
                                    " new flows of the group stopped for now", now)
                if d := self._overload(key, iif, plan, installed):
                    self._put(d.flow, now)
                    out.append(d)
                continue
            route = plan.match(key.family, iif, key.source, key.group)
            budget = False
            if route is not None and not self._room(route.key):
                self.quiet("learned", f"learned route budget exhausted ({route.rule.where}):"
                                       " new flows get expiring stop filters", now)
                route, budget = None, True
            if route is None and self.stops >= self.limits.max_learned:
                self.quiet("stops", f"stop filter budget of {self.limits.max_learned}"
                                     " exhausted: new flows of the group stopped for now", now)
                if d := self._overload(key, iif, plan, installed):
                    self._put(d.flow, now)
                    out.append(d)
                continue
            if route is None and self.verbose and not budget:
                self.said("info", f"Multicast from {addr(key.source)}, group {addr(key.group)},"
                                  f" on {iif} does not match any (*,G) rule")
            flow = self._flow(key, iif, route, budget, plan.vifs)
            self._put(flow, now)
            out.append(Decision(flow))
        return out

    def _group_stop(self, key: MfcKey, iif: str, plan: Plan, installed: Mapping[MfcKey, Mfc],
                    now: float) -> Decision | bool:
        """--kernel-star-g: traffic for a group that no template on iif covers
        gets one stop entry for the whole group, a kernel (*,G) entry whose
        only VIF is iif (the kernel uses it for every source arriving there
        and forwards nothing), instead of a stop filter per source. True: the
        upcall needs nothing (that entry is there or on its way); False: the
        usual path (a rule covers the group, or (*,G) is taken: configured,
        or a stop entry for another interface)."""
        gkey = MfcKey(key.family, zero(key.family), key.group)
        have = self.flows.get(gkey)
        if have is not None:
            return have.iif_name == iif
        if gkey in plan.mfc or gkey in installed or plan.covers_group(key.family, iif,
                                                                      key.group):
            return False
        if self.stops >= self.limits.max_learned:
            self.quiet("stops", f"stop filter budget of {self.limits.max_learned}"
                                 " exhausted: new flows ignored for now", now)
            return True
        if self.verbose:
            self.said("info", f"Multicast from {addr(key.source)}, group {addr(key.group)},"
                              f" on {iif} does not match any (*,G) rule: a stop entry for"
                              " the group")
        return Decision(_group_stop_entry(gkey, iif, plan.vifs))

    def _overload(self, key: MfcKey, iif: str, plan: Plan,
                  installed: Mapping[MfcKey, Mfc]) -> Decision | None:
        """Over the upcall rate or the stop-filter budget, a new flow is not
        worth its own entry, but ignoring it would leave the kernel holding
        it (an unresolved entry, up to 10 s, for every new source): one
        stop entry for its whole group on iif answers it and every source
        after it (a kernel (*,G) entry whose only VIF is iif: nothing
        forwarded, no upcall; (S,G) routes already there still win). It
        expires after overload_lifetime; then the group's new flows are
        decided one by one again. None: there is one already (or a (*,G)
        entry of another kind), or too many."""
        gkey = MfcKey(key.family, zero(key.family), key.group)
        if gkey in self.flows or gkey in plan.mfc or gkey in installed or \
                self.overloads >= OVERLOAD_STOPS:
            return None
        return Decision(_group_stop_entry(gkey, iif, plan.vifs, budget=True))

    @staticmethod
    def _flow(key: MfcKey, iif: str, route: Route | None, budget: bool,
              vifs: Mapping[tuple[int, str], Vif]) -> Flow:
        if route is None:
            return Flow(key, iif, (), None, vifs, None, budget)
        return Flow(key, iif, route.oifs.items(), route.rule.where, vifs,
                    route.key)

    def _wrongvif(self, key: MfcKey, iif: str, plan: Plan) -> Decision | None:
        """Traffic of a learned (S,G) arrives on another interface: move it
        there if a rule allows it. Configured (S,G) routes are not moved."""
        flow = self.flows.get(key)
        word = "WRONGVIF" if key.family == 4 else "WRONGMIF"
        s, g = addr(key.source), addr(key.group)
        if flow is None or flow.iif_name == iif:
            if self.verbose:
                self.said("info", f"Multicast from {s}, group {g} on wrong VIF, iface {iif}"
                                  f" ({word}), not a learned route: left alone")
            return None
        route = plan.match(key.family, iif, key.source, key.group)
        if route is None:
            if self.verbose:
                self.said("info", f"Multicast from {s}, group {g} on wrong VIF, iface {iif}")
            return None
        return Decision(self._flow(key, iif, route, False, plan.vifs), prior=flow)

    def quiet(self, what: str, text: str, now: float) -> None:
        """A warning at most once per throttle period, with the count since."""
        if n := self.throttle.hit(what, now):
            self.said("warning", text + (f" ({n} times)" if n > 1 else ""))

    # -- rules and interfaces change ----------------------------------------------

    def rematch(self, plan: Plan, keys: Iterable[MfcKey] | None = None) -> set[MfcKey]:
        """Carry flows (all, or these) over to the plan as it is now; returns
        the keys whose entry changed or went. A configured (S,G) route wins
        over a flow with the same key; a flow whose VIF is gone goes; a
        learned route whose rule is gone goes (new traffic asks again); a
        stop filter that a rule covers becomes a learned route within the
        budgets (learned routes first, so they keep their place; what does
        not fit becomes an expiring budget stop filter); other stop filters
        stay."""
        chosen = list(self.flows.values() if keys is None
                      else (self.flows[k] for k in keys if k in self.flows))
        for flow in chosen:
            self._take(flow)
            del self.flows[flow.key]
        changed: set[MfcKey] = set()
        for flow in sorted(chosen, key=lambda f: f.stop):  # learned routes first
            key = flow.key
            new = None
            iif = flow.iif_name
            if is_star(key):  # a group's stop entry stays while no rule covers the
                # group (an overload stop: until it expires)
                if key not in plan.mfc and (key.family, iif) in plan.vifs and (
                        flow.overload or not plan.covers_group(key.family, iif, key.group)):
                    new = _group_stop_entry(key, iif, plan.vifs, flow.budget)
            elif key not in plan.mfc and (key.family, iif) in plan.vifs:
                route = plan.match(key.family, iif, key.source, key.group)
                if route is not None or flow.stop:
                    budget = flow.budget and flow.stop
                    if route is not None and (budget or not self._room(route.key)):
                        route, budget = None, True
                    new = self._flow(key, iif, route, budget, plan.vifs)
            if new is None:
                changed.add(key)
                continue
            _carry(flow, new)
            self._put(new)
            if new != flow:
                changed.add(key)
        return changed

    def at(self, inbound: Iterable[tuple[int, str]]) -> set[MfcKey]:
        """The flows arriving on these (family, interface)s: a scan (an index
        by interface cost more memory per flow than the flow itself; edits
        that change a rule's inbound interface are rare next to upcalls)."""
        want = set(inbound)
        if not want or not self.flows:
            return set()
        return {k for k, f in self.flows.items() if (k.family, f.iif_name) in want}

    # -- the helper's fast path ---------------------------------------------------

    def fast_reset(self, generation: int, routes: tuple[FastTemplate, ...],
                   wire: tuple[Template, ...]) -> None:
        """The helper is sent these templates: no reserve until top_up().
        The old generation's reserve retires when the helper answers."""
        if self.reserved_total:
            self.retiring[generation] = self.reserved_total
        self.reclaim = False
        self.fast = FastBooks(generation, routes, wire)
        self.reserved: Counter[RuleKey] = Counter()
        self.reserved_total = 0

    def fast_settled(self, generation: int) -> None:
        """The helper has the templates of generation: what it installed
        under the ones before has been heard (booked or removed)."""
        for g in [g for g in self.retiring if g <= generation]:
            del self.retiring[g]

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
            total_room = limits.max_learned - self.held
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

    def fast_learned(self, u: Upcall, iif: str | None, vifs: Mapping[tuple[int, str], Vif],
                     now: float, book: bool = True, key: MfcKey | None = None) -> Flow | None:
        """A flow the helper installed itself. Its reserve is spent; if
        book, it goes into the table. None if it was installed for
        templates since replaced (the caller removes it: its next packet
        asks again)."""
        books = self.fast
        if u.generation != books.generation or not 0 <= u.index < len(books.routes):
            return None
        route = books.routes[u.index]
        if iif != route.iif or books.used[u.index] >= books.limits[u.index]:
            return None
        books.used[u.index] += 1
        self.reserved[route.rule] -= 1
        self.reserved_total -= 1
        key = key or MfcKey(u.family, u.source, u.group)
        flow = Flow(key, iif, route.oifs, route.where, vifs, route.rule)
        if book:
            self._put(flow, now)
        return flow

    # -- expiry -----------------------------------------------------------------

    def due(self, now: float, max_idle: float, period: float) -> list[MfcKey]:
        """The flows whose counters are worth reading now: those never read
        (a first count to compare with) and those that could be idle for
        max_idle by the next sample. A busy flow is read about once per
        max_idle, a flow seen once (a flood's) two or three times, rather
        than once per period (a tenth of max_idle): during a flood, reading
        every counter every period was most of the daemon's work (issue 17).
        An idle flow goes between max_idle and 2 * max_idle + period after
        its last packet, as in SMCRoute (one to two periods). Budget stop
        filters need no counters (they go by age)."""
        if max_idle <= 0:
            return []
        horizon = now + period - max_idle
        return [k for k, f in self.flows.items()
                if not f.budget and (f.count is None or f.since <= horizon)]

    def expired(self, counts: Mapping[MfcKey, int], now: float, max_idle: float,
                sampled: Iterable[MfcKey]) -> list[MfcKey]:
        """Flows to remove: of those sampled, the ones idle (valid packet
        count unchanged) for max_idle seconds; and budget stop filters past
        their lifetime. A sampled flow whose counter could not be read goes
        by its last change."""
        gone = []
        for key, flow in self.flows.items():
            if flow.since is None:
                flow.since = now
            if flow.budget:
                lifetime = self.limits.overload_lifetime if flow.overload else \
                    self.limits.budget_stop_lifetime
                if now - flow.since >= lifetime:
                    gone.append(key)
        if max_idle <= 0:
            return gone
        for key in sampled:
            flow = self.flows.get(key)
            if flow is None or flow.budget:  # gone or replaced since it was sampled
                continue
            count = counts.get(key)
            if count is not None and flow.count is not None and count != flow.count:
                flow.since = now
            if count is not None:
                flow.count = count
            if now - flow.since >= max_idle:
                gone.append(key)
        return gone


def _group_stop_entry(gkey: MfcKey, iif: str, vifs: Mapping[tuple[int, str], Vif],
                      budget: bool = False) -> Flow:
    """A group's stop entry: a kernel (*,G) entry whose only VIF is iif (the
    kernel counts every source arriving there and forwards nothing)."""
    return Flow(gkey, iif, ((iif, 1),), None, vifs, None, budget)


def _carry(old: Flow, new: Flow) -> None:
    """A flow decided anew (rematch, a refusal taken back) keeps its activity."""
    new.since, new.count = old.since, old.count
