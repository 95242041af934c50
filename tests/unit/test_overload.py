"""Over the upcall rate or the stop-filter budget, a new flow is answered
with one stop entry for its group (an overload stop), not ignored: the
kernel would otherwise hold every such flow unresolved for 10 s (issue 17,
item 7)."""

from __future__ import annotations

import pytest
from smcroute.unprivileged import flows as flows_module
from smcroute.unprivileged.core import Settings
from smcroute.unprivileged.flows import OVERLOAD_LIFETIME, Limits

from .corehelp import FILE, Harness, key

ZERO = "0.0.0.0"
CONFIG = "mroute from a1 group 225.2.0.0/16 to a3\n"  # a1 = VIF 0, a3 = VIF 1


def harness(**limits: int) -> Harness:
    return Harness(CONFIG, settings=Settings(conf_path=FILE, cache_timeout=60,
                                             limits=Limits(**limits)))


def source(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}"


def test_over_the_upcall_rate_one_stop_entry_answers_the_group() -> None:
    h = harness(upcall_rate=5)
    star, i = key(ZERO, "225.2.0.1"), 0
    while star not in h.kernel_mfc():  # the first ones are learned, within the rate
        learned = set(h.kernel_mfc())
        h.nocache(source(i), "225.2.0.1", "a1", fast=False)
        i += 1
        assert i <= 5
    assert learned and all(m == (0, ((1, 1),)) for m in learned_entries(h, learned))
    for j in range(i, 50):  # over the rate: the group's stop entry answers, nothing more
        h.nocache(source(j), "225.2.0.1", "a1", fast=False)
        h.check()
    mfc = h.kernel_mfc()
    assert mfc[key(ZERO, "225.2.0.1")] == (0, ((0, 1),))  # only its inbound VIF
    assert set(mfc) == learned | {key(ZERO, "225.2.0.1")}  # no per-source entry
    assert h.core.flows.overloads == 1
    assert "(*, 225.2.0.1)" in h.show()
    assert any("upcall budget of 5/s exhausted: new flows of the group stopped for now" in t
               for t in h.logs("warning"))
    # another group over the rate gets its own; an established flow keeps its route
    h.nocache(source(99), "225.2.0.2", "a1", fast=False)
    assert key(ZERO, "225.2.0.2") in h.kernel_mfc() and h.core.flows.overloads == 2
    assert learned <= set(h.kernel_mfc())
    h.check_settled()


def learned_entries(h: Harness, keys: set) -> list:
    return [h.kernel_mfc()[k] for k in keys]


def test_an_overload_stop_expires_and_the_group_is_decided_again() -> None:
    h = harness(upcall_rate=1)
    h.nocache(source(0), "225.2.0.1", "a1", fast=False)
    h.nocache(source(1), "225.2.0.1", "a1", fast=False)
    assert key(ZERO, "225.2.0.1") in h.kernel_mfc()
    for _ in range(int(OVERLOAD_LIFETIME) + 8):  # the expiry runs every 6 s (-c 60)
        h.kernel.counts[(4, key(source(0), "225.2.0.1").source, bytes([225, 2, 0, 1]))] = \
            (int(h.now), 0, 0)  # the learned route stays busy
        h.tick(1.0)
    assert key(ZERO, "225.2.0.1") not in h.kernel_mfc() and h.core.flows.overloads == 0
    assert key(source(0), "225.2.0.1") in h.kernel_mfc()
    h.nocache(source(2), "225.2.0.1", "a1", fast=False)  # tokens are back: learned
    assert h.kernel_mfc()[key(source(2), "225.2.0.1")] == (0, ((1, 1),))
    h.check_settled()


def test_over_the_stop_filter_budget_one_stop_entry_per_group() -> None:
    h = harness(max_learned=3, max_per_rule=3)
    for i in range(3):  # groups no rule covers: stop filters, up to the budget
        h.nocache(S := source(i), "225.7.0.1", "a1", fast=False)
        assert h.kernel_mfc()[key(S, "225.7.0.1")] == (0, ())
    for i in range(3, 20):
        h.nocache(source(i), "225.7.0.1", "a1", fast=False)
        h.nocache(source(i), "225.8.0.1", "a1", fast=False)
    mfc = h.kernel_mfc()
    assert mfc[key(ZERO, "225.7.0.1")] == mfc[key(ZERO, "225.8.0.1")] == (0, ((0, 1),))
    assert len(mfc) == 5 and h.core.flows.stops == 5 and h.core.flows.overloads == 2
    h.check_settled()


def test_overload_stops_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows_module, "OVERLOAD_STOPS", 3)
    h = harness(upcall_rate=1)
    for i in range(10):
        h.nocache(source(i), f"225.2.0.{i + 1}", "a1", fast=False)
    stars = [k for k in h.kernel_mfc() if not any(k.source)]
    assert len(stars) == 3 and h.core.flows.overloads == 3  # the rest: ignored, as before
    h.check_settled()


def test_a_reload_keeps_an_overload_stop_until_it_expires() -> None:
    h = harness(upcall_rate=1)
    h.nocache(source(0), "225.2.0.1", "a1", fast=False)
    h.nocache(source(1), "225.2.0.1", "a1", fast=False)
    h.reload(CONFIG + "mroute from a1 group 225.3.0.0/16 to a3\n")
    assert key(ZERO, "225.2.0.1") in h.kernel_mfc() and h.core.flows.overloads == 1
    h.reload("")  # its interface has no VIF any more: it goes with it
    assert h.kernel_mfc() == {} and h.core.flows.overloads == 0
    h.check_settled()
