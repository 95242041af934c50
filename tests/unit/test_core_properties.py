"""Property test of the daemon core: random sequences of events.

Configurations are reloaded, edited with smcroutectl, interfaces come and
go, the kernel reports flows (some installed by the helper's fast path),
time passes, flows are flushed, and the helper's replies are held back and
let through at any point in between. After every event: every MFC entry
the core believes installed is accounted for exactly once, and the
learned flows stay within the budgets. Whenever no reply is in flight:
the kernel holds what the core believes, which is what the lines (config
and edits) and the learned flows imply, and the plan edited step by step
is the plan of its lines read afresh.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from smcroute.unprivileged.core import Settings
from smcroute.unprivileged.flows import Limits
from smcroute.unprivileged.model import Interface

from .corehelp import FILE, Harness, key

NAMES = ["a1", "a2", "a3", "b1", "w1"]
IIFS = ["a1", "a2", "b1", "w1", "a+"]
# few names, so that rules, flows and edits meet often
SOURCES = [None, None, "10.0.0.1", "10.0.0.0/24", "fd00::1"]
GROUPS = ["225.1.1.1", "225.1.1.1", "225.1.0.0/16", "225.2.0.0/24", "ff0e::1", "ff0e::/16"]
FLOW_SOURCES = ["10.0.0.1", "10.0.0.9", "10.0.0.77", "fd00::1", "fd00::9"]
FLOW_GROUPS = ["225.1.1.1", "225.1.0.5", "225.2.0.9", "225.3.3.3", "ff0e::1", "ff0e::9"]
BAD = ["bogus", "mroute from a1 group 10.1.1.1", "phyint a1 ttl-threshold 0"]

source = st.sampled_from(SOURCES)
group = st.sampled_from(GROUPS)
oifs = st.lists(st.sampled_from([*NAMES, "a+", "zz"]), max_size=3, unique=True)


def _sg(s: str | None, g: str) -> tuple[str | None, str]:
    """A source of the group's family (or none)."""
    if s is not None and (":" in s) != (":" in g):
        return None, g
    return s, g


@st.composite
def lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mroute"] * 6 + ["mgroup", "phyint", "bad"]))
    if kind == "bad":
        return draw(st.sampled_from(BAD))
    if kind == "phyint":
        word = draw(st.sampled_from(["enable", "disable", "enable mrdisc",
                                     "enable ttl-threshold 3", ""]))
        return f"phyint {draw(st.sampled_from([*NAMES, 'a+']))} {word}"
    s, g = _sg(draw(source), draw(group))
    src = f" source {s}" if s else ""
    if kind == "mgroup":
        return f"mgroup from {draw(st.sampled_from(IIFS))}{src} group {g}"
    to = draw(oifs)
    return f"mroute from {draw(st.sampled_from(IIFS))}{src} group {g}" + (
        f" to {' '.join(to)}" if to else "")


configs = st.lists(lines(), max_size=8).map(lambda ls: "".join(f"{line}\n" for line in ls))


class CoreMachine(RuleBasedStateMachine):
    @initialize(text=configs, present=st.sets(st.sampled_from(NAMES), min_size=2))
    def start(self, text: str, present: set[str]) -> None:
        self.next_index = 2
        self.indexes: dict[str, int] = {}
        limits = Limits(max_learned=6, max_per_rule=4, upcall_rate=10_000)
        self.h = Harness(text, self.table(present), Settings(
            conf_path=FILE, limits=limits, cache_timeout=5, mrdisc_interval=4))

    def table(self, present: set[str]) -> dict[str, Interface]:
        out = {}
        for name in NAMES:
            if name in present:
                if name not in self.indexes:
                    self.indexes[name] = self.next_index
                    self.next_index += 1
                out[name] = Interface(name, self.indexes[name], True)
            else:
                self.indexes.pop(name, None)  # when it comes back: a new ifindex
        return dict(sorted(out.items(), key=lambda kv: kv[1].index))

    @rule(text=configs)
    def reload(self, text: str) -> None:
        self.h.reload(text)

    @rule(cmd=st.sampled_from(["add", "add", "remove", "join", "leave"]),
          iif=st.sampled_from(IIFS[:4]), s=source, g=group, to=oifs)
    def edit(self, cmd: str, iif: str, s: str | None, g: str, to: list[str]) -> None:
        s, g = _sg(s, g)
        args = [iif, *([s] if s else []), g]
        if cmd in ("add", "remove"):
            args += to if cmd == "add" else to[:1]
        self.h.ctl(cmd, *args)

    @rule(present=st.sets(st.sampled_from(NAMES), min_size=1))
    def links(self, present: set[str]) -> None:
        self.h.links(self.table(present))

    @rule(data=st.data())
    def edit_a_rule(self, data: st.DataObject) -> None:
        """Edit a rule that exists: remove it, one of its OIFs, or add one."""
        from smcroute.unprivileged.model import Mgroup, Mroute

        rules = [d for d in self.h.core.lines if isinstance(d, Mroute | Mgroup)]
        if not rules:
            return
        d = data.draw(st.sampled_from(rules))
        head = [d.iif, *([str(d.source)] if d.source else []), str(d.group)]
        if isinstance(d, Mgroup):
            self.h.ctl("leave", *head)
            return
        how = data.draw(st.sampled_from(["remove", "remove oif", "add oif"]))
        if how == "remove":
            self.h.ctl("remove", *head)
        elif how == "remove oif" and d.oifs:
            self.h.ctl("remove", *head, data.draw(st.sampled_from(d.oifs)))
        else:
            self.h.ctl("add", *head, data.draw(st.sampled_from(NAMES)))

    @rule(data=st.data(), template=st.booleans())
    def rule_for_a_flow(self, data: st.DataObject, template: bool) -> None:
        """A rule for traffic already flowing: an (S,G) route for a flow's
        key (the configured route wins), or a template over its group (a
        stop filter becomes a learned route)."""
        from smcroute.unprivileged.model import addr

        flows = list(self.h.core.flows.flows.values())
        if not flows:
            return
        f = data.draw(st.sampled_from(flows))
        s, g = addr(f.key.source), addr(f.key.group)
        if template:
            self.h.ctl("add", f.iif_name, f"{g}/{24 if f.key.family == 4 else 64}", "a3")
        else:
            self.h.ctl("add", f.iif_name, s, g, "a2")

    @rule(data=st.data(), s=st.sampled_from(FLOW_SOURCES), g=st.sampled_from(FLOW_GROUPS),
          kind=st.sampled_from(["nocache"] * 4 + ["wrongvif"]), fast=st.booleans())
    def upcall(self, data: st.DataObject, s: str, g: str, kind: str, fast: bool) -> None:
        _, g = _sg(s, g)
        if (":" in s) != (":" in g):
            return
        k = key(s, g)
        slots = [slot for (family, slot) in self.h.core.ledger.vifs if family == k.family]
        if slots:
            vif = data.draw(st.sampled_from(slots))
            self.h.upcall(kind, k.family, vif, k.source, k.group, fast)

    @rule(s=st.sampled_from(FLOW_SOURCES[:3]), g=st.sampled_from(FLOW_GROUPS[:4]),
          on=st.booleans())
    def kernel_refuses(self, s: str, g: str, on: bool) -> None:
        """From now on the kernel refuses (or takes again) this (S,G)."""
        k = (key(s, g).family, key(s, g).source, key(s, g).group)
        if on:
            self.h.kernel.refuse.add(k)
            self.h.refused.add(k)
        else:
            self.h.kernel.refuse.discard(k)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 6.0]))
    def tick(self, seconds: float) -> None:
        self.h.tick(seconds)

    @rule()
    def flush(self) -> None:
        self.h.ctl("flush")

    @rule(hold=st.booleans())
    def hold(self, hold: bool) -> None:
        self.h.hold = hold

    @rule(n=st.integers(1, 3))
    def release(self, n: int) -> None:
        self.h.release(n)

    @rule()
    def settle(self) -> None:
        self.h.settle()
        self.h.check_settled()

    @invariant()
    def accounted(self) -> None:
        if hasattr(self, "h"):
            self.h.check()
            if not self.h.flight:
                self.h.check_settled()


TestCore = CoreMachine.TestCase
TestCore.settings = settings(max_examples=400, stateful_step_count=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
