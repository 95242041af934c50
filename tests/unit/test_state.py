"""smcroute.unprivileged.state: load_plan(), RouteState requests and records."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path
from typing import Any

import pytest
from smcroute.ipc.helper import AddMfc, AddVif, DelMfc, DelVif
from smcroute.unprivileged import engine, state
from smcroute.unprivileged.config import parse_text
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.model import Diagnostic, Interface, Mfc, MfcKey, Pending, Vif, Where
from smcroute.unprivileged.options import Options
from smcroute.unprivileged.state import (
    RouteState,
    load_plan,
    log_diagnostic,
    pending_text,
)

from .fakes import FakeLog

IFS = {name: Interface(name, i + 2, True) for i, name in enumerate(["a1", "a2", "a3", "b1"])}
FILE = "/etc/smcroute.conf"


def make_plan(text: str, ifs: dict[str, Interface] = IFS, installed: Any = None) -> engine.Plan:
    cfg = parse_text(text, FILE)
    assert cfg.errors == ()
    return engine.plan(cfg, ifs, installed or {})


def key(source: str, group: str) -> MfcKey:
    s, g = ipaddress.ip_address(source), ipaddress.ip_address(group)
    return MfcKey(s.version, s.packed, g.packed)


def ok(req: Any) -> dict[str, Any]:
    return {"id": req.id, "ok": True}


def failed(req: Any, text: str = "No such device") -> dict[str, Any]:
    return {"id": req.id, "ok": False, "errno": 19, "error": text}


def apply(st: RouteState, target: engine.Plan) -> list[Any]:
    ids = itertools.count(1)
    todo = st.requests(st.changes(target), lambda: next(ids))
    st.record_all(todo, [ok(req) for req, _ in todo])
    return [req for req, _ in todo]


# -- texts ----------------------------------------------------------------------------------------


def test_pending_text() -> None:
    cfg = parse_text("mroute from zz0 group 225.1.2.0/24 to a1\n"
                     "mroute from zz+ source 2001:db8::1 group ff05::1", FILE)
    texts = [pending_text(Pending(rule, (rule.iif,), inbound=True))  # type: ignore[arg-type]
             for rule in cfg.directives]
    assert texts == ["mroute from zz0 group 225.1.2.0/24 pending: interface not available",
                     "mroute from zz+ group ff05::1 pending: interface not available"]
    (join,) = parse_text("mgroup from b4 group 225.1.2.3", FILE).directives
    assert pending_text(Pending(join, ("b4",), inbound=True)) == (  # type: ignore[arg-type]
        "mgroup from b4 group 225.1.2.3 pending: interface not available")


def test_log_diagnostic_levels() -> None:
    log = FakeLog()
    log_diagnostic(log, Diagnostic("Configuration file /x does not exist"))  # type: ignore[arg-type]
    log_diagnostic(log, Diagnostic("Failed opening /x: is a directory"))  # type: ignore[arg-type]
    log_diagnostic(log, Diagnostic("Configuration file /inc does not exist",  # type: ignore
                                   Where("/x", 3)))
    log_diagnostic(log, Diagnostic("Unknown command x, skipping.", Where("/x", 4),  # type: ignore
                                   error=False))
    assert log.lines == [
        ("notice", "Configuration file /x does not exist"),
        ("warning", "Failed opening /x: is a directory"),
        ("warning", "/x line 3: Configuration file /inc does not exist"),
        ("warning", "/x line 4: Unknown command x, skipping."),
    ]


# -- load_plan ------------------------------------------------------------------------------------


@pytest.fixture
def interfaces(monkeypatch: pytest.MonkeyPatch) -> dict[str, Interface]:
    table = dict(IFS)
    monkeypatch.setattr(state, "read_interfaces", lambda: table)
    return table


def opts_for(path: Path, **kw: Any) -> Options:
    return Options(conf=str(path), **kw)


def test_load_plan_of_a_clean_file(tmp_path: Path, interfaces: dict[str, Interface]) -> None:
    path = tmp_path / "smcroute.conf"
    path.write_text("phyint b1\nmroute from a1 source 10.0.0.1 group 225.1.2.3 to a2\n"
                    "mroute from a1 group 225.1.2.0/24 to a3\n")
    log = FakeLog()
    loaded = load_plan(opts_for(path), log, {}, initial=True)  # type: ignore[arg-type]
    target = loaded.target
    assert target is not None and loaded.errors == []
    assert loaded.config.directives[0].where == Where(str(path), 1)
    assert {n: v.vif for (f, n), v in target.vifs.items() if f == 4} == {
        "b1": 0, "a1": 1, "a2": 2, "a3": 3}
    assert list(target.mfc) == [key("10.0.0.1", "225.1.2.3")]
    assert len(target.templates) == 1
    assert log.lines == []


def test_load_plan_logs_warnings_and_still_plans(tmp_path: Path,
                                                 interfaces: dict[str, Interface]) -> None:
    path = tmp_path / "smcroute.conf"
    path.write_text("bogus\nphyint zz0\nmroute from a1 source 10.0.0.1 group 225.1.2.3 to a2\n")
    log = FakeLog()
    loaded = load_plan(opts_for(path), log, {}, initial=False)  # type: ignore[arg-type]
    assert loaded.target is not None and len(loaded.target.mfc) == 1
    assert loaded.errors == []
    assert log.lines == [
        ("warning", f"{path} line 1: Unknown command bogus, skipping."),
        ("warning", f"{path} line 2: phyint zz0 does not exist (yet?) on this system"),
    ]


@pytest.mark.parametrize("initial", [True, False])
def test_load_plan_rejects_a_config_with_errors(tmp_path: Path, interfaces: dict[str, Interface],
                                                initial: bool) -> None:
    (tmp_path / "inc.conf").write_text("phyint a1\nmroute from a1\n")
    path = tmp_path / "smcroute.conf"
    path.write_text("mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2\ninclude inc.conf\n")
    log = FakeLog()
    loaded = load_plan(opts_for(path), log, {}, initial=initial)  # type: ignore[arg-type]
    assert loaded.target is None
    error = (f"{tmp_path}/inc.conf line 2: mroute: missing multicast group,"
             " expected: group ADDR[/LEN]")
    assert loaded.errors == [error]
    tail = "" if initial else ", keeping the running one"
    assert log.lines == [
        ("warning", error),
        ("warning", f"Parse error in {path}, configuration not applied{tail}"),
    ]


def test_load_plan_rejects_an_engine_error(tmp_path: Path,
                                           interfaces: dict[str, Interface]) -> None:
    path = tmp_path / "smcroute.conf"
    # a join range of 2^28 groups: the parser accepts it, the plan refuses it
    path.write_text("phyint zz0\nmgroup from a1 group 225.0.0.0/4\n")
    log = FakeLog()
    loaded = load_plan(opts_for(path), log, {}, initial=False)  # type: ignore[arg-type]
    assert loaded.target is None
    assert len(loaded.errors) == 1
    assert loaded.errors[0].startswith(f"{path} line 2: mgroup: ")
    assert log.lines == [
        ("warning", f"{path} line 1: phyint zz0 does not exist (yet?) on this system"),
        ("warning", loaded.errors[0]),
        ("warning", f"Parse error in {path}, configuration not applied, keeping the running one"),
    ]


def test_load_plan_of_a_missing_file(tmp_path: Path, interfaces: dict[str, Interface]) -> None:
    path = tmp_path / "nope.conf"
    log = FakeLog()
    loaded = load_plan(opts_for(path), log, {}, initial=True)  # type: ignore[arg-type]
    assert loaded.target is None
    assert loaded.errors == [f"Configuration file {path} does not exist"]
    assert log.lines == [("notice", f"Configuration file {path} does not exist"),
                         ("notice", "Continuing anyway, waiting for client to connect.")]
    log = FakeLog()
    loaded = load_plan(opts_for(path), log, {}, initial=False)  # type: ignore[arg-type]
    assert loaded.target is None
    assert log.lines == [
        ("notice", f"Configuration file {path} does not exist"),
        ("warning", f"Parse error in {path}, configuration not applied, keeping the running one"),
    ]


def test_load_plan_uses_installed_slots_and_no_vifs(tmp_path: Path,
                                                    interfaces: dict[str, Interface]) -> None:
    path = tmp_path / "smcroute.conf"
    path.write_text("phyint a1\nphyint a2 enable\n")
    first = load_plan(opts_for(path), FakeLog(), {}, initial=True).target  # type: ignore
    assert first is not None
    installed = {(v.family, v.vif): v for v in first.vifs.values()}
    path.write_text("phyint a2\nphyint a1\n")
    second = load_plan(opts_for(path), FakeLog(), installed, initial=False).target  # type: ignore
    assert second is not None and second.vifs == first.vifs
    # -N: a bare phyint is "disable"
    path.write_text("phyint a1\nphyint a2 enable\n")
    third = load_plan(opts_for(path, no_vifs=True), FakeLog(), {},  # type: ignore[arg-type]
                      initial=True).target
    assert third is not None
    assert {n for (_, n) in third.vifs} == {"a2"}


# -- RouteState.requests --------------------------------------------------------------------------


def test_requests_in_the_order_they_must_run() -> None:
    v_add, v_del = Vif(4, 1, "a2", 3, 7), Vif(6, 0, "a1", 2, 1)
    k1, k2 = key("10.0.0.1", "225.1.2.3"), key("2001:db8::1", "ff05::1")
    m_set = Mfc(k1, 0, ((1, 7), (2, 1)), "a1", ("a2", "a3"))
    m_del = Mfc(k2, 0, (), "a1", ())
    changes = engine.Changes(add_vifs=(v_add,), del_mfc=(m_del,), set_mfc=(m_set,),
                             del_vifs=(v_del,))
    ids = itertools.count(40)
    todo = RouteState.requests(changes, lambda: next(ids))
    assert todo == [
        (AddVif(40, 4, 1, 3, 7), v_add),
        (DelMfc(41, 6, k2.source, k2.group), m_del),
        (AddMfc(42, 4, k1.source, k1.group, 0, ((1, 7), (2, 1))), m_set),
        (DelVif(43, 6, 0), v_del),
    ]
    assert RouteState.requests(engine.Changes(), lambda: next(ids)) == []


def test_record_all_needs_one_reply_per_request() -> None:
    st = RouteState(FakeLog())  # type: ignore[arg-type]
    todo = RouteState.requests(engine.Changes(add_vifs=(Vif(4, 0, "a1", 2, 1),)), lambda: 1)
    with pytest.raises(ValueError):
        st.record_all(todo, [])


# -- RouteState.record ----------------------------------------------------------------------------


def test_record_vifs() -> None:
    log = FakeLog()
    st = RouteState(log)  # type: ignore[arg-type]
    v4, v6 = Vif(4, 0, "a1", 2, 3), Vif(6, 0, "a1", 2, 3)
    st.record(AddVif(1, 4, 0, 2, 3), v4, {"id": 1, "ok": True})
    st.record(AddVif(2, 6, 0, 2, 3), v6, failed(AddVif(2, 6, 0, 2, 3), "Address in use"))
    assert st.vifs == {(4, 0): v4}
    assert log.at("warning") == ["Failed creating MIF 0 for a1: Address in use"]
    assert any(line.startswith("Map iface a1") and "VIF 0" in line for line in log.at("debug"))
    # a delete forgets the slot whether the kernel agreed or not (the device may be gone)
    st.record(DelVif(3, 4, 0), v4, failed(DelVif(3, 4, 0), "Cannot assign requested address"))
    assert st.vifs == {}
    # ... but only if the slot still holds that VIF
    st.record(AddVif(4, 4, 0, 9, 1), Vif(4, 0, "a9", 9, 1), {"id": 4, "ok": True})
    st.record(DelVif(5, 4, 0), v4, {"id": 5, "ok": True})
    assert st.vifs == {(4, 0): Vif(4, 0, "a9", 9, 1)}


def test_record_routes() -> None:
    log = FakeLog()
    st = RouteState(log)  # type: ignore[arg-type]
    k = key("10.0.0.1", "225.1.2.3")
    m = Mfc(k, 0, ((1, 1),), "a1", ("a2",), Where(FILE, 7))
    add = AddMfc(1, 4, k.source, k.group, 0, ((1, 1),))
    st.record(add, m, failed(add))
    assert st.mfc == {}
    assert log.at("warning") == [f"{FILE} line 7: failed adding IPv4 multicast route"
                                 " (10.0.0.1, 225.1.2.3): No such device"]
    st.record(add, m, ok(add))
    assert st.mfc == {k: m}
    # deleted routes are forgotten, also when the kernel says they are gone already
    st.record(DelMfc(2, 4, k.source, k.group), m, failed(DelMfc(2, 4, k.source, k.group)))
    assert st.mfc == {}
    assert log.at("debug") == []  # per-route lines only at debug level


def test_record_routes_at_debug_level() -> None:
    log = FakeLog()
    st = RouteState(log, PRIORITY["debug"])  # type: ignore[arg-type]
    k = key("10.0.0.1", "225.1.2.3")
    m = Mfc(k, 0, (), "a1", ())
    add = AddMfc(1, 4, k.source, k.group, 0, ())
    st.record(add, m, ok(add))
    st.record(DelMfc(2, 4, k.source, k.group), m, ok(add))
    assert log.at("debug") == ["Add (10.0.0.1, 225.1.2.3) from a1 to (none)",
                               "Del (10.0.0.1, 225.1.2.3) from a1"]


# -- changes, teardown, names ---------------------------------------------------------------------


def test_changes_note_new_pending_lines_once() -> None:
    log = FakeLog()
    st = RouteState(log)  # type: ignore[arg-type]
    text = "mroute from zz0 group 225.1.2.3 to a1\nmroute from a1 group 225.1.2.4 to zz1"
    apply(st, make_plan(text))
    assert log.at("notice") == [
        "mroute from zz0 group 225.1.2.3 pending: interface not available",
        "mroute from a1 group 225.1.2.4 pending: interface not available",
    ]
    assert [p.inbound for p in st.pending] == [True, False]
    apply(st, make_plan(text))  # the same again: no new notices
    assert len(log.at("notice")) == 2
    apply(st, make_plan("mroute from zz2 group 225.1.2.5"))
    assert len(log.at("notice")) == 3
    assert [p.rule.iif for p in st.pending] == ["zz2"]


def test_teardown_removes_everything_installed() -> None:
    st = RouteState(FakeLog())  # type: ignore[arg-type]
    target = make_plan("mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2\n"
                       "mroute from a1 group 225.1.2.4 to a3")
    apply(st, target)
    changes = st.teardown()
    assert set(changes.del_mfc) == set(target.mfc.values())
    assert set(changes.del_vifs) == set(target.vifs.values())
    assert changes.add_vifs == () and changes.set_mfc == ()
    ids = itertools.count(1)
    todo = st.requests(changes, lambda: next(ids))
    st.record_all(todo, [ok(req) for req, _ in todo])
    assert st.vifs == {} and st.mfc == {}


def test_adopt_names_after_a_rename() -> None:
    st = RouteState(FakeLog())  # type: ignore[arg-type]
    text = "mroute from {} source 10.0.0.1 group 225.1.2.3 to a2"
    apply(st, make_plan(text.format("a1")))
    renamed = {("b9" if k == "a1" else k): Interface("b9" if k == "a1" else k, v.index, True)
               for k, v in IFS.items()}
    target = make_plan(text.format("b9"), renamed, st.vifs)
    sent = apply(st, target)
    assert sent == []  # same ifindex, same slots: nothing for the kernel
    assert {v.name for v in st.vifs.values()} == {"a1", "a2"}
    st.adopt_names(target)
    assert {v.name for v in st.vifs.values()} == {"b9", "a2"}
    assert [m.iif_name for m in st.mfc.values()] == ["b9"]
    assert st.vifs == {(v.family, v.vif): v for v in target.vifs.values()}
