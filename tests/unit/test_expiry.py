"""Expiry reads only the counters that can decide something (issue 17): a
busy flow's about once per -c, a flow's seen once two or three times; an
idle flow goes between -c and 2 * -c + one period after its last packet,
as in SMCRoute; -c 0 reads none."""

from __future__ import annotations

from smcroute.ipc.helper import SgCount
from smcroute.unprivileged.core import Settings

from .corehelp import FILE, Harness, key

CONFIG = "mroute from a1 group 225.2.0.0/16 to a3\n"
GROUP = "225.2.0.1"


def harness(c: int) -> Harness:
    return Harness(CONFIG, settings=Settings(conf_path=FILE, cache_timeout=c))


def reads(h: Harness, start: int, source: str) -> int:
    k = key(source, GROUP)
    return sum(1 for e in h.sent()[start:] if isinstance(e, SgCount) and e.source == k.source)


def busy(h: Harness, source: str) -> None:
    """One more packet counted on the flow's entry."""
    k = (4, key(source, GROUP).source, key(source, GROUP).group)
    packets = h.kernel.counts.get(k, (0, 0, 0))[0] + 1
    h.kernel.counts[k] = (packets, packets * 100, 0)


def test_a_busy_flow_is_read_about_once_per_timeout_and_stays() -> None:
    h = harness(60)  # a sample every 6 s
    h.nocache("10.0.0.1", GROUP, "a1")
    start = len(h.sent())
    for _ in range(600):  # 10 minutes, a packet every second
        busy(h, "10.0.0.1")
        h.tick(1.0)
    assert key("10.0.0.1", GROUP) in h.kernel_mfc()
    n = reads(h, start, "10.0.0.1")
    assert 9 <= n <= 13, n  # about 1 per 60 s (every sample: 100)


def test_an_idle_flow_goes_between_c_and_twice_c() -> None:
    h = harness(10)  # a sample every second
    h.nocache("10.0.0.1", GROUP, "a1")
    for _ in range(30):  # busy for 30 s
        busy(h, "10.0.0.1")
        h.tick(1.0)
    last = h.now
    while key("10.0.0.1", GROUP) in h.kernel_mfc():
        h.tick(1.0)
        assert h.now - last <= 2 * 10 + 1, h.now - last
    assert h.now - last >= 10
    h.check_settled()


def test_a_flow_seen_once_is_read_two_or_three_times_and_goes_after_c() -> None:
    h = harness(10)
    h.nocache("10.0.0.1", GROUP, "a1")
    born, start = h.now, len(h.sent())
    while key("10.0.0.1", GROUP) in h.kernel_mfc():
        h.tick(1.0)
        assert h.now - born <= 12
    assert h.now - born >= 10
    assert 2 <= reads(h, start, "10.0.0.1") <= 3  # a first count, then near -c


def test_no_timeout_no_reads() -> None:
    h = harness(0)
    h.nocache("10.0.0.1", GROUP, "a1")
    start = len(h.sent())
    for _ in range(30):
        h.tick(1.0)
    assert reads(h, start, "10.0.0.1") == 0
    assert key("10.0.0.1", GROUP) in h.kernel_mfc()
