#!/usr/bin/env python3
"""Memory per learned route and per stop filter, in the controller and in
the helper, and what comes back once a flood has expired. No root, no
kernel: the daemon core (unprivileged/core.py) is driven with upcalls as the
controller drives it, and its helper requests go through the real channel
protocol to the helper's real request handling (policy/ops.py,
privileged/server.py) over a fake kernel (tests/unit/corehelp.py), all in
this process.

    /opt/smcroute-py/venv/bin/python bench/bench_flow_memory.py [--flows 20000]

(a) bytes per entry (tracemalloc: what stays allocated once N new flows of
    one group are in, divided by N), by where it was allocated: the
    controller (unprivileged/, ipc/) and the helper (privileged/, policy/);
    the fake kernel's own books are left out. Three kinds of entry:
    learned routes the helper's fast path installed, learned routes the
    controller decided, and stop filters (a group no rule covers).
(b) RSS of this process (controller + helper + fake kernel) before a flood
    of --flood new sources with -c 5, at its peak and once everything it
    made has expired (the daemon's own expiry, compaction and hand-back).

The figures for the real daemon against the kernel are
bench_kernel_star_g.py's; these isolate the two processes' own data.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smcroute.unprivileged.core import Settings
from smcroute.unprivileged.effects import ReturnMemory
from smcroute.unprivileged.flows import Limits
from smcroute.unprivileged.memory import return_memory
from smcroute.unprivileged.model import Interface

from tests.unit.corehelp import Harness

IFACES = {"a": Interface("a", 10, True), "b": Interface("b", 11, True)}
CONFIG = "phyint a enable\nphyint b enable\nmroute from a group 225.1.2.3 to b\n"
COVERED, UNCOVERED = bytes([225, 1, 2, 3]), bytes([225, 9, 9, 9])
KINDS = {  # name: (group, through the helper's fast path)
    "learned route, helper's fast path": (COVERED, True),
    "learned route, decided by the controller": (COVERED, False),
    "stop filter": (UNCOVERED, False),
}


def side(filename: str) -> str | None:
    if "/tests/" in filename:
        return None  # the fake kernel and the harness
    if "/privileged/" in filename or "/policy/" in filename:
        return "helper"
    return "controller"


def performed(h: Harness) -> None:
    """The effects the harness leaves to the controller: memory handed back
    when the core asks for it. The harness's record is cleared."""
    if any(isinstance(e, ReturnMemory) for e in h.effects):
        return_memory()
    h.effects.clear()


def flood(h: Harness, group: bytes, first: int, n: int, fast: bool, step: float) -> None:
    vif = h.core.plan.vifs[(4, "a")].vif
    for i in range(first, first + n):
        h.upcall("nocache", 4, vif, (0x0A000000 + i).to_bytes(4, "big"), bytes(group), fast)
        if i % 1000 == 999:
            h.tick(step)  # time goes on: upcall tokens come back
            performed(h)
    performed(h)


def per_entry(kind: str, n: int) -> dict[str, float]:
    group, fast = KINDS[kind]
    # no expiry during the count; budgets above n
    room = 2 * n + 4000
    settings = Settings(cache_timeout=0, limits=Limits(max_learned=room, max_per_rule=room))
    h = Harness(CONFIG, IFACES, settings=settings, max_mfc=4 * n)
    flood(h, group, 1, 2000, fast, 1.0)  # warm: first-time allocations out of the way
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    flood(h, group, 1_000_000, n, fast, 1.0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(h.core.flows) == n + 2000, len(h.core.flows)
    out = {"controller": 0.0, "helper": 0.0}
    for st in after.compare_to(before, "filename"):
        where = side(st.traceback[0].filename)
        if where is not None:
            out[where] += st.size_diff / n
    return out


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def expiry_cycle(n: int) -> tuple[float, float, float, int]:
    h = Harness(CONFIG, IFACES, settings=Settings(cache_timeout=5))
    flood(h, COVERED, 1, 3000, True, 0.45)
    h.tick(20.0)
    return_memory()
    rss0 = rss_mib()
    peak = rss0
    vif = h.core.plan.vifs[(4, "a")].vif
    for i in range(n):  # ~2200 new sources a second, as the kernel benchmark's flood
        h.upcall("nocache", 4, vif, (0x0B000000 + i).to_bytes(4, "big"), bytes(COVERED))
        if i % 1000 == 999:
            h.tick(0.45)
            performed(h)
            peak = max(peak, rss_mib())
    for _ in range(30):  # everything expires (-c 5)
        h.tick(1.0)
        performed(h)
    left = len(h.core.flows)
    gc.collect()
    return rss0, peak, rss_mib(), left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=20_000, help="(a) new flows per kind")
    ap.add_argument("--flood", type=int, default=100_000, help="(b) new sources")
    args = ap.parse_args()
    rss0, peak, after, left = expiry_cycle(args.flood)  # first: a fresh process
    print(f"Python {sys.version.split()[0]}; (a) {args.flows} entries of each kind")
    print(f"{'entry':<42} {'controller':>12} {'helper':>10}")
    for kind in KINDS:
        b = per_entry(kind, args.flows)
        print(f"{kind:<42} {b['controller']:>8.0f} B   {b['helper']:>6.0f} B")
    print(f"(b) flood of {args.flood} new sources, -c 5: RSS before {rss0:.1f} MiB,"
          f" peak {peak:.1f} MiB, after expiry {after:.1f} MiB"
          f" ({100 * (after - rss0) / rss0:+.0f}%; {left} flows left)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
