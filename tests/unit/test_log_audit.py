"""Logging: levels, JSON lines, and an audit event per privileged operation."""

from __future__ import annotations

import json
import sys

from smcroute.policy.control import Peer
from smcroute.unprivileged.core import Settings
from smcroute.unprivileged.effects import Log
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.log import batched, configure

from .corehelp import FILE, Harness


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
    h = Harness("mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2",
                settings=Settings(conf_path=FILE, level=PRIORITY["info"]))
    h.kernel.refuse.add((4, bytes([10, 0, 0, 9]), bytes([225, 1, 2, 3])))
    h.ctl("add", "a1", "10.0.0.9", "225.1.2.3", "a2", peer=Peer(7, 8, 9))
    audits = [e.fields for e in h.effects if isinstance(e, Log) and e.text == "audit"]
    assert audits == [
        {"op": "add_vif", "what": "VIF 0 a1", "cause": "config", "result": "ok"},
        {"op": "add_vif", "what": "MIF 0 a1", "cause": "config", "result": "ok"},
        {"op": "add_vif", "what": "VIF 1 a2", "cause": "config", "result": "ok"},
        {"op": "add_vif", "what": "MIF 1 a2", "cause": "config", "result": "ok"},
        {"op": "add_mfc", "what": "(10.0.0.1, 225.1.2.3) from a1", "cause": "config",
         "result": "ok"},
        {"op": "add_mfc", "what": "(10.0.0.9, 225.1.2.3) from a1",
         "cause": "smcroutectl uid=7 pid=9", "result": "errno 12: Cannot allocate memory"},
    ]
    assert all(e.level == "info" for e in h.effects if isinstance(e, Log) and e.text == "audit")


def test_no_audit_below_info() -> None:
    h = Harness("mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2")
    assert not [e for e in h.effects if isinstance(e, Log) and e.text == "audit"]
