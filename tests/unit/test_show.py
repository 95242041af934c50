"""smcroute.unprivileged.show: the daemon side of `smcroutectl show` (SPEC 4).

The fixture is SPEC 4.8's literal example: lo(1), a1(3), a2(5), a1 on
VIF/MIF 0 and a2 on VIF/MIF 1 (ttl-threshold 3), two (*,G) templates, one
(S,G) rule, two learned routes and one stop filter in the kernel, one
pending route. Expected texts are copied from the SPEC; lines are the
daemon's (titles end in "_", headings in "="), and rendered with -p they
must equal the SPEC's output byte for byte.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
from smcroute.unprivileged import show
from smcroute.unprivileged.engine import Route, Rule, rule_key
from smcroute.unprivileged.model import (
    Interface,
    Mfc,
    MfcKey,
    Mgroup,
    Mroute,
    Pending,
    Prefix,
    Vif,
    Where,
)
from smcroute.unprivileged.smcroutectl import Settings, render

CONF = "/etc/smcroute.conf"
SRC = "10.0.0.10"


def prefix(text: str) -> Prefix:
    address, _, length = text.partition("/")
    ip = ipaddress.ip_address(address)
    return Prefix(ip, int(length) if length else ip.max_prefixlen)


def rule(line: int, iif: str, source: str | None, group: str, *oifs: str) -> Mroute:
    return Mroute(Where(CONF, line), iif, None if source is None else prefix(source),
                  prefix(group), tuple(oifs))


def route(r: Mroute, ttl: int = 3) -> Route:
    return Route(Rule(0, r, rule_key(r)), r.iif, {name: ttl for name in r.oifs})


def key(source: str, group: str) -> MfcKey:
    s, g = ipaddress.ip_address(source), ipaddress.ip_address(group)
    return MfcKey(g.version, s.packed, g.packed)


def mfc(source: str, group: str, iif: int, *oifs: int) -> Mfc:
    names = {0: "a1", 1: "a2"}
    return Mfc(key(source, group), iif, tuple((o, 3) for o in oifs), names[iif],
               tuple(names[o] for o in oifs))


INTERFACES = [Interface("lo", 1, False), Interface("a1", 3, True), Interface("a2", 5, True)]
NAMES = [i.name for i in INTERFACES]
VIFS = [Vif(4, 0, "a1", 3, 1), Vif(6, 0, "a1", 3, 1), Vif(4, 1, "a2", 5, 3),
        Vif(6, 1, "a2", 5, 3)]
VIF_NAMES = {(v.family, v.vif): v.name for v in VIFS}
TEMPLATES = [route(rule(6, "a1", None, "225.1.2.0/24", "a2")),
             route(rule(8, "a1", None, "ff2e::42", "a2"))]
SSM = [route(rule(7, "a1", SRC, "225.3.2.1", "a2"))]
# Kernel list in insertion order: the stop filter was learned before the
# template match, so text output (active first) and JSON (insertion order) differ.
KERNEL = [mfc(SRC, "225.3.2.1", 0, 1), mfc(SRC, "225.9.9.9", 0), mfc(SRC, "225.1.2.3", 0, 1)]
VIEW = show.RouteView(TEMPLATES, SSM, KERNEL, VIF_NAMES)
PENDING = [Pending(rule(9, "wg0", None, "239.5.5.5", "a2"), ("wg0",), inbound=True)]



def settings(**flags: bool) -> Settings:
    s = Settings()
    for name, value in flags.items():
        assert hasattr(s, name), name
        setattr(s, name, value)
    return s


PLAIN = settings(plain=True)
BAR_ = "_" * 79
BAR = "=" * 79


def plain(lines: list[str]) -> str:
    """What `smcroutectl -p` prints for a reply (render, then the NUL's blank line)."""
    return render(lines, PLAIN) + "\n"


# -- show routes ------------------------------------------------------------

ROUTES_LINES = [
    "(*,G) Template Rules_",
    "ROUTE (S,G)                                IIF  OIFS=",
    "(*, 225.1.2.0/24)                          a1   a2",
    "(*, ff2e::42)                              a1   a2",
    "(S,G) Rules_",
    "ROUTE (S,G)                                IIF  OIFS=",
    "(10.0.0.10, 225.3.2.1)                     a1   a2",
    "Kernel MFC Table_",
    "ROUTE (S,G)                                IIF  OIFS=",
    "(10.0.0.10, 225.3.2.1)                     a1   a2",
    "(10.0.0.10, 225.1.2.3)                     a1   a2",
    "(10.0.0.10, 225.9.9.9)                     a1  ",
]

SPEC_P_SHOW_ROUTES = f"""{BAR_}
(*,G) Template Rules
{BAR}
ROUTE (S,G)                                IIF  OIFS
{BAR}
(*, 225.1.2.0/24)                          a1   a2
(*, ff2e::42)                              a1   a2
{BAR_}
(S,G) Rules
{BAR}
ROUTE (S,G)                                IIF  OIFS
{BAR}
(10.0.0.10, 225.3.2.1)                     a1   a2
{BAR_}
Kernel MFC Table
{BAR}
ROUTE (S,G)                                IIF  OIFS
{BAR}
(10.0.0.10, 225.3.2.1)                     a1   a2
(10.0.0.10, 225.1.2.3)                     a1   a2
(10.0.0.10, 225.9.9.9)                     a1  

"""  # noqa: W291 - the stop filter's row ends in spaces (SPEC 4.5)

SPEC_PT_SHOW = """\
(*, 225.1.2.0/24)                          a1   a2
(*, ff2e::42)                              a1   a2
(10.0.0.10, 225.3.2.1)                     a1   a2
(10.0.0.10, 225.3.2.1)                     a1   a2
(10.0.0.10, 225.1.2.3)                     a1   a2
(10.0.0.10, 225.9.9.9)                     a1  

"""  # noqa: W291


def test_routes_brief_lines():
    assert show.routes(VIEW, NAMES, detail=False) == ROUTES_LINES


def test_routes_brief_plain_equals_spec_example():
    assert plain(show.routes(VIEW, NAMES, detail=False)) == SPEC_P_SHOW_ROUTES


def test_routes_no_headings_equals_spec_example():
    text = render(show.routes(VIEW, NAMES, detail=False), settings(no_headings=True)) + "\n"
    assert text == SPEC_PT_SHOW


def test_routes_detail_counters_per_sg_templates_zero():
    asked = []

    def counters(k: MfcKey) -> tuple[int, int]:
        asked.append(k)
        return (2, 168)

    lines = show.routes(VIEW, NAMES, detail=True, counters=counters)
    heading = "ROUTE (S,G)                                IIF    PACKETS      BYTES  OIFS="
    assert lines == [
        "(*,G) Template Rules_",
        heading,
        "(*, 225.1.2.0/24)                          a1           0          0  a2",
        "(*, ff2e::42)                              a1           0          0  a2",
        "(S,G) Rules_",
        heading,
        "(10.0.0.10, 225.3.2.1)                     a1           2        168  a2",
        "Kernel MFC Table_",
        heading,
        "(10.0.0.10, 225.3.2.1)                     a1           2        168  a2",
        "(10.0.0.10, 225.1.2.3)                     a1           2        168  a2",
        "(10.0.0.10, 225.9.9.9)                     a1           2        168 ",
    ]
    # the SSM rule and every kernel entry are asked for; templates are not
    assert set(asked) == {key(SRC, g) for g in ("225.3.2.1", "225.1.2.3", "225.9.9.9")}


def test_routes_detail_without_counters_shows_zero():
    lines = show.routes(VIEW, NAMES, detail=True)
    assert lines[-1] == "(10.0.0.10, 225.9.9.9)                     a1           0          0 "


def test_routes_sections_only_when_non_empty():
    assert show.routes(show.RouteView([], [], [], {}), NAMES, detail=False) == []
    only_kernel = show.RouteView([], [], KERNEL[:1], VIF_NAMES)
    assert show.routes(only_kernel, NAMES, False) == [
        "Kernel MFC Table_",
        "ROUTE (S,G)                                IIF  OIFS=",
        "(10.0.0.10, 225.3.2.1)                     a1   a2",
    ]
    only_ssm = show.RouteView([], SSM, [], VIF_NAMES)
    assert [line for line in show.routes(only_ssm, NAMES, False) if line.endswith("_")] == [
        "(S,G) Rules_"]


def test_routes_iif_column_width_follows_longest_interface_name():
    names = [*NAMES, "a-long-name"]
    lines = show.routes(VIEW, names, detail=False)
    assert lines[1] == f"{'ROUTE (S,G)':<42} {'IIF':<11}  OIFS="
    assert lines[2] == f"{'(*, 225.1.2.0/24)':<42} {'a1':<11}  a2"
    # never narrower than "IIF"
    assert show.routes(VIEW, ["x"], False)[1] == ROUTES_LINES[1]


def test_routes_oifs_in_kernel_vif_order_and_range_source():
    view = show.RouteView(
        [route(rule(3, "a1", "10.0.0.0/24", "225.3.0.0/16", "a2"))], [],
        [Mfc(key(SRC, "225.3.1.1"), 1, ((0, 1),), "a2", ("a1",))], VIF_NAMES)
    lines = show.routes(view, NAMES, False)
    assert "(10.0.0.0/24, 225.3.0.0/16)                a1   a2" in lines
    assert lines[-1] == "(10.0.0.10, 225.3.1.1)                     a2   a1"


def test_routes_ipv6_kernel_entry():
    entry = Mfc(key("fd00::2", "ff2e::42"), 0, ((1, 3),), "a1", ("a2",))
    view = show.RouteView([], [], [entry], VIF_NAMES)
    assert show.routes(view, NAMES, False)[-1] == (
        "(fd00::2, ff2e::42)                        a1   a2")


def test_routes_json_equals_spec_example_and_keeps_insertion_order():
    (line,) = show.routes_json(VIEW)
    assert " " not in line
    doc = json.loads(line)
    assert doc == {"routes": {
        "asm": [{"source": None, "group": "225.1.2.0/24", "iif": "a1", "oifs": ["a2"]},
                {"source": None, "group": "ff2e::42", "iif": "a1", "oifs": ["a2"]}],
        "ssm": [{"source": SRC, "group": "225.3.2.1", "iif": "a1", "oifs": ["a2"]}],
        "kernel": [{"source": SRC, "group": "225.3.2.1", "iif": "a1", "oifs": ["a2"]},
                   {"source": SRC, "group": "225.9.9.9", "iif": "a1", "oifs": []},
                   {"source": SRC, "group": "225.1.2.3", "iif": "a1", "oifs": ["a2"]}],
    }}
    # key order as documented (SPEC 4.7)
    assert line.startswith('{"routes":{"asm":[{"source":null,"group":"225.1.2.0/24",'
                           '"iif":"a1","oifs":["a2"]}')


def test_routes_json_unmappable_iif_is_empty_string():
    view = show.RouteView([], [], [Mfc(key(SRC, "225.1.1.1"), 7, (), "gone", ())], VIF_NAMES)
    doc = json.loads(show.routes_json(view)[0])
    assert doc["routes"]["kernel"] == [
        {"source": SRC, "group": "225.1.1.1", "iif": "", "oifs": []}]


def test_routes_json_empty():
    assert json.loads(show.routes_json(show.RouteView([], [], [], {}))[0]) == {
        "routes": {"asm": [], "ssm": [], "kernel": []}}


# -- show interfaces --------------------------------------------------------

SPEC_P_SHOW_INTERFACES = f"""{BAR}
 INDEX PHYINT  VIF  MIF
{BAR}
     1 lo      N/A  N/A
     3 a1        0    0
     5 a2        1    1

"""


def test_interfaces_plain_equals_spec_example():
    assert plain(show.interfaces(INTERFACES, VIFS, as_json=False)) == SPEC_P_SHOW_INTERFACES


def test_interfaces_lines_and_width():
    lines = show.interfaces([*INTERFACES, Interface("averylongname0", 12, True)],
                            VIFS, as_json=False)
    assert lines[0] == f" INDEX {'PHYINT':<14}  VIF  MIF="
    assert lines[-1] == f"{12:>6} {'averylongname0':<14} {'N/A':>4} {'N/A':>4}"


def test_interfaces_vif_without_mif():
    lines = show.interfaces(INTERFACES, [Vif(4, 3, "a2", 5, 1)], as_json=False)
    assert lines[-1] == "     5 a2        3  N/A"


def test_interfaces_json_equals_spec_example():
    (line,) = show.interfaces(INTERFACES, VIFS, as_json=True)
    assert line == (
        '{"interfaces":[{"index":1,"name":"lo","vif":null,"mif":null},'
        '{"index":3,"name":"a1","vif":0,"mif":0},{"index":5,"name":"a2","vif":1,"mif":1}]}')


def test_interfaces_empty_table():
    assert show.interfaces([], [], as_json=False) == [" INDEX PHYINT  VIF  MIF="]
    assert show.interfaces([], [], as_json=True) == ['{"interfaces":[]}']


# -- show pending -----------------------------------------------------------

def test_pending_plain_equals_spec_example():
    assert plain(show.pending(PENDING, as_json=False)) == (
        "PENDING ROUTES AND GROUPS\nmroute  from wg0 group 239.5.5.5 to a2\n\n")


def test_pending_is_not_a_heading_survives_no_headings():
    text = render(show.pending(PENDING, as_json=False), settings(no_headings=True))
    assert text.startswith("PENDING ROUTES AND GROUPS\n")


@pytest.mark.parametrize("source, group, oifs, want", [
    (None, "239.5.5.5", ("a2",), "mroute  from wg0 group 239.5.5.5 to a2"),
    ("10.0.0.1", "225.1.1.1", ("a2", "b+"),
     "mroute  from wg0 source 10.0.0.1 group 225.1.1.1 to a2 b+"),
    ("10.0.0.0/8", "225.1.0.0/16", (), "mroute  from wg0 source 10.0.0.0/8 group 225.1.0.0/16"),
    (None, "ff2e::42", ("a2",), "mroute  from wg0 group ff2e::42 to a2"),
])
def test_pending_row_forms(source, group, oifs, want):
    p = Pending(rule(1, "wg0", source, group, *oifs), ("wg0",), inbound=True)
    assert show.pending([p], as_json=False) == ["PENDING ROUTES AND GROUPS", want]


def test_pending_empty():
    assert show.pending([], as_json=False) == ["No pending routes or groups"]
    assert show.pending([], as_json=True) == ['{"pending":[]}']


def test_pending_json_equals_spec_example():
    assert show.pending(PENDING, as_json=True) == [
        '{"pending":[{"kind":"mroute","iif":"wg0","source":null,"group":"239.5.5.5",'
        '"oifs":["a2"]}]}']


def test_pending_json_source_and_no_oifs():
    p = Pending(rule(1, "a1", "10.0.0.1", "225.1.1.1"), ("a1",), inbound=True)
    assert json.loads(show.pending([p], as_json=True)[0]) == {"pending": [
        {"kind": "mroute", "iif": "a1", "source": "10.0.0.1", "group": "225.1.1.1",
         "oifs": []}]}


# -- show groups (SPEC 4.4) ---------------------------------------------------

def mgroup(line: int, iif: str, source: str | None, group: str) -> Mgroup:
    return Mgroup(Where(CONF, line), iif, None if source is None else prefix(source),
                  prefix(group))


MGROUPS = [mgroup(3, "a1", None, "225.1.2.3"), mgroup(4, "a1", SRC, "225.3.2.1"),
           mgroup(5, "a2", None, "225.5.5.4/31")]


def joined():
    """The kernel memberships of MGROUPS: the /31 stands for two groups."""
    groups = pytest.importorskip("smcroute.unprivileged.groups")
    out = []
    for r in MGROUPS:
        index = {"a1": 3, "a2": 5}[r.iif]
        out += groups.expand(r, r.iif, index)
    return out


SPEC_P_SHOW_GROUPS = f"""{BAR_}
Group Memberships Table
{BAR}
GROUP (S,G)                                IIF             
{BAR}
(*, 225.1.2.3)                             a1
(10.0.0.10, 225.3.2.1)                     a1
(*, 225.5.5.4/31)                          a2
"""  # noqa: W291 - the IIF column of the heading keeps its padding

SPEC_KERNEL_GROUPS = f"""{BAR_}
Kernel Group Membership Table
(*, 225.1.2.3)                             a1
(10.0.0.10, 225.3.2.1)                     a1
(*, 225.5.5.4/31)                          a2
(*, 225.5.5.5/31)                          a2
"""


def test_groups_plain_equals_spec_example():
    assert plain(show.groups(MGROUPS, joined(), False, False)) == SPEC_P_SHOW_GROUPS + "\n"


def test_groups_detail_adds_kernel_table_without_heading():
    text = plain(show.groups(MGROUPS, joined(), True, False))
    assert text == SPEC_P_SHOW_GROUPS + SPEC_KERNEL_GROUPS + "\n"


def test_groups_no_headings_equals_spec_example():
    text = render(show.groups(MGROUPS, joined(), False, False), settings(no_headings=True))
    assert text == ("(*, 225.1.2.3)                             a1\n"
                    "(10.0.0.10, 225.3.2.1)                     a1\n"
                    "(*, 225.5.5.4/31)                          a2\n")


def test_groups_json_equals_spec_example():
    want = (
        '{"groups":{"conf":[{"source":null,"group":"225.1.2.3","iif":"a1"},'
        '{"source":"10.0.0.10","group":"225.3.2.1","iif":"a1"},'
        '{"source":null,"group":"225.5.5.4/31","iif":"a2"}],'
        '"kernel":[{"source":null,"group":"225.1.2.3","iif":"a1"},'
        '{"source":"10.0.0.10","group":"225.3.2.1","iif":"a1"},'
        '{"source":null,"group":"225.5.5.4/31","iif":"a2"},'
        '{"source":null,"group":"225.5.5.5/31","iif":"a2"}]}}')
    # both lists always, with or without -d (SPEC 4.7)
    assert show.groups(MGROUPS, joined(), False, True) == [want]
    assert show.groups(MGROUPS, joined(), True, True) == [want]


def test_groups_empty():
    assert show.groups([], [], False, False) == []
    assert show.groups([], [], True, False) == []
    assert show.groups([], [], False, True) == ['{"groups":{"conf":[],"kernel":[]}}']
    # an empty result prints nothing at all (SPEC 4.1)
    assert render(show.groups([], [], False, False), PLAIN) == ""


def test_pending_mgroup():
    p = Pending(mgroup(2, "a1", None, "225.4.5.6"), ("a1",), inbound=True)
    assert show.pending([p], as_json=False) == [
        "PENDING ROUTES AND GROUPS", "mgroup  from a1 group 225.4.5.6"]
    assert json.loads(show.pending([p], as_json=True)[0]) == {"pending": [
        {"kind": "mgroup", "iif": "a1", "source": None, "group": "225.4.5.6", "oifs": []}]}
