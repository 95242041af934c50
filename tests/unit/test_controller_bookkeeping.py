"""What the controller records after the helper accepts a reload's changes.

RouteState (state.py) turns a plan's changes into helper requests and
records the replies; here it is driven with fake helper channels: one that
accepts everything, and one that runs the helper's real request handling
(policy.HelperState + privileged.server.Server) over a fake kernel. No
sockets, no helper process. What the controller believes is installed must
then be exactly the plan, or the next reload diffs against the wrong state.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from smcroute.ipc.helper import AddVif, Request, to_wire
from smcroute.policy.helper import HelperState, parse_request
from smcroute.privileged.server import Server
from smcroute.unprivileged import state as state_module
from smcroute.unprivileged.boot import Booted
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.controller import Controller
from smcroute.unprivileged.engine import Plan, diff, plan
from smcroute.unprivileged.model import Interface
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.state import RouteState

from .fakes import FakeKernel, FakeLog


class AcceptingChannel:
    """Answers every request with ok, as a helper whose kernel accepts everything."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.sent: list[Request] = []

    def next_id(self) -> int:
        return next(self._ids)

    def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        self.sent += reqs
        return [{"id": r.id, "ok": True} for r in reqs]


def make_plan(text: str, ifs: dict[str, Interface], installed: Any) -> Plan:
    cfg = parse_text(text, "/etc/smcroute.conf")
    assert cfg.errors == ()
    return plan(cfg, ifs, installed)


IFS = {name: Interface(name, i + 2, True) for i, name in enumerate(["a1", "a2", "a3"])}
TEXT = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2"


def by_slot(target: Plan) -> dict[tuple[int, int], Any]:
    """The controller keys its VIFs by kernel slot, the plan by interface name."""
    return {(v.family, v.vif): v for v in target.vifs.values()}


def load(state: RouteState, channel: Any, text: str, ifs: dict[str, Interface]) -> Plan:
    """What boot and reload do: plan over what is installed, send, record."""
    target = make_plan(text, ifs, state.vifs)
    todo = state.requests(state.changes(target), channel.next_id)
    state.record_all(todo, channel.call([req for req, _ in todo]))
    return target


def fresh() -> tuple[RouteState, AcceptingChannel]:
    return RouteState(FakeLog()), AcceptingChannel()  # type: ignore[arg-type]


def test_initial_load_records_the_plan() -> None:
    state, channel = fresh()
    target = load(state, channel, TEXT, IFS)
    assert state.vifs == by_slot(target)
    assert set(state.mfc) == set(target.mfc)
    assert state.mfc == target.mfc


def test_reload_with_unused_interface_records_the_plan() -> None:
    state, channel = fresh()
    load(state, channel, TEXT + " a3", IFS)
    target = load(state, channel, TEXT, IFS)
    assert state.vifs == by_slot(target)
    assert set(state.mfc) == set(target.mfc)


def test_recreated_interface_keeps_its_new_vif() -> None:
    # a1 is deleted and created again (new ifindex): the reload adds its new
    # VIF/MIF and deletes the old ones. Both belong to the name a1; the
    # delete of the old slot must not make the controller forget the new one.
    state, channel = fresh()
    load(state, channel, TEXT, IFS)
    ifs = dict(IFS)
    ifs["a1"] = Interface("a1", 99, True)
    target = load(state, channel, TEXT, ifs)
    assert target.vifs[(4, "a1")].ifindex == 99
    assert state.vifs == by_slot(target)
    assert set(state.mfc) == set(target.mfc)
    # and the next reload, with nothing changed, has nothing to do
    assert not diff(state.vifs, state.mfc, make_plan(TEXT, ifs, state.vifs))


def test_reload_to_nothing_and_back() -> None:
    state, channel = fresh()
    first = load(state, channel, TEXT, IFS)
    load(state, channel, "", IFS)
    assert state.vifs == {} and state.mfc == {}
    again = load(state, channel, TEXT, IFS)
    assert state.vifs == by_slot(again) == by_slot(first)


# -- through the controller (Controller.apply delegates to its RouteState) ----------------------


class AsyncChannel:
    """The event-loop channel's interface over a synchronous fake."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def next_id(self) -> int:
        return int(self.inner.next_id())

    async def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        return list(self.inner.call(reqs))


def controller(inner: Any) -> Controller:
    log = FakeLog()
    state = RouteState(log)  # type: ignore[arg-type]
    booted = Booted(channel=None, state=state, applied=True)  # type: ignore[arg-type]
    c = Controller(Options(), log, None, booted, None)  # type: ignore[arg-type]
    c.channel = AsyncChannel(inner)  # type: ignore[assignment]
    return c


def test_controller_apply_records_into_its_state() -> None:
    inner = AcceptingChannel()
    c = controller(inner)
    assert c.vifs is c.booted.state.vifs and c.mfc is c.booted.state.mfc
    target = make_plan(TEXT, IFS, c.vifs)
    asyncio.run(c.apply(diff(c.vifs, c.mfc, target)))
    assert c.vifs == by_slot(target)
    assert c.mfc == target.mfc
    assert len(inner.sent) == len(target.vifs) + len(target.mfc)
    # nothing to do: nothing is sent
    asyncio.run(c.apply(diff(c.vifs, c.mfc, make_plan(TEXT, IFS, c.vifs))))
    assert len(inner.sent) == len(target.vifs) + len(target.mfc)


# -- the same, through the helper's real request handling and a fake kernel ----------------------


class HelperChannel:
    """The helper's own validation and execution (Server.execute) over a fake kernel."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.server = Server(None, kernel, HelperState())  # type: ignore[arg-type]
        self._ids = itertools.count(1)
        self.refused: list[tuple[Request, dict[str, Any]]] = []

    def next_id(self) -> int:
        return next(self._ids)

    def call(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
        replies = []
        for req in reqs:
            reply = self.server.execute(parse_request(to_wire(req)))
            if not reply["ok"]:
                self.refused.append((req, reply))
            replies.append(reply)
        return replies


def test_vanished_interface_slot_can_be_used_again() -> None:
    kernel = FakeKernel()
    state = RouteState(FakeLog())  # type: ignore[arg-type]
    channel = HelperChannel(kernel)
    load(state, channel, TEXT, IFS)  # a1 -> 0, a2 -> 1
    assert channel.refused == []
    # a1 is unplugged: the kernel drops its VIF and MIF by itself
    kernel.unregister(IFS["a1"].index)
    ifs = {k: v for k, v in IFS.items() if k != "a1"}
    load(state, channel, "phyint a2", ifs)
    # a new interface appears and is used: it must get a working VIF/MIF
    ifs["a3"] = Interface("a3", 50, True)
    target = load(state, channel, "phyint a2\nmroute from a3 source 10.0.0.9 group 225.1.2.3"
                  " to a2", ifs)
    refused_adds = [(req, reply["error"]) for req, reply in channel.refused
                    if isinstance(req, AddVif)]
    assert refused_adds == []
    assert state.vifs == by_slot(target)
    for family in (4, 6):
        assert kernel.vifs[family] == {v.vif: v.ifindex for (fam, _), v in state.vifs.items()
                                       if fam == family}
    assert channel.server.state.vifs == kernel.vifs


def test_vanished_interface_through_the_controller() -> None:
    kernel = FakeKernel()
    inner = HelperChannel(kernel)
    c = controller(inner)
    target = make_plan(TEXT, IFS, c.vifs)
    asyncio.run(c.apply(c.state.changes(target)))
    kernel.unregister(IFS["a1"].index)
    ifs = {k: v for k, v in IFS.items() if k != "a1"}
    ifs["a3"] = Interface("a3", 50, True)
    target = make_plan("mroute from a3 source 10.0.0.9 group 225.1.2.3 to a2", ifs, c.vifs)
    asyncio.run(c.apply(c.state.changes(target)))
    assert [req for req, _ in inner.refused if isinstance(req, AddVif)] == []
    assert c.vifs == by_slot(target)
    assert inner.server.state.vifs == kernel.vifs
    assert set(kernel.mfc) == {(k.family, k.source, k.group) for k in c.mfc}


# -- reload through the controller: the file, the plan, the helper, the record ------------------


def reloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ifs: dict[str, Interface]
              ) -> tuple[Controller, HelperChannel, FakeKernel, Path]:
    """A controller whose reload reads tmp_path/smcroute.conf, sees ifs and
    talks to the helper's real request handling over a fake kernel."""
    monkeypatch.setattr(state_module, "read_interfaces", lambda: ifs)
    path = tmp_path / "smcroute.conf"
    kernel = FakeKernel()
    inner = HelperChannel(kernel)
    c = controller(inner)
    c.opts = Options(conf=str(path))
    return c, inner, kernel, path


def test_reload_applies_the_file_or_changes_nothing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    c, inner, kernel, path = reloading(tmp_path, monkeypatch, IFS)
    log: FakeLog = c.log  # type: ignore[assignment]

    def kernel_routes() -> dict[tuple[int, bytes, bytes], Any]:
        return dict(kernel.mfc)

    path.write_text(TEXT + " a3\n")
    asyncio.run(c.reload())
    assert by_name(c.vifs) == {"a1": 0, "a2": 1, "a3": 2}
    assert list(kernel_routes().values()) == [(0, ((1, 1), (2, 1)))]
    assert log.at("notice")[-1] == "Ready, waiting for client request or kernel event."

    path.write_text(TEXT + "\n")  # a3 is no longer used: its VIF goes
    asyncio.run(c.reload())
    assert by_name(c.vifs) == {"a1": 0, "a2": 1}
    assert kernel.vifs[4] == {0: IFS["a1"].index, 1: IFS["a2"].index}
    assert list(kernel_routes().values()) == [(0, ((1, 1),))]

    before = (dict(c.vifs), dict(c.mfc), kernel_routes(), dict(kernel.vifs[4]))
    path.write_text("mroute from a1\n")  # rejected whole: the running state stays
    asyncio.run(c.reload())
    assert (dict(c.vifs), dict(c.mfc), kernel_routes(), dict(kernel.vifs[4])) == before
    assert log.at("warning")[-1] == (f"Parse error in {path}, configuration not applied,"
                                     " keeping the running one")
    assert inner.refused == []


def by_name(vifs: dict[tuple[int, int], Any]) -> dict[str, int]:
    v4 = {v.name: v.vif for (family, _), v in vifs.items() if family == 4}
    assert v4 == {v.name: v.vif for (family, _), v in vifs.items() if family == 6}
    return v4
