"""The daemon core (core.py): events in, effects out, no sockets or root.

Driven by tests/unit/corehelp.py: the real channel protocol and the
helper's real request handling over a fake kernel; replies can be held in
flight while other events happen.
"""

from __future__ import annotations

import json

import pytest
from smcroute.ipc.control import ControlRequest
from smcroute.ipc.helper import (
    AddMfc,
    AddVif,
    Allow,
    DelMfc,
    DelVif,
    Mrdisc,
    SetTemplates,
    SgCount,
)
from smcroute.policy.control import Peer
from smcroute.unprivileged.core import READY, RELOADING, Settings
from smcroute.unprivileged.effects import Answer, Log, Notify, Ready, Script, Send, Stop
from smcroute.unprivileged.flows import Limits
from smcroute.unprivileged.levels import PRIORITY

from .corehelp import FILE, Harness, interfaces, key

S = "10.0.0.1"
BASE = f"""\
phyint a1 enable
mroute from a1 source {S} group 225.1.1.1 to a2
mroute from a1 group 225.2.0.0/16 to a3
mgroup from a1 group 225.9.9.9
"""
DEBUG = Settings(conf_path=FILE, level=PRIORITY["debug"])


def ops(h: Harness, start: int = 0) -> list[str]:
    return [r.op for r in h.sent()[start:]]


# -- start-up --------------------------------------------------------------------------------


def test_start_up_applies_the_configuration() -> None:
    h = Harness(BASE)
    h.check_settled()
    assert h.kernel_mfc() == {key(S, "225.1.1.1"): (0, ((1, 1),))}
    assert [m.group for m in h.pool.joined.values()] == [bytes([225, 9, 9, 9])]
    assert not [e for e in h.effects if isinstance(e, Ready)]  # the controller says Ready


@pytest.mark.parametrize("bad", [
    "phyint a2 enable ttl-threshold",
    "mroute from a1 group 225.3.3.3 to " + " ".join(["a2"] * 33),
    "mroute from a1 group 225.3.3.3 to a2 " + "x" * 600,
    "mroute fr a1 group 225.3.3.3",
    "mroute from a1 group 10.9.9.9 to a2",
    "bogus command",
    "phyint a2 enable ttl-threshold 999",
    "mgroup from a1 group 225.0.0.0/8",
    "include /etc",  # a directory
])
def test_one_bad_line_at_start_up_skips_only_that_line(bad: str) -> None:
    h = Harness(BASE + bad + "\n")
    h.check_settled()
    assert h.kernel_mfc() == {key(S, "225.1.1.1"): (0, ((1, 1),))}
    assert len(h.pool.joined) == 1
    assert any(line.startswith(f"{FILE} line 5: ") for line in h.logs("warning")), h.logs()
    assert f"Parse error in {FILE}" in h.logs("warning")


def test_start_up_without_a_file_runs_empty() -> None:
    from smcroute.unprivileged.config import read_config

    h = Harness(start=False)
    h.perform(h.core.start(read_config("/nonexistent.conf"), h.ifs, h.now))
    assert h.logs("notice") == ["Configuration file /nonexistent.conf does not exist",
                                "Continuing anyway, waiting for client to connect."]
    assert h.sent() == [] and h.core.configured


def test_the_reload_script_runs_after_a_clean_start_only() -> None:
    script = Settings(conf_path=FILE, script=True)
    assert [e for e in Harness(BASE, settings=script).effects if isinstance(e, Script)] == [
        Script("reload")]
    assert not [e for e in Harness(BASE + "bogus\n", settings=script).effects
                if isinstance(e, Script)]


# -- reload: all or nothing ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "mroute from a1 group 10.9.9.9 to a2",  # not a group
    "frobnicate",  # unknown command
    "phyint a2 enable ttl-threshold 999",
    "mroute fr a1 group 225.3.3.3",
    "mgroup from a1 group 225.0.0.0/8",  # too many memberships
    "mgroup from a1 group 225.9.9.9",  # a duplicate join
    "include /etc",  # a directory
])
def test_reload_with_any_error_changes_nothing(bad: str) -> None:
    h = Harness(BASE)
    before = (h.kernel_mfc(), h.kernel_vifs(), dict(h.pool.joined), h.show(),
              h.show("pending"), h.show("groups"))
    sent = len(h.sent())
    new = BASE.replace("225.1.1.1", "225.1.1.2") + bad + "\n"
    (answer,) = h.reload(new)
    assert answer["ok"] is False
    assert answer["text"].startswith(f"{FILE} line 5: "), answer
    assert len(h.sent()) == sent  # not one request
    assert (h.kernel_mfc(), h.kernel_vifs(), dict(h.pool.joined), h.show(),
            h.show("pending"), h.show("groups")) == before
    assert any("keeping the running one" in t for t in h.logs("warning"))
    assert isinstance(h.effects[-2], Ready) or Ready() in h.effects
    h.check_settled()


def test_reload_reports_every_error() -> None:
    h = Harness(BASE)
    (answer,) = h.reload("bogus1\nphyint a1\nbogus2\n")
    assert answer["text"].splitlines() == [
        f"{FILE} line 1: Unknown command bogus1, skipping.",
        f"{FILE} line 3: Unknown command bogus2, skipping."]


def test_reload_logs_and_notifies() -> None:
    h = Harness(BASE)
    h.reload(BASE)
    assert RELOADING in h.logs("notice")
    assert Notify(("RELOADING=1", f"STATUS={RELOADING}")) in h.effects
    assert h.effects[-1] == Answer(1, ({"ok": True, "text": ""},)) or Ready() in h.effects


def test_reload_is_exact_and_touches_nothing_that_stays() -> None:
    h = Harness(BASE)
    start = len(h.sent())
    (answer,) = h.reload(BASE)
    assert answer["ok"] and h.sent()[start:] == []  # unchanged: no request at all
    new = BASE.replace("225.1.1.1 to a2", "225.1.1.1 to a2 a3") + \
        f"mroute from a1 source {S} group 225.4.4.4 to a2\n"
    (answer,) = h.reload(new)
    assert answer["ok"]
    assert ops(h, start) == ["add_mfc", "add_mfc"]
    h.check_settled()
    (answer,) = h.reload("")
    h.check_settled()
    assert h.kernel_mfc() == {} and h.kernel_vifs() == {} and h.pool.joined == {}


def test_reload_keeps_interfaces_slots() -> None:
    h = Harness("mroute from a1 source 10.0.0.1 group 225.1.1.1 to a2 a3\n")
    slots = dict(h.kernel_vifs())
    h.reload("mroute from a3 source 10.0.0.1 group 225.1.1.1 to b1\n")
    h.check_settled()
    vifs = h.kernel_vifs()
    assert vifs[(4, 2)] == slots[(4, 2)]  # a3 kept VIF 2
    assert vifs[(4, 3)] == h.ifs["b1"].index  # b1 took the lowest slot not held at the time


# -- the race of issue 13: a flow decided while a reload is applied ---------------------------


def test_a_flow_in_flight_during_a_reload_stays_accounted_for() -> None:
    h = Harness(BASE)
    h.hold = True
    h.nocache("10.0.0.7", "225.2.7.7", "a1", fast=False)  # the controller decides it
    assert h.flight  # its add_mfc is in flight
    h.reload(BASE + f"mroute from a1 source {S} group 225.4.4.4 to a2\n")
    h.check()
    h.release()
    h.hold = False
    h.check_settled()
    k = key("10.0.0.7", "225.2.7.7")
    assert k in h.core.flows.flows and k in h.kernel_mfc()
    assert h.core.flows.total == 1  # counted against --max-learned
    (flush,) = h.ctl("flush")
    assert flush["ok"]
    assert k not in h.kernel_mfc() and h.core.flows.total == 0  # flush reaches it


def test_a_flow_in_flight_whose_rule_a_reload_removes_goes() -> None:
    h = Harness(BASE)
    h.hold = True
    h.nocache("10.0.0.7", "225.2.7.7", "a1", fast=False)
    h.reload(BASE.replace("mroute from a1 group 225.2.0.0/16 to a3\n", ""))
    h.release()
    h.check_settled()
    assert key("10.0.0.7", "225.2.7.7") not in h.kernel_mfc()


def test_edits_while_a_batch_is_in_flight() -> None:
    h = Harness(BASE)
    h.hold = True
    for i in range(5):
        h.ctl("add", "a1", S, f"225.5.5.{i}", "a2")
    h.ctl("remove", "a1", S, "225.5.5.2")
    h.nocache("10.0.0.8", "225.2.8.8", "a1", fast=False)
    h.ctl("add", "a1", S, "225.5.5.2", "a3")
    assert h.answers == {} or all(not a for a in [])  # nothing answered yet
    h.release()
    h.check_settled()
    assert h.kernel_mfc()[key(S, "225.5.5.2")] == (0, ((2, 1),))


# -- a refused request is taken back exactly ---------------------------------------------------


def test_a_refused_add_is_rolled_back_and_reported() -> None:
    h = Harness(BASE)
    h.kernel.refuse.add((4, bytes([10, 0, 0, 2]), bytes([225, 6, 6, 6])))
    (r,) = h.ctl("add", "a1", "10.0.0.2", "225.6.6.6", "a2")
    assert r["ok"] is False
    assert r["text"] == ("failed adding multicast route (10.0.0.2, 225.6.6.6):"
                         " Cannot allocate memory")
    assert key("10.0.0.2", "225.6.6.6") not in h.core.ledger.mfc
    h.check_settled()


def test_a_refused_flow_is_forgotten_and_its_budget_returned() -> None:
    h = Harness(BASE)
    h.kernel.refuse.add((4, bytes([10, 0, 0, 7]), bytes([225, 2, 7, 7])))
    h.nocache("10.0.0.7", "225.2.7.7", "a1", fast=False)
    assert h.core.flows.total == 0 and not h.core.flows.flows
    h.check_settled()


def test_a_refusal_hands_the_old_state_on_to_the_next_change() -> None:
    h = Harness("mroute from a1 source 10.0.0.1 group 225.1.1.1 to a2\n")
    k = (4, bytes([10, 0, 0, 1]), bytes([225, 1, 1, 1]))
    h.hold = True
    h.kernel.refuse.add(k)
    h.ctl("add", "a1", S, "225.1.1.1", "a3")  # refused: the kernel keeps a2
    h.ctl("remove", "a1", S, "225.1.1.1")  # then deleted
    h.release()
    h.check_settled()
    assert h.kernel_mfc() == {}


def test_two_refusals_in_a_row_put_back_what_the_kernel_had() -> None:
    h = Harness("mroute from a1 source 10.0.0.1 group 225.1.1.1 to a2\n")
    k = key(S, "225.1.1.1")
    h.hold = True
    h.kernel.refuse.add((k.family, k.source, k.group))
    h.ctl("add", "a1", S, "225.1.1.1", "a3")  # both refused:
    h.ctl("add", "a1", S, "225.1.1.1", "b1")
    assert h.core.ledger.mfc[k].kernel == (0, ((1, 1), (2, 1), (3, 1)))
    h.release()
    assert h.core.ledger.mfc[k].kernel == (0, ((1, 1),)) == h.kernel_mfc()[k]


def test_the_helper_installs_a_flow_we_are_installing_ourselves() -> None:
    # An (S,G) route is added while the helper's fast path installs the same
    # (S,G) (its add_mfc is still in flight): ours replaces the helper's,
    # which is not booked as a learned flow.
    h = Harness(BASE)
    h.hold = True
    h.ctl("add", "a1", "10.0.0.5", "225.2.0.1", "a2")
    h.nocache("10.0.0.5", "225.2.0.1", "a1")  # learned, before the helper takes our add
    k = key("10.0.0.5", "225.2.0.1")
    assert k not in h.core.flows.flows
    h.release()
    h.check_settled()
    assert h.kernel_mfc()[k] == (0, ((1, 1),))


# -- semantics: merged rules, VIF order, IIF among the OIFs -------------------------------------


def test_equal_lines_are_one_rule_with_merged_oifs() -> None:
    h = Harness(f"mroute from a1 source {S} group 225.1.1.1 to a3\n"
                f"mroute from a1 group 225.2.0.0/16 to a3\n"
                f"mroute from a1 source {S} group 225.1.1.1 to a2\n"
                f"mroute from a1 group 225.2.0.0/16 to a2\n")
    rows = [line for line in h.show().splitlines() if line[-1] not in "_="]
    assert rows == [f"{'(*, 225.2.0.0/16)':<42} a1   a3 a2",  # VIF order: a3 came first
                    f"{f'({S}, 225.1.1.1)':<42} a1   a3 a2",  # the rule
                    f"{f'({S}, 225.1.1.1)':<42} a1   a3 a2"]  # its kernel entry


def test_oifs_are_shown_in_vif_order() -> None:
    h = Harness("phyint a3 enable\nphyint a2 enable\n"
                f"mroute from a1 source {S} group 225.1.1.1 to a2 a3\n"
                f"mroute from a1 group 225.2.0.0/16 to a2 a3\n")
    assert h.kernel_vifs()[(4, 0)] == h.ifs["a3"].index
    assert all(line.endswith("a3 a2") for line in h.show().splitlines() if "a1" in line)
    routes = json.loads(h.show(as_json=True))["routes"]
    assert routes["asm"][0]["oifs"] == routes["ssm"][0]["oifs"] == ["a3", "a2"]


def kernel_rows(h: Harness) -> list[str]:
    return [line.split()[1].rstrip(")") for line in
            h.show().split("Kernel MFC Table_")[1].splitlines()[2:]]


def test_the_kernel_table_is_shown_in_the_order_installed() -> None:
    """As SMCRoute's kernel list: configured routes in configuration order at
    start-up (not in a hash order that changes from run to run); a reload
    keeps unchanged entries where they are and appends new ones, in
    configuration order."""
    lines = [f"mroute from a1 source {S} group 225.1.1.{n} to a2\n" for n in range(1, 21)]
    h = Harness("".join(lines))
    assert kernel_rows(h) == [f"225.1.1.{n}" for n in range(1, 21)]
    new = [f"mroute from a1 source {S} group 225.1.2.{n} to a2\n" for n in range(1, 11)]
    h.reload("".join(new[:5] + lines[:10] + new[5:] + lines[10:]))
    assert kernel_rows(h) == [f"225.1.1.{n}" for n in range(1, 21)] + \
        [f"225.1.2.{n}" for n in range(1, 11)]


def test_the_inbound_interface_may_be_an_outbound_one() -> None:
    h = Harness(f"mroute from a1 source {S} group 225.1.1.1 to a1 a2\n"
                "mroute from a1 group 225.2.0.0/16 to a1\n")
    assert h.kernel_mfc() == {key(S, "225.1.1.1"): (0, ((0, 1), (1, 1)))}
    note = ("mroute: Same outbound interface (OIF) as inbound (IIF) may cause routing loops.")
    assert h.logs("info") == [] and h.core.level < PRIORITY["info"]
    h2 = Harness(f"mroute from a1 source {S} group 225.1.1.1 to a1\n",
                 settings=Settings(conf_path=FILE, level=PRIORITY["info"]))
    assert f"{FILE} line 1: {note}" in h2.logs("info")
    h.nocache("10.0.0.9", "225.2.0.9", "a1")
    assert h.kernel_mfc()[key("10.0.0.9", "225.2.0.9")] == (0, ((0, 1),))


# -- interfaces that come and go ----------------------------------------------------------------


def test_a_pending_line_a_reload_removed_is_not_activated() -> None:
    h = Harness("mroute from w1 source 10.0.0.1 group 225.1.1.1 to a2\n")
    ifs = {**h.ifs, **interfaces("w1", start=20)}
    # the line goes as its interface comes: nothing was activated
    h.reload("mroute from a1 source 10.0.0.1 group 225.1.1.2 to a2\n", ifs)
    assert not [t for t in h.logs() if "Activated" in t]
    # a pending line that moved to another line number is activated, there
    h2 = Harness("mroute from w1 source 10.0.0.1 group 225.1.1.1 to a2\n")
    h2.reload("phyint a1 enable\nmroute from w1 source 10.0.0.1 group 225.1.1.1 to a2\n", ifs)
    assert [t for t in h2.logs() if "Activated" in t] == [
        f"{FILE} line 2: Activated pending mroute from w1 source 10.0.0.1 group 225.1.1.1 to a2"]


def test_pending_lines_activate_and_go_back() -> None:
    h = Harness("mroute from w1 source 10.0.0.1 group 225.1.1.1 to a2\n"
                "mroute from a1 source 10.0.0.1 group 225.1.1.2 to w1 a2\n")
    assert (f"{FILE} line 1: mroute from w1 source 10.0.0.1 group 225.1.1.1 to a2 pending:"
            " interface not available") in h.logs()
    assert h.kernel_mfc() == {key(S, "225.1.1.2"): (0, ((1, 1),))}
    ifs = {**h.ifs, **interfaces("w1", start=20)}
    h.links(ifs)
    h.check_settled()
    assert (f"{FILE} line 1: Activated pending mroute from w1 source 10.0.0.1"
            " group 225.1.1.1 to a2") in h.logs("notice")
    assert len(h.kernel_mfc()) == 2
    h.links({n: i for n, i in ifs.items() if n != "w1"})
    h.check_settled()
    assert h.kernel_mfc() == {key(S, "225.1.1.2"): (0, ((1, 1),))}
    assert "PENDING ROUTES AND GROUPS" in h.show("pending")


def test_an_edit_of_an_interface_the_core_has_not_seen_yet() -> None:
    h = Harness(BASE)
    h.ifs = {**h.ifs, **interfaces("n1", start=30)}  # netlink has not told us yet
    (r,) = h.ctl("add", "n1", S, "225.7.7.7", "a2")
    assert r["ok"], r
    h.check_settled()


# -- smcroutectl edits --------------------------------------------------------------------------


def test_edit_results_and_errors() -> None:
    h = Harness(BASE)
    replies = h.batch([ControlRequest("add", ("a1", S, "225.7.7.7", "a2")),
                       ControlRequest("add", ("zz", S, "225.7.7.8", "a2")),
                       ControlRequest("remove", ("a1", S, "225.8.8.8")),
                       ControlRequest("join", ("a1", "225.9.9.9")),
                       ControlRequest("leave", ("a2", "225.9.9.9")),
                       ControlRequest("join", ("a2", "225.9.9.8")),
                       ControlRequest("remove", ("a1", S, "225.1.1.1", "a3"))])
    assert [r["text"] for r in replies] == [
        "", "ipc: mroute: inbound zz is not a known phyint",
        f"mroute: no route from a1 ({S}, 225.8.8.8) to remove",
        "Already joined (*,225.9.9.9) on a1", "No group (*,225.9.9.9) on a2 to leave", "",
        f"mroute: a3 is not an outbound interface of the route from a1 ({S}, 225.1.1.1)"]
    h.check_settled()
    audits = [e for e in h.effects if isinstance(e, Log) and e.text == "control request"]
    assert [a.fields["result"] for a in audits][:2] == ["ok", replies[1]["text"]]


def test_a_failed_join_is_the_answer_to_that_join() -> None:
    h = Harness(BASE)
    h.pool.fail.add(bytes([225, 8, 8, 8]))
    a, b = h.batch([ControlRequest("join", ("a1", "225.8.8.8")),
                    ControlRequest("join", ("a1", "225.8.8.7"))])
    assert not a["ok"] and "Failed joining group" in a["text"] and b["ok"]
    h.check_settled()


def test_edits_are_one_batch_and_cost_what_they_change() -> None:
    text = "".join(f"mroute from a1 source 10.0.{i // 250}.{i % 250 + 1} group 225.1.1.1"
                   " to a2\n" for i in range(2000))
    h = Harness(text)
    start, effects = len(h.sent()), len(h.effects)
    h.batch([ControlRequest("add", ("a1", S, f"225.7.7.{i}", "a2")) for i in range(10)])
    assert ops(h, start) == ["add_mfc"] * 10
    assert sum(isinstance(e, Send) for e in h.effects[effects:]) == 1
    h.ctl("remove", "a1", "10.0.0.1", "225.1.1.1")
    assert ops(h, start + 10) == ["del_mfc"]
    h.check_settled()


def test_remove_of_the_last_user_of_an_interface_frees_its_vifs() -> None:
    h = Harness(BASE)
    h.ctl("add", "a1", S, "225.7.7.7", "b1")
    assert (4, 3) in h.kernel_vifs()
    h.ctl("remove", "a1", S, "225.7.7.7")
    h.check_settled()
    assert (4, 3) not in h.kernel_vifs() and (6, 3) not in h.kernel_vifs()


def test_added_template_upgrades_stop_filters_it_covers() -> None:
    h = Harness(BASE)
    h.nocache("10.0.0.5", "225.6.0.1", "a1")  # no rule: a stop filter
    assert h.kernel_mfc()[key("10.0.0.5", "225.6.0.1")] == (0, ())
    h.ctl("add", "a1", "225.6.0.0/16", "a2")
    h.check_settled()
    assert h.kernel_mfc()[key("10.0.0.5", "225.6.0.1")] == (0, ((1, 1),))
    h.ctl("remove", "a1", "225.6.0.0/16")
    h.check_settled()
    assert key("10.0.0.5", "225.6.0.1") not in h.kernel_mfc()  # learned: goes with its rule


def test_a_configured_route_wins_over_a_flow() -> None:
    h = Harness(BASE)
    h.nocache("10.0.0.5", "225.2.0.1", "a1")
    h.ctl("add", "a1", "10.0.0.5", "225.2.0.1", "a2")
    h.check_settled()
    assert h.kernel_mfc()[key("10.0.0.5", "225.2.0.1")] == (0, ((1, 1),))
    assert key("10.0.0.5", "225.2.0.1") not in h.core.flows.flows


def test_pending_edit_lines() -> None:
    h = Harness(BASE)
    (r,) = h.ctl("add", "a1", S, "225.7.7.7", "a2", "w9")
    assert r["ok"]
    assert ("mroute from a1 source 10.0.0.1 group 225.7.7.7 to a2 w9 pending: interface not"
            " available") in h.logs()  # (an smcroutectl line: no file, no line number)
    assert "w9" in h.show("pending")
    h.ctl("remove", "a1", S, "225.7.7.7", "w9")
    assert h.show("pending").startswith("No pending")
    h.check_settled()


# -- upcalls, the fast path, expiry, flush --------------------------------------------------------


def test_upcalls_learn_routes_and_stop_filters() -> None:
    h = Harness(BASE, settings=Settings(conf_path=FILE, script=True))
    h.nocache("10.0.0.5", "225.2.0.1", "a1", fast=False)
    h.nocache("10.0.0.5", "225.3.0.1", "a1", fast=False)
    assert h.kernel_mfc()[key("10.0.0.5", "225.2.0.1")] == (0, ((2, 1),))
    assert h.kernel_mfc()[key("10.0.0.5", "225.3.0.1")] == (0, ())
    assert Script("install", "10.0.0.5", "225.2.0.1") in h.effects
    assert Script("install", "10.0.0.5", "225.3.0.1") not in h.effects
    h.check_settled()


def test_wrongvif_moves_a_learned_route() -> None:
    h = Harness("mroute from a+ group 225.2.0.0/16 to b1\n")
    h.nocache("10.0.0.5", "225.2.0.1", "a1", fast=False)
    k = key("10.0.0.5", "225.2.0.1")
    vif = h.core.plan.vifs[(4, "a2")].vif
    h.upcall("wrongvif", 4, vif, k.source, k.group)
    assert h.kernel_mfc()[k][0] == vif
    assert any("after WRONGVIF" in t for t in h.logs("notice"))
    h.check_settled()


def test_the_fast_path_is_booked_and_stale_installs_removed() -> None:
    h = Harness(BASE)
    sent = h.sent()
    assert [r.op for r in sent if isinstance(r, SetTemplates | Allow)] == ["templates", "allow"]
    h.nocache("10.0.0.5", "225.2.0.1", "a1")  # the helper installs it
    k = key("10.0.0.5", "225.2.0.1")
    assert k in h.core.flows.flows and k in h.core.ledger.mfc
    assert not any(isinstance(r, AddMfc) and r.group == k.group for r in h.sent())
    # templates change while the helper installs a flow with the old ones
    g = h.server.state.generation
    k2 = key("10.0.0.6", "225.2.0.1")
    index = h.server.install_fast(4, 0, k2.source, k2.group)
    assert index is not None
    h.ctl("add", "a1", "225.2.0.0/16", "a2")  # new templates, a new generation
    from smcroute.ipc.helper import Upcall

    h.perform(h.core.upcalls([Upcall(4, "learned", 0, k2.source, k2.group, g, index)], h.now))
    assert isinstance(h.sent()[-1], DelMfc) and h.sent()[-1].source == k2.source
    h.check_settled()


def test_expiry_removes_idle_flows() -> None:
    h = Harness(BASE, settings=Settings(conf_path=FILE, cache_timeout=10))
    h.nocache("10.0.0.5", "225.2.0.1", "a1")
    k = key("10.0.0.5", "225.2.0.1")
    assert h.core.deadline() is not None
    for _ in range(30):
        h.tick(1.0)
    assert k not in h.kernel_mfc() and not h.core.flows.flows
    assert any(isinstance(r, SgCount) for r in h.sent())
    h.check_settled()


def test_active_flows_stay() -> None:
    h = Harness(BASE, settings=Settings(conf_path=FILE, cache_timeout=10))
    h.nocache("10.0.0.5", "225.2.0.1", "a1")
    k = key("10.0.0.5", "225.2.0.1")
    for n in range(30):
        h.kernel.counts[(4, k.source, k.group)] = (n, n * 100, 0)
        h.tick(1.0)
    assert k in h.kernel_mfc()


def test_budgets() -> None:
    limits = Limits(max_learned=5, max_per_rule=3, upcall_rate=1000)
    h = Harness("mroute from a1 group 225.2.0.0/16 to a2\nmroute from a1 group 225.3.0.0/16"
                " to a2\n", settings=Settings(conf_path=FILE, limits=limits))
    for i in range(10):
        h.nocache(f"10.0.1.{i}", "225.2.0.1", "a1", fast=False)
        h.nocache(f"10.0.2.{i}", "225.3.0.1", "a1", fast=False)
        h.check()
    assert h.core.flows.total == 5
    assert any("budget exhausted" in t for t in h.logs("warning"))
    h.check_settled()


# -- show, flush, kill, shutdown --------------------------------------------------------------


def test_show_with_counters() -> None:
    h = Harness(BASE)
    h.kernel.counts[(4, bytes([10, 0, 0, 1]), bytes([225, 1, 1, 1]))] = (7, 700, 0)
    text = h.show(detail=True)
    assert any(line.split()[-3:] == ["7", "700", "a2"] for line in text.splitlines()), text


def test_show_interfaces_groups_pending() -> None:
    h = Harness(BASE + "mgroup from w1 group 225.4.4.4\n")
    assert "a1" in h.show("interfaces")
    assert "225.9.9.9" in h.show("groups") and "Kernel" in h.show("groups", detail=True)
    assert "mgroup  from w1 group 225.4.4.4" in h.show("pending")
    assert json.loads(h.show("pending", as_json=True))["pending"][0]["kind"] == "mgroup"


def test_flush_kill_and_shutdown() -> None:
    h = Harness(BASE)
    h.nocache("10.0.0.5", "225.3.0.1", "a1")
    assert h.ctl("flush") == [{"ok": True, "text": ""}]
    assert not h.core.flows.flows
    assert h.ctl("kill") == [{"ok": True, "text": ""}]
    assert isinstance(h.effects[-2], Stop) and isinstance(h.effects[-1], Answer)
    h.perform(h.core.shutdown())
    assert h.kernel_mfc() == {} and h.kernel_vifs() == {}


def test_audit_and_debug_lines() -> None:
    h = Harness(BASE, settings=DEBUG)
    assert any(e.text == "audit" and e.fields["op"] == "add_vif" for e in h.effects
               if isinstance(e, Log))
    assert any(t.startswith("Map iface a1") for t in h.logs("debug"))
    assert any(t.startswith(f"Add ({S}, 225.1.1.1) from a1 to a2") for t in h.logs("debug"))
    h.reload("")
    assert any(t.startswith(f"Del ({S}, 225.1.1.1)") for t in h.logs("debug"))
    assert any(t.startswith("Removed VIF 0 of a1") for t in h.logs("debug"))


# -- mrdisc -----------------------------------------------------------------------------------


def test_mrdisc_schedule_and_terminations() -> None:
    h = Harness("phyint a1 enable mrdisc\nphyint a2 enable\n",
                settings=Settings(conf_path=FILE, mrdisc_interval=4))
    adverts = [r for r in h.sent() if isinstance(r, Mrdisc)]
    assert [(r.vif, r.terminate) for r in adverts] == [(0, False)]
    assert len(h.pool.joined) == 2  # 224.0.0.2 and .106 on a1
    h.tick(3.9)
    assert len([r for r in h.sent() if isinstance(r, Mrdisc)]) == 1
    h.tick(0.2)
    assert len([r for r in h.sent() if isinstance(r, Mrdisc)]) == 2
    start = len(h.sent())
    h.reload("phyint a2 enable mrdisc\n")
    batch = h.sent()[start:]
    assert [r.op for r in batch][:1] == ["mrdisc"] and batch[0].terminate  # before the VIF goes
    assert isinstance(batch[-1], Mrdisc) and batch[-1].vif == 1 and not batch[-1].terminate
    assert [r.op for r in batch].index("del_vif") > 0
    h.check_settled()


def test_a_solicitation_is_answered_at_most_once_a_second() -> None:
    h = Harness("phyint a1 enable mrdisc\n")
    start = len(h.sent())
    for _ in range(5):
        h.upcall("solicit", 4, 0, bytes([10, 0, 0, 9]), bytes([224, 0, 0, 2]))
    assert len(h.sent()) == start + 1
    h.now += 1.5
    h.upcall("solicit", 4, 0, bytes([10, 0, 0, 9]), bytes([224, 0, 0, 2]))
    assert len(h.sent()) == start + 2


# -- the one transition: its order --------------------------------------------------------------


def test_one_batch_in_the_order_the_kernel_needs() -> None:
    h = Harness("phyint a1 enable mrdisc\n"
                f"mroute from a1 source {S} group 225.1.1.1 to a2\n"
                "mroute from a1 group 225.2.0.0/16 to a2\n")
    start = len(h.sent())
    h.reload("phyint a3 enable mrdisc\n"
             f"mroute from a3 source {S} group 225.1.1.2 to b1\n"
             "mroute from a3 group 225.2.0.0/16 to b1\n")
    kinds = []
    for r in h.sent()[start:]:
        kind = r.op if not isinstance(r, Mrdisc) else ("term" if r.terminate else "advert")
        if isinstance(r, SetTemplates):
            kind = "templates" if r.templates else "no templates"
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    assert kinds == ["term", "no templates", "add_vif", "del_mfc", "add_mfc", "del_vif",
                     "advert", "templates", "allow"]
    h.check_settled()


def test_audit_of_smcroutectl_edits_names_the_peer() -> None:
    h = Harness(BASE, settings=Settings(conf_path=FILE, level=PRIORITY["info"]))
    h.ctl("add", "a1", S, "225.7.7.7", "a2", peer=Peer(1000, 1000, 4242))
    audit = [e for e in h.effects if isinstance(e, Log) and e.text == "audit"][-1]
    assert audit.fields["cause"] == "smcroutectl uid=1000 pid=4242"
    assert any(isinstance(r, AddVif | DelVif) for r in h.sent())
    assert READY  # (the controller logs it)


# -- interfaces unplugged, re-created, renamed -------------------------------------------------

TEXT = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2"


def test_a_vanished_interface_slot_can_be_used_again() -> None:
    h = Harness(TEXT)
    assert h.kernel_vifs()[(4, 0)] == h.ifs["a1"].index
    h.kernel.unregister(h.ifs["a1"].index)  # unplugged: the kernel drops its VIF and MIF
    ifs = {k: v for k, v in h.ifs.items() if k != "a1"}
    h.reload("phyint a2", ifs)  # (the delete of the gone VIF fails: it is gone all the same)
    ifs["a9"] = interfaces("a9", start=50)["a9"]
    h.reload("phyint a2\nmroute from a9 source 10.0.0.9 group 225.1.2.3 to a2", ifs)
    h.check_settled()
    assert not any("Failed creating" in t for t in h.logs("warning"))
    assert h.server.state.vifs == h.kernel.vifs


def test_a_recreated_interface_keeps_its_new_vif() -> None:
    h = Harness(TEXT)
    ifs = dict(h.ifs)
    ifs["a1"] = interfaces("a1", start=99)["a1"]
    h.reload(TEXT, ifs)
    h.check_settled()
    assert h.core.plan.vifs[(4, "a1")].ifindex == 99
    start = len(h.sent())
    h.reload(TEXT, ifs)
    assert h.sent()[start:] == []  # nothing left to do


def test_a_renamed_interface_keeps_its_slots_and_takes_the_name() -> None:
    h = Harness(TEXT)
    renamed = {("b9" if k == "a1" else k): interfaces("b9" if k == "a1" else k,
                                                      start=v.index)["b9" if k == "a1" else k]
               for k, v in h.ifs.items()}
    start = len(h.sent())
    h.reload(TEXT.replace("a1", "b9"), renamed)
    assert h.sent()[start:] == []  # same ifindex, same slots: nothing for the kernel
    assert {v.name for v in h.core.ledger.vifs.values()} == {"b9", "a2"}
    assert [m.iif_name for m in h.core.ledger.mfc.values()] == ["b9"]
    h.check_settled()


def test_a_pending_note_names_its_line_and_keeps_the_source() -> None:
    h = Harness("phyint a1 enable\nmgroup from virbr0 source 192.168.123.110 group 225.1.2.4\n")
    assert h.logs("notice") == [
        f"{FILE} line 2: mgroup from virbr0 source 192.168.123.110 group 225.1.2.4 pending:"
        " interface not available"]


def test_new_pending_lines_are_noted_once() -> None:
    text = "mroute from zz0 group 225.1.2.3 to a1\nmroute from a1 group 225.1.2.4 to zz1"
    h = Harness(text)
    notes = [f"{FILE} line 1: mroute from zz0 group 225.1.2.3 to a1 pending: interface not"
             " available",
             f"{FILE} line 2: mroute from a1 group 225.1.2.4 to zz1 pending: interface not"
             " available"]
    assert h.logs("notice") == notes
    assert [p.inbound for p in h.core.plan.pending] == [True, False]
    h.links(h.ifs)  # the same again: nothing new
    assert h.logs("notice") == notes
    h.reload("mroute from zz2 group 225.1.2.5")
    assert [p.rule.iif for p in h.core.plan.pending] == ["zz2"]
    assert not any("Activated" in t for t in h.logs())  # removed lines are not activated


def test_diagnostic_levels() -> None:
    h = Harness(start=False)
    from smcroute.unprivileged.model import INTERFACE, NOTE, Diagnostic, Where

    w = Where(FILE, 3)
    for d in (Diagnostic("Configuration file /x does not exist"),
              Diagnostic("Failed opening /x: is a directory"),
              Diagnostic("Configuration file /inc does not exist", w),
              Diagnostic("phyint zz0 does not exist (yet?) on this system", w, INTERFACE),
              Diagnostic("mroute: Same outbound interface", w, NOTE)):
        h.core._diagnostic(d)
    h.core.level = PRIORITY["debug"]
    h.core._diagnostic(Diagnostic("mroute: Same outbound interface", w, NOTE))
    assert [(e.level, e.text) for e in h.core._done()] == [
        ("notice", "Configuration file /x does not exist"),
        ("warning", "Failed opening /x: is a directory"),
        ("warning", f"{FILE} line 3: Configuration file /inc does not exist"),
        ("warning", f"{FILE} line 3: phyint zz0 does not exist (yet?) on this system"),
        ("info", f"{FILE} line 3: mroute: Same outbound interface")]


def test_learned_routes_refused_by_the_helpers_mfc_cap_are_logged_once_with_a_count() -> None:
    # (the cap follows the budgets, so this takes a helper with a smaller one)
    h = Harness("mroute from a1 group 225.1.0.0/16 to a2\n", max_mfc=0)
    for i in range(1, 6):
        h.nocache(f"10.0.0.{i}", "225.1.2.3", "a1", fast=False)
    h.settle()
    refused = [t for t in h.logs("warning") if "MFC cap" in t]
    assert len(refused) == 1 and "10.0.0.1" in refused[0], refused
    h.tick(11)
    h.nocache("10.0.0.9", "225.1.2.3", "a1", fast=False)
    h.settle()
    refused = [t for t in h.logs("warning") if "MFC cap" in t]
    assert len(refused) == 2 and "(5 times)" in refused[1], refused
