"""smcroutectl against a running smcrouted (SPEC 1.4-1.6, 3, 4).

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R and
smcroutectl talks to it over the control socket (``-u`` in the daemon's
work directory), run inside R with ``ip netns exec``.

* Golden output: SPEC 4.8's example adapted to our interface names (r-s is
  SMCRoute's a1, r-a its a2); every show variant is compared byte for byte
  with text built from the namespace's real ifindexes, the counters from
  what the test sent, and SPEC 4.2's rendering rules implemented here.
* JSON: the fields and types of SPEC 4.7 and the predicates of SMCRoute's
  json.sh (SPEC 4.9).
* show groups with SPEC 4.8's mgroup lines, and batch.sh's parse of it.
* add/remove/del semantics, SPEC 3.5's errors, batch mode, reload.
* Access by group: system users and groups created for the test (always
  deleted), smcroutectl run as them with setpriv.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .netns import (
    TIME_SCALE,
    flow,
    mfc_entry,
    netns_available,
    new_marker,
    read_mfc,
    send,
    wait_for,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

CTL = Path(sys.executable).parent / "smcroutectl"
V4, V6 = socket.AF_INET, socket.AF_INET6
SRC = "10.0.1.2"  # the sender's address on s-r
ESC = "\033"
READY = "Ready, waiting for client request or kernel event."

# SPEC 4.8, with a1 -> r-s, a2 -> r-a and without the mgroup lines.
GOLDEN_CONF = f"""\
phyint r-s enable
phyint r-a enable ttl-threshold 3
mroute from r-s group 225.1.2.0/24 to r-a
mroute from r-s source {SRC} group 225.3.2.1 to r-a
mroute from r-s group ff2e::42 to r-a
mroute from wg0 group 239.5.5.5 to r-a
"""
TEMPLATE_HIT, UNMATCHED, SSM = "225.1.2.3", "225.9.9.9", "225.3.2.1"
SENT = 2  # datagrams to each group


# -- running smcroutectl ----------------------------------------------------

@dataclass
class Result:
    argv: list[str]
    status: int
    out: str
    err: str

    def __str__(self) -> str:
        return (f"smcroutectl {' '.join(self.argv)[:200]}: exit {self.status}\n"
                f"--- stdout ---\n{self.out[:3000]}--- stderr ---\n{self.err[:3000]}")


def ctl(daemon, *args: str, stdin: str | None = None, user: str | None = None,
        sock: str | None = None, timeout: float = 30.0) -> Result:
    """smcroutectl -u SOCK ARGS in the daemon's namespace (as ``user``, if given)."""
    prefix = ["ip", "netns", "exec", daemon.ns.name]
    if user is not None:
        prefix += ["setpriv", "--reuid", user, "--regid", str(pwd.getpwnam(user).pw_gid),
                   "--init-groups", "--"]
    argv = [str(CTL), "-u", sock or str(daemon.sock), *args]
    proc = subprocess.run(prefix + argv, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result(list(args), proc.returncode, proc.stdout, proc.stderr)


def ok(daemon, *args: str, **kw) -> Result:
    res = ctl(daemon, *args, **kw)
    assert res.status == 0 and not res.err, str(res)
    return res


def fails(daemon, *args: str, **kw) -> Result:
    """A request that must be refused: exit 1, one smcroutectl: line, no traceback."""
    res = ctl(daemon, *args, **kw)
    assert res.status == 1, str(res)
    assert res.err.startswith("smcroutectl: ") and "Traceback" not in res.err, str(res)
    return res


# -- SPEC 4.2 rendering, written independently of smcroutectl's ---------------

def render(lines: Sequence[str], mode: str, width: int = 79) -> str:
    """What smcroutectl prints for daemon lines: mode plain (-p), bare (-t)
    or escape (neither, stdout not a terminal). Ends with the status
    byte's blank line; nothing at all for an empty reply."""
    if not lines:
        return ""
    out = []
    for line in lines:
        marker, text = (line[-1], line[:-1]) if len(line) >= 2 else ("", line)
        if marker not in ("_", "="):
            out.append(line + "\n")
        elif mode == "bare":
            continue
        elif mode == "plain":
            n = max(79, len(text))
            out.append(f"{'_' * n}\n{text}\n" if marker == "_"
                       else f"{'=' * n}\n{text}\n{'=' * n}\n")
        elif marker == "_":
            out.append(f"{ESC}[4m{' ' * width}{ESC}[0m\n{text}\n")
        else:
            out.append(f"{ESC}[7m{text.ljust(width)}{ESC}[0m\n")
    return "".join(out) + "\n"


def json_out(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n\n"


# -- the golden setup -----------------------------------------------------------

@dataclass
class Golden:
    topo: object
    daemon: object
    packets: dict[str, int]  # group -> datagrams sent
    nbytes: dict[str, int]  # group -> IPv4 bytes sent

    def interfaces(self) -> list[tuple[int, str]]:
        return sorted(self.topo.router.ifnames().items())


def send_and_wait(topo, group: str, marker: bytes, count: int = SENT) -> int:
    """Send count datagrams to group; wait until its MFC entry exists. Returns
    the IPv4 bytes sent (IP + UDP headers + payload, what the kernel counts)."""
    send(topo.sender, SRC, group, 5000, count, marker, topo.leaf_if("S"))
    assert wait_for(lambda: any(e.group == group for e in read_mfc(topo.router, V4)), 5.0), (
        f"no MFC entry for {group}: {read_mfc(topo.router, V4)}")
    return sum(20 + 8 + len(marker + b" %d" % seq) for seq in range(count))


@pytest.fixture
def golden(topo, smcrouted) -> Golden:
    daemon = smcrouted(GOLDEN_CONF)
    marker = new_marker()
    nbytes = {g: send_and_wait(topo, g, marker) for g in (TEMPLATE_HIT, UNMATCHED, SSM)}
    packets = dict.fromkeys(nbytes, SENT)
    # every datagram is counted once its entry resolves (the kernel queues
    # the first ones meanwhile): wait until the counters say so
    def counted() -> bool:
        res = ctl(daemon, "-pdt", "show")
        return res.status == 0 and all(
            re.search(rf"\({SRC}, {re.escape(g)}\)\s+r-s\s+{SENT}\s+{nbytes[g]}\s", res.out)
            for g in nbytes)
    assert wait_for(counted, 5.0, 0.2), ctl(daemon, "-pd", "show").out
    return Golden(topo, daemon, packets, nbytes)


def interface_lines(g: Golden) -> list[str]:
    vif = {"r-s": 0, "r-a": 1}
    names = g.interfaces()
    width = max([len(n) for _, n in names] + [6])
    rows = []
    for index, name in names:
        slot = str(vif[name]) if name in vif else "N/A"
        rows.append(f"{index:>6} {name:<{width}} {slot:>4} {slot:>4}")
    return [f" INDEX {'PHYINT':<{width}}  VIF  MIF=", *rows]


def route_lines(g: Golden, detail: bool) -> list[str]:
    w = max([len(n) for _, n in g.interfaces()] + [3])
    if detail:
        heading = f"{'ROUTE (S,G)':<42} {'IIF':<{w}} {'PACKETS':>10} {'BYTES':>10}  OIFS="
    else:
        heading = f"{'ROUTE (S,G)':<42} {'IIF':<{w}}  OIFS="

    def row(sg: str, oifs: str, group: str | None) -> str:
        text = f"{sg:<42} {'r-s':<{w}} "
        if detail:
            p, b = (g.packets[group], g.nbytes[group]) if group else (0, 0)
            text += f"{p:>10} {b:>10} "
        return text + (f" {oifs}" if oifs else "")

    return [
        "(*,G) Template Rules_", heading,
        row("(*, 225.1.2.0/24)", "r-a", None),
        row("(*, ff2e::42)", "r-a", None),
        "(S,G) Rules_", heading,
        row(f"({SRC}, {SSM})", "r-a", SSM),
        "Kernel MFC Table_", heading,
        row(f"({SRC}, {SSM})", "r-a", SSM),
        row(f"({SRC}, {TEMPLATE_HIT})", "r-a", TEMPLATE_HIT),
        row(f"({SRC}, {UNMATCHED})", "", UNMATCHED),
    ]


PENDING_LINES = ["PENDING ROUTES AND GROUPS", "mroute  from wg0 group 239.5.5.5 to r-a"]


def routes_json(g: Golden) -> dict:
    def r(source, group, oifs):
        return {"source": source, "group": group, "iif": "r-s", "oifs": oifs}

    return {"routes": {
        "asm": [r(None, "225.1.2.0/24", ["r-a"]), r(None, "ff2e::42", ["r-a"])],
        "ssm": [r(SRC, SSM, ["r-a"])],
        # insertion order: the (S,G) rule at start, then what traffic taught
        "kernel": [r(SRC, SSM, ["r-a"]), r(SRC, TEMPLATE_HIT, ["r-a"]), r(SRC, UNMATCHED, [])],
    }}


def interfaces_json(g: Golden) -> dict:
    vif = {"r-s": 0, "r-a": 1}
    return {"interfaces": [{"index": i, "name": n, "vif": vif.get(n), "mif": vif.get(n)}
                           for i, n in g.interfaces()]}


PENDING_JSON = {"pending": [{"kind": "mroute", "iif": "wg0", "source": None,
                             "group": "239.5.5.5", "oifs": ["r-a"]}]}


# -- 1. golden output -----------------------------------------------------------------

def test_golden_show_interfaces(golden):
    g = golden
    want = render(interface_lines(g), "plain")
    assert ok(g.daemon, "-p", "show", "interfaces").out == want
    for args in (["-pd", "show", "interfaces"], ["-p", "show", "i"], ["-p", "sh", "ifaces"],
                 ["show", "interfaces", "-p"]):
        assert ok(g.daemon, *args).out == want, args
    assert ok(g.daemon, "-pt", "show", "interfaces").out == render(interface_lines(g), "bare")


def test_golden_show_routes_plain(golden):
    g = golden
    want = render(route_lines(g, detail=False), "plain")
    for args in (["-p", "show", "routes"], ["-p", "show"], ["-p"], ["-p", "s", "r"],
                 ["-p", "show", "x"], ["-p", "foo"]):
        assert ok(g.daemon, *args).out == want, args


def test_golden_show_routes_detail(golden):
    g = golden
    res = ok(g.daemon, "-pd", "show", "routes")
    assert res.out == render(route_lines(g, detail=True), "plain")


def test_golden_show_no_headings(golden):
    g = golden
    assert ok(g.daemon, "-pt", "show").out == render(route_lines(g, detail=False), "bare")
    # -t alone: no escapes either, the headings are simply gone
    assert ok(g.daemon, "-t", "show").out == render(route_lines(g, detail=False), "bare")


def test_golden_show_pending(golden):
    g = golden
    assert ok(g.daemon, "-p", "show", "pending").out == render(PENDING_LINES, "plain")
    assert ok(g.daemon, "-pt", "show", "p").out == render(PENDING_LINES, "bare")


def test_golden_show_groups_empty(golden):
    g = golden
    for args in (["show", "groups"], ["-p", "show", "groups"], ["-pd", "show", "g"]):
        assert ok(g.daemon, *args).out == "", args
    empty = {"groups": {"conf": [], "kernel": []}}
    assert ok(g.daemon, "-j", "show", "groups").out == json_out(empty)


def test_golden_json(golden):
    g = golden
    assert ok(g.daemon, "-j", "show", "routes").out == json_out(routes_json(g))
    assert ok(g.daemon, "-j").out == json_out(routes_json(g))
    # -j wins over -d
    assert ok(g.daemon, "-jd", "show").out == json_out(routes_json(g))
    assert ok(g.daemon, "-j", "show", "interfaces").out == json_out(interfaces_json(g))
    assert ok(g.daemon, "-j", "show", "pending").out == json_out(PENDING_JSON)


def test_golden_escape_form_when_stdout_is_not_a_tty(golden):
    g = golden
    res = ok(g.daemon, "show")
    assert res.out == render(route_lines(g, detail=False), "escape")
    first = res.out.splitlines()[0]
    assert first == f"{ESC}[4m{' ' * 79}{ESC}[0m"
    assert ok(g.daemon, "show", "interfaces").out == render(interface_lines(g), "escape")
    assert ok(g.daemon, "-d", "show").out == render(route_lines(g, detail=True), "escape")


GROUPS_CONF = f"""\
phyint r-s enable
phyint r-a enable ttl-threshold 3
mgroup from r-s group 225.1.2.3
mgroup from r-s source {SRC} group 225.3.2.1
mgroup from r-a group 225.5.5.4/31
"""
GROUP_ROWS = [f"{'(*, 225.1.2.3)':<42} r-s", f"{f'({SRC}, 225.3.2.1)':<42} r-s",
              f"{'(*, 225.5.5.4/31)':<42} r-a"]
GROUP_LINES = ["Group Memberships Table_", f"{'GROUP (S,G)':<42} {'IIF':<16}=", *GROUP_ROWS]
KERNEL_GROUP_LINES = ["Kernel Group Membership Table_", *GROUP_ROWS,
                      f"{'(*, 225.5.5.5/31)':<42} r-a"]


def test_golden_show_groups(topo, smcrouted):
    """SPEC 4.8's mgroup lines: show groups in every form."""
    d = smcrouted(GROUPS_CONF)
    assert ok(d, "-p", "show", "groups").out == render(GROUP_LINES, "plain")
    assert ok(d, "-pd", "show", "groups").out == render(GROUP_LINES + KERNEL_GROUP_LINES,
                                                        "plain")
    assert ok(d, "-pt", "show", "groups").out == render(GROUP_LINES, "bare")
    assert ok(d, "show", "groups").out == render(GROUP_LINES, "escape")
    conf = [{"source": None, "group": "225.1.2.3", "iif": "r-s"},
            {"source": SRC, "group": "225.3.2.1", "iif": "r-s"},
            {"source": None, "group": "225.5.5.4/31", "iif": "r-a"}]
    kernel = [*conf, {"source": None, "group": "225.5.5.5/31", "iif": "r-a"}]
    want = json_out({"groups": {"conf": conf, "kernel": kernel}})
    assert ok(d, "-j", "show", "groups").out == want
    assert ok(d, "-jd", "show", "groups").out == want
    # batch.sh: grep ADDR | sed 's/[[:space:]]*//g' is exactly one "(S,G)IIF" line
    out = ok(d, "-p", "show", "groups").out
    for addr, want_line in (("225.1.2.3", "(*,225.1.2.3)r-s"),
                            ("225.3.2.1", f"({SRC},225.3.2.1)r-s")):
        hits = [re.sub(r"\s", "", ln) for ln in out.splitlines() if addr in ln]
        assert hits == [want_line], hits
    # json.sh: some conf item with group and iif
    doc = get_json(d, "show", "groups")
    validate(doc, "groups")
    assert any(g["group"] == "225.1.2.3" and g["iif"] == "r-s" for g in doc["groups"]["conf"])


# -- 2. JSON fields, types and json.sh's predicates --------------------------------

def check_fields(item: dict, fields: dict) -> None:
    assert set(item) == set(fields), item
    for name, types in fields.items():
        value = item[name]
        assert any(type(value) is t for t in types), (name, value)


SOURCE_GROUP_IIF = {"source": (str, type(None)), "group": (str,), "iif": (str,)}
ROUTE_FIELDS = {**SOURCE_GROUP_IIF, "oifs": (list,)}


def validate(doc: dict, kind: str) -> None:
    """SPEC 4.7's documented shape, with types (an int is not a bool)."""
    assert list(doc) == [kind], doc
    body = doc[kind]
    if kind == "interfaces":
        for item in body:
            check_fields(item, {"index": (int,), "name": (str,), "vif": (int, type(None)),
                                "mif": (int, type(None))})
    elif kind == "routes":
        assert list(body) == ["asm", "ssm", "kernel"], body
        for section in body.values():
            for item in section:
                check_fields(item, ROUTE_FIELDS)
                assert all(type(o) is str for o in item["oifs"]), item
    elif kind == "groups":
        assert list(body) == ["conf", "kernel"], body
        for section in body.values():
            for item in section:
                check_fields(item, SOURCE_GROUP_IIF)
    elif kind == "pending":
        for item in body:
            check_fields(item, {"kind": (str,), **ROUTE_FIELDS})
            assert item["kind"] in ("mroute", "mgroup")
            assert all(type(o) is str for o in item["oifs"]), item
    else:
        raise AssertionError(kind)


def get_json(daemon, *words: str) -> dict:
    res = ok(daemon, "-j", *words)
    text, _, rest = res.out.partition("\n")
    assert rest == "\n", f"one JSON line and the blank line: {res.out!r}"
    assert " " not in text
    return json.loads(text)


def test_json_documented_fields_and_json_sh_predicates(golden):
    d = golden.daemon
    interfaces = get_json(d, "show", "interfaces")
    validate(interfaces, "interfaces")
    # json.sh: some interface name=='a1' and vif==0 (a1 is the first phyint)
    assert any(i["name"] == "r-s" and i["vif"] == 0 and type(i["vif"]) is int
               for i in interfaces["interfaces"])
    assert any(i["name"] == "lo" and i["vif"] is None for i in interfaces["interfaces"])

    routes = get_json(d, "show", "routes")
    validate(routes, "routes")
    assert any(r["group"] == "225.1.2.0/24" and r["iif"] == "r-s" and r["oifs"] == ["r-a"]
               for r in routes["routes"]["asm"])
    assert any(r["group"] == SSM and r["source"] == SRC for r in routes["routes"]["ssm"])
    assert all(r["source"] is None for r in routes["routes"]["asm"])
    assert any(r["group"] == UNMATCHED and r["oifs"] == [] for r in routes["routes"]["kernel"])

    pending = get_json(d, "show", "pending")
    validate(pending, "pending")
    assert any(p["iif"] == "wg0" and p["group"] == "239.5.5.5" and p["oifs"] == ["r-a"]
               for p in pending["pending"])

    validate(get_json(d, "show", "groups"), "groups")
    # the default show (no word) is routes
    default = get_json(d)
    validate(default, "routes")
    assert set(default["routes"]) == {"asm", "ssm", "kernel"}


def test_json_empty_pending_is_an_empty_list(topo, smcrouted):
    d = smcrouted("phyint r-s enable\n")
    doc = get_json(d, "show", "pending")
    validate(doc, "pending")
    assert doc == {"pending": []}
    res = ok(d, "-p", "show", "pending")
    assert res.out.startswith("No pending routes or groups\n"), res.out
    doc = get_json(d, "show")
    assert doc == {"routes": {"asm": [], "ssm": [], "kernel": []}}
    # an empty routes table prints nothing
    assert ok(d, "-p", "show").out == ""


# -- 3. add / remove semantics --------------------------------------------------

EDIT_CONF = f"""\
phyint r-s enable
mroute from r-s source {SRC} group 225.3.2.1 to r-a
mroute from r-s group 225.1.2.0/24 to r-a
"""


def mfc4(topo) -> set:
    return read_mfc(topo.router, V4)


def sg(group: str, *oifs: str, source: str = SRC, iif: str = "r-s"):
    return mfc_entry(source, group, iif, oifs)


def oifs_of(topo, group: str) -> frozenset | None:
    for e in mfc4(topo):
        if e.group == group and e.source == SRC:
            return e.oifs
    return None


def test_add_merges_oifs_and_remove_leaves_a_stop_filter(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    assert mfc4(topo) == {sg("225.3.2.1", "r-a")}

    ok(d, "add", "r-s", SRC, "225.3.2.1", "r-b")
    assert mfc4(topo) == {sg("225.3.2.1", "r-a", "r-b")}
    # the rule itself shows both, in order
    assert f"({SRC}, 225.3.2.1)" in ok(d, "-pt", "show").out
    rules = [ln for ln in ok(d, "-pt", "show").out.splitlines() if "225.3.2.1" in ln]
    assert rules and all(ln.endswith(" r-a r-b") for ln in rules), rules

    ok(d, "add", "r-s", SRC, "225.3.2.1", "r-b", "r-c")  # r-b again: merged, not doubled
    assert mfc4(topo) == {sg("225.3.2.1", "r-a", "r-b", "r-c")}

    ok(d, "remove", "r-s", SRC, "225.3.2.1", "r-a", "r-c")
    assert mfc4(topo) == {sg("225.3.2.1", "r-b")}

    # the last OIF gone: the (S,G) stays as a stop filter
    ok(d, "del", "r-s", SRC, "225.3.2.1", "r-b")
    assert mfc4(topo) == {sg("225.3.2.1")}
    assert get_json(d, "show")["routes"]["ssm"] == [
        {"source": SRC, "group": "225.3.2.1", "iif": "r-s", "oifs": []}]

    # without OIFs: the whole rule goes, and its kernel entry
    ok(d, "rem", "r-s", SRC, "225.3.2.1")
    assert mfc4(topo) == set()
    assert get_json(d, "show")["routes"]["ssm"] == []


def test_add_and_remove_new_routes(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    ok(d, "add", "r-s", SRC, "225.4.4.4", "r-a", "r-c")
    ok(d, "a", "r-s", SRC, "225.4.4.5", "r-b")
    assert mfc4(topo) == {sg("225.3.2.1", "r-a"), sg("225.4.4.4", "r-a", "r-c"),
                          sg("225.4.4.5", "r-b")}
    ok(d, "d", "r-s", SRC, "225.4.4.4")
    assert mfc4(topo) == {sg("225.3.2.1", "r-a"), sg("225.4.4.5", "r-b")}
    # IPv6 too
    src6 = topo.source(V6)
    ok(d, "add", "r-s", src6, "ff0e::4:4", "r-b")
    assert read_mfc(topo.router, V6) == {mfc_entry(src6, "ff0e::4:4", "r-s", ["r-b"])}
    ok(d, "remove", "r-s", src6, "ff0e::4:4")
    assert read_mfc(topo.router, V6) == set()


def test_added_template_routes_traffic(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    ok(d, "add", "r-s", "225.6.0.0/16", "r-b")
    assert mfc4(topo) == {sg("225.3.2.1", "r-a")}  # a template installs nothing by itself
    got = flow(topo, "225.6.1.1", ["A", "B", "C"], {"B": 20})
    assert got == {"A": 0, "B": 20, "C": 0}
    assert sg("225.6.1.1", "r-b") in mfc4(topo)
    templates = get_json(d, "show")["routes"]["asm"]
    assert {"source": None, "group": "225.6.0.0/16", "iif": "r-s", "oifs": ["r-b"]} in templates


def test_add_with_missing_oif_goes_pending(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    ok(d, "add", "r-s", "225.1.2.4", "nosuch")
    out = ok(d, "-p", "show", "pending").out
    assert re.search(r"^mroute.*from r-s.*group 225\.1\.2\.4.*to nosuch", out, re.M), out


def test_remove_missing_route_fails(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    before = mfc4(topo)
    for words in (["remove", "r-s", "225.7.7.7"], ["del", "r-s", "225.7.7.7"],
                  ["remove", "r-s", "10.0.1.9", "225.3.2.1"],  # other source
                  ["remove", "r-a", SRC, "225.3.2.1"]):  # other inbound
        res = fails(d, *words)
        assert res.err.count("\n") == 1, str(res)
        assert words[-1] in res.err and words[1] in res.err, str(res)
    res = fails(d, "remove", "r-s", "225.7.7.7")
    assert res.err == "smcroutectl: mroute: no route from r-s (*, 225.7.7.7) to remove\n"
    assert mfc4(topo) == before


# SPEC 3.5's verified texts where SMCRoute gives a real error; our own
# wording for what it accepted silently or crashed on.
ERRORS = [
    (["add", "r-s", "1.2.3.999", "225.1.2.3", "r-a"],
     "smcroutectl: mroute: invalid source/group address: 1.2.3.999\n"),
    (["add", "r-s", "1.2.3.4", "1.2.3.5", "r-a"],
     "smcroutectl: mroute: invalid multicast group: 1.2.3.5\n"),
    (["add", "nosuch", "225.1.2.4", "r-a"],
     "smcroutectl: ipc: mroute: inbound nosuch is not a known phyint\n"),
    (["add", "r-s", "1.2.3.4", "ff2e::1", "r-a"], None),  # mixed families: crashes upstream
    (["add", "r-s", "225.1.2.3/33", "r-a"], None),  # bad prefix: accepted upstream
    (["add", "r-s", "fd00:1::2", "ff2e::1/129", "r-a"], None),
    (["add", "r-s", "225.1.2.3", *["r-a"] * 33], None),  # more than 32 OIFs
    (["add", "r-s", "nonsense", "225.1.2.3", "r-a"], None),
    (["remove", "r-s", "1.2.3.999", "225.1.2.3"], None),
]


@pytest.mark.parametrize("words, want", ERRORS, ids=[" ".join(w)[:40] for w, _ in ERRORS])
def test_errors(topo, smcrouted, words, want):
    d = smcrouted(EDIT_CONF)
    before = mfc4(topo)
    res = fails(d, *words)
    assert res.err.count("\n") == 1, str(res)
    if want is not None:
        assert res.err == want
    assert mfc4(topo) == before
    assert d.proc.poll() is None


def test_oversized_request_is_refused_with_a_message(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    for words in (["add", "r-s", "225.1.1.1", "x" * 70_000, "r-a"],  # > one 64 KiB frame
                  ["add", "r-s", "225.1.1.1", "x" * 300, "r-a"],  # > 256 per argument
                  ["show", "ab\x01"]):
        fails(d, *words)
    assert d.proc.poll() is None
    ok(d, "-p", "show")


def test_reload_drops_smcroutectl_changes(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    start = mfc4(topo)
    ok(d, "add", "r-s", SRC, "225.3.2.1", "r-b")
    ok(d, "add", "r-s", SRC, "225.5.5.5", "r-c")
    assert mfc4(topo) != start
    res = ok(d, "reload")
    assert res.out == ""
    assert mfc4(topo) == start  # synchronous: done when smcroutectl returns
    ok(d, "add", "r-s", SRC, "225.5.5.6", "r-c")
    ok(d, "restart")  # hidden alias
    assert mfc4(topo) == start
    ok(d, "r")
    assert mfc4(topo) == start


def test_flush_removes_learned_routes_only(golden):
    g = golden
    ok(g.daemon, "flush")
    assert mfc4(g.topo) == {sg(SSM, "r-a")}
    ok(g.daemon, "f")


# -- 4. batch mode ------------------------------------------------------------

BATCH = f"""\
add r-s {SRC} 225.8.8.1 r-a
add r-s {SRC} 225.8.8.2 r-b
remove r-s 225.99.99.99
# a comment
add r-s {SRC} 225.8.8.1 r-c
add nosuch 225.8.8.3 r-a

remove r-s {SRC} 225.8.8.2
add r-s {SRC} 225.8.8.4 r-a
remove r-s {SRC} 225.8.8.4 r-a
"""


def test_batch_applies_in_order_exit_is_failures(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    res = ctl(d, "-b", stdin=BATCH)
    assert res.status == 2, str(res)
    assert res.out == ""
    assert res.err.splitlines() == [
        "smcroutectl: mroute: no route from r-s (*, 225.99.99.99) to remove",
        "smcroutectl: ipc: mroute: inbound nosuch is not a known phyint",
    ]
    assert mfc4(topo) == {sg("225.3.2.1", "r-a"), sg("225.8.8.1", "r-a", "r-c"),
                          sg("225.8.8.4")}
    # one connection: every audit line of the batch has the same peer pid
    pids = set(re.findall(r"control request .*peer_pid=(\d+) .*225\.8\.8\.", d.log()))
    assert len(pids) == 1, pids


def test_batch_mixed_with_show_and_help(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    text = f"show interfaces\nadd r-s {SRC} 225.8.8.8 r-b\nadd r-s\nshow\nversion\n"
    res = ctl(d, "-pt", "-b", stdin=text)
    assert res.status == 1, str(res)
    assert "smcroutectl: Not enough arguments to command add" in res.err
    assert "Help:\n  Add a multicast route\n" in res.out
    assert "smcroute-py v" in res.out
    rows = [ln for ln in res.out.splitlines() if "225.8.8.8" in ln]
    assert len(rows) == 2, res.out  # (S,G) rule and kernel entry, shown after the add
    assert sg("225.8.8.8", "r-b") in mfc4(topo)


def test_batch_of_many_lines_completes(topo, smcrouted):
    """A long batch must not deadlock: the client writes all requests while
    the daemon writes the replies (bounded: the timeout fails the test)."""
    d = smcrouted("phyint r-s enable\n", ["-l", "notice"])
    # (a tenth under emulation: still far more than the socket buffers hold)
    n = int(40_000 / TIME_SCALE)
    res = ctl(d, "-b", stdin="show groups\n" * n, timeout=60)
    assert res.status == 0 and res.err == "", str(res)
    assert d.proc.poll() is None


# -- 6. reload of a bad config --------------------------------------------------

def test_reload_of_bad_config_reports_every_error_and_changes_nothing(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    ok(d, "add", "r-s", SRC, "225.5.5.5", "r-c")  # kept too: nothing is applied
    before = (mfc4(topo), read_mfc(topo.router, V6))
    lines = ["phyint r-s enable", "mroute to r-a", f"mroute from r-s source {SRC} group 225.9.9.1"
             " to r-b", f"mroute from r-s source {SRC} group", "phyint r-c enable"]
    d.conf.write_text("\n".join(lines) + "\n")
    res = ctl(d, "reload")
    assert res.status == 1, str(res)
    assert res.out == ""
    errs = res.err.splitlines()
    conf = str(d.conf)
    for line_no in (2, 4):
        assert any(e.startswith(f"smcroutectl: {conf} line {line_no}: ") for e in errs), str(res)
    assert all(e.startswith(f"smcroutectl: {conf} line ") for e in errs), str(res)
    assert (mfc4(topo), read_mfc(topo.router, V6)) == before
    # the daemon goes on; a good config is then applied
    d.conf.write_text(EDIT_CONF)
    ok(d, "reload")
    assert mfc4(topo) == {sg("225.3.2.1", "r-a")}


def test_reload_of_missing_config_fails(topo, smcrouted):
    """A missing file is an error like any other: reported, nothing changed
    (SMCRoute would remove everything; our reload is atomic)."""
    d = smcrouted(EDIT_CONF)
    before = mfc4(topo)
    d.conf.unlink()
    res = fails(d, "reload")
    assert str(d.conf) in res.err, str(res)
    assert mfc4(topo) == before
    assert d.proc.poll() is None


# -- kill and connect errors ---------------------------------------------------------

def test_kill_stops_the_daemon(topo, smcrouted):
    d = smcrouted(EDIT_CONF)
    ok(d, "kill")
    assert d.wait_exit(10) == 0, d.log()
    assert not d.sock.exists()
    res = ctl(d, "show")
    assert (res.status, res.err) == (
        1, f"smcroutectl: Cannot find IPC socket {d.sock}\n"
           "smcroutectl: Failed connecting to daemon: No such file or directory\n")


# -- 5. access by group -----------------------------------------------------------------

@dataclass
class Accounts:
    full_group: str
    ro_group: str
    full_user: str  # primary group: full_group
    ro_user: str  # primary group: ro_group
    other_user: str  # in neither
    full_supp: str  # full_group as a supplementary group
    ro_supp: str  # ro_group as a supplementary group

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    """Two system groups and five system users, unique names; always deleted."""
    for tool in ("groupadd", "useradd", "userdel", "groupdel", "setpriv"):
        if not any(os.access(os.path.join(p, tool), os.X_OK)
                   for p in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
            pytest.skip(f"{tool} not available")
    tag = secrets.token_hex(3)
    acc = Accounts(*(f"smcpy-{role}-{tag}" for role in ("fg", "rg", "fu", "ru", "ou", "fs",
                                                          "rs")))
    users: list[str] = []
    groups: list[str] = []
    try:
        for g in (acc.full_group, acc.ro_group):
            _run(["groupadd", "--system", g])
            groups.append(g)
        for user, primary, extra in (
                (acc.full_user, acc.full_group, None), (acc.ro_user, acc.ro_group, None),
                (acc.other_user, "nogroup", None), (acc.full_supp, "nogroup", acc.full_group),
                (acc.ro_supp, "nogroup", acc.ro_group)):
            _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                  "--no-user-group", "--gid", primary,
                  *(["--groups", extra] if extra else []), user])
            users.append(user)
        yield acc
    finally:
        for user in users:
            subprocess.run(["userdel", user], capture_output=True, timeout=30, check=False)
        for g in groups:
            subprocess.run(["groupdel", g], capture_output=True, timeout=30, check=False)


def traversable_by_all(path: Path) -> None:
    """Every directory above the socket must be searchable by the test users."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        assert mode & stat.S_IXOTH, f"{parent} is not traversable ({oct(mode)})"


def test_access_by_group(topo, smcrouted, accounts):
    acc = accounts
    d = smcrouted(EDIT_CONF, ["-p", "nobody", "--socket-group", acc.full_group,
                              "--readonly-group", acc.ro_group])
    traversable_by_all(d.sock)
    st = d.sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    assert st.st_gid == grp.getgrnam(acc.full_group).gr_gid

    # read-only group: show yes, anything else no
    res = ok(d, "-p", "show", "interfaces", user=acc.ro_user)
    assert "r-s" in res.out
    ok(d, "-j", "show", user=acc.ro_user)
    before = mfc4(topo)
    for words in (["add", "r-s", SRC, "225.3.2.1", "r-b"], ["remove", "r-s", SRC, "225.3.2.1"],
                  ["flush"], ["reload"], ["kill"]):
        res = fails(d, *words, user=acc.ro_user)
        assert res.err == (f"smcroutectl: Permission denied: user {acc.ro_user} may only use"
                           f" show (a member of the read-only group {acc.ro_group});"
                           f" {words[0]} needs root or a member of group {acc.full_group}\n"
                           ), str(res)
    assert mfc4(topo) == before

    # neither group: not even show (that the reason always reaches the
    # client is test_refused_peer_always_gets_the_reason's business)
    for words in (["show"], ["add", "r-s", SRC, "225.3.2.1", "r-b"], ["kill"]):
        res = ctl(d, *words, user=acc.other_user)
        assert res.status == 1 and "Traceback" not in res.err, str(res)
        assert res.err in ("", f"smcroutectl: Permission denied: user {acc.other_user} is neither"
                           f" root nor a member of group {acc.full_group}; ask to be added to"
                           " it\n"), str(res)

    # socket group: everything
    ok(d, "add", "r-s", SRC, "225.3.2.1", "r-b", user=acc.full_user)
    assert mfc4(topo) == {sg("225.3.2.1", "r-a", "r-b")}
    ok(d, "-p", "show", user=acc.full_user)
    assert d.proc.poll() is None

    # the audit trail names who asked what, with the result
    log = d.log()
    full_uid, ro_uid = acc.uid(acc.full_user), acc.uid(acc.ro_user)
    assert re.search(rf"control request peer_uid={full_uid} peer_gid=\d+ peer_pid=\d+"
                     rf" command=add args=r-s {SRC} 225\.3\.2\.1 r-b result=ok", log), log
    assert re.search(rf"control request peer_uid={ro_uid} .*command=add .*"
                     r"result=refused: Permission denied", log), log
    assert re.search(rf"control request peer_uid={acc.uid(acc.other_user)} .*"
                     r"result=refused: Permission denied", log), log


def test_refused_peer_always_gets_the_reason(topo, smcrouted, accounts):
    """The daemon refuses a peer in neither group as soon as it connects;
    smcroutectl must still print the reason, whether or not the daemon had
    closed the connection before the request was written."""
    acc = accounts
    d = smcrouted(EDIT_CONF, ["-p", "nobody", "--socket-group", acc.full_group,
                              "--readonly-group", acc.ro_group])
    silent = 0
    for _ in range(20):
        res = ctl(d, "show", user=acc.other_user)
        assert res.status == 1 and "Traceback" not in res.err, str(res)
        silent += res.err == ""
    assert silent == 0, f"{silent} of 20 refusals exited 1 without a word"


def test_audit_of_refused_request_names_its_arguments(topo, smcrouted, accounts):
    """A refused mutating request is logged with what it asked for, like an
    accepted one (command and args), not only the refusal."""
    acc = accounts
    d = smcrouted(EDIT_CONF, ["-p", "nobody", "--socket-group", acc.full_group,
                              "--readonly-group", acc.ro_group])
    fails(d, "add", "r-s", SRC, "225.3.2.1", "r-b", user=acc.ro_user)
    line = next((ln for ln in d.log().splitlines()
                 if f"peer_uid={acc.uid(acc.ro_user)}" in ln and "command=add" in ln), None)
    assert line is not None, d.log()
    assert f"args=r-s {SRC} 225.3.2.1 r-b" in line, line


def test_access_by_supplementary_group(topo, smcrouted, accounts):
    """Group membership counts whether the group is the peer's primary or a
    supplementary one (SO_PEERGROUPS), as `usermod -aG` makes it."""
    acc = accounts
    d = smcrouted(EDIT_CONF, ["-p", "nobody", "--socket-group", acc.full_group,
                              "--readonly-group", acc.ro_group])
    ok(d, "-p", "show", user=acc.ro_supp)
    res = fails(d, "add", "r-s", SRC, "225.3.2.1", "r-b", user=acc.ro_supp)
    assert "Permission denied" in res.err and "read-only" in res.err, str(res)
    ok(d, "add", "r-s", SRC, "225.3.2.1", "r-b", user=acc.full_supp)
    assert mfc4(topo) == {sg("225.3.2.1", "r-a", "r-b")}


def test_socket_group_without_read_only_group(topo, smcrouted, accounts):
    acc = accounts
    d = smcrouted(EDIT_CONF, ["-p", "nobody", "--socket-group", acc.full_group])
    st = d.sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == grp.getgrnam(acc.full_group).gr_gid
    ok(d, "add", "r-s", SRC, "225.3.2.1", "r-b", user=acc.full_user)
    # the file mode already keeps the others out
    for user in (acc.ro_user, acc.other_user):
        res = fails(d, "show", user=user)
        assert res.err == (f"smcroutectl: Permission denied connecting to daemon at {d.sock}:"
                           f" root, user nobody and members of group {acc.full_group} may;"
                           f" ask to be added to group {acc.full_group}\n"), str(res)
    ok(d, "show")  # root


ATTACKER = Path(__file__).with_name("ctl_attacker.py")
ATTACK_SECONDS = 6.0
LOG_GROWTH_BOUND = 16 * 1024  # bytes over the whole attack (its own lines: a few per uid)


def test_root_and_the_admin_group_are_served_under_attack(topo, smcrouted, accounts):
    acc = accounts
    d = smcrouted(EDIT_CONF, ["-p", "nobody", "--socket-group", acc.full_group,
                              "--readonly-group", acc.ro_group])
    ok(d, "show")
    before = d.logfile.stat().st_size

    def attacker(user: str, *args: str) -> subprocess.Popen:
        entry = pwd.getpwnam(user)
        return subprocess.Popen(
            ["ip", "netns", "exec", d.ns.name, "setpriv", "--reuid", str(entry.pw_uid),
             "--regid", str(entry.pw_gid), "--init-groups", "--", "/usr/bin/python3", "-I",
             str(ATTACKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [attacker(acc.other_user, "flood", str(d.sock), str(ATTACK_SECONDS)),
             attacker(acc.ro_user, "slow", str(d.sock), str(ATTACK_SECONDS), "64")]
    timings = []
    try:
        time.sleep(1.0)  # the attack is under way
        for i in range(3):
            for user, words in ((None, ["show"]), (acc.full_user, ["show"]),
                                (None, ["add", "r-s", SRC, f"225.3.9.{i + 1}", "r-b"]),
                                (acc.full_user, ["add", "r-s", SRC, f"225.3.8.{i + 1}", "r-b"])):
                start = time.monotonic()
                ok(d, *words, user=user)
                timings.append((user or "root", words[0], time.monotonic() - start))
    finally:
        outs = [p.communicate(timeout=ATTACK_SECONDS + 30) for p in procs]
    flooded, slowed = (int(out.strip() or 0) for out, _ in outs)
    assert flooded > 1000 and slowed >= 8, (outs, d.log()[-3000:])
    # (answered within a second: ten under emulation, scripts/test.sh)
    assert all(t < 1.0 * TIME_SCALE for *_, t in timings), timings
    grown = d.logfile.stat().st_size - before
    assert grown < LOG_GROWTH_BOUND, (grown, d.log()[-3000:])
    assert d.proc.poll() is None
