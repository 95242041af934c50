"""Group join/leave (SPEC 6, 2.5, 3.4-3.5, 4.4, 4.7, 7): mgroup/ssmgroup in
the config and smcroutectl join/leave make the router namespace's kernel
join exactly the memberships they stand for, on the interfaces they name.

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
The kernel state is read from R's /proc/net/igmp, igmp6, mcfilter and
mcfilter6 (via /proc/<daemon pid>/net/...); the reports the router sends
are captured on the wire in A's namespace (a-r, the far end of r-a).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket

import pytest

from .netns import (
    ALLOW_NEW_SOURCES,
    BLOCK_OLD_SOURCES,
    CHANGE_TO_EXCLUDE,
    CHANGE_TO_INCLUDE,
    IGMP_V2_REPORT,
    IGMP_V3_REPORT,
    MLD_V2_REPORT,
    MODE_IS_EXCLUDE,
    MODE_IS_INCLUDE,
    GroupRecord,
    ReportCapture,
    mcfilter_sentinel,
    netns_available,
    read_igmp,
    read_mcfilter,
    wait_for,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
S4, S6 = "10.0.1.2", "fd00:1::2"  # the sender's addresses (sources for SSM joins)
ROUTER_IFS = ("r-s", "r-a", "r-b", "r-c")
READY = "Ready, waiting for client request or kernel event."
RELOADING = "Reloading configuration, please wait ..."
TIMEOUT = 5.0

JOIN_TYPES = {CHANGE_TO_EXCLUDE, MODE_IS_EXCLUDE}  # ASM join: EXCLUDE {}
SSM_JOIN_TYPES = {ALLOW_NEW_SOURCES, CHANGE_TO_INCLUDE, MODE_IS_INCLUDE}
LEAVE_TYPES = {CHANGE_TO_INCLUDE}  # ASM leave: TO_IN {}
SSM_LEAVE_TYPES = {BLOCK_OLD_SOURCES, CHANGE_TO_INCLUDE}


# -- reading the kernel ---------------------------------------------------------


@pytest.fixture(autouse=True)
def _complete_mcfilter(topo):
    """/proc/net/mcfilter(6) of R lists every source filter only with this
    held (a kernel quirk, see netns.mcfilter_sentinel)."""
    with mcfilter_sentinel(topo.router):
        yield


def kernel_groups(daemon, ifname: str, family: int = V4) -> dict[str, int]:
    """{group: users} the router joined on ifname, without the groups the
    kernel joins by itself (224.0.0.0/24, ff01::/16, ff02::/16)."""
    table = read_igmp(daemon.pid, family).get(ifname, {})
    own = ("224.0.0.",) if family == V4 else ("ff01:", "ff02:")
    return {g: n for g, n in table.items() if not g.startswith(own)}


def all_groups(daemon) -> dict[tuple[int, str], dict[str, int]]:
    return {(f, i): kernel_groups(daemon, i, f) for f in (V4, V6) for i in ROUTER_IFS}


def sources(daemon, family: int = V4) -> dict[tuple[str, str, str], tuple[int, int]]:
    return read_mcfilter(daemon.pid, family)


def snapshot(daemon) -> tuple:
    """Everything a join could change in the kernel."""
    return all_groups(daemon), sources(daemon, V4), sources(daemon, V6)


def join_sockets(pid: int) -> int:
    """Sockets of the controller (the daemon's own pid) that are neither
    unix nor netlink sockets: its pool of group-join UDP sockets (an unbound
    UDP socket is not listed in /proc/net/udp)."""
    known = set()
    for table in ("unix", "netlink", "packet"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if table == "unix" and len(fields) >= 7:
                        known.add(fields[6])
                    elif table == "netlink" and len(fields) >= 10:
                        known.add(fields[9])
                    elif table == "packet" and len(fields) >= 9:
                        known.add(fields[8])
        except FileNotFoundError:
            pass
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m and m.group(1) not in known:
            count += 1
    return count


def stable_join_sockets(pid: int) -> int:
    """join_sockets(), once two readings agree (a control connection closing
    concurrently must not be counted)."""
    last = [join_sockets(pid)]

    def settled():
        now = join_sockets(pid)
        same = now == last[0]
        last[0] = now
        return same

    wait_for(settled, 2.0, interval=0.1)
    return last[0]


def ip4_range(network: str) -> set[str]:
    return {str(a) for a in ipaddress.ip_network(network, strict=False)}


# -- smcroutectl ------------------------------------------------------------------


def ok(daemon, *args: str) -> str:
    res = daemon.ctl(*args)
    assert res.returncode == 0, (
        f"smcroutectl {' '.join(args)}: exit {res.returncode}\n{res.stdout}{res.stderr}")
    return res.stdout


def refused(daemon, *args: str) -> str:
    """Run a command that must fail: exit 1 and an smcroutectl: message."""
    res = daemon.ctl(*args)
    assert res.returncode == 1, (
        f"smcroutectl {' '.join(args)} should fail, got exit {res.returncode}\n"
        f"stdout: {res.stdout!r}\nstderr: {res.stderr!r}")
    assert res.stderr.startswith("smcroutectl: "), res.stderr
    return res.stderr


def groups_json(daemon) -> dict:
    out = ok(daemon, "-j", "show", "groups")
    return json.loads(out.strip().splitlines()[0])["groups"]


def conf_entries(daemon) -> list[tuple]:
    return [(g["source"], g["group"], g["iif"]) for g in groups_json(daemon)["conf"]]


def batch_parse(text: str, address: str) -> list[str]:
    """batch.sh: grep ADDR | sed 's/[[:space:]]*//g' (SPEC 4.9)."""
    return [re.sub(r"\s", "", line) for line in text.splitlines() if address in line]


def reload_sighup(daemon, config: str) -> str:
    """Write config, SIGHUP, wait until ready again; the log part of the reload."""
    before = daemon.log()
    readies = before.count(READY)
    daemon.conf.write_text(config)
    daemon.proc.send_signal(signal.SIGHUP)
    done = wait_for(lambda: daemon.log().count(READY) > readies, 10.0, interval=0.02)
    log = daemon.log()
    assert done, f"reload did not finish; log:\n{log}"
    assert daemon.proc.poll() is None, f"smcrouted exited during reload; log:\n{log}"
    part = log[len(before):]
    assert part.count(RELOADING) == 1, part
    return part


# -- the wire ------------------------------------------------------------------------


def records_for(records: list[GroupRecord], group: str) -> list[GroupRecord]:
    return [r for r in records if r.group == group]


def asm_join_seen(records, group: str) -> bool:
    return any((r.kind in (IGMP_V3_REPORT, MLD_V2_REPORT) and r.rtype in JOIN_TYPES
                and not r.sources) or r.kind == IGMP_V2_REPORT
               for r in records_for(records, group))


def ssm_join_seen(records, group: str, source: str) -> bool:
    return any(r.kind in (IGMP_V3_REPORT, MLD_V2_REPORT) and r.rtype in SSM_JOIN_TYPES
               and source in r.sources for r in records_for(records, group))


def asm_leave_seen(records, group: str) -> bool:
    return any(r.rtype in LEAVE_TYPES and not r.sources for r in records_for(records, group))


def ssm_leave_seen(records, group: str, source: str) -> bool:
    return any(r.rtype in SSM_LEAVE_TYPES and source in r.sources
               for r in records_for(records, group))


# -- tests ---------------------------------------------------------------------------

CONFIG_JOINS = """\
# ASM and SSM, IPv4 and IPv6, on r-a; a wildcard; the ssmgroup alias
mgroup from r-a group 225.1.1.1
ssmgroup from r-a source 10.0.1.2 group 225.1.1.2
mgroup from r-a group ff0e::1:1
mgroup group ff3e::1:2 source fd00:1::2 from r-a
mgroup from r-+ group 225.1.1.3
mgroup from r-b group 225.1.1.4
mgroup from r-b source 10.0.1.2 group 225.1.1.5
mgroup from r-b source 10.0.3.2 group 225.1.1.5
"""


def test_config_joins_kernel_wire_and_show(topo, smcrouted):
    """Config joins land in the kernel, the router reports them on the wire
    (IGMPv3 and MLDv2, ASM and SSM), and show groups lists them."""
    with ReportCapture(topo.ns["A"], topo.leaf_if("A")) as cap:
        daemon = smcrouted(CONFIG_JOINS)

        # kernel: /proc/net/igmp (users = sockets joined) and mcfilter
        want_a = {"225.1.1.1": 1, "225.1.1.2": 1, "225.1.1.3": 1}
        assert wait_for(lambda: kernel_groups(daemon, "r-a") == want_a, TIMEOUT), (
            kernel_groups(daemon, "r-a"))
        # one socket may hold (S1,G) and (S2,G): one user, two included sources
        assert kernel_groups(daemon, "r-b") in (
            {"225.1.1.3": 1, "225.1.1.4": 1, "225.1.1.5": 1},
            {"225.1.1.3": 1, "225.1.1.4": 1, "225.1.1.5": 2})
        for ifname in ("r-s", "r-c"):
            assert kernel_groups(daemon, ifname) == {"225.1.1.3": 1}, ifname
        assert set(sources(daemon, V4)) == {
            ("r-a", "225.1.1.2", S4), ("r-b", "225.1.1.5", S4), ("r-b", "225.1.1.5", "10.0.3.2")}
        assert all(inc >= 1 and exc == 0 for inc, exc in sources(daemon, V4).values())
        assert kernel_groups(daemon, "r-a", V6) == {"ff0e::1:1": 1, "ff3e::1:2": 1}
        assert sources(daemon, V6) == {("r-a", "ff3e::1:2", S6): (1, 0)}
        for ifname in ("r-s", "r-b", "r-c"):
            assert kernel_groups(daemon, ifname, V6) == {}, ifname

        # the wire: what A hears from the router on r-a
        def heard(records) -> bool:
            return (asm_join_seen(records, "225.1.1.1")
                    and ssm_join_seen(records, "225.1.1.2", S4)
                    and asm_join_seen(records, "225.1.1.3")
                    and asm_join_seen(records, "ff0e::1:1")
                    and ssm_join_seen(records, "ff3e::1:2", S6))

        assert cap.wait(heard, TIMEOUT), cap.records
        v4 = [r for r in cap.records if r.family == V4]
        v6 = [r for r in cap.records if r.family == V6]
        assert any(r.kind == IGMP_V3_REPORT for r in v4), v4  # the default IGMP version
        assert {r.sender for r in v4 if r.group.startswith("225.")} == {"10.0.2.1"}
        assert all(r.kind == MLD_V2_REPORT for r in records_for(v6, "ff0e::1:1")), v6
        for group in ("225.1.1.4", "225.1.1.5"):  # joined on r-b only
            assert not records_for(cap.records, group), cap.records

    # show groups (SPEC 4.4): configured rules, one line each in brief mode
    brief = ok(daemon, "-p", "show", "groups")
    assert "Group Memberships Table" in brief
    assert "Kernel Group Membership Table" not in brief
    assert batch_parse(brief, "225.1.1.1") == ["(*,225.1.1.1)r-a"]
    assert batch_parse(brief, "225.1.1.2") == ["(10.0.1.2,225.1.1.2)r-a"]
    assert batch_parse(brief, "ff0e::1:1") == ["(*,ff0e::1:1)r-a"]
    assert batch_parse(brief, "ff3e::1:2") == ["(fd00:1::2,ff3e::1:2)r-a"]
    assert batch_parse(brief, "225.1.1.3") == ["(*,225.1.1.3)r-+"]
    assert batch_parse(brief, "225.1.1.5") == [
        "(10.0.1.2,225.1.1.5)r-b", "(10.0.3.2,225.1.1.5)r-b"]
    rows = [line for line in brief.splitlines() if line.startswith("(")]
    assert rows[0] == f"{'(*, 225.1.1.1)':<42} r-a"
    assert len(rows) == 8  # config order, one per line

    detail = ok(daemon, "-p", "-d", "show", "groups")
    head, _, kernel = detail.partition("Kernel Group Membership Table")
    assert kernel, detail
    assert batch_parse(head, "225.1.1.1") == ["(*,225.1.1.1)r-a"]
    assert sorted(batch_parse(kernel, "225.1.1.3")) == ["(*,225.1.1.3)r-+"] * 4
    assert batch_parse(kernel, "ff3e::1:2") == ["(fd00:1::2,ff3e::1:2)r-a"]

    data = groups_json(daemon)
    assert set(data) == {"conf", "kernel"}
    assert data["conf"] == [
        {"source": None, "group": "225.1.1.1", "iif": "r-a"},
        {"source": "10.0.1.2", "group": "225.1.1.2", "iif": "r-a"},
        {"source": None, "group": "ff0e::1:1", "iif": "r-a"},
        {"source": "fd00:1::2", "group": "ff3e::1:2", "iif": "r-a"},
        {"source": None, "group": "225.1.1.3", "iif": "r-+"},
        {"source": None, "group": "225.1.1.4", "iif": "r-b"},
        {"source": "10.0.1.2", "group": "225.1.1.5", "iif": "r-b"},
        {"source": "10.0.3.2", "group": "225.1.1.5", "iif": "r-b"},
    ]
    assert len(data["kernel"]) == 11  # 225.1.1.3 on four interfaces
    assert data["kernel"].count({"source": None, "group": "225.1.1.3", "iif": "r-+"}) == 4


CTL_CONFIG = """\
mgroup from r-a group 225.2.0.1
mgroup from r-a source 10.0.1.2 group 225.2.0.2
mgroup from r-+ group ff0e::2:1
"""


def test_smcroutectl_join_leave(topo, smcrouted):
    daemon = smcrouted(CTL_CONFIG)
    assert wait_for(lambda: "225.2.0.2" in kernel_groups(daemon, "r-a"), TIMEOUT)

    # join: ASM and SSM, IPv4 and IPv6
    ok(daemon, "join", "r-b", "225.2.1.1")
    ok(daemon, "join", "r-b", S4, "225.2.1.2")
    ok(daemon, "join", "r-b", "ff0e::2:2")
    ok(daemon, "join", "r-b", S6, "ff3e::2:3")
    assert kernel_groups(daemon, "r-b") == {"225.2.1.1": 1, "225.2.1.2": 1}
    assert ("r-b", "225.2.1.2", S4) in sources(daemon, V4)
    assert ("r-b", "225.2.1.1", S4) not in sources(daemon, V4)
    assert kernel_groups(daemon, "r-b", V6) == {"ff0e::2:1": 1, "ff0e::2:2": 1, "ff3e::2:3": 1}
    assert sources(daemon, V6) == {("r-b", "ff3e::2:3", S6): (1, 0)}
    conf = conf_entries(daemon)
    assert conf[3:] == [(None, "225.2.1.1", "r-b"), (S4, "225.2.1.2", "r-b"),
                        (None, "ff0e::2:2", "r-b"), (S6, "ff3e::2:3", "r-b")]

    # duplicates: same interface string, source address, group (and its length)
    before = snapshot(daemon)
    for args in (("r-b", "225.2.1.1"), ("r-b", S4, "225.2.1.2"),
                 ("r-b", "10.0.1.2/24", "225.2.1.2"),  # the source length is not compared
                 ("r-a", "225.2.0.1"), ("r-+", "ff0e::2:1"), ("r-b", S6, "ff3e::2:3")):
        err = refused(daemon, "join", *args)
        assert "Already joined" in err and args[-1] in err and args[0] in err, err
    assert snapshot(daemon) == before
    assert len(conf_entries(daemon)) == 7

    # (S,G) beside (*,G) of the same group is another join (on another socket)
    ok(daemon, "join", "r-b", S4, "225.2.1.1")
    assert kernel_groups(daemon, "r-b")["225.2.1.1"] == 2
    ok(daemon, "leave", "r-b", S4, "225.2.1.1")
    assert kernel_groups(daemon, "r-b")["225.2.1.1"] == 1
    assert ("r-b", "225.2.1.1", S4) not in sources(daemon, V4)

    # leave
    ok(daemon, "leave", "r-b", "225.2.1.1")
    assert "225.2.1.1" not in kernel_groups(daemon, "r-b")
    err = refused(daemon, "leave", "r-b", "225.2.1.1")
    assert "No group" in err and "225.2.1.1" in err and "r-b" in err and "to leave" in err
    ok(daemon, "leave", "r-b", S4, "225.2.1.2")
    assert kernel_groups(daemon, "r-b") == {}
    assert ("r-b", "225.2.1.2", S4) not in sources(daemon, V4)
    ok(daemon, "leave", "r-b", "ff0e::2:2")
    ok(daemon, "leave", "r-b", S6, "ff3e::2:3")
    assert kernel_groups(daemon, "r-b", V6) == {"ff0e::2:1": 1}
    assert sources(daemon, V6) == {}
    refused(daemon, "leave", "r-b", "10.0.9.9", "225.2.0.2")  # another source
    refused(daemon, "leave", "r-a", "ff0e::2:1")  # joined as r-+, not as r-a

    # leave works for what the config file joined
    ok(daemon, "leave", "r-a", "225.2.0.1")
    ok(daemon, "leave", "r-a", S4, "225.2.0.2")
    assert kernel_groups(daemon, "r-a") == {}
    assert sources(daemon, V4) == {}
    ok(daemon, "leave", "r-+", "ff0e::2:1")
    assert all(kernel_groups(daemon, i, V6) == {} for i in ROUTER_IFS)
    assert groups_json(daemon) == {"conf": [], "kernel": []}
    assert ok(daemon, "-p", "show", "groups").strip() == ""
    assert daemon.proc.poll() is None


BAD_REQUESTS = [
    # (words, something the error must name)
    (("join", "r-zz", "225.3.1.1"), "unknown interface r-zz"),
    (("join", "r-zz+", "225.3.1.1"), "r-zz+"),
    (("join", "r-a", "10.0.0.1"), "10.0.0.1"),  # unicast group
    (("join", "r-a", "224.1.1.1", "225.3.1.2"), "224.1.1.1"),  # multicast source
    (("join", "r-a", "fd00:1::2", "225.3.1.3"), "fd00:1::2"),  # family mismatch
    (("join", "r-a", S4, "ff0e::3:1"), "ff0e::3:1"),
    (("join", "r-a", "225.3.1.5/33"), "(0-32): 33"),
    (("join", "r-a", "225.3.1.6/x"), "225.3.1.6/x"),
    (("join", "r-a", "nonsense"), "nonsense"),
    (("join", "r-a", "ff0e::3:2/129"), "(0-128): 129"),
    (("join", "r-a", "1.2.3.4", "5.6.7.8"), "5.6.7.8"),
    (("join", "r-a"), "join"),
    (("leave", "r-a", "225.3.9.9"), "225.3.9.9"),
    (("leave", "r-zz", "225.3.0.1"), "225.3.0.1"),
    (("leave", "r-b", "225.3.0.1"), "225.3.0.1"),  # joined on r-a, not r-b
]


def test_bad_requests_join_nothing(topo, smcrouted):
    """Bad input: a clear error (exit 1) and nothing joined or remembered;
    the daemon goes on serving."""
    daemon = smcrouted("mgroup from r-a group 225.3.0.1\n")
    assert wait_for(lambda: "225.3.0.1" in kernel_groups(daemon, "r-a"), TIMEOUT)
    before, conf = snapshot(daemon), conf_entries(daemon)
    problems = []
    for words, needle in BAD_REQUESTS:
        res = daemon.ctl(*words)
        if res.returncode != 1 or not res.stderr.startswith("smcroutectl: "):
            problems.append(f"{' '.join(words)}: exit {res.returncode}, {res.stderr!r}")
        elif needle not in res.stderr:
            problems.append(f"{' '.join(words)}: error does not name {needle!r}: {res.stderr!r}")
        if snapshot(daemon) != before or conf_entries(daemon) != conf:
            problems.append(f"{' '.join(words)}: changed the memberships")
            before, conf = snapshot(daemon), conf_entries(daemon)
    assert not problems, "\n".join(problems)
    assert "r-zz" not in ok(daemon, "-p", "show", "pending")  # not queued either
    ok(daemon, "join", "r-a", "225.3.1.1")  # still serving
    assert "225.3.1.1" in kernel_groups(daemon, "r-a")
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("words", [
    ("r-a", "225.0.0.0/8"),  # 2^24 groups
    ("r-a", "225.3.0.0/17"),  # 32768 groups: one over the cap
    ("r-a", "10.0.0.0/25", "225.3.0.0/24"),  # 128 sources x 256 groups
    ("r-a", "ff0e::/64"),
], ids=["g8", "g17", "s25xg24", "v6g64"])
def test_join_range_over_the_cap_is_refused(topo, smcrouted, words):
    """At most groups.MAX_EXPANSION (16384) memberships per join: more is an
    error to the caller, nothing is joined, and the rule is not kept (a later
    leave of it fails, later joins are not disturbed)."""
    daemon = smcrouted("mgroup from r-a group 225.3.0.1\n")
    assert wait_for(lambda: "225.3.0.1" in kernel_groups(daemon, "r-a"), TIMEOUT)
    before, conf = snapshot(daemon), conf_entries(daemon)
    res = daemon.ctl("join", *words)
    assert snapshot(daemon) == before
    assert conf_entries(daemon) == conf
    assert res.returncode == 1 and res.stderr.startswith("smcroutectl: "), (
        f"join {' '.join(words)}: exit {res.returncode}, stdout {res.stdout!r},"
        f" stderr {res.stderr!r}")
    assert "16384" in res.stderr, res.stderr
    refused(daemon, "leave", *words)  # nothing was remembered
    mark = len(daemon.log())
    ok(daemon, "join", "r-a", "225.3.1.1")
    assert "16384" not in daemon.log()[mark:], "the refused join still haunts later edits"


def test_config_range_over_the_cap_is_a_config_error(topo, smcrouted):
    """A config line standing for more than 16384 memberships is an error
    naming file and line: at start-up that line is skipped and the good one
    applied (the daemon runs); a reload with it changes nothing."""
    daemon = smcrouted("mgroup from r-b group 225.4.1.1\nmgroup from r-a group 225.4.0.0/17\n")
    assert "line 2" in daemon.log() and "16384" in daemon.log(), daemon.log()
    assert kernel_groups(daemon, "r-a") == {}
    assert set(kernel_groups(daemon, "r-b")) == {"225.4.1.1"}
    res = daemon.ctl("reload")
    assert res.returncode == 1 and "line 2" in res.stderr and "16384" in res.stderr, res
    assert set(kernel_groups(daemon, "r-b")) == {"225.4.1.1"}
    assert daemon.proc.poll() is None


def test_ranges_spread_over_sockets(topo, smcrouted):
    """/LEN ranges expand from the network address; the kernel's per-socket
    limits (igmp_max_memberships 20, igmp_max_msf 10, mld_max_msf 64) make
    the controller spread them over several sockets; leaving closes them."""
    daemon = smcrouted("mgroup from r-a group 225.5.2.40/24\n")
    group_range = ip4_range("225.5.2.0/24")
    assert wait_for(lambda: set(kernel_groups(daemon, "r-a")) == group_range, TIMEOUT), (
        sorted(kernel_groups(daemon, "r-a")))
    assert set(kernel_groups(daemon, "r-a").values()) == {1}
    f0 = stable_join_sockets(daemon.pid)
    assert f0 >= 13, f"256 groups, at most 20 per socket, on {f0} sockets"

    detail = ok(daemon, "-p", "-d", "show", "groups")
    kernel = detail.partition("Kernel Group Membership Table")[2]
    rows = [line for line in kernel.splitlines() if line.startswith("(")]
    assert len(rows) == 256
    assert f"{'(*, 225.5.2.0/24)':<42} r-a" in rows and f"{'(*, 225.5.2.255/24)':<42} r-a" in rows
    assert batch_parse(detail.partition("Kernel")[0], "225.5.2.40") == ["(*,225.5.2.40/24)r-a"]
    assert len(groups_json(daemon)["kernel"]) == 256

    # a /26 source range for one group: 64 sources, at most 10 per socket
    ok(daemon, "join", "r-b", "10.0.1.1/26", "225.5.3.1")
    want = {("r-b", "225.5.3.1", s) for s in ip4_range("10.0.1.0/26")}
    assert set(sources(daemon, V4)) == want
    users = kernel_groups(daemon, "r-b")["225.5.3.1"]
    assert users >= 7, f"64 sources on {users} sockets"
    f1 = stable_join_sockets(daemon.pid)
    assert f1 - f0 >= users - 1  # the first source may fit on a socket of the /24

    # IPv6: no per-socket group limit; 64 sources per group per socket
    ok(daemon, "join", "r-c", "ff0e::5:0/120")
    ok(daemon, "join", "r-c", "fd00:1::/121", "ff3e::5:1")
    v6 = kernel_groups(daemon, "r-c", V6)
    assert {g for g in v6 if g.startswith("ff0e::5:")} == {
        str(a) for a in ipaddress.ip_network("ff0e::5:0/120")}
    assert {s for (i, g, s) in sources(daemon, V6) if (i, g) == ("r-c", "ff3e::5:1")} == {
        str(a) for a in ipaddress.ip_network("fd00:1::/121")}
    assert v6["ff3e::5:1"] >= 2, "128 sources on one socket"
    f2 = stable_join_sockets(daemon.pid)

    # leave: the memberships go, and so do the sockets that held them
    ok(daemon, "leave", "r-a", "225.5.2.40/24")  # the rule as configured
    assert kernel_groups(daemon, "r-a") == {}
    f3 = stable_join_sockets(daemon.pid)
    assert f2 - f3 >= 12  # one of its 13 sockets may hold a source of 225.5.3.1 too
    ok(daemon, "leave", "r-b", "10.0.1.1/26", "225.5.3.1")
    assert sources(daemon, V4) == {} and kernel_groups(daemon, "r-b") == {}
    ok(daemon, "leave", "r-c", "ff0e::5:0/120")
    ok(daemon, "leave", "r-c", "fd00:1::/121", "ff3e::5:1")
    assert kernel_groups(daemon, "r-c", V6) == {} and sources(daemon, V6) == {}
    assert stable_join_sockets(daemon.pid) == 0
    assert groups_json(daemon) == {"conf": [], "kernel": []}


def test_overlapping_rules_and_pending(topo, smcrouted):
    """Two rules covering one address share one kernel membership, which
    stays while either rule does; a missing interface is pending."""
    daemon = smcrouted("mgroup from r-b group 225.7.0.0/30\n"
                       "mgroup from r-b group 225.7.0.1\n"
                       "mgroup from r-zz group 225.7.9.9\n")
    want = ip4_range("225.7.0.0/30")
    assert wait_for(lambda: set(kernel_groups(daemon, "r-b")) == want, TIMEOUT)
    assert kernel_groups(daemon, "r-b")["225.7.0.1"] == 1
    assert re.search(r"^mgroup\s+from r-zz group 225\.7\.9\.9", ok(
        daemon, "-p", "show", "pending"), re.M)
    assert (None, "225.7.9.9", "r-zz") not in conf_entries(daemon)

    ok(daemon, "leave", "r-b", "225.7.0.0/30")
    assert kernel_groups(daemon, "r-b") == {"225.7.0.1": 1}, "still wanted by line 2"
    kernel = groups_json(daemon)["kernel"]
    assert kernel == [{"source": None, "group": "225.7.0.1", "iif": "r-b"}]
    ok(daemon, "leave", "r-b", "225.7.0.1")
    assert kernel_groups(daemon, "r-b") == {}

    # the pending line is joined once its interface appears (SPEC 8.2)
    topo.router.ip("link", "add", "r-zz", "type", "veth", "peer", "name", "zz-r",
                   "netns", topo.ns["A"].name)
    topo.router.ip("link", "set", "r-zz", "up")
    topo.ns["A"].ip("link", "set", "zz-r", "up")
    assert wait_for(lambda: "225.7.9.9" in read_igmp(daemon.pid).get("r-zz", {}), TIMEOUT), (
        f"{read_igmp(daemon.pid)}\n{daemon.log()}")
    assert (None, "225.7.9.9", "r-zz") in conf_entries(daemon)
    assert "r-zz" not in ok(daemon, "-p", "show", "pending")


RELOAD_1 = """\
mgroup from r-a group 225.6.0.1
mgroup from r-a source 10.0.1.2 group 225.6.0.2
mgroup from r-a group ff0e::6:1
mgroup from r-a source fd00:1::2 group ff3e::6:2
mgroup from r-a group 225.6.1.0/30
mgroup from r-a group 225.6.0.3
mgroup from r-a group ff0e::6:3
mgroup from r-a source 10.0.1.2 group 225.6.0.6
"""
RELOAD_2 = """\
# reordered, new line numbers: the same joins must not be touched
mgroup from r-a group 225.6.1.0/30
mgroup from r-a group ff0e::6:1

mgroup from r-a source fd00:1::2 group ff3e::6:2
mgroup from r-a source 10.0.1.2 group 225.6.0.2
mgroup from r-a group 225.6.0.1
mgroup from r-a group 225.6.0.4
mgroup from r-a group ff0e::6:4
mgroup from r-a source 10.0.1.2 group 225.6.0.5
mgroup from r-a source 10.0.3.2 group 225.6.0.6
"""
KEEP4 = {"225.6.0.1", "225.6.0.2"} | ip4_range("225.6.1.0/30")
KEEP6 = {"ff0e::6:1", "ff3e::6:2"}


def test_reload_joins_and_leaves_only_the_difference(topo, smcrouted):
    with ReportCapture(topo.ns["A"], topo.leaf_if("A")) as cap:
        daemon = smcrouted(RELOAD_1)
        want1 = KEEP4 | {"225.6.0.3", "225.6.0.6"}
        assert wait_for(lambda: set(kernel_groups(daemon, "r-a")) == want1, TIMEOUT)
        ok(daemon, "join", "r-a", "225.6.0.9")  # dropped by the reload (by design)
        ok(daemon, "join", "r-a", "ff0e::6:9")
        assert "225.6.0.9" in kernel_groups(daemon, "r-a")

        def ours(r: GroupRecord) -> bool:
            return r.group.startswith(("225.6.", "ff0e::6:", "ff3e::6:"))

        assert cap.quiet(ours, gap=1.5, timeout=10.0), "the router never stopped reporting"
        cap.records.clear()

        reload_sighup(daemon, RELOAD_2)

        assert kernel_groups(daemon, "r-a") == {g: 1 for g in KEEP4 | {
            "225.6.0.4", "225.6.0.5", "225.6.0.6"}}
        assert kernel_groups(daemon, "r-a", V6) == {g: 1 for g in KEEP6 | {"ff0e::6:4"}}
        assert set(sources(daemon, V4)) == {("r-a", "225.6.0.2", S4), ("r-a", "225.6.0.5", S4),
                                            ("r-a", "225.6.0.6", "10.0.3.2")}
        assert set(sources(daemon, V6)) == {("r-a", "ff3e::6:2", S6)}

        def changes_heard(records) -> bool:
            return (asm_join_seen(records, "225.6.0.4") and asm_join_seen(records, "ff0e::6:4")
                    and ssm_join_seen(records, "225.6.0.5", S4)
                    and ssm_join_seen(records, "225.6.0.6", "10.0.3.2")
                    and ssm_leave_seen(records, "225.6.0.6", S4)
                    and asm_leave_seen(records, "225.6.0.3")
                    and asm_leave_seen(records, "ff0e::6:3")
                    and asm_leave_seen(records, "225.6.0.9")
                    and asm_leave_seen(records, "ff0e::6:9"))

        assert cap.wait(changes_heard, TIMEOUT), cap.records
        cap.quiet(ours, gap=1.2, timeout=5.0)  # the retransmissions too
        touched = [r for r in cap.records if r.group in KEEP4 | KEEP6]
        assert not touched, f"unchanged memberships were left and joined again: {touched}"

    assert conf_entries(daemon) == [
        (None, "225.6.1.0/30", "r-a"), (None, "ff0e::6:1", "r-a"), (S6, "ff3e::6:2", "r-a"),
        (S4, "225.6.0.2", "r-a"), (None, "225.6.0.1", "r-a"), (None, "225.6.0.4", "r-a"),
        (None, "ff0e::6:4", "r-a"), (S4, "225.6.0.5", "r-a"), ("10.0.3.2", "225.6.0.6", "r-a")]

    # smcroutectl reload: the same path, back to the first config
    daemon.conf.write_text(RELOAD_1)
    ok(daemon, "reload")
    assert wait_for(lambda: set(kernel_groups(daemon, "r-a")) == want1, TIMEOUT), (
        kernel_groups(daemon, "r-a"))
    assert set(kernel_groups(daemon, "r-a", V6)) == KEEP6 | {"ff0e::6:3"}
    assert set(sources(daemon, V4)) == {("r-a", "225.6.0.2", S4), ("r-a", "225.6.0.6", S4)}
    assert len(conf_entries(daemon)) == 8

    # a reload that removes every group leaves them all, sockets included
    daemon.conf.write_text("# nothing\n")
    ok(daemon, "reload")
    assert wait_for(lambda: all(not g for g in all_groups(daemon).values()), TIMEOUT), (
        all_groups(daemon))
    assert sources(daemon, V4) == {} and sources(daemon, V6) == {}
    assert stable_join_sockets(daemon.pid) == 0


def test_joins_as_unprivileged_user(topo, smcrouted):
    """The controller joins with no capability at all (-p nobody)."""
    daemon = smcrouted("mgroup from r-a group 225.8.0.1\n"
                       "mgroup from r-a source 10.0.1.2 group 225.8.0.2\n"
                       "mgroup from r-a group ff0e::8:1\n", ["-p", "nobody"])
    status = {}
    with open(f"/proc/{daemon.pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    assert status["Uid"][0] != "0" and int(status["CapEff"][0], 16) == 0, status
    assert wait_for(lambda: set(kernel_groups(daemon, "r-a")) == {"225.8.0.1", "225.8.0.2"},
                    TIMEOUT)
    assert "ff0e::8:1" in kernel_groups(daemon, "r-a", V6)
    ok(daemon, "join", "r-b", "10.0.1.1/28", "225.8.0.3")
    assert len(sources(daemon, V4)) == 1 + 16
    ok(daemon, "leave", "r-a", "225.8.0.1")
    assert "225.8.0.1" not in kernel_groups(daemon, "r-a")
