"""(*,G) on-demand routing: templates, stop filters, reload, WRONGVIF, expiry,
the -e action script and the budgets (SPEC 5.3-5.9, 9).

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
A template (an mroute without source, or with a source range) installs
nothing at start.  Traffic for an (S,G) without MFC entry makes the kernel
ask (NOCACHE upcall); the daemon installs the (S,G) with the OIFs of the
first matching rule in config order, or a stop filter (no OIFs) when no
rule matches.  Meanwhile the kernel holds the first datagrams and sends
them once the entry is there.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from .netns import (
    McastSender,
    Receiver,
    Ticker,
    collect,
    flow,
    mfc_entry,
    netns_available,
    new_marker,
    proc_status,
    read_mfc,
    read_mr_cache,
    wait_for,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]
USERS = [pytest.param((), id="root"), pytest.param(("-p", "nobody"), id="p-nobody")]
SRC = {V4: "10.0.1.2", V6: "fd00:1::2"}  # the sender's address on s-r
RECEIVERS = ("A", "B", "C")
N = 20
PORT = 5000
READY = "Ready, waiting for client request or kernel event."

PHYINTS = "".join(f"phyint r-{x} enable\n" for x in "sabc")

# Groups of the template config, by what must happen to them.
FIRST = {V4: "225.1.2.3", V6: "ff0e::1:3"}  # in the /24 (to r-a), then exact (to r-b)
MULTI = {V4: "225.1.3.3", V6: "ff0e::3:3"}  # (*,G) exact group, to r-b r-c
SRANGE = {V4: "225.4.0.7", V6: "ff0e::4:7"}  # source range that holds S: to r-c
SMISS = {V4: "225.5.0.7", V6: "ff0e::5:7"}  # source range that does not hold S
NOMATCH = {V4: "225.9.9.9", V6: "ff0e::9:9"}  # in no template at all
OTHER_IIF = {V4: "225.1.2.5", V6: "ff0e::1:5"}  # in a template, but sent from A

TEMPLATES = PHYINTS + """\
# first match in config order, not longest prefix: 225.1.2.3 goes to r-a only
mroute from r-s group 225.1.2.0/24 to r-a
mroute from r-s group 225.1.2.3 to r-b
mroute from r-s group 225.1.3.3 to r-b r-c
mroute from r-s source 10.0.1.0/24 group 225.4.0.0/16 to r-c
mroute from r-s source 10.9.9.0/24 group 225.5.0.0/16 to r-c
mroute from r-s group ff0e::1:0/112 to r-a
mroute from r-s group ff0e::1:3 to r-b
mroute from r-s group ff0e::3:3 to r-b r-c
mroute from r-s source fd00:1::/64 group ff0e::4:0/112 to r-c
mroute from r-s source fd00:99::/64 group ff0e::5:0/112 to r-c
"""


# --------------------------------------------------------------------------
# helpers


def canon(address: str) -> str:
    return str(ipaddress.ip_address(address))


def mfc_by_sg(topo, family):
    """{(source, group): MfcEntry} of R, resolved entries only."""
    return {(e.source, e.group): e for e in read_mfc(topo.router, family) if e.iif is not None}


def entry_of(topo, family, source, group):
    return mfc_by_sg(topo, family).get((canon(source), canon(group)))


def wait_entry(topo, family, source, group, want=None, timeout=5.0):
    """Wait until R's MFC holds (source, group) resolved (and == want, if given)."""

    def check():
        e = entry_of(topo, family, source, group)
        return e if e is not None and (want is None or e == want) else None

    return wait_for(check, timeout) or entry_of(topo, family, source, group)


def open_receivers(stack, topo, group, marker, roles=RECEIVERS, port=PORT):
    receivers = {}
    for role in roles:
        r = Receiver(topo.ns[role], topo.leaf_if(role), group, port, marker)
        stack.callback(r.close)
        receivers[role] = r
    return receivers


def sender_for(stack, topo, family, role="S", source=None):
    ns = topo.ns[role]
    s = McastSender(ns, source or topo.links[role].peer_ip(family), topo.leaf_if(role))
    stack.callback(s.close)
    return s


def learn_flow(topo, family, group, expect_roles, count=N):
    """A new (S,G) from S: send one datagram, wait for the daemon's entry,
    then the rest.  The kernel queues the first datagram while it waits for
    the daemon, so every receiver in expect_roles must get all ``count``."""
    marker = new_marker()
    with ExitStack() as stack:
        rx = open_receivers(stack, topo, group, marker)
        tx = sender_for(stack, topo, family)
        tx.send(group, PORT, marker + b" 0")
        entry = wait_entry(topo, family, SRC[family], group)
        assert entry is not None, f"no MFC entry for ({SRC[family]}, {group})"
        for seq in range(1, count):
            tx.send(group, PORT, marker + b" %d" % seq)
            time.sleep(0.002)
        return collect(rx, dict.fromkeys(expect_roles, count))


def nothing_arrives(topo, family, group, tx, count=10):
    """Send count datagrams with tx; return what the receivers got."""
    marker = new_marker()
    with ExitStack() as stack:
        rx = open_receivers(stack, topo, group, marker)
        for seq in range(count):
            tx.send(group, PORT, marker + b" %d" % seq)
            time.sleep(0.002)
        return collect(rx, {}, settle=0.4)


def reload(daemon, config=None, timeout=5.0):
    """Rewrite the config (if given), SIGHUP, wait for the next Ready line."""
    before = daemon.log().count(READY)
    if config is not None:
        daemon.conf.write_text(config)
    daemon.proc.send_signal(signal.SIGHUP)
    ok = wait_for(lambda: daemon.log().count(READY) > before, timeout)
    assert ok, f"reload did not complete within {timeout}s; log:\n{daemon.log()[-3000:]}"


ZERO_SOURCES = ("0.0.0.0", "::")


def learned_and_stops(pid, family, prefix=None):
    """(learned routes, stop filters) in the MFC, optionally within a group
    prefix; a group's overload stop (source 0, one entry for the whole
    group: over a budget or the upcall rate) is neither."""
    net = ipaddress.ip_network(prefix) if prefix else None
    learned = stops = 0
    for e in read_mr_cache(pid, family):
        if not e.resolved or (net and ipaddress.ip_address(e.group) not in net) or \
                e.source in ZERO_SOURCES:
            continue
        if e.oifs:
            learned += 1
        else:
            stops += 1
    return learned, stops


def rss_kib(pid):
    return int(proc_status(pid)["VmRSS"].split()[0])


@pytest.fixture
def action_script():
    """A /bin/sh script in a world-readable temporary directory that says
    each call on its standard output, which is the daemon's (its log here):
    without -p the daemon's confinement lets it write no file."""
    top = Path(tempfile.mkdtemp(prefix="smcpy-script-"))
    try:
        top.chmod(0o755)
        script = top / "action.sh"
        script.write_text('#!/bin/sh\necho "SCRIPT-CALL $(id -u) $1 source=$source group=$group"\n')
        script.chmod(0o755)
        yield script
    finally:
        shutil.rmtree(top, ignore_errors=True)


def default_uid() -> int:
    """Whom smcrouted runs as without -p."""
    try:
        return pwd.getpwnam("smcroute").pw_uid
    except KeyError:
        return 0


def script_calls(daemon, uid: int | None = None) -> Counter:
    """The script's calls, from the daemon's log (those of uid, if given)."""
    calls = Counter()
    for line in daemon.log().splitlines():
        if line.startswith("SCRIPT-CALL "):
            _, who, call = line.split(" ", 2)
            assert uid is None or int(who) == uid, f"the script ran as uid {who}, not {uid}"
            calls[call] += 1
    return calls


# --------------------------------------------------------------------------
# matching


@pytest.mark.parametrize("family", FAMILIES)
def test_template_first_match_wins_and_queued_packets_arrive(topo, smcrouted, family):
    daemon = smcrouted(TEMPLATES)
    assert read_mfc(topo.router, family) == set(), "templates install nothing at start"
    src = SRC[family]
    cases = [
        (FIRST[family], ["r-a"], ["A"]),
        (MULTI[family], ["r-b", "r-c"], ["B", "C"]),
        (SRANGE[family], ["r-c"], ["C"]),
    ]
    for group, _oifs, roles in cases:
        got = learn_flow(topo, family, group, roles)
        assert got == {r: N if r in roles else 0 for r in RECEIVERS}, (group, got)
    assert read_mfc(topo.router, family) == {
        mfc_entry(src, group, "r-s", oifs) for group, oifs, _ in cases
    }
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("family", FAMILIES)
def test_no_matching_rule_installs_stop_filter(topo, smcrouted, family):
    daemon = smcrouted(TEMPLATES)
    src, a_src = SRC[family], topo.links["A"].peer_ip(family)
    with ExitStack() as stack:
        from_s = sender_for(stack, topo, family)
        from_a = sender_for(stack, topo, family, role="A")
        cases = [
            (NOMATCH[family], from_s, src, "r-s"),  # no rule for the group
            (SMISS[family], from_s, src, "r-s"),  # group in a rule, source not
            (OTHER_IIF[family], from_a, a_src, "r-a"),  # rule for r-s only
        ]
        for group, tx, source, iif in cases:
            got = nothing_arrives(topo, family, group, tx)
            assert got == {"A": 0, "B": 0, "C": 0}, (group, got)
            want = mfc_entry(source, group, iif, [])
            assert wait_entry(topo, family, source, group, want) == want
    assert (f"Multicast from {src}, group {canon(NOMATCH[family])}, on r-s does not match"
            " any (*,G) rule") in daemon.log()
    # matched traffic keeps flowing next to the stop filters
    got = learn_flow(topo, family, FIRST[family], ["A"])
    assert got == {"A": N, "B": 0, "C": 0}
    assert read_mfc(topo.router, family) == {
        mfc_entry(source, group, iif, []) for group, _, source, iif in cases
    } | {mfc_entry(src, FIRST[family], "r-s", ["r-a"])}


@pytest.mark.parametrize("family", FAMILIES)
def test_helper_fast_path_installs_and_the_controller_books_it(topo, smcrouted, family):
    """A flow a rule covers is installed by the helper itself (the fast
    path) and booked by the controller like its own (audit event, learned
    route, expiry); what no rule covers still goes to the controller."""
    daemon = smcrouted(TEMPLATES)
    src = SRC[family]
    got = learn_flow(topo, family, FIRST[family], ["A"])
    assert got == {"A": N, "B": 0, "C": 0}
    what = f"what=({canon(src)}, {canon(FIRST[family])}) from r-s"

    def audited(cause):
        return any(what in line and f"cause={cause} result=ok" in line
                   for line in daemon.log().splitlines())

    assert wait_for(lambda: audited("upcall (helper fast path)"), 5.0), daemon.log()[-3000:]
    with ExitStack() as stack:
        nothing_arrives(topo, family, NOMATCH[family], sender_for(stack, topo, family))
    want = mfc_entry(src, NOMATCH[family], "r-s", [])
    assert wait_entry(topo, family, src, NOMATCH[family], want) == want
    stop = f"what=({canon(src)}, {canon(NOMATCH[family])}) from r-s cause=upcall result=ok"
    assert wait_for(lambda: stop in daemon.log(), 5.0)
    assert daemon.proc.poll() is None


# --------------------------------------------------------------------------
# reload

SSM = {V4: "225.6.0.3", V6: "ff0e::6:3"}
UP1 = {V4: "225.6.0.5", V6: "ff0e::6:5"}
UP2 = {V4: "225.6.0.7", V6: "ff0e::6:7"}
RELOAD_BASE = PHYINTS + f"""\
mroute from r-s source {SRC[V4]} group {SSM[V4]} to r-b
mroute from r-s source {SRC[V6]} group {SSM[V6]} to r-b
"""
RELOAD_TEMPLATE = RELOAD_BASE + """\
mroute from r-s group 225.6.0.0/24 to r-a r-c
mroute from r-s group ff0e::6:0/112 to r-a r-c
"""


def mr_packets(pid, family, source, group):
    for e in read_mr_cache(pid, family):
        if e.resolved and (e.source, e.group) == (canon(source), canon(group)):
            return e.packets
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_reload_upgrades_stop_filters_and_removes_learned_routes(topo, smcrouted, family):
    daemon = smcrouted(RELOAD_BASE)
    src, up1, up2 = SRC[family], UP1[family], UP2[family]
    ssm_entry = mfc_entry(src, SSM[family], "r-s", ["r-b"])
    assert read_mfc(topo.router, family) == {ssm_entry}
    marker = new_marker()
    with ExitStack() as stack:
        rx = open_receivers(stack, topo, up1, marker)
        tx = sender_for(stack, topo, family)
        tx.send(up2, PORT, b"one datagram")
        ticker = Ticker(tx, [up1], PORT, marker, interval=0.05, limit=30.0)
        stack.enter_context(ticker)
        # no template yet: stop filters
        for group in (up1, up2):
            want = mfc_entry(src, group, "r-s", [])
            assert wait_entry(topo, family, src, group, want) == want
        wait_for(lambda: (mr_packets(daemon.pid, family, src, up1) or 0) >= 10, 5.0)
        before = mr_packets(daemon.pid, family, src, up1)
        assert before and before >= 10, before
        assert collect(rx, {}, settle=0.1) == {"A": 0, "B": 0, "C": 0}

        # the new template upgrades both stop filters, the same kernel entries
        reload(daemon, RELOAD_TEMPLATE)
        for group in (up1, up2):
            want = mfc_entry(src, group, "r-s", ["r-a", "r-c"])
            assert wait_entry(topo, family, src, group, want) == want
        after = mr_packets(daemon.pid, family, src, up1)
        assert after is not None and after >= before, (
            f"the stop filter was replaced, not upgraded: {after} < {before} packets")
        # the same sender, the same flow: it now arrives
        got = collect(rx, {"A": 5, "C": 5}, timeout=3.0, settle=0.1)
        assert got["A"] >= 5 and got["C"] >= 5 and got["B"] == 0, got
        assert flow(topo, SSM[family], ["B"], {"B": N}) == {"B": N}
        ticker.stop()

        # removing the template removes what it learned; the (S,G) route stays
        reload(daemon, RELOAD_BASE)
        assert wait_for(lambda: read_mfc(topo.router, family) == {ssm_entry}, 5.0), (
            read_mfc(topo.router, family))
    got = flow(topo, SSM[family], RECEIVERS, {"B": N})
    assert got == {"A": 0, "B": N, "C": 0}
    # new traffic asks the kernel again: now no rule, a stop filter
    with ExitStack() as stack:
        tx = sender_for(stack, topo, family)
        assert nothing_arrives(topo, family, up1, tx) == {"A": 0, "B": 0, "C": 0}
    want = mfc_entry(src, up1, "r-s", [])
    assert wait_entry(topo, family, src, up1, want) == want
    assert daemon.proc.poll() is None


# --------------------------------------------------------------------------
# WRONGVIF

WRONGVIF_CONFIG = PHYINTS + """\
mroute from r-s group 225.3.3.0/24 to r-a
mroute from r-b group 225.3.3.0/24 to r-a
"""


def test_wrongvif_moves_learned_route_to_allowed_interface(topo, smcrouted, action_script):
    """The same (S,G) arrives on r-b, which a template also allows: the entry
    moves there (and the -e script is called with install again).  On r-c,
    which no template allows, it stays."""
    script = action_script
    daemon = smcrouted(WRONGVIF_CONFIG, ["-e", str(script)])
    src, moving, staying = SRC[V4], "225.3.3.3", "225.3.3.4"
    for role in ("B", "C"):  # second paths into R with the sender's address
        topo.ns[role].ip("addr", "add", f"{src}/32", "dev", topo.leaf_if(role))
    assert learn_flow(topo, V4, moving, ["A"], count=3) == {"A": 3, "B": 0, "C": 0}
    assert learn_flow(topo, V4, staying, ["A"], count=3) == {"A": 3, "B": 0, "C": 0}
    mark_b, mark_c = new_marker(), new_marker()
    with ExitStack() as stack:
        rx_b = Receiver(topo.ns["A"], "a-r", moving, PORT, mark_b)
        stack.callback(rx_b.close)
        rx_c = Receiver(topo.ns["A"], "a-r", staying, PORT, mark_c)
        stack.callback(rx_c.close)
        from_b = sender_for(stack, topo, V4, role="B", source=src)
        from_c = sender_for(stack, topo, V4, role="C", source=src)
        stack.enter_context(Ticker(from_c, [staying], PORT, mark_c, interval=0.05))
        stack.enter_context(Ticker(from_b, [moving], PORT, mark_b, interval=0.05))
        # the kernel reports a wrong interface at most once per entry per ~3 s
        want = mfc_entry(src, moving, "r-b", ["r-a"])
        assert wait_entry(topo, V4, src, moving, want, timeout=8.0) == want
        notice = f"Moved ({src}, {moving}) inbound to r-b after WRONGVIF"
        assert wait_for(lambda: notice in daemon.log(), 2.0), daemon.log()[-2000:]
        got = collect({"A": rx_b}, {"A": 5}, timeout=3.0, settle=0.0)
        assert got["A"] >= 5, "traffic from r-b is not forwarded after the move"
        time.sleep(0.5)
        wrong = [e.wrong_if for e in read_mr_cache(daemon.pid, V4) if e.group == staying]
        assert wrong and wrong[0] > 0, "C's datagrams did not reach R on r-c"
        assert entry_of(topo, V4, src, staying) == mfc_entry(src, staying, "r-s", ["r-a"])
        assert rx_c.drain() == 0, "traffic on r-c was forwarded"
    assert f"({src}, {staying}) inbound to r-c" not in daemon.log()
    installs = {f"install source={src} group={moving}": 2,
                f"install source={src} group={staying}": 1}
    assert wait_for(lambda: script_calls(daemon) == Counter(
        {"reload source= group=": 1, **installs}), 3.0), script_calls(daemon)


# --------------------------------------------------------------------------
# expiry

EXPIRY = 3
EXPIRY_CONFIG = PHYINTS + """\
mroute from r-s group 225.1.2.0/24 to r-a
mroute from r-s group ff0e::1:0/112 to r-a
"""


def test_expiry_removes_idle_flows_and_keeps_active_ones(topo, smcrouted):
    """-c 3: learned routes and stop filters whose counters stand still for
    3 s go (within 3 + 2 s, give or take), never earlier; an active flow
    stays past 2 * 3 s in the same kernel entry (its counter never drops)."""
    daemon = smcrouted(EXPIRY_CONFIG, ["-c", str(EXPIRY)])
    active = {V4: "225.1.2.10", V6: "ff0e::1:10"}
    idle = [(V4, "225.1.2.20"), (V4, "225.9.0.20"), (V6, "ff0e::1:20"), (V6, "ff0e::9:20")]
    with ExitStack() as stack:
        senders = {f: sender_for(stack, topo, f) for f in (V4, V6)}
        t_active = time.monotonic()
        for f in (V4, V6):
            stack.enter_context(Ticker(senders[f], [active[f]], PORT, b"active", interval=0.1))
        for f, group in idle:
            for seq in range(5):
                senders[f].send(group, PORT, b"idle %d" % seq)
                time.sleep(0.002)
        t_last = time.monotonic()
        for f, group in [*idle, (V4, active[V4]), (V6, active[V6])]:
            assert wait_entry(topo, f, SRC[f], group) is not None, group
        last_count: dict[int, int] = {}
        gone_at: dict[tuple[int, str], float] = {}
        # sampled every max(1, SEC/10) s: gone by SEC + 2 s, plus a margin
        deadline = max(t_last + EXPIRY + 3.5, t_active + 2 * EXPIRY + 1.5)
        while time.monotonic() < deadline:
            seen = {f: {e.group: e for e in read_mr_cache(daemon.pid, f) if e.resolved}
                    for f in (V4, V6)}
            now = time.monotonic()
            for f, group in idle:
                if group not in seen[f] and (f, group) not in gone_at:
                    gone_at[(f, group)] = now
                    assert now >= t_last + EXPIRY - 0.25, (
                        f"{group} removed {now - t_last:.2f}s after its last packet")
            for f in (V4, V6):
                e = seen[f].get(canon(active[f]))
                assert e is not None, f"active flow {active[f]} removed"
                assert e.packets >= last_count.get(f, 0), f"{active[f]} was re-created"
                last_count[f] = e.packets
            if len(gone_at) == len(idle) and now > t_active + 2 * EXPIRY + 1:
                break
            time.sleep(0.1)
    late = sorted(set(idle) - set(gone_at))
    assert not late, f"idle for {EXPIRY + 3.5}s and still there: {late}"
    assert time.monotonic() > t_active + 2 * EXPIRY
    assert daemon.proc.poll() is None


# --------------------------------------------------------------------------
# -e action script

SCRIPT_CONFIG = PHYINTS + f"""\
mroute from r-s group 225.1.2.0/24 to r-a
mroute from r-s group ff0e::1:0/112 to r-a
mroute from r-s source {SRC[V4]} group 225.1.5.5 to r-b
mroute from r-s source {SRC[V6]} group ff0e::5:5 to r-b
"""


@pytest.mark.parametrize("args", USERS)
def test_action_script_reload_and_install(topo, smcrouted, action_script, args):
    script = action_script
    daemon = smcrouted(SCRIPT_CONFIG, [*args, "-e", str(script)])
    reload_line = "reload source= group="
    assert wait_for(lambda: script_calls(daemon)[reload_line] == 1, 5.0), (
        script_calls(daemon), daemon.log()[-2000:])
    # template matches: install; configured (S,G) and stop filter: nothing
    for family, group, roles in (
        (V4, "225.1.2.3", ["A"]), (V6, "ff0e::1:3", ["A"]),
        (V4, "225.1.5.5", ["B"]), (V6, "ff0e::5:5", ["B"]),
        (V4, "225.9.9.9", []), (V6, "ff0e::9:9", []),
    ):  # fmt: skip
        got = learn_flow(topo, family, group, roles, count=3)
        assert got == {r: 3 if r in roles else 0 for r in RECEIVERS}, (group, got)
    installs = {"install source=10.0.1.2 group=225.1.2.3",
                "install source=fd00:1::2 group=ff0e::1:3"}
    assert wait_for(lambda: installs <= set(script_calls(daemon)), 5.0), script_calls(daemon)
    reload(daemon)
    assert wait_for(lambda: script_calls(daemon)[reload_line] == 2, 5.0), script_calls(daemon)
    time.sleep(0.5)  # anything late would show now
    assert script_calls(daemon) == Counter({reload_line: 2, **dict.fromkeys(installs, 1)})
    # with -p the script runs as that user; without, as the daemon: the
    # smcroute user where there is one, else uid 0 without capabilities
    script_calls(daemon, pwd.getpwnam("nobody").pw_uid if args else default_uid())


# --------------------------------------------------------------------------
# budgets

FLOOD_CONFIG = PHYINTS + "mroute from r-s group 225.7.0.0/16 to r-a\n"


def flood_groups(n, second_octet=7):
    return [f"225.{second_octet}.{i // 250}.{i % 250 + 1}" for i in range(n)]


def test_max_learned_caps_a_flood_and_daemon_stays_responsive(topo, smcrouted):
    """2000 new (S,G) with --max-learned 100: never more than 100 learned
    routes (nor stop filters) in the MFC, a warning names the budget, and a
    reload still completes."""
    limit = 100
    daemon = smcrouted(FLOOD_CONFIG, ["--max-learned", str(limit)])
    rss0 = rss_kib(daemon.pid)
    peaks = [0, 0]

    def sample():
        learned, stops = learned_and_stops(daemon.pid, V4)
        peaks[:] = max(peaks[0], learned), max(peaks[1], stops)
        return learned

    groups = flood_groups(2000)
    with ExitStack() as stack:
        tx = sender_for(stack, topo, V4)
        for i, group in enumerate(groups):
            tx.send(group, PORT, b"flood")
            if i % 250 == 249:
                sample()
    wait_for(lambda: sample() >= limit, 5.0)
    for _ in range(10):  # and it stays there
        sample()
        time.sleep(0.1)
    assert peaks[0] == limit, f"learned routes peaked at {peaks[0]}, budget {limit}"
    assert peaks[1] <= limit, f"stop filters peaked at {peaks[1]}, budget {limit}"
    assert "budget" in daemon.log(), "no warning about the exhausted budget"
    warnings = [line for line in daemon.log().splitlines() if "budget" in line]
    assert len(warnings) <= 4, f"budget warnings not throttled: {warnings[:8]}"
    reload(daemon)
    assert daemon.proc.poll() is None
    growth = rss_kib(daemon.pid) - rss0
    assert growth < 64 * 1024, f"RSS grew by {growth} KiB"
    # a learned route keeps forwarding
    learned = next(e.group for e in read_mr_cache(daemon.pid, V4)
                   if e.resolved and e.oifs and e.source not in ZERO_SOURCES)
    assert flow(topo, learned, RECEIVERS, {"A": N}) == {"A": N, "B": 0, "C": 0}
    after = sample()
    assert after == limit, (
        f"{after} learned routes after a reload of the same config, budget {limit}:"
        " the reload turned budget stop filters into learned routes")


PER_RULE_CONFIG = PHYINTS + """\
mroute from r-s group 225.7.0.0/16 to r-a
mroute from r-s group 225.8.0.0/16 to r-b
"""


def test_per_rule_budget_and_expiring_budget_stop_filters(topo, smcrouted):
    """--max-learned-per-rule 5: the sixth and seventh flow of a rule get stop
    filters while another rule still learns; those stop filters expire (-c)
    even though their traffic goes on, and once the first five flows went
    idle and expired, the kernel asks again and they are learned."""
    per_rule, src = 5, SRC[V4]
    daemon = smcrouted(PER_RULE_CONFIG, ["--max-learned-per-rule", str(per_rule), "-c", "3"])
    first = [f"225.7.0.{i}" for i in range(1, per_rule + 1)]
    over = ["225.7.0.6", "225.7.0.7"]
    other = "225.8.0.1"
    peak = 0

    def rule_counts():
        nonlocal peak
        learned, stops = learned_and_stops(daemon.pid, V4, "225.7.0.0/16")
        peak = max(peak, learned)
        return learned, stops

    mark_over, mark_other = new_marker(), new_marker()
    with ExitStack() as stack:
        tx = sender_for(stack, topo, V4)
        rx_over = Receiver(topo.ns["A"], "a-r", over[0], PORT, mark_over)
        stack.callback(rx_over.close)
        rx_other = Receiver(topo.ns["B"], "b-r", other, PORT, mark_other)
        stack.callback(rx_other.close)
        t_first = stack.enter_context(Ticker(tx, first, PORT, b"first", interval=0.1))
        assert wait_for(lambda: rule_counts()[0] == per_rule, 5.0), rule_counts()
        stack.enter_context(Ticker(tx, over, PORT, mark_over, interval=0.05))
        stack.enter_context(Ticker(tx, [other], PORT, mark_other, interval=0.05))
        for group in over:
            want = mfc_entry(src, group, "r-s", [])
            assert wait_entry(topo, V4, src, group, want) == want, (
                f"{group} over the rule's budget is not (or no longer) a stop filter")
        want = mfc_entry(src, other, "r-s", ["r-b"])
        assert wait_entry(topo, V4, src, other, want) == want
        assert collect({"B": rx_other}, {"B": 3}, settle=0.0)["B"] >= 3
        assert rx_over.drain() == 0
        assert rule_counts() == (per_rule, len(over)), (
            f"(learned, stop filters) for the rule, budget {per_rule}")
        assert "budget" in daemon.log(), "no warning about the exhausted budget"
        reload(daemon)  # the same config: nothing changes, budgets hold
        assert rule_counts() == (per_rule, len(over)), (
            "after a reload: (learned, stop filters) for the rule, budget"
            f" {per_rule}: the re-plan turned budget stop filters into learned routes")
        assert rx_over.drain() == 0

        t_first.stop()  # the first five go idle, expire, make room

        def over_learned():
            rule_counts()
            return all(entry_of(topo, V4, src, g) == mfc_entry(src, g, "r-s", ["r-a"])
                       for g in over)

        assert wait_for(over_learned, 15.0, interval=0.2), read_mfc(topo.router, V4)
        assert collect({"A": rx_over}, {"A": 3}, settle=0.0)["A"] >= 3
    assert peak <= per_rule, f"{peak} learned routes for one rule, budget {per_rule}"
    assert daemon.proc.poll() is None


def test_upcall_rate_limits_new_flows(topo, smcrouted):
    """--upcall-rate 50: a burst of 400 new flows installs no more than the
    token bucket allows (50 at once, then 50/s, and the helper's fast-path
    reserve, paid for with at most half of the tokens there were before the
    burst); the rest is answered with one overload stop per group (no
    per-source entry); later flows are handled."""
    rate = 50
    daemon = smcrouted(FLOOD_CONFIG, ["--upcall-rate", str(rate)])
    with ExitStack() as stack:
        tx = sender_for(stack, topo, V4)
        t0 = time.monotonic()
        for group in flood_groups(400):
            tx.send(group, PORT, b"burst")
        for _ in range(5):
            time.sleep(0.2)
            installed = sum(e.resolved and e.source not in ZERO_SOURCES
                            for e in read_mr_cache(daemon.pid, V4))
            bound = rate * (1.5 + time.monotonic() - t0) + 1
            assert 0 < installed <= bound, (installed, bound)
    assert "upcall" in daemon.log(), "no warning about the upcall budget"
    time.sleep(1.0)  # tokens come back
    got = learn_flow(topo, V4, "225.7.200.1", ["A"], count=5)
    assert got == {"A": 5, "B": 0, "C": 0}
    assert daemon.proc.poll() is None
    assert os.path.exists(f"/proc/{daemon.pid}")


QUEUE_CONFIG = FLOOD_CONFIG + "mroute from r-s group ff0e::7:0/112 to r-a\n"
QUEUE_GROUPS = {V4: flood_groups(2000), V6: [f"ff0e::7:{i + 1:x}" for i in range(2000)]}


@pytest.mark.parametrize("family", FAMILIES)
def test_new_flows_waiting_for_a_stalled_controller_stay_within_the_queue(topo, smcrouted,
                                                                          family):
    """--upcall-queue 64 and the controller stopped (SIGSTOP): of 2000 new
    flows the kernel holds no more unresolved entries than the queue plus
    what the helper passed on before it held back (at most two datagrams
    of 128 while 8 KiB are unread); the others were dropped with their
    entries (with a 16 MiB queue all 2000 waited). Once the controller runs
    again, new flows are routed."""
    queue = 64
    daemon = smcrouted(QUEUE_CONFIG, ["--upcall-queue", str(queue)])
    groups = QUEUE_GROUPS[family]
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        with ExitStack() as stack:
            tx = sender_for(stack, topo, family)
            for group in groups[:-1]:
                tx.send(group, PORT, b"queue")
        time.sleep(0.5)  # the helper does what it will
        waiting = sum(e.iif == -1 for e in read_mr_cache(daemon.pid, family))
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert queue // 2 < waiting <= 2 * queue + 2 * 128, waiting
    # the ones that waited are answered, well before the kernel's 10 s
    assert wait_for(lambda: not any(e.iif == -1 for e in read_mr_cache(daemon.pid, family)),
                    5.0), "flows still waiting for the daemon"
    got = learn_flow(topo, family, groups[-1], ["A"], count=5)
    assert got == {"A": 5, "B": 0, "C": 0}
    assert daemon.proc.poll() is None
