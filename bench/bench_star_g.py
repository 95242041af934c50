#!/usr/bin/env python3
"""Benchmark (*,G) on-demand routing: how fast a new flow is installed.

Run as root, from the project venv:

    /opt/smcroute-py/venv/bin/python bench/bench_star_g.py [--flows 30] [--burst 2000]

It builds its own namespaces (sender S -- router R -- receiver A, the
harness of tests/integration/netns.py), starts smcrouted in R with
template rules, and measures:

  (a) New flow at --pps (500) datagrams/s: S sends a new (S,G) that a
      template matches, each datagram carrying its sequence number and its
      send time (time.time_ns() just before sendto); A receives with kernel
      receive timestamps (SO_TIMESTAMPNS).  Both clocks are the same host's
      CLOCK_REALTIME (namespaces share it).  Per flow: datagrams lost, and
      the install latency = first datagram received - first datagram sent
      (the kernel queues the first datagrams of an unresolved (S,G) and
      sends them once the daemon has installed the entry).  The same is
      measured on a configured (S,G) route, whose entry is in the kernel
      before the first datagram: pure kernel forwarding, for reference;
      the difference of the medians is the daemon's share.
  (b) A burst of --burst (2000) new flows: one datagram to each of that
      many distinct groups, back-to-back, TTL 8, against a freshly started
      (and warmed-up) daemon with an empty MFC, --repeat times per family;
      then /proc/<pid>/net/ip_mr_cache (ip6_mr_cache) of the router is
      polled every ~1 ms (less often when a read is slow: at most --duty of
      the time goes to reading, 2 CPUs are shared with the daemon): how many
      (S,G) end up resolved in the kernel with no datagram sent again, how
      many are learned routes, and the time from the end of the burst until
      all are there.  A's interface counter shows how many burst datagrams
      were forwarded.  Sending itself is slowed by the router's work: the
      kernel forwards in the sender's system call (veth).

Everything it creates (namespaces, the daemon and its helper, temporary
files) is removed on exit, also on failure or Ctrl-C; processes are stopped
by PID only.  Traffic stays inside the namespaces it created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: sys.path[0] already

from common import BenchError, Smcrouted, guarded, raise_on_signals, workspace
from netns import McastSender, Receiver, Topology

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
PORT = 5001
HEADER = struct.Struct("!IQ")  # sequence number, send time (ns, CLOCK_REALTIME)
MARKER = b"smcpy-bench"
READY = b"Ready, waiting for client request or kernel event."

SRC = {4: "10.0.1.2", 6: "fd00:1::2"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
REFERENCE = {4: "225.11.0.1", 6: "ff0e::11:1"}  # a configured (S,G) route

TARGET_LATENCY_MS = 0.30
C_LATENCY_MS = 0.265
TARGET_BURST_S = 0.25
C_BURST_CAUGHT = "~1200"


def new_flow_group(family: int, i: int) -> str:
    return f"225.10.{i // 250}.{i % 250 + 1}" if family == 4 else f"ff0e::10:{i + 1:x}"


def burst_group(family: int, i: int) -> str:
    if family == 4:
        return f"225.20.{i // 250}.{i % 250 + 1}"
    return f"ff0e::20:{i // 0x10000:x}:{i % 0x10000 + 1:x}"


CONFIG = f"""\
# smcroute-py (*,G) benchmark
phyint r-s enable
phyint r-a enable
mroute from r-s group 225.10.0.0/16 to r-a
mroute from r-s group ff0e::10:0/112 to r-a
mroute from r-s group 225.20.0.0/16 to r-a
mroute from r-s group ff0e::20:0:0/96 to r-a
mroute from r-s source {SRC[4]} group {REFERENCE[4]} to r-a
mroute from r-s source {SRC[6]} group {REFERENCE[6]} to r-a
"""


# --------------------------------------------------------------------------
# the daemon


class Daemon(Smcrouted):
    def __init__(self, smcrouted: str, topo: Topology, workdir: Path, args: list[str]):
        super().__init__(workdir)
        self.topo = topo
        self.conf.write_text(CONFIG)
        self.argv = ["ip", "netns", "exec", topo.router.name, smcrouted, "-n",
                     "-f", str(self.conf), "-P", str(self.pidfile),
                     "-u", str(self.sock), *args]

    def start(self, timeout: float = 15.0) -> None:
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        if not self.wait_ready(timeout, 0.05):
            raise BenchError(f"smcrouted not ready within {timeout}s; log:\n{self.log_tail(4000)}")


class MrCache:
    """The router's ip_mr_cache / ip6_mr_cache, opened once, re-read per poll."""

    def __init__(self, pid: int, family: int):
        name = "ip6_mr_cache" if family == 6 else "ip_mr_cache"
        self.file = open(f"/proc/{pid}/net/{name}", "rb", buffering=0)  # noqa: SIM115

    def resolved(self) -> int:
        """Entries the daemon has resolved (learned routes and stop filters);
        an unresolved one shows inbound VIF -1."""
        self.file.seek(0)
        data = self.file.readall()
        return data.count(b"\n") - 1 - data.count(b" -1 ")

    def learned(self) -> int:
        """Resolved entries with outbound interfaces (not stop filters)."""
        self.file.seek(0)
        rows = self.file.readall().splitlines()[1:]
        return sum(1 for row in rows if len(row.split()) > 6 and b" -1 " not in row)

    def close(self) -> None:
        self.file.close()


def rx_packets(topo: Topology, role: str) -> int:
    out = topo.ns[role].ip("-s", "-j", "link", "show", "dev", topo.leaf_if(role))
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


# --------------------------------------------------------------------------
# (a) latency of a new flow


@dataclass
class FlowResult:
    sent: int
    received: int
    first_latency_ms: float | None  # first received - first sent
    steady_ms: list[float] = field(default_factory=list)  # per datagram, after the first


def timestamped_receiver(topo: Topology, family: int, group: str) -> Receiver:
    r = Receiver(topo.ns["A"], topo.leaf_if("A"), group, PORT, MARKER)
    r.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return r


def drain_timestamped(r: Receiver) -> list[tuple[int, int, int]]:
    """[(seq, sent_ns, received_ns)] of what is queued on r now."""
    out = []
    while True:
        try:
            data, anc, _flags, _addr = r.sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return out
        if not data.startswith(MARKER):
            continue
        seq, sent = HEADER.unpack_from(data, len(MARKER))
        received = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                sec, nsec = struct.unpack("@qq", cdata[:16])
                received = sec * 1_000_000_000 + nsec
        if received is None:
            raise BenchError("no SO_TIMESTAMPNS receive timestamp")
        out.append((seq, sent, received))


def run_flow(topo: Topology, tx: McastSender, family: int, group: str, pps: int,
             count: int) -> FlowResult:
    rx = timestamped_receiver(topo, family, group)
    try:
        time.sleep(0.02)  # the join's report goes out before the flow starts
        interval = 1_000_000_000 // pps
        start = time.monotonic_ns()
        sent_first = None
        for seq in range(count):
            due = start + seq * interval
            while (left := due - time.monotonic_ns()) > 0:
                if left > 300_000:
                    time.sleep((left - 200_000) / 1e9)
            now = time.time_ns()
            if sent_first is None:
                sent_first = now
            tx.send(group, PORT, MARKER + HEADER.pack(seq, now))
        time.sleep(0.05)
        got = drain_timestamped(rx)
    finally:
        rx.close()
    seqs = {seq for seq, _, _ in got}
    if not got:
        return FlowResult(count, 0, None)
    first_rx = min(received for _, _, received in got)
    steady = [(received - sent) / 1e6 for seq, sent, received in got if seq > 0]
    return FlowResult(count, len(seqs), (first_rx - sent_first) / 1e6, steady)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def bench_latency(topo: Topology, daemon: Daemon, family: int, args, res: Results) -> None:
    with McastSender(topo.sender, SRC[family], topo.leaf_if("S")) as tx:
        for i in range(args.warmup):  # first use of each code path in the daemon
            run_flow(topo, tx, family, new_flow_group(family, 1000 + i), args.pps, 10)
        new, ref = [], []
        for i in range(args.flows):
            new.append(run_flow(topo, tx, family, new_flow_group(family, i), args.pps,
                                args.packets))
            ref.append(run_flow(topo, tx, family, REFERENCE[family], args.pps, 10))
            daemon.check_alive()
    lat = [f.first_latency_ms for f in new if f.first_latency_ms is not None]
    lost = sum(f.sent - f.received for f in new)
    ref_lat = [f.first_latency_ms for f in ref if f.first_latency_ms is not None]
    steady = [x for f in new for x in f.steady_ms]
    fam = f"IPv{family}"
    res.rows.append((f"(a) {fam} new flow: install latency median", ms(statistics.median(lat)),
                     f"<= {TARGET_LATENCY_MS:.2f} ms", f"{C_LATENCY_MS:.3f} ms"))
    res.rows.append((f"(a) {fam} new flow: install latency p90", ms(percentile(lat, 90)), "", ""))
    res.rows.append((f"(a) {fam} new flow: install latency max", ms(max(lat)), "", ""))
    res.rows.append((f"(a) {fam} new flow: datagrams lost",
                     f"{lost} of {sum(f.sent for f in new)}", "0", ""))
    res.rows.append((f"(a) {fam} flows that got nothing", str(len(new) - len(lat)), "0", ""))
    res.rows.append((f"(a) {fam} installed route: 1st datagram median",
                     ms(statistics.median(ref_lat)), "(kernel only)", ""))
    res.rows.append((f"(a) {fam} new flow: later datagrams median",
                     ms(statistics.median(steady)) if steady else "-", "(kernel only)", ""))
    res.rows.append((f"(a) {fam} daemon's share (median difference)",
                     ms(statistics.median(lat) - statistics.median(ref_lat)), "", ""))
    res.detail.append(f"(a) {fam} install latencies (ms), in order: "
                      + " ".join(f"{x:.3f}" for x in lat))


def ms(value: float) -> str:
    return f"{value:.3f} ms"


# --------------------------------------------------------------------------
# (b) a burst of new flows


def bench_burst(topo: Topology, daemon: Daemon, family: int, args, res: Results) -> None:
    """One burst against a daemon started for it (an empty MFC), warmed up
    with a few new flows outside the burst's range."""
    n = args.burst
    groups = [burst_group(family, i) for i in range(n)]
    with McastSender(topo.sender, SRC[family], topo.leaf_if("S")) as tx:
        for i in range(args.warmup * 5):
            tx.send(new_flow_group(family, 2000 + i), PORT, b"warm-up")
            time.sleep(0.005)
    time.sleep(0.5)
    cache = MrCache(daemon.pid, family)
    try:
        before = cache.resolved()
        learned_before = cache.learned()
        rx_before = rx_packets(topo, "A")
        with McastSender(topo.sender, SRC[family], topo.leaf_if("S")) as tx:
            dests = [tx.dest(g, PORT) for g in groups]
            payload = MARKER + b" burst"
            sendto = tx.sock.sendto
            t_start = time.monotonic()
            for dest in dests:
                sendto(payload, dest)
            t_end = time.monotonic()
        # Poll until all are there, or nothing changed for args.settle
        # seconds.  A read of a big MFC costs milliseconds and competes with
        # the daemon for the CPU: read at most args.duty of the time.  The
        # time recorded is when the successful read ended (an upper bound).
        last_change, count, t_all = t_end, 0, None
        deadline = t_end + args.timeout
        costs = []
        while True:
            t_read = time.monotonic()
            now_count = cache.resolved() - before
            now = time.monotonic()
            costs.append(now - t_read)
            if now_count != count:
                count, last_change = now_count, now
            if count >= n:
                t_all = now
                break
            if now - last_change > args.settle or now > deadline:
                break
            time.sleep(max(args.poll, (now - t_read) * (1 / args.duty - 1)))
        time.sleep(0.2)
        final = cache.resolved() - before
        learned = cache.learned() - learned_before
        forwarded = rx_packets(topo, "A") - rx_before
    finally:
        cache.close()
    daemon.check_alive()
    polls = len(costs)
    res.burst.setdefault(family, []).append(
        {"installed": final, "learned": learned,
         "t_all": None if t_all is None else t_all - t_end,
         "t_all_start": None if t_all is None else t_all - t_start,
         "t_last": last_change - t_end, "send": t_end - t_start, "forwarded": forwarded,
         "polls": polls, "period": (last_change - t_end) / max(1, polls - 1),
         "read": statistics.median(costs)})


def report_bursts(res: Results, args) -> None:
    n = args.burst
    for family, runs in res.burst.items():
        fam = f"IPv{family}"
        caught = [r["installed"] for r in runs]
        res.rows.append((f"(b) {fam} burst of {n}: installed (worst of {len(runs)})",
                         f"{min(caught)}/{n}", f"{n}/{n}", C_BURST_CAUGHT))
        times = [r["t_all"] for r in runs if r["t_all"] is not None]
        res.rows.append((f"(b) {fam} end of burst -> all in kernel (median)",
                         f"{statistics.median(times):.3f} s" if times else "never",
                         f"<= {TARGET_BURST_S:.2f} s", ""))
        if times:
            res.rows.append((f"(b) {fam} end of burst -> all in kernel (max)",
                             f"{max(times):.3f} s" if len(times) == len(runs) else "never",
                             "", ""))
            from_start = [r["t_all_start"] for r in runs if r["t_all_start"] is not None]
            res.rows.append((f"(b) {fam} start of burst -> all in kernel (median)",
                             f"{statistics.median(from_start):.3f} s", "", ""))
            res.rows.append((f"(b) {fam} sending the burst took (median)",
                             f"{statistics.median(r['send'] for r in runs):.3f} s", "", ""))
        res.rows.append((f"(b) {fam} of which learned routes (min)",
                         f"{min(r['learned'] for r in runs)}/{n}", f"{n}/{n}", ""))
        res.rows.append((f"(b) {fam} burst datagrams forwarded to A (min)",
                         f"{min(r['forwarded'] for r in runs)}/{n}", "", ""))
        for i, r in enumerate(runs):
            res.detail.append(
                f"(b) {fam} run {i + 1}: installed {r['installed']}/{n}"
                f" ({r['learned']} learned), all after "
                + (f"{r['t_all'] * 1000:.1f} ms" if r["t_all"] is not None else "never")
                + f", last change after {r['t_last'] * 1000:.1f} ms, sending took"
                f" {r['send'] * 1000:.1f} ms, {r['forwarded']} datagrams reached A"
                f" (incl. any IGMP/MLD), {r['polls']} polls, one MFC read"
                f" {r['read'] * 1000:.2f} ms")


# --------------------------------------------------------------------------


@dataclass
class Results:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)
    burst: dict[int, list[dict]] = field(default_factory=dict)


def print_table(res: Results) -> None:
    head = ("figure", "measured", "target", "C SMCRoute")
    widths = [max(len(r[i]) for r in [head, *res.rows]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    print(line.format(*("-" * w for w in widths)))
    for row in res.rows:
        print(line.format(*row))
    print()
    for text in res.detail:
        print(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smcrouted", default=str(Path(sys.executable).parent / "smcrouted"))
    ap.add_argument("--families", default="4,6", help="4, 6 or 4,6")
    ap.add_argument("--flows", type=int, default=30, help="(a) new flows per family")
    ap.add_argument("--pps", type=int, default=500)
    ap.add_argument("--packets", type=int, default=50, help="(a) datagrams per flow")
    ap.add_argument("--warmup", type=int, default=2, help="(a) flows not counted")
    ap.add_argument("--burst", type=int, default=2000, help="(b) new flows in one burst")
    ap.add_argument("--repeat", type=int, default=3, help="(b) bursts per family")
    ap.add_argument("--poll", type=float, default=0.001, help="(b) MFC poll interval, s")
    ap.add_argument("--duty", type=float, default=0.5,
                    help="(b) at most this share of the time spent reading the MFC")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="(b) give up when nothing changed for this long, s")
    ap.add_argument("--timeout", type=float, default=15.0)
    ap.add_argument("--level", default="notice", help="smcrouted -l (debug logs every route)")
    ap.add_argument("--skip", default="", help="a, b: parts to skip")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, multicast routing)", file=sys.stderr)
        return 2
    if not Path(args.smcrouted).exists():
        print(f"{args.smcrouted} not found", file=sys.stderr)
        return 2
    families = [int(f) for f in args.families.split(",")]
    if args.burst > 250 * 256:
        print("--burst must stay within 225.20.0.0/16", file=sys.stderr)
        return 2

    raise_on_signals(signal.SIGTERM)  # unwinds through the clean-up
    res = Results()
    made: dict[str, Any] = {}

    def cleanup() -> None:
        if "daemon" in made:
            made["daemon"].stop()
        if "topo" in made:
            made["topo"].destroy()

    with workspace("bench") as ws:
        def body() -> None:
            topo = made["topo"] = Topology.build(receivers=("A",))
            daemon = made["daemon"] = Daemon(args.smcrouted, topo, ws.workdir,
                                             ["-l", args.level])
            daemon.start()
            print(f"smcrouted {args.smcrouted} -l {args.level} in {topo.router.name};"
                  f" {os.cpu_count()} CPUs; kernel {os.uname().release};"
                  f" load average {os.getloadavg()[0]:.2f} at start", flush=True)
            time.sleep(1.0)  # let start-up work (netlink refresh, imports) finish
            if "a" not in args.skip:
                for family in families:
                    bench_latency(topo, daemon, family, args, res)
            if "b" not in args.skip:
                for family in families:
                    for _ in range(args.repeat):
                        daemon.stop()  # a fresh daemon, an empty MFC for each burst
                        daemon.start()
                        time.sleep(1.0)
                        bench_burst(topo, daemon, family, args, res)
                report_bursts(res, args)
            daemon.check_alive()

        failed = guarded(body, cleanup)
        if failed is not None:
            return failed
    print()
    print_table(res)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
