"""Memory comes back after a flood: the flow table and the ledger are
rebuilt once most flows are gone, and the controller hands freed memory
back (unprivileged/memory.py)."""

from __future__ import annotations

from smcroute.unprivileged.effects import ReturnMemory
from smcroute.unprivileged.flows import COMPACT_AT
from smcroute.unprivileged.memory import return_memory
from smcroute.unprivileged.model import Interface

from .corehelp import Harness

CONFIG = "phyint a enable\nphyint b enable\nmroute from a group 225.0.0.0/8 to b\n"
IFACES = {"a": Interface("a", 10, True), "b": Interface("b", 11, True)}


def flood(h: Harness, n: int) -> None:
    for i in range(n):
        h.nocache("10.0.0.1", f"225.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", "a")
        if i % 5000 == 4999:
            h.tick(1.0)  # upcall tokens come back


def test_flush_after_a_flood_compacts_and_returns_memory() -> None:
    h = Harness(CONFIG, IFACES)
    flood(h, COMPACT_AT + 100)
    flows = h.core.flows
    assert len(flows) == COMPACT_AT + 100 and flows.peak == len(flows)
    before = len(h.effects)
    h.ctl("flush")
    assert any(isinstance(e, ReturnMemory) for e in h.effects[before:])
    assert len(flows.flows) == 0 and flows.peak == 0
    assert h.core.ledger.mfc == {} and h.kernel_mfc() == {}
    # the rebuilt tables keep working
    flood(h, 10)
    assert len(h.core.flows) == 10 and len(h.kernel_mfc()) == 10
    h.check_settled()


def test_no_compaction_for_small_tables_or_while_most_flows_stay() -> None:
    h = Harness(CONFIG, IFACES)
    flood(h, 100)
    before = len(h.effects)
    h.ctl("flush")
    assert not any(isinstance(e, ReturnMemory) for e in h.effects[before:])
    flows = h.core.flows
    flood(h, COMPACT_AT)
    flows.remove(list(flows)[:COMPACT_AT // 2])
    assert not flows.shrunk()


def test_return_memory_runs() -> None:
    return_memory()  # a collection and malloc_trim(0): nothing to see but no error


def test_the_last_flows_of_a_flood_going_return_memory_once_more() -> None:
    """A compaction on the way down leaves a table too small to compact
    again; when its last flows go, the memory they held comes back too."""
    h = Harness(CONFIG, IFACES)
    flood(h, COMPACT_AT + 100)
    flows, core = h.core.flows, h.core
    before = len(h.effects)

    def returned() -> int:
        return sum(isinstance(e, ReturnMemory) for e in h.effects[before:])

    def remove(keys: list) -> None:  # as expiry does
        core._remove_flows(keys, "expiry")
        h.perform(core._done())

    remove(list(flows)[: COMPACT_AT * 3 // 4 + 100])  # most go: compacted
    assert returned() == 1
    assert flows.peak == len(flows) < COMPACT_AT < flows.high
    remove(list(flows)[:-1])  # not yet all: nothing more
    assert returned() == 1
    remove(list(flows))  # the last one: once more
    assert returned() == 2
    assert flows.high == 0 and not flows.shrunk()
    h.check_settled()
