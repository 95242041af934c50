"""What the controller records after the helper accepts a reload's changes.

Controller.apply() is driven with a fake helper channel that accepts every
request: no sockets, no helper process. What the controller believes is
installed must then be exactly the plan, or the next reload diffs against
the wrong state.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections.abc import Sequence
from typing import Any

from smcroute.ipc.helper import AddVif, Request, to_wire
from smcroute.policy.helper import HelperState, parse_request
from smcroute.privileged.server import Server
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.controller import Controller
from smcroute.unprivileged.engine import Plan, diff, plan
from smcroute.unprivileged.model import Interface
from smcroute.unprivileged.options import Options


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **kw: Any) -> None:
            self.lines.append((level, event))
        return log


class AcceptingChannel:
    """Answers every request with ok, as a helper whose kernel accepts everything."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.sent: list[Request] = []

    def next_id(self) -> int:
        return next(self._ids)

    async def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        self.sent += reqs
        return [{"id": r.id, "ok": True} for r in reqs]


def controller() -> Controller:
    c = Controller(Options(), FakeLog(), None, None, None)  # type: ignore[arg-type]
    c.channel = AcceptingChannel()  # type: ignore[assignment]
    return c


def make_plan(text: str, ifs: dict[str, Interface], installed: Any) -> Plan:
    cfg = parse_text(text, "/etc/smcroute.conf")
    assert cfg.errors == ()
    return plan(cfg, ifs, installed)


IFS = {name: Interface(name, i + 2, True) for i, name in enumerate(["a1", "a2", "a3"])}
TEXT = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2"


def by_slot(target: Plan) -> dict[tuple[int, int], Any]:
    """The controller keys its VIFs by kernel slot, the plan by interface name."""
    return {(v.family, v.vif): v for v in target.vifs.values()}


def load(c: Controller, text: str, ifs: dict[str, Interface]) -> Plan:
    target = make_plan(text, ifs, c.vifs)
    asyncio.run(c.apply(diff(c.vifs, c.mfc, target)))
    return target


def test_initial_load_records_the_plan() -> None:
    c = controller()
    target = load(c, TEXT, IFS)
    assert c.vifs == by_slot(target)
    assert set(c.mfc) == set(target.mfc)


def test_reload_with_unused_interface_records_the_plan() -> None:
    c = controller()
    load(c, TEXT + " a3", IFS)
    target = load(c, TEXT, IFS)
    assert c.vifs == by_slot(target)
    assert set(c.mfc) == set(target.mfc)


def test_recreated_interface_keeps_its_new_vif() -> None:
    # a1 is deleted and created again (new ifindex): the reload adds its new
    # VIF/MIF and deletes the old ones. Both have the key (family, "a1"); the
    # delete of the old slot must not make the controller forget the new one.
    c = controller()
    load(c, TEXT, IFS)
    ifs = dict(IFS)
    ifs["a1"] = Interface("a1", 99, True)
    target = load(c, TEXT, ifs)
    assert target.vifs[(4, "a1")].ifindex == 99
    assert c.vifs == by_slot(target)
    assert set(c.mfc) == set(target.mfc)
    # and the next reload, with nothing changed, has nothing to do
    assert not diff(c.vifs, c.mfc, make_plan(TEXT, ifs, c.vifs))


# -- the same, through the helper's real request handling and a fake kernel ----------------------


class FakeKernel:
    """The kernel's VIF tables as far as MRT_ADD_VIF/MRT_DEL_VIF go (SPEC 5.2).

    When a device is unregistered the kernel deletes its VIF/MIF on its own;
    a later MRT_DEL_VIF of that slot fails with EADDRNOTAVAIL.
    """

    table = 0

    def __init__(self) -> None:
        self.vifs: dict[int, dict[int, int]] = {4: {}, 6: {}}

    def add_vif(self, family: int, vif: int, ifindex: int, threshold: int) -> None:
        if vif in self.vifs[family]:
            raise OSError(errno.EADDRINUSE, "in use")
        self.vifs[family][vif] = ifindex

    def del_vif(self, family: int, vif: int) -> None:
        if vif not in self.vifs[family]:
            raise OSError(errno.EADDRNOTAVAIL, "no such vif")
        del self.vifs[family][vif]

    def add_mfc(self, *args: Any) -> None:
        pass

    def del_mfc(self, *args: Any) -> None:
        pass

    def unregister(self, ifindex: int) -> None:
        for table in self.vifs.values():
            for vif in [v for v, i in table.items() if i == ifindex]:
                del table[vif]


class HelperChannel:
    """The helper's own validation and execution (Server.execute) over a fake kernel."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.server = Server(None, kernel, HelperState())  # type: ignore[arg-type]
        self._ids = itertools.count(1)
        self.refused: list[tuple[Request, dict[str, Any]]] = []

    def next_id(self) -> int:
        return next(self._ids)

    async def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        replies = []
        for req in reqs:
            reply = self.server.execute(parse_request(to_wire(req)))
            if not reply["ok"]:
                self.refused.append((req, reply))
            replies.append(reply)
        return replies


def test_vanished_interface_slot_can_be_used_again() -> None:
    kernel = FakeKernel()
    c = controller()
    c.channel = HelperChannel(kernel)  # type: ignore[assignment]
    load(c, TEXT, IFS)  # a1 -> 0, a2 -> 1
    assert c.channel.refused == []  # type: ignore[attr-defined]
    # a1 is unplugged: the kernel drops its VIF and MIF by itself
    kernel.unregister(IFS["a1"].index)
    ifs = {k: v for k, v in IFS.items() if k != "a1"}
    load(c, "phyint a2", ifs)
    # a new interface appears and is used: it must get a working VIF/MIF
    ifs["a3"] = Interface("a3", 50, True)
    target = load(c, "phyint a2\nmroute from a3 source 10.0.0.9 group 225.1.2.3 to a2", ifs)
    refused_adds = [(req, reply["error"]) for req, reply in c.channel.refused  # type: ignore
                    if isinstance(req, AddVif)]
    assert refused_adds == []
    assert c.vifs == by_slot(target)
    for family in (4, 6):
        assert kernel.vifs[family] == {v.vif: v.ifindex for (fam, _), v in c.vifs.items()
                                       if fam == family}
