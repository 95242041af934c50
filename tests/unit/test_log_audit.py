"""Logging: levels, JSON lines, and an audit event per privileged operation."""

from __future__ import annotations

import json
import sys

from smcroute.ipc.helper import AddMfc, AddVif
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.log import batched, configure
from smcroute.unprivileged.model import Mfc, MfcKey, Vif
from smcroute.unprivileged.state import RouteState


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []

    def __getattr__(self, level: str):
        return lambda event, **kw: self.events.append((level, event, kw))


def test_json_lines_on_stderr(capsys) -> None:
    log = configure("smcroute", PRIORITY["info"], stderr=True, use_syslog=False, json=True)
    log.notice("hello", answer=42)
    log.debug("hidden")  # below the level
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "hello" and event["answer"] == 42
    assert event["level"] == "notice" and event["ident"] == "smcroute" and "timestamp" in event


def test_text_lines_on_stderr(capsys) -> None:
    log = configure("demo", PRIORITY["notice"], stderr=True, use_syslog=False)
    log.notice("Ready", k="v")
    log.info("not shown")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("demo[") and line.endswith("]: Ready k=v")


def test_batched_lines_are_written_together_in_order(capsys, monkeypatch) -> None:
    log = configure("demo", PRIORITY["notice"], stderr=True, use_syslog=False)
    writes: list[str] = []
    real = sys.stderr.write
    monkeypatch.setattr(sys.stderr, "write", lambda text: writes.append(text) or real(text))
    with batched():
        for i in range(3):
            log.notice("control request", n=i)
        with batched():  # nested: still one write at the outer end
            log.notice("inner")
        assert not writes
    log.notice("after")
    assert len(writes) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "control request n=0", "control request n=1", "control request n=2", "inner", "after"]


def test_batched_writes_even_when_the_block_fails(capsys) -> None:
    log = configure("demo", PRIORITY["notice"], stderr=True, use_syslog=False)
    try:
        with batched():
            log.notice("kept")
            raise RuntimeError
    except RuntimeError:
        pass
    assert capsys.readouterr().err.endswith("]: kept\n")


def test_every_privileged_operation_is_audited() -> None:
    log = Recorder()
    state = RouteState(log, PRIORITY["info"])  # type: ignore[arg-type]
    vif = Vif(4, 0, "a1", 3, 1)
    key = MfcKey(4, bytes([10, 0, 0, 1]), bytes([225, 1, 2, 3]))
    mfc = Mfc(key, 0, ((1, 1),), "a1", ("a2",))
    state.record(AddVif(1, 4, 0, 3, 1), vif, {"id": 1, "ok": True}, "config")
    state.record(AddMfc(2, 4, key.source, key.group, 0, ((1, 1),)), mfc,
                 {"id": 2, "ok": False, "errno": 17, "error": "File exists"}, "upcall")
    audits = [kw for level, event, kw in log.events if event == "audit"]
    assert audits == [
        {"op": "add_vif", "what": "VIF 0 a1", "cause": "config", "result": "ok"},
        {"op": "add_mfc", "what": "(10.0.0.1, 225.1.2.3) from a1", "cause": "upcall",
         "result": "errno 17: File exists"},
    ]
    assert all(level == "info" for level, event, _ in log.events if event == "audit")


def test_no_audit_below_info() -> None:
    log = Recorder()
    state = RouteState(log, PRIORITY["notice"])  # type: ignore[arg-type]
    state.record(AddVif(1, 4, 0, 3, 1), Vif(4, 0, "a1", 3, 1), {"id": 1, "ok": True})
    assert not [e for e in log.events if e[1] == "audit"]
