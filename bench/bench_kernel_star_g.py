#!/usr/bin/env python3
"""Benchmark new sources of one (*,G) group: today's mode, --kernel-star-g,
and C SMCRoute side by side.

Run as root, from the project venv:

    /opt/smcroute-py/venv/bin/python bench/bench_kernel_star_g.py \\
        [--c-smcrouted PATH] [--flows 30] [--burst 2000] [--flood 100000]
        [--flood-rate PPS] [--sample-every N]

A C SMCRoute to compare with: Debian's package, unpacked without
installing it (no service is started):

    apt-get download smcroute && dpkg -x smcroute_*.deb /tmp/csmc
    ... --c-smcrouted /tmp/csmc/usr/sbin/smcrouted

It builds its own namespaces (sender S -- router R -- receiver A), starts
each daemon in R with one rule per family, "mroute from r-s group G to
r-a", and sends from S through a raw socket, so that every datagram can
carry a source address of its own (spoofed, inside S's namespace only):

  (a) install latency of a new source: --flows sources, one after the
      other, each sending 5 datagrams 2 ms apart, each carrying its send
      time (CLOCK_REALTIME, shared by the namespaces); A receives with
      kernel timestamps. Latency = first received - first sent.
  (b) a burst of --burst new sources back-to-back, one datagram each:
      how many reach A, and how many upcalls they cost: the kernel makes an
      (S,G) entry (unresolved, then resolved by the daemon) for exactly the
      datagrams it asks the daemon about, counted in /proc/net/ip_mr_cache.
  (c) a flood of --flood new sources: the daemon's CPU time (controller and
      helper, utime + stime from /proc/PID/stat), its RSS before, at the
      peak and --after seconds after the flood (-c 5: learned routes and
      stop filters have expired by then), the peak's growth per learned
      route or stop filter the kernel held, and the peak of unresolved
      entries (counted every --sample-every sources).

Everything it creates is removed on exit, also on failure or Ctrl-C;
processes are stopped by PID only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_star_g
from bench_star_g import (
    HEADER,
    MARKER,
    PORT,
    drain_timestamped,
    percentile,
    rx_packets,
    timestamped_receiver,
)
from common import guarded, raise_on_signals, workspace
from netns import Topology

GROUP = {4: "225.40.0.1", 6: "ff0e::40:1"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
IPV6_HDRINCL = 36
CONFIG = """\
phyint r-s enable
phyint r-a enable
mroute from r-s group 225.40.0.1 to r-a
mroute from r-s group ff0e::40:1 to r-a
"""


def source(family: int, i: int) -> str:
    """The i-th spoofed source: 10.64.0.0/10 or fd40::/16 (S's namespace only)."""
    if family == 4:
        return socket.inet_ntoa((0x0A400000 + 1 + i).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, ((0xFD40 << 112) + 1 + i).to_bytes(16, "big"))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF or 0xFFFF


class RawSender:
    """Datagrams to a group from any source, out of S's link (IP_HDRINCL)."""

    def __init__(self, topo: Topology, family: int):
        self.family, self.group = family, GROUP[family]
        ns, ifname = topo.sender, topo.leaf_if("S")
        self.index = ns.ifindex(ifname)
        self.sock = ns.socket(FAMILY[family], socket.SOCK_RAW, socket.IPPROTO_RAW)
        if family == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                 struct.pack("4s4si", bytes(4), bytes(4), self.index))
            self.dest: tuple = (self.group, 0)
        else:
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
            self.dest = (self.group, 0, 0, self.index)
        self.gbytes = socket.inet_pton(FAMILY[family], self.group)

    def packet(self, src: str, payload: bytes) -> bytes:
        sbytes = socket.inet_pton(FAMILY[self.family], src)
        length = 8 + len(payload)
        if self.family == 4:  # the kernel fills in the IP checksum; UDP's may be 0
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 8, 17, 0,
                             sbytes, self.gbytes)
            return ip + struct.pack("!HHHH", PORT, PORT, length, 0) + payload
        udp = struct.pack("!HHHH", PORT, PORT, length, 0) + payload
        pseudo = sbytes + self.gbytes + struct.pack("!I3xB", length, 17)
        udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp)) + udp[8:]
        ip = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 8, sbytes, self.gbytes)
        return ip + udp

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.dest)

    def close(self) -> None:
        self.sock.close()


class Daemon(bench_star_g.Daemon):
    """bench_star_g's daemon with this benchmark's configuration."""

    def __init__(self, binary: str, topo: Topology, workdir: Path, args: list[str]):
        super().__init__(binary, topo, workdir, args)
        self.conf.write_text(CONFIG)

    def start(self, timeout: float = 15.0) -> None:
        super().start(timeout)
        time.sleep(1.0)  # start-up work done
        self.note_helpers()

    def pids(self) -> list[int]:
        return [self.pid, *sorted(self.helpers)]

    def cpus(self) -> list[float]:
        """CPU seconds of the daemon, then of its helper (if any)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        return out

    def cpu(self) -> float:
        return sum(self.cpus())

    def rss_mib(self) -> list[float]:
        out = []
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        return out


def cache_rows(pid: int, family: int) -> list[bytes]:
    name = "ip6_mr_cache" if family == 6 else "ip_mr_cache"
    with open(f"/proc/{pid}/net/{name}", "rb") as f:
        return f.read().splitlines()[1:]


def per_source_rows(pid: int, family: int) -> tuple[int, int]:
    """(entries with a source, of which unresolved): one upcall each."""
    zero = b"00000000" if family == 4 else b"0" * 32
    rows = [r.split() for r in cache_rows(pid, family)]
    rows = [r for r in rows if len(r) > 2 and r[1] != zero]
    return len(rows), sum(1 for r in rows if r[2] == b"-1")


# -- (a) --------------------------------------------------------------------------------


def latency(topo: Topology, family: int, flows: int, first: int) -> list[float]:
    tx = RawSender(topo, family)
    rx = timestamped_receiver(topo, family, GROUP[family])
    out = []
    try:
        time.sleep(0.05)
        for i in range(first, first + flows):
            src, sent_first = source(family, i), None
            for seq in range(5):
                now = time.time_ns()
                sent_first = sent_first or now
                tx.send(tx.packet(src, MARKER + HEADER.pack(seq, now)))
                time.sleep(0.002)
            time.sleep(0.03)
            got = drain_timestamped(rx)
            if got:
                out.append((min(r for _, _, r in got) - sent_first) / 1e6)
    finally:
        rx.close()
        tx.close()
    return out


# -- (b) and (c) ---------------------------------------------------------------------------


def burst(topo: Topology, daemon: Daemon, family: int, n: int, first: int) -> dict:
    tx = RawSender(topo, family)
    try:
        packets = [tx.packet(source(family, first + i), MARKER + b" burst") for i in range(n)]
        rows0 = per_source_rows(daemon.pid, family)[0]
        rx0 = rx_packets(topo, "A")
        for p in packets:
            tx.send(p)
        time.sleep(1.0)
    finally:
        tx.close()
    return {"forwarded": rx_packets(topo, "A") - rx0,
            "upcalls": per_source_rows(daemon.pid, family)[0] - rows0}


def flood(topo: Topology, daemon: Daemon, family: int, n: int, first: int,
          after: float, rate: float = 0.0, every: int = 5000) -> dict:
    tx = RawSender(topo, family)
    rss0, cpus0 = daemon.rss_mib(), daemon.cpus()
    cpu0 = sum(cpus0)
    peak_rss, peak_unres, peak_entries = list(rss0), 0, 0
    t0 = time.monotonic()
    try:
        payload = MARKER + b" flood"
        for i in range(n):
            tx.send(tx.packet(source(family, first + i), payload))
            if rate and i % 50 == 49 and (ahead := t0 + (i + 1) / rate - time.monotonic()) > 0:
                time.sleep(ahead)  # paced: --flood-rate datagrams a second
            if i % every == every - 1:
                rows, unresolved = per_source_rows(daemon.pid, family)
                peak_unres = max(peak_unres, unresolved)
                peak_entries = max(peak_entries, rows - unresolved)
                peak_rss = [max(a, b) for a, b in zip(peak_rss, daemon.rss_mib(), strict=True)]
    finally:
        tx.close()
    sent_in = time.monotonic() - t0
    split = [b - a for a, b in zip(cpus0, daemon.cpus(), strict=True)]
    cpu_flood = sum(split)
    deadline = time.monotonic() + after
    while time.monotonic() < deadline:
        peak_rss = [max(a, b) for a, b in zip(peak_rss, daemon.rss_mib(), strict=True)]
        rows, unresolved = per_source_rows(daemon.pid, family)
        peak_entries = max(peak_entries, rows - unresolved)
        time.sleep(0.5)
    return {"sent_in": sent_in, "cpu": cpu_flood, "cpu_after": daemon.cpu() - cpu0,
            "split": split,
            "rss0": rss0, "peak": peak_rss, "rss_after": daemon.rss_mib(),
            "unresolved": peak_unres, "entries": peak_entries,
            "entries_after": per_source_rows(daemon.pid, family)[0]}


def mib(values: list[float]) -> str:
    return " + ".join(f"{v:.1f}" for v in values) + " MiB"


def run_mode(name: str, binary: str, extra: list[str], topo: Topology, ws, args,
             rows: list[tuple[str, str, str]]) -> None:
    daemon = Daemon(binary, topo, ws.workdir, ["-c", "5", "-l", "notice", *extra])
    daemon.start()
    try:
        for family in args.families:
            fam = f"IPv{family}"
            lat = latency(topo, family, args.flows, 0)
            daemon.check_alive()
            if lat:
                rows.append((name, f"{fam} new source: install latency median / p90",
                             f"{statistics.median(lat):.3f} / {percentile(lat, 90):.3f} ms"
                             f" ({len(lat)}/{args.flows} flows)"))
            else:
                rows.append((name, f"{fam} new source: install latency", "nothing arrived"))
            b = burst(topo, daemon, family, args.burst, 100_000)
            rows.append((name, f"{fam} burst of {args.burst} new sources: forwarded, upcalls",
                         f"{b['forwarded']}/{args.burst}, {b['upcalls']}"))
            time.sleep(6)  # -c 5: what the burst learned expires
            if args.flood:
                f = flood(topo, daemon, family, args.flood, 200_000, args.after,
                          args.flood_rate, args.sample_every)
                daemon.check_alive()
                rows.append((name, f"{fam} flood of {args.flood}: sent in, daemon CPU during"
                                   f" (+{args.after:.0f} s after)",
                             f"{f['sent_in']:.1f} s, {f['cpu']:.2f} s ({f['cpu_after']:.2f} s)"
                             + (" (during: " + " + ".join(f"{x:.2f}" for x in f["split"])
                                + " s, controller + helper)" if len(f["split"]) > 1 else "")))
                rows.append((name, f"{fam} flood: RSS before / peak / {args.after:.0f} s after",
                             f"{mib(f['rss0'])} / {mib(f['peak'])} / {mib(f['rss_after'])}"))
                if f["entries"]:
                    per = [(p - b) * 2**20 / f["entries"]
                           for p, b in zip(f["peak"], f["rss0"], strict=True)]
                    rows.append((name, f"{fam} flood: RSS growth per learned route or stop"
                                       f" filter (peak {f['entries']})",
                                 " + ".join(f"{x:.0f}" for x in per) + " bytes"))
                rows.append((name, f"{fam} flood: unresolved entries (peak of samples),"
                                   " per-source entries after",
                             f"{f['unresolved']}, {f['entries_after']}"))
    finally:
        daemon.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smcrouted", default=str(Path(sys.executable).parent / "smcrouted"))
    ap.add_argument("--c-smcrouted", help="a C SMCRoute smcrouted, to compare")
    ap.add_argument("--families", default="4,6")
    ap.add_argument("--flows", type=int, default=30)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--flood", type=int, default=100_000, help="0: skip (c)")
    ap.add_argument("--flood-rate", type=float, default=0.0,
                    help="(c) datagrams a second (default: as fast as they go)")
    ap.add_argument("--sample-every", type=int, default=5000,
                    help="(c) datagrams between two counts of the kernel's entries")
    ap.add_argument("--after", type=float, default=20.0, help="(c) seconds watched after")
    ap.add_argument("--modes", default="per-source,kernel-star-g,c",
                    help="which daemons, of per-source, kernel-star-g, c (if --c-smcrouted)")
    args = ap.parse_args()
    args.families = [int(f) for f in args.families.split(",")]
    if os.geteuid() != 0:
        print("needs root (network namespaces, multicast routing)", file=sys.stderr)
        return 2
    chosen = set(args.modes.split(","))
    modes = [m for tag, m in (
        ("per-source", ("smcroute-py", args.smcrouted, [])),
        ("kernel-star-g", ("smcroute-py --kernel-star-g", args.smcrouted, ["--kernel-star-g"])),
        ("c", ("C SMCRoute", args.c_smcrouted, [])),
    ) if tag in chosen and m[1]]
    raise_on_signals(signal.SIGTERM)  # unwinds through the clean-up
    rows: list[tuple[str, str, str]] = []
    built: list[Topology] = []

    with workspace("bench-kstarg") as ws:
        def body() -> None:
            topo = Topology.build(receivers=("A",))
            built.append(topo)
            # spoofed sources are not on the link: no reverse-path filter in R
            topo.router.sysctl({"net.ipv4.conf.all.rp_filter": "0",
                                f"net.ipv4.conf.{topo.rif('S')}.rp_filter": "0"})
            print(f"{os.cpu_count()} CPUs; kernel {os.uname().release};"
                  f" load average {os.getloadavg()[0]:.2f} at start", flush=True)
            for name, binary, extra in modes:
                run_mode(name, binary, extra, topo, ws, args, rows)

        failed = guarded(body, lambda: [t.destroy() for t in built])
        if failed is not None:
            return failed
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
