#!/usr/bin/env python3
"""Benchmark smcrouted start-up and reload with many (S,G) routes.

Run as root, from the project venv:

    /opt/smcroute-py/venv/bin/python bench/bench_startup_reload.py [--routes 2000] [--repeat 5]

It builds its own namespaces (router R with one inbound and three outbound
veths, their peers in H; no traffic), writes a config with N distinct (S,G)
mroute lines, and per repeat:

  (a) start-up: from just before spawning smcrouted until the kernel MFC of R
      holds all N entries (polling /proc/net/ip_mr_cache of R), and until the
      PID file has content (ready);
  (b) reload of the unchanged config: from SIGHUP until the log shows the next
      "Ready, waiting ..." line (the MFC is then checked to be unchanged);
  (c) reload of a config with 10% of the lines changed (N/10 routes removed,
      N/10 added): from SIGHUP until the kernel holds exactly the new set, and
      until the "Ready" log line.

The daemon is spawned with the bench process temporarily switched into R
(setns), so no "ip netns exec" is in the measured path; --spawn ip uses
"ip netns exec" instead and reports figures with its measured cost
subtracted as well.  Polling costs CPU on a small machine: the poll interval
and the cost of one MFC read are printed too.

Everything created (namespaces, processes, temporary files) is removed on
exit, also on failure or Ctrl-C; processes are stopped by PID only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: sys.path[0] already

from common import (
    IN_IF,
    OUT_IFS,
    BenchError,
    Smcrouted,
    build,
    inside,
    mr_cache_word,
    raise_on_signals,
    workspace,
)
from netns import Netns

READY = b"Ready, waiting for client request or kernel event."
RELOADING = b"Reloading configuration, please wait ..."
TARGET_STARTUP = "0.25"
TARGET_RELOAD = "0.10"
C_SMCROUTE = {"startup": "0.064", "reload": "0.23-0.26"}


# --------------------------------------------------------------------------
# routes and configs


@dataclass(frozen=True)
class Route:
    source: str
    group: str
    oifs: tuple[str, ...]

    @property
    def v6(self) -> bool:
        return ":" in self.group

    def line(self) -> str:
        return (f"mroute from {IN_IF} source {self.source} group {self.group}"
                f" to {' '.join(self.oifs)}")

    def key(self) -> bytes:
        """The "Group Origin" prefix of this entry's line in ip_mr_cache/ip6_mr_cache."""
        if self.v6:
            g, s = (ipaddress.IPv6Address(a).exploded for a in (self.group, self.source))
            return f"{g} {s}".encode()
        return f"{mr_cache_word(self.group)} {mr_cache_word(self.source)}".encode()


def make_routes(n: int, family: str, changed: bool = False) -> list[Route]:
    """n distinct (S,G); with changed, every 10th gets another group."""
    routes = []
    for i in range(n):
        hi, lo = divmod(i, 250)
        v6 = family == "6" or (family == "46" and i % 2 == 1)
        alt = changed and i % 10 == 0
        # a non-empty subset of the three outbound interfaces
        mask = i % 7 + 1
        oifs = tuple(name for bit, name in enumerate(OUT_IFS) if mask & (1 << bit))
        if v6:
            source = f"fd01::{hi:x}:{lo + 1:x}"
            group = f"ff0e::{'bb' if alt else 'aa'}:{hi:x}:{lo + 1:x}"
        else:
            if hi > 255:
                raise BenchError("at most 64000 IPv4 routes")
            source = f"10.1.{hi}.{lo + 1}"
            group = f"{226 if alt else 225}.{hi // 256}.{hi % 256}.{lo + 1}"
        routes.append(Route(source, group, oifs))
    return routes


def render(routes: list[Route]) -> str:
    lines = ["# smcroute-py benchmark", f"phyint {IN_IF} enable"]
    lines += [f"phyint {name} enable" for name in OUT_IFS]
    lines += [r.line() for r in routes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# observing the router namespace


class MfcView:
    """ip_mr_cache and ip6_mr_cache of one namespace, opened once, re-read per poll."""

    def __init__(self, ns: Netns):
        with inside(ns):
            # /proc/self/net is the namespace of the opener at open time
            self.files = [open(f"/proc/thread-self/net/{name}", "rb", buffering=0)  # noqa: SIM115
                          for name in ("ip_mr_cache", "ip6_mr_cache")]

    def _read(self) -> list[bytes]:
        out = []
        for f in self.files:
            f.seek(0)
            out.append(f.readall())
        return out

    def count(self) -> int:
        return sum(data.count(b"\n") - 1 for data in self._read())

    def keys(self) -> set[bytes]:
        keys = set()
        for data in self._read():
            for row in data.splitlines()[1:]:
                keys.add(b" ".join(row.split(None, 2)[:2]))
        return keys

    def close(self) -> None:
        for f in self.files:
            f.close()


class Daemon(Smcrouted):
    def __init__(self, smcrouted: str, ns: Netns, workdir: Path, spawn: str, level: str):
        super().__init__(workdir)
        self.ns, self.spawn = ns, spawn
        self.argv = [smcrouted, "-n", "-f", str(self.conf), "-P", str(self.pidfile),
                     "-u", str(self.sock), "-l", level]

    def start(self) -> float:
        """Spawn; return time.monotonic() taken just before."""
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        log = open(self.logfile, "wb")  # noqa: SIM115
        try:
            if self.spawn == "ip":
                argv = ["ip", "netns", "exec", self.ns.name, *self.argv]
                t0 = time.monotonic()
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT)
            else:
                with inside(self.ns):
                    t0 = time.monotonic()
                    self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT)
        finally:
            log.close()
        return t0


def poll(conditions: dict[str, Callable[[], bool]], t0: float, args: argparse.Namespace,
         daemon: Daemon, res: Results, label: str = "") -> dict[str, float]:
    """Poll until every condition held once; {name: seconds after t0 it first held}.

    Cheap conditions are tried every args.poll seconds.  Those named "mfc..."
    read the whole MFC, which costs milliseconds with thousands of entries
    and competes with the daemon for the CPU: they are tried at most
    args.duty of the time (after a read taking c, wait c * (1/duty - 1)).
    When a cheap condition comes true, the MFC is read at once.  A time
    recorded is when the successful check ended: an upper bound.
    """
    done: dict[str, float] = {}
    deadline = t0 + args.timeout
    next_read: dict[str, float] = {}
    last_read: dict[str, float] = {}
    while True:
        for name, cond in conditions.items():
            if name in done:
                continue
            now = time.monotonic()
            if name.startswith("mfc"):
                if now < next_read.get(name, 0.0):
                    continue
                if name in last_read:
                    res.add(f"(MFC poll period: {label})", now - last_read[name])
                last_read[name] = now
            ok = cond()
            end = time.monotonic()
            if name.startswith("mfc"):
                next_read[name] = end + (end - now) * (1 / args.duty - 1)
            if ok:
                done[name] = end - t0
                if not name.startswith("mfc"):
                    next_read.clear()  # something happened: look at the MFC now
        if len(done) == len(conditions):
            return done
        daemon.check_alive()
        if time.monotonic() > deadline:
            missing = sorted(set(conditions) - set(done))
            raise BenchError(f"timed out after {args.timeout}s waiting for {missing}; log tail:\n"
                             + daemon.log_tail(4000))
        time.sleep(args.poll)


def pidfile_ready(daemon: Daemon) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return daemon.pidfile.stat().st_size > 0
        except FileNotFoundError:
            return False
    return ready


# --------------------------------------------------------------------------
# measurement


@dataclass
class Results:
    rows: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.rows.setdefault(name, []).append(value)


def time_command(argv: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.monotonic()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.monotonic() - t0)
    return out


def wait_empty(view: MfcView, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while view.count():
        if time.monotonic() > deadline:
            raise BenchError("the MFC did not empty after smcrouted stopped")
        time.sleep(0.01)


def run(args: argparse.Namespace, router: Netns, workdir: Path, res: Results) -> None:
    routes_a = make_routes(args.routes, args.family)
    routes_b = make_routes(args.routes, args.family, changed=True)
    conf_a, conf_b = render(routes_a), render(routes_b)
    keys_a = {r.key() for r in routes_a}
    keys_b = {r.key() for r in routes_b}
    if len(keys_a) != args.routes or len(keys_b) != args.routes:
        raise BenchError("generated routes are not distinct")
    n = args.routes
    print(f"routes: {n} (family {args.family}), changed reload: {len(keys_a - keys_b)} removed,"
          f" {len(keys_b - keys_a)} added; spawn: {args.spawn}; log level: {args.log_level};"
          f" poll every {args.poll * 1000:g} ms, MFC reads at most {args.duty:.0%} of the time",
          flush=True)

    view = MfcView(router)
    daemon = Daemon(args.smcrouted, router, workdir, args.spawn, args.log_level)
    try:
        for rep in range(args.repeat):
            wait_empty(view)
            daemon.conf.write_text(conf_a)
            t0 = daemon.start()
            got = poll({"mfc": lambda: view.count() >= n, "pidfile": pidfile_ready(daemon)},
                       t0, args, daemon, res, "start-up")
            daemon.note_helpers()
            if view.keys() != keys_a:
                raise BenchError("after start-up the MFC is not the configured set")
            res.add("start-up: all routes in kernel", got["mfc"])
            res.add("start-up: PID file written", got["pidfile"])

            # (b) unchanged config
            log = daemon.log()
            readies, reloads = log.count(READY), log.count(RELOADING)
            t0 = time.monotonic()
            daemon.proc.send_signal(signal.SIGHUP)
            got = poll({"ready": lambda r=readies: daemon.log().count(READY) > r,
                        "reloading": lambda r=reloads: daemon.log().count(RELOADING) > r},
                       t0, args, daemon, res)
            if view.keys() != keys_a:
                raise BenchError("after reloading the same config the MFC changed")
            res.add("reload same config: Ready logged", got["ready"])
            res.add("(SIGHUP to 'Reloading' logged)", got["reloading"])

            # (c) 10 % changed
            daemon.conf.write_text(conf_b)
            readies = daemon.log().count(READY)
            t0 = time.monotonic()
            daemon.proc.send_signal(signal.SIGHUP)
            got = poll({"mfc": lambda: view.keys() == keys_b,
                        "ready": lambda r=readies: daemon.log().count(READY) > r},
                       t0, args, daemon, res, "changed reload")
            if view.keys() != keys_b:
                raise BenchError("after the changed reload the MFC is not the new set")
            res.add("reload 10% changed: kernel matches", got["mfc"])
            res.add("reload 10% changed: Ready logged", got["ready"])

            daemon.stop()
            print(f"  run {rep + 1}/{args.repeat} done", flush=True)

        # cost of one poll with N entries installed (perturbation on small machines)
        daemon.conf.write_text(conf_a)
        t0 = daemon.start()
        poll({"mfc": lambda: view.count() >= n}, t0, args, daemon, Results())
        for _ in range(20):
            t1 = time.monotonic()
            view.count()
            res.add("(one MFC count poll)", time.monotonic() - t1)
            t1 = time.monotonic()
            view.keys()
            res.add("(one MFC key-set poll)", time.monotonic() - t1)
        daemon.stop()
    finally:
        daemon.stop()
        view.close()


def report(res: Results, args: argparse.Namespace) -> None:
    overhead = statistics.median(res.rows["(ip netns exec NS true)"])
    targets = {
        "start-up: all routes in kernel": (f"<= {TARGET_STARTUP}", C_SMCROUTE["startup"]),
        "start-up: PID file written": (f"<= {TARGET_STARTUP}", C_SMCROUTE["startup"]),
        "reload same config: Ready logged": (f"<= {TARGET_RELOAD}", C_SMCROUTE["reload"]),
        "reload 10% changed: kernel matches": (f"<= {TARGET_RELOAD}", C_SMCROUTE["reload"]),
        "reload 10% changed: Ready logged": (f"<= {TARGET_RELOAD}", C_SMCROUTE["reload"]),
    }
    print()
    print(f"smcrouted: {args.smcrouted}; {args.routes} routes; {args.repeat} runs; seconds")
    head = f"{'measure':<38} {'min':>7} {'median':>7} {'max':>7}  {'target':>7} {'C':>9}  ok"
    print(head)
    print("-" * len(head))
    def order(name: str) -> int:
        return 0 if name.startswith(("(ip", "(python", "(SIGHUP")) else (
            2 if name.startswith("(") else 1)

    for name in sorted(res.rows, key=order):  # stable: measures in the order taken
        values = res.rows[name]
        lo, med, hi = min(values), statistics.median(values), max(values)
        target, c = targets.get(name, ("", ""))
        ok = ""
        if target:
            ok = "yes" if med <= float(target.split()[-1]) else "NO"
        if name.startswith(("(one", "(MFC")):  # short: show in ms
            print(f"{name + ' [ms]':<38} {lo * 1e3:7.3f} {med * 1e3:7.3f} {hi * 1e3:7.3f}")
            continue
        print(f"{name:<38} {lo:7.3f} {med:7.3f} {hi:7.3f}  {target:>7} {c:>9}  {ok}")
        if args.spawn == "ip" and name.startswith("start-up"):
            print(f"{'  minus ip netns exec (median)':<38} {lo - overhead:7.3f}"
                  f" {med - overhead:7.3f} {hi - overhead:7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=2000, help="number of (S,G) lines")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--family", choices=("4", "6", "46"), default="4",
                        help="IPv4, IPv6, or both alternating")
    parser.add_argument("--spawn", choices=("setns", "ip"), default="setns",
                        help="start smcrouted after setns() (default) or via 'ip netns exec'")
    parser.add_argument("--log-level", default="notice", help="smcrouted -l (default notice)")
    parser.add_argument("--poll", type=float, default=0.001, help="poll interval, seconds")
    parser.add_argument("--duty", type=float, default=0.25,
                        help="at most this share of the time reading the MFC (0 < DUTY <= 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per measurement, seconds")
    parser.add_argument("--smcrouted", default=str(Path(sys.executable).parent / "smcrouted"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("must run as root (network namespaces, multicast routing)")
    if not 1 <= args.routes <= 64000 or args.repeat < 1 or not 0 < args.duty <= 1:
        parser.error("--routes 1..64000, --repeat >= 1, 0 < --duty <= 1")
    if not os.access(args.smcrouted, os.X_OK):
        parser.error(f"{args.smcrouted} is not executable")

    # SIGINT, SIGTERM and SIGHUP unwind through the finally blocks that clean up
    raise_on_signals()
    with workspace("bench", keep=args.keep) as ws:
        res = Results()
        try:
            router = build(ws.tag, ws.namespaces)
            res.rows["(ip netns exec NS true)"] = time_command(
                ["ip", "netns", "exec", router.name, "true"], max(args.repeat, 5))
            res.rows["(python -c pass)"] = time_command(
                [sys.executable, "-c", "pass"], max(args.repeat, 5))
            run(args, router, ws.workdir, res)
            report(res, args)
            return 0
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
