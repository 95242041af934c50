"""Who may do what on the control socket (smcroute.policy.control), which
messages are control requests at all (smcroute.ipc.control), and the peer
credentials the server reads (smcroute.unprivileged.ctlserver.peer_of)."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smcroute.ipc.control import (
    COMMANDS,
    MAX_ARG_LEN,
    MAX_ARGS,
    BadRequest,
    ControlRequest,
    parse_request,
    reply,
)
from smcroute.policy.control import READ_ONLY, Access, Peer, authorize, may_connect
from smcroute.unprivileged.ctlserver import peer_of

DAEMON_UID = 65534
FULL_GID = 2001  # --socket-group (or the -p group)
RO_GID = 2002  # --readonly-group
OTHER_GID = 3000
ACCESS = Access(DAEMON_UID, FULL_GID, RO_GID)
ACCESS_NO_RO = Access(DAEMON_UID, FULL_GID)

MUTATING = [c for c in COMMANDS if c != "show"]


def peer(uid: int, gid: int, *groups: int) -> Peer:
    return Peer(uid, gid, 4242, tuple(groups))


# (description, peer, allowed commands) -- anything else must be refused
CASES = [
    ("root", peer(0, 0), COMMANDS),
    ("root with odd gid", peer(0, OTHER_GID), COMMANDS),
    ("the daemon's user", peer(DAEMON_UID, OTHER_GID), COMMANDS),
    ("socket group, primary", peer(1000, FULL_GID), COMMANDS),
    ("socket group, supplementary", peer(1000, OTHER_GID, 5, FULL_GID), COMMANDS),
    ("both groups", peer(1000, RO_GID, FULL_GID), COMMANDS),
    ("read-only group, primary", peer(1001, RO_GID), ("show",)),
    ("read-only group, supplementary", peer(1001, OTHER_GID, RO_GID), ("show",)),
    ("neither group", peer(1002, OTHER_GID, 5, 6), ()),
    ("no groups at all", peer(1003, OTHER_GID), ()),
]


@pytest.mark.parametrize("who, p, allowed", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", COMMANDS)
def test_authorize_table(who, p, allowed, command):
    reason = authorize(p, ACCESS, command)
    if command in allowed:
        assert reason is None
    else:
        assert reason is not None and reason.startswith("Permission denied")
        assert str(p.uid) in reason


@pytest.mark.parametrize("who, p, allowed", CASES, ids=[c[0] for c in CASES])
def test_may_connect_iff_some_command_allowed(who, p, allowed):
    assert may_connect(p, ACCESS) == bool(allowed)


def test_read_only_is_show_only():
    assert frozenset({"show"}) == READ_ONLY
    ro = peer(1001, RO_GID)
    assert "read-only" in authorize(ro, ACCESS, "add")
    for command in MUTATING:
        assert authorize(ro, ACCESS, command) is not None


def test_refusal_names_the_group():
    reason = authorize(peer(1002, OTHER_GID), ACCESS, "show")
    assert reason == (f"Permission denied: uid 1002 is neither root nor a member of"
                      f" group {FULL_GID}; ask to be added to it")
    named = Access(ACCESS.daemon_uid, FULL_GID, RO_GID, "smcadmin", "smcview")
    alice = Peer(1002, OTHER_GID, 7, (), "alice")
    assert authorize(alice, named, "show") == (
        "Permission denied: user alice is neither root nor a member of group smcadmin;"
        " ask to be added to it")
    bob = Peer(1001, RO_GID, 8, (), "bob")
    assert authorize(bob, named, "add") == (
        "Permission denied: user bob may only use show (a member of the read-only group"
        " smcview); add needs root or a member of group smcadmin")


def test_without_read_only_group_nobody_is_read_only():
    p = peer(1001, RO_GID)
    assert not may_connect(p, ACCESS_NO_RO)
    assert authorize(p, ACCESS_NO_RO, "show") is not None
    assert authorize(peer(1000, FULL_GID), ACCESS_NO_RO, "add") is None


def test_member_of_none_is_false():
    assert not Peer(1, 2, 3, (4,)).member(None)
    assert Peer(1, 2, 3, (4,)).member(2)
    assert Peer(1, 2, 3, (4,)).member(4)
    assert not Peer(1, 2, 3, (4,)).member(5)


def test_root_group_as_socket_group_gives_its_members_full_access():
    # no -p and no --socket-group: the socket group is root's (0)
    access = Access(0, 0)
    assert authorize(peer(1000, 0), access, "kill") is None
    assert authorize(peer(1000, 100), access, "show") is not None


def test_unknown_command_is_not_read_only():
    # authorize() is asked with the command as parsed; a future command
    # must not become read-only by default
    assert authorize(peer(1001, RO_GID), ACCESS, "frobnicate") is not None


# -- parse_request ------------------------------------------------------------

def req(**over):
    msg = {"cmd": "show", "args": [], "detail": False, "json": False}
    msg.update(over)
    return msg


VALID = [
    (req(), ControlRequest("show")),
    (req(args=["interfaces"], detail=True), ControlRequest("show", ("interfaces",), True)),
    (req(json=True), ControlRequest("show", (), False, True)),
    (req(cmd="add", args=["a1", "225.1.1.1", "a2"]),
     ControlRequest("add", ("a1", "225.1.1.1", "a2"))),
    (req(cmd="remove", args=["a1", "225.1.1.1"]), ControlRequest("remove", ("a1", "225.1.1.1"))),
    (req(cmd="flush"), ControlRequest("flush")),
    (req(cmd="kill"), ControlRequest("kill")),
    (req(cmd="reload"), ControlRequest("reload")),
    (req(cmd="join", args=["a1", "225.1.1.1"]), ControlRequest("join", ("a1", "225.1.1.1"))),
    (req(cmd="leave", args=["a1", "225.1.1.1"]), ControlRequest("leave", ("a1", "225.1.1.1"))),
    (req(cmd="add", args=["x"] * MAX_ARGS), ControlRequest("add", ("x",) * MAX_ARGS)),
    (req(args=["y" * MAX_ARG_LEN]), ControlRequest("show", ("y" * MAX_ARG_LEN,))),
    (req(args=[""]), ControlRequest("show", ("",))),
    (req(args=["ünïcödé"]), ControlRequest("show", ("ünïcödé",))),
]


@pytest.mark.parametrize("msg, want", VALID)
def test_parse_request_valid(msg, want):
    got = parse_request(msg)
    assert got == want
    assert type(got.args) is tuple
    assert parse_request(got.to_wire()) == got


INVALID = [
    ("not a map", None),
    ("list", [1, 2]),
    ("string", "show"),
    ("int", 7),
    ("empty map", {}),
    ("missing json", {"cmd": "show", "args": [], "detail": False}),
    ("extra key", req(extra=1)),
    ("cmd int", req(cmd=1)),
    ("cmd bytes", req(cmd=b"show")),
    ("cmd none", req(cmd=None)),
    ("cmd help", req(cmd="help")),
    ("cmd version", req(cmd="version")),
    ("cmd del (client alias)", req(cmd="del", args=["a1", "225.1.1.1"])),
    ("cmd restart (client alias)", req(cmd="restart")),
    ("cmd upper", req(cmd="SHOW")),
    ("cmd abbreviated", req(cmd="s")),
    ("cmd empty", req(cmd="")),
    ("args tuple", req(args=("a",))),
    ("args string", req(args="interfaces")),
    ("args map", req(args={"a": "b"})),
    ("args none", req(args=None)),
    ("too many args", req(cmd="add", args=["x"] * (MAX_ARGS + 1))),
    ("arg int", req(args=[1])),
    ("arg bytes", req(args=[b"a1"])),
    ("arg none", req(args=[None])),
    ("arg list", req(args=[["a"]])),
    ("arg bool", req(args=[True])),
    ("arg too long", req(args=["y" * (MAX_ARG_LEN + 1)])),
    ("arg newline", req(cmd="add", args=["a1\nphyint", "225.1.1.1", "a2"])),
    ("arg NUL", req(cmd="add", args=["a1\0", "225.1.1.1", "a2"])),
    ("arg escape", req(args=["\033[2J"])),
    ("arg tab", req(args=["a\tb"])),
    ("detail int", req(detail=1)),
    ("detail none", req(detail=None)),
    ("detail string", req(detail="yes")),
    ("json int", req(json=0)),
    ("json list", req(json=[])),
]


@pytest.mark.parametrize("what, msg", INVALID, ids=[w for w, _ in INVALID])
def test_parse_request_invalid(what, msg):
    with pytest.raises(BadRequest) as info:
        parse_request(msg)
    assert str(info.value)  # says why


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["cmd", "args", "detail", "json", "x"]) | st.text(),
                      inner, max_size=5),
    max_leaves=12))
def test_parse_request_total(msg):
    """Any decoded message is either a request or BadRequest, nothing else."""
    try:
        got = parse_request(msg)
    except BadRequest:
        return
    assert got.cmd in COMMANDS
    assert all(type(a) is str for a in got.args)


def test_reply_shape():
    assert reply(True) == {"ok": True, "text": ""}
    assert reply(False, "why") == {"ok": False, "text": "why"}


# -- peer credentials as the daemon reads them ------------------------------------

def test_peer_of_socketpair_is_us():
    a, b = socket.socketpair()
    with a, b:
        p = peer_of(a)
    assert (p.uid, p.gid, p.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert set(p.groups) >= set(os.getgroups())


@pytest.mark.skipif(os.geteuid() != 0, reason="setgroups needs root")
def test_peer_of_reports_supplementary_groups(tmp_path):
    """Membership by a supplementary group must count (SO_PEERGROUPS)."""
    path = str(tmp_path / "peer.sock")
    groups = [23456, 34567]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(10)
        pid = os.fork()
        if pid == 0:  # child: other groups, then connect and wait for the parent
            try:
                os.setgroups(groups)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                    c.settimeout(10)
                    c.connect(path)
                    c.recv(1)
            finally:
                os._exit(0)
        try:
            conn, _ = srv.accept()
            with conn:
                p = peer_of(conn)
                conn.send(b"x")
        finally:
            os.waitpid(pid, 0)
    assert p.pid == pid
    assert set(groups) <= set(p.groups), p
    assert p.member(34567)
