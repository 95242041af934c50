"""Start-up and reload semantics, end to end (smcroute.conf(5), ERRORS):

* at start-up every good line is applied and every bad one skipped, so a
  typo costs one line, not the router;
* a reload with any error changes nothing, and `smcroutectl reload` exits 1
  naming every file and line;
* equal lines are one rule (OIFs merged), OIFs are listed in VIF order,
  and an OIF equal to the IIF is installed, as SMCRoute does: traffic goes
  back out the interface it came in on;
* configuration input is bounded: a FIFO, /proc files or an include
  fan-out are refused, and `show` keeps answering meanwhile.

Topology (conftest ``topo``): S --- R --- A, B, C; smcrouted runs in R.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from .netns import (
    Receiver,
    collect,
    flow,
    mfc_entry,
    netns_available,
    new_marker,
    read_mfc,
    read_mr_vifs,
    send,
    wait_for,
)

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

V4, V6 = socket.AF_INET, socket.AF_INET6
SRC = {V4: "10.0.1.2", V6: "fd00:1::2"}
G = {V4: "225.3.0.1", V6: "ff0e::3:1"}
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]
N = 20

GOOD = f"""\
phyint r-s enable
mroute from r-s source {SRC[V4]} group {G[V4]} to r-a
mroute from r-s source {SRC[V6]} group {G[V6]} to r-a
mgroup from r-b group 225.3.9.9
"""

# One line of each kind of error (smcroute.conf(5), ERRORS)
BAD_LINES = {
    "no value": "phyint r-c enable ttl-threshold",
    "ttl out of range": "phyint r-c enable ttl-threshold 999",
    "33 OIFs": f"mroute from r-s group 225.3.3.3 to {' '.join(['r-c'] * 33)}",
    "too long": "mroute from r-s group 225.3.3.3 to r-c " + "x" * 600,
    "unknown keyword": "mroute fr r-s group 225.3.3.3 to r-c",
    "not a group": "mroute from r-s group 10.9.9.9 to r-c",
    "unknown command": "frobnicate r-c",
    "too many joins": "mgroup from r-c group 225.0.0.0/8",
    "a directory": "include /etc",
}


def ctl_ok(daemon, *args: str) -> str:
    res = daemon.ctl(*args)
    assert res.returncode == 0, res
    return res.stdout


def state(daemon) -> tuple[object, ...]:
    """Everything a reload could change, as the kernel and smcroutectl show it."""
    return (read_mfc(daemon.ns, V4), read_mfc(daemon.ns, V6), read_mr_vifs(daemon.pid),
            ctl_ok(daemon, "-p", "show"), ctl_ok(daemon, "-p", "show", "groups"),
            ctl_ok(daemon, "-p", "show", "pending"), ctl_ok(daemon, "-p", "show", "interfaces"))


# -- start-up: a bad line costs that line -------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_start_up_with_a_bad_line_forwards_the_rest(topo, smcrouted, family):
    lines = GOOD.splitlines()
    text = "\n".join([lines[0], BAD_LINES["no value"], *lines[1:3], BAD_LINES["33 OIFs"],
                      BAD_LINES["too long"], BAD_LINES["unknown keyword"], lines[3],
                      BAD_LINES["a directory"]]) + "\n"
    d = smcrouted(text)
    log = d.log()
    for n in (2, 5, 6, 7, 9):
        assert f"{d.conf} line {n}: " in log, log
    assert f"Parse error in {d.conf}" in log
    assert read_mfc(topo.router, family) == {mfc_entry(SRC[family], G[family], "r-s", ["r-a"])}
    got = flow(topo, G[family], ["A", "C"], {"A": N}, count=N)
    assert got == {"A": N, "C": 0}
    assert "225.3.9.9" in ctl_ok(d, "show", "groups")
    assert d.proc.poll() is None


# -- reload: all or nothing -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_reload_with_an_error_changes_nothing(topo, smcrouted, kind):
    d = smcrouted(GOOD)
    before = state(d)
    changed = GOOD.replace("to r-a\n", "to r-a r-b\n") + "mroute from r-s group 225.3.4.0/24" \
        " to r-c\n"
    d.conf.write_text(changed + BAD_LINES[kind] + "\n")
    res = d.ctl("reload")
    assert res.returncode == 1, res
    assert f"{d.conf} line 6: " in res.stderr, res.stderr
    assert state(d) == before
    # SIGHUP: the same, the error in the log
    os.kill(d.pid, signal.SIGHUP)
    assert wait_for(lambda: d.log().count("keeping the running one") >= 2, 5), d.log()
    assert d.log().count(f"{d.conf} line 6: ") >= 2
    assert state(d) == before
    # and the same file without the bad line is applied
    d.conf.write_text(changed)
    assert d.ctl("reload").returncode == 0
    assert read_mfc(topo.router, V4) == {
        mfc_entry(SRC[V4], G[V4], "r-s", ["r-a", "r-b"])}


def test_reload_prints_every_error(topo, smcrouted):
    d = smcrouted(GOOD)
    d.conf.write_text(GOOD + "bogus1\nmroute from r-s group 10.1.1.1\nbogus3\n")
    res = d.ctl("reload")
    assert res.returncode == 1
    assert [line.split(": ", 1)[1] for line in res.stderr.splitlines()] == [
        f"{d.conf} line 5: Unknown command bogus1, skipping.",
        f"{d.conf} line 6: mroute: Invalid multicast group: 10.1.1.1, skipping line",
        f"{d.conf} line 7: Unknown command bogus3, skipping."]


def test_a_missing_interface_is_not_an_error(topo, smcrouted):
    d = smcrouted(GOOD)
    d.conf.write_text(GOOD + "mroute from r-zz group 225.3.5.5 to r-c\n"
                             "mroute from r-s group 225.3.6.0/24 to r-zz r-c\n")
    assert d.ctl("reload").returncode == 0
    pending = ctl_ok(d, "-p", "show", "pending")
    assert "from r-zz group 225.3.5.5" in pending and "to r-zz r-c" in pending


# -- rules: merged, VIF order, the inbound interface among the outbound ones ----------------------


def test_equal_lines_merge_and_oifs_are_in_vif_order(topo, smcrouted):
    d = smcrouted("phyint r-c enable\nphyint r-b enable\n"
                  f"mroute from r-s source {SRC[V4]} group {G[V4]} to r-b\n"
                  "mroute from r-s group 225.3.7.0/24 to r-b r-c\n"
                  f"mroute from r-s source {SRC[V4]} group {G[V4]} to r-a r-c\n")
    rows = [line for line in ctl_ok(d, "-pt", "show").splitlines() if line]
    assert rows == [f"{'(*, 225.3.7.0/24)':<42} r-s  r-c r-b",
                    f"{f'({SRC[V4]}, {G[V4]})':<42} r-s  r-c r-b r-a",
                    f"{f'({SRC[V4]}, {G[V4]})':<42} r-s  r-c r-b r-a"]
    routes = json.loads(ctl_ok(d, "-j", "show"))["routes"]
    assert [r["oifs"] for r in routes["asm"] + routes["ssm"]] == [
        ["r-c", "r-b"], ["r-c", "r-b", "r-a"]]
    assert flow(topo, G[V4], ["A", "B", "C"], {"A": N, "B": N, "C": N}) == {
        "A": N, "B": N, "C": N}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_inbound_interface_among_the_oifs_gets_the_traffic_back(topo, smcrouted, family):
    """Point-to-multipoint: a route from r-s to r-s and r-a sends S's
    traffic back out r-s (S accepts its own source address back)."""
    d = smcrouted(f"mroute from r-s source {SRC[family]} group {G[family]} to r-s r-a\n")
    assert read_mfc(topo.router, family) == {
        mfc_entry(SRC[family], G[family], "r-s", ["r-s", "r-a"])}
    topo.sender.sysctl({"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.s-r.rp_filter": "0",
                        "net.ipv4.conf.s-r.accept_local": "1"})
    marker = new_marker()
    receivers = {"S": Receiver(topo.sender, "s-r", G[family], 5000, marker),
                 "A": Receiver(topo.ns["A"], "a-r", G[family], 5000, marker)}
    try:
        send(topo.sender, SRC[family], G[family], 5000, N, marker, "s-r")
        assert collect(receivers, {"S": N, "A": N}) == {"S": N, "A": N}
    finally:
        for r in receivers.values():
            r.close()
    assert d.proc.poll() is None


# -- bounded input --------------------------------------------------------------------------------


def show_answers(d, within: float = 2.0) -> None:
    start = time.monotonic()
    res = d.ctl("show", timeout=within + 5)
    assert res.returncode == 0 and time.monotonic() - start < within, res


def test_a_fifo_include_is_refused_without_blocking(topo, smcrouted):
    d = smcrouted(GOOD)
    fifo = d.workdir / "fifo.conf"
    os.mkfifo(fifo)
    d.conf.write_text(GOOD + f"include {fifo}\n")
    start = time.monotonic()
    res = d.ctl("reload")
    assert res.returncode == 1 and f"Failed opening {fifo}: is a FIFO" in res.stderr, res
    assert time.monotonic() - start < 3
    show_answers(d)
    os.kill(d.pid, signal.SIGHUP)  # SIGHUP too
    assert wait_for(lambda: d.log().count("is a FIFO") >= 2, 5)
    show_answers(d)


def test_a_fifo_include_at_start_up_skips_that_line(topo, smcrouted, tmp_path):
    fifo = Path(tmp_path) / "fifo.conf"
    os.mkfifo(fifo)
    d = smcrouted(GOOD + f"include {fifo}\n")  # ready: the rest is applied
    assert "is a FIFO" in d.log()
    assert read_mfc(topo.router, V4) == {mfc_entry(SRC[V4], G[V4], "r-s", ["r-a"])}
    show_answers(d)


def test_proc_files_are_refused(topo, smcrouted):
    d = smcrouted(GOOD)
    d.conf.write_text(GOOD + "include /proc/self/fd/*\ninclude /proc/self/status\n")
    res = d.ctl("reload")
    assert res.returncode == 1, res
    assert "line 6: Failed opening /proc/self/status: is a kernel" in res.stderr, res.stderr
    show_answers(d)


def test_an_include_fan_out_is_refused_without_blocking(topo, smcrouted):
    d = smcrouted(GOOD)
    root = d.workdir / "fan"
    for level in range(7):  # 8 files a level, each including all of the next level
        (root / str(level)).mkdir(parents=True)
        for i in range(8):
            (root / str(level) / f"{i}.conf").write_text(
                f"include ../{level + 1}/*.conf\n" if level < 6 else "phyint r-c\n")
    d.conf.write_text(GOOD + f"include {root}/0/*.conf\n")
    start = time.monotonic()
    res = d.ctl("reload")
    assert res.returncode == 1 and "configuration too large" in res.stderr, res
    assert "more than 256 files" in res.stderr
    assert time.monotonic() - start < 5
    show_answers(d)
