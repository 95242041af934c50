"""--kernel-star-g: which (*,G) rules become kernel (*,G) entries, what
those entries hold, and that edits keep them equal to a fresh fold."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from smcroute.unprivileged import show
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.core import Settings
from smcroute.unprivileged.engine import RANGE_ENTRIES, RANGE_GROUPS, Plan, plan, rule_key
from smcroute.unprivileged.model import Interface, Mfc, MfcKey, Mroute, is_star, zero

from .corehelp import Harness

IFS = {n: Interface(n, i + 2, True) for i, n in enumerate(("a1", "a2", "a3", "b1"))}


def star_plan(text: str, on: bool = True) -> Plan:
    cfg = parse_text(text, "/etc/smcroute.conf")
    assert cfg.errors == (), [str(d) for d in cfg.errors]
    p = plan(cfg, IFS, {}, True, kernel_star_g=on)
    p.take_changes()
    return p


def star(group: str) -> MfcKey:
    g = ipaddress.ip_address(group)
    return MfcKey(g.version, zero(g.version), g.packed)


def names(p: Plan, group: str) -> tuple[str, tuple[str, ...]]:
    m = p.mfc[star(group)]
    return m.iif_name, m.oif_names


def test_exact_group_rule_is_an_entry_marking_inbound_and_outbound_vifs() -> None:
    p = star_plan("mroute from a1 group 225.1.2.3 to a2 a3\n"
                  "mroute from b1 group ff2e::42 to a1\n")
    m = p.mfc[star("225.1.2.3")]
    vif = {n: p.vifs[(4, n)].vif for n in ("a1", "a2", "a3")}
    assert m.iif == vif["a1"]
    assert m.oifs == tuple(sorted([(vif["a1"], 1), (vif["a2"], 1), (vif["a3"], 1)]))
    assert names(p, "225.1.2.3") == ("a1", ("a1", "a2", "a3"))
    assert names(p, "ff2e::42") == ("b1", tuple(sorted(("a1", "b1"),
                                                       key=lambda n: p.vifs[(6, n)].vif)))
    assert is_star(m.key) and m.where is not None and m.where.line == 1
    # the rules stay templates: show lists them, and a racing upcall still matches
    assert len(p.templates) == 2


def test_off_by_default() -> None:
    p = star_plan("mroute from a1 group 225.1.2.3 to a2\n", on=False)
    assert p.mfc == {} and p.star == {}


def test_ttl_thresholds_of_the_rule_are_kept() -> None:
    p = star_plan("phyint a3 ttl-threshold 7\nmroute from a1 group 225.1.2.3 to a2 a3\n")
    by_name = dict(zip(p.mfc[star("225.1.2.3")].oif_names,
                       (t for _, t in p.mfc[star("225.1.2.3")].oifs), strict=True))
    assert by_name == {"a1": 1, "a2": 1, "a3": 7}


def test_what_stays_on_the_upcall_path() -> None:
    p = star_plan(
        # a group range and a source range are not exact (*,G) rules
        "mroute from a1 group 225.0.0.0/8 to a2\n"
        "mroute from a2 source 10.0.0.0/8 group 226.1.1.1 to a3\n"
        # an earlier range on a1 covers 225.5.5.5: it would win the first match
        "mroute from a1 group 225.5.5.5 to a3\n"
        # the inbound among the outbound: an (S,G) entry loops it back, (*,G) not
        "mroute from a3 group 227.1.1.1 to a3 a2\n"
        # a template on an OIF covers the group: its traffic must reach it
        # (the second rule can be one: nothing on a2 covers the group)
        "mroute from a3 group 228.1.1.1 to b1\n"
        "mroute from b1 group 228.1.1.1 to a2\n"
        # a rule on another inbound interface for a group already taken
        "mroute from a2 group 229.1.1.1 to a3\n"
        "mroute from b1 group 229.1.1.1 to a1\n")
    assert set(p.star) == {star("228.1.1.1"), star("229.1.1.1")}
    assert names(p, "228.1.1.1")[0] == "b1"
    assert names(p, "229.1.1.1")[0] == "a2"


def test_a_small_group_range_is_one_entry_per_group() -> None:
    p = star_plan("mroute from a1 group 225.1.2.0/30 to a2\n"
                  "mroute from b1 group ff2e::40/126 to a1\n")
    assert set(p.star) == {star(f"225.1.2.{n}") for n in range(4)} | \
        {star(f"ff2e::{n:x}") for n in range(0x40, 0x44)}
    assert {names(p, f"225.1.2.{n}") for n in range(4)} == {("a1", ("a1", "a2"))}
    assert all(p.mfc[k].where.line == 1 for k in p.star if k.family == 4)  # type: ignore[union-attr]


def test_the_limits_of_range_expansion() -> None:
    # more than RANGE_GROUPS groups: the per-source path
    p = star_plan(f"mroute from a1 group 225.1.0.0/{32 - RANGE_GROUPS.bit_length()} to a2\n")
    assert p.star == {}
    p = star_plan("mroute from a1 group 225.1.0.0/24 to a2\n")
    assert len(p.star) == RANGE_GROUPS
    # ranges give at most RANGE_ENTRIES in all, in configuration order; a
    # range past that keeps the per-source path whole, exact groups do not count
    n = RANGE_ENTRIES // RANGE_GROUPS
    lines = "".join(f"mroute from a1 group 226.{i}.0.0/24 to a2\n" for i in range(n + 1))
    p = star_plan(lines + "mroute from a1 group 227.0.0.1 to a2\n")
    assert len(p.star) == RANGE_ENTRIES + 1
    assert star(f"226.{n}.0.1") not in p.star and star("227.0.0.1") in p.star


def test_a_range_shares_its_groups_as_the_first_match_does() -> None:
    p = star_plan("mroute from a1 group 225.1.2.1 to a3\n"    # earlier: takes .1
                  "mroute from a1 group 225.1.2.0/30 to a2\n"
                  "mroute from a2 group 225.1.2.2 to b1\n"    # on an OIF: .2 is routed from a2
                  "mroute from a1 group 225.1.2.3 to b1\n")   # later: the range's
    assert names(p, "225.1.2.0") == ("a1", ("a1", "a2"))
    assert names(p, "225.1.2.1") == ("a1", ("a1", "a3"))
    assert names(p, "225.1.2.2") == ("a2", ("a2", "b1"))  # the a2 rule's, not the range's
    assert names(p, "225.1.2.3") == ("a1", ("a1", "a2"))
    # the inbound among the outbound: none of the range
    p = star_plan("mroute from a1 group 225.1.2.0/30 to a1 a2\n")
    assert p.star == {}


def test_an_earlier_source_specific_template_for_the_group_wins() -> None:
    p = star_plan("mroute from a1 source 10.0.0.0/24 group 225.1.1.1 to a2\n"
                  "mroute from a1 group 225.1.1.1 to a3\n")
    assert p.star == {}
    p = star_plan("mroute from a1 group 225.1.1.1 to a3\n"
                  "mroute from a1 source 10.0.0.0/24 group 225.1.1.1 to a2\n")
    assert set(p.star) == {star("225.1.1.1")}


def test_a_configured_sg_route_for_the_group_is_its_own_entry() -> None:
    p = star_plan("mroute from a1 group 225.1.1.1 to a3\n"
                  "mroute from a1 source 10.0.0.1 group 225.1.1.1 to a2\n")
    assert set(p.mfc) == {star("225.1.1.1"),
                          MfcKey(4, ipaddress.ip_address("10.0.0.1").packed,
                                 ipaddress.ip_address("225.1.1.1").packed)}


def test_edits_change_exactly_the_entries_concerned() -> None:
    p = star_plan("mroute from a1 group 225.1.1.1 to a2\n"
                  "mroute from a1 group 225.2.2.2 to a3\n")
    before = dict(p.mfc)
    rule = next(r for r in p.rules.values() if str(r.rule.group) == "225.1.1.1")
    p.remove_rule(rule.key)
    c = p.take_changes()
    assert c.mfc == {star("225.1.1.1")}
    assert set(p.mfc) == {star("225.2.2.2")} and p.mfc[star("225.2.2.2")] is \
        before[star("225.2.2.2")]
    # a rule on an OIF that covers the group takes the entry away again
    p.add(parse_text("mroute from a3 group 225.0.0.0/8 to b1\n", "/x").directives[0])
    c = p.take_changes()
    assert c.mfc == {star("225.2.2.2")} and p.star == {}


def test_show_lists_the_entries_as_star_g_without_their_inbound() -> None:
    p = star_plan("mroute from a1 group 225.1.2.3 to a2\n")
    vif_names = {(v.family, v.vif): v.name for v in p.vifs.values()}
    view = show.RouteView([], [], list(p.mfc.values()), vif_names, p.vifs)
    lines = show.routes(view, list(IFS), detail=True, counters=lambda k: (5, 500))
    assert lines[0] == "Kernel MFC Table_"
    assert lines[2].split() == ["(*,", "225.1.2.3)", "a1", "5", "500", "a2"]
    assert '"kernel":[{"source":null,"group":"225.1.2.3","iif":"a1","oifs":["a2"]}]' \
        in show.routes_json(view)[0]


LINES = [
    "mroute from a1 group 225.1.1.1 to a2",
    "mroute from a1 group 225.1.1.1 to a3",
    "mroute from a2 group 225.1.1.1 to b1",
    "mroute from a1 group 225.0.0.0/8 to b1",
    "mroute from a3 group 225.1.1.0/24 to a1",
    "mroute from b1 group 225.1.1.1 to a1 a2",
    "mroute from a2 group ff2e::1 to a3",
    "mroute from a3 group ff2e::1 to a2",
    "mroute from a1 source 10.0.0.1 group 225.1.1.1 to a2",
    "phyint a3 disable",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=8), st.data())
def test_edits_give_what_a_fresh_fold_gives(lines: list[str], data: st.DataObject) -> None:
    """Removing rules one by one keeps the kernel (*,G) entries those of the
    remaining configuration read afresh."""
    p = star_plan("\n".join(lines) + "\n")
    kept = list(lines)
    keys = list(p.rules)
    for _ in range(len(keys)):
        victim = data.draw(st.sampled_from(keys))
        keys.remove(victim)
        p.remove_rule(victim)
        p.take_changes()
        kept = [line for line in kept if line.startswith("phyint") or rule_key(
            _line(line)) != victim]
        fresh = star_plan("\n".join(kept) + "\n")
        assert by_names(p.star) == by_names(fresh.star)  # (slots and lines differ)
        assert {k: v for k, v in p.mfc.items() if is_star(k)} == p.star


def by_names(entries: dict[MfcKey, Mfc]) -> dict[MfcKey, tuple[object, ...]]:
    return {k: (m.iif_name, sorted(zip(m.oif_names, (t for _, t in m.oifs), strict=True)))
            for k, m in entries.items()}


def _line(text: str) -> Mroute:
    d = parse_text(text + "\n", "/etc/smcroute.conf").directives[0]
    assert isinstance(d, Mroute)
    return d


# -- group stop entries (the flow table, through the core and the helper's op table) ------------

GS_CONFIG = "phyint a enable\nphyint b enable\nmroute from a group 225.1.0.0/16 to b\n"
GS_IFACES = {"a": Interface("a", 10, True), "b": Interface("b", 11, True)}


def group_stop_harness(on: bool = True) -> Harness:
    return Harness(GS_CONFIG, GS_IFACES, settings=Settings(
        conf_path="/etc/smcroute.conf", kernel_star_g=on))


def test_a_group_no_rule_covers_gets_one_stop_entry_for_all_sources() -> None:
    h = group_stop_harness()
    h.nocache("10.0.0.1", "225.9.9.9", "a")
    h.nocache("10.0.0.2", "225.9.9.9", "a")  # (raced the entry: nothing more)
    a = h.core.plan.vifs[(4, "a")].vif
    assert h.kernel_mfc() == {star("225.9.9.9"): (a, ((a, 1),))}
    assert len(h.core.flows) == 1 and h.core.flows.stops == 1
    # from another interface: the usual stop filter per source
    h.nocache("10.0.0.3", "225.9.9.9", "b")
    b = h.core.plan.vifs[(4, "b")].vif
    sg = MfcKey(4, ipaddress.ip_address("10.0.0.3").packed,
                ipaddress.ip_address("225.9.9.9").packed)
    assert h.kernel_mfc()[sg] == (b, ())
    # a covered group keeps the per-source path
    h.nocache("10.0.0.1", "225.1.0.7", "a", fast=False)
    assert h.kernel_mfc()[MfcKey(4, ipaddress.ip_address("10.0.0.1").packed,
                                 ipaddress.ip_address("225.1.0.7").packed)][1] != ()
    lines = h.show().splitlines()
    assert any(line.split() == ["(*,", "225.9.9.9)", "a"] for line in lines), lines
    # a rule that covers the group now: the stop entry goes, traffic asks again
    h.reload(GS_CONFIG + "mroute from a group 225.9.0.0/16 to b\n")
    assert star("225.9.9.9") not in h.kernel_mfc()
    h.check_settled()


def test_group_stop_entries_only_in_kernel_star_g_mode() -> None:
    h = group_stop_harness(on=False)
    h.nocache("10.0.0.1", "225.9.9.9", "a")
    assert star("225.9.9.9") not in h.kernel_mfc() and len(h.kernel_mfc()) == 1


def test_smcroutectl_add_and_remove_install_and_remove_the_entry() -> None:
    h = group_stop_harness()
    (r,) = h.ctl("add", "a", "225.3.3.3", "b")
    assert r["ok"], r
    a, b = h.core.plan.vifs[(4, "a")].vif, h.core.plan.vifs[(4, "b")].vif
    assert h.kernel_mfc()[star("225.3.3.3")] == (a, tuple(sorted(((a, 1), (b, 1)))))
    (r,) = h.ctl("remove", "a", "225.3.3.3")
    assert r["ok"], r
    assert star("225.3.3.3") not in h.kernel_mfc()
    h.check_settled()


# -- the kernel's lookup with these entries does what the per-source path does ----------------

POOL = [
    "mroute from a1 group 225.1.1.1 to a2",
    "mroute from a1 group 225.1.1.1 to a3",
    "mroute from a1 group 225.1.1.2 to a2 a3",
    "mroute from a2 group 225.1.1.1 to b1",
    "mroute from a2 group 225.1.1.2 to a1",
    "mroute from a3 group 225.1.1.0/30 to a1",
    "mroute from a1 group 225.1.1.0/31 to b1",
    "mroute from b1 group 225.1.1.1 to b1 a2",
    "mroute from b1 source 10.0.0.1 group 225.1.1.2 to a3",
    "mroute from a3 source 10.0.0.0/31 group 225.1.1.1 to a2",
    "mroute from a2 group 225.1.1.3 to a3",
    "mroute from a3 group 225.1.1.3 to a2",
]
PACKETS = [(iif, s, g) for iif in IFS for s in ("10.0.0.1", "10.0.0.2")
           for g in ("225.1.1.1", "225.1.1.2", "225.1.1.3")]


def per_source(p: Plan, iif: str, source: bytes, group: bytes) -> set[str]:
    """Where the upcall path sends a new (S,G): the first template's OIFs
    (a learned route) or nowhere (a stop filter)."""
    route = p.match(4, iif, source, group)
    return set(route.oifs) if route is not None else set()


def kernel(p: Plan, iif: str, source: bytes, group: bytes) -> set[str]:
    """Where the kernel sends it with the (*,G) entries: ip_mr_input's
    ipmr_cache_find_any (the entry is used if iif is marked; from its
    parent to the other marked VIFs, from another marked VIF nowhere),
    else the upcall path."""
    m = p.mfc.get(MfcKey(4, zero(4), group))
    marked = dict(zip(m.oif_names, (t for _, t in m.oifs), strict=True)) if m else {}
    if iif not in marked:
        return per_source(p, iif, source, group)
    return set(marked) - {iif} if iif == m.iif_name else set()  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(POOL), max_size=7))
def test_the_kernel_with_these_entries_routes_as_the_upcall_path(lines: list[str]) -> None:
    p = star_plan("\n".join(lines) + "\n")
    for iif, s, g in PACKETS:
        source, group = ipaddress.ip_address(s).packed, ipaddress.ip_address(g).packed
        if MfcKey(4, source, group) in p.mfc:
            continue  # a configured (S,G): the kernel finds it first in both modes
        assert kernel(p, iif, source, group) == per_source(p, iif, source, group), (iif, s, g)
