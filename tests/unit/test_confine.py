"""Who the controller runs as (confine.identity), what its uid-0 Landlock
domain grants (confine.rules), what the config reader refuses as uid 0
(config.root_only), the control socket's slots (ControlServer.admit) and
the aggregated audit of refusals (the core)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from smcroute.policy.control import Access, Peer
from smcroute.unprivileged import confine
from smcroute.unprivileged.config import read_config, root_only
from smcroute.unprivileged.core import Core
from smcroute.unprivileged.ctlserver import MAX_CLIENTS, PER_UID, SHARED_CLIENTS, ControlServer
from smcroute.unprivileged.options import Options, User, parse

ROOT = pwd.getpwuid(0).pw_name


def test_default_user_option() -> None:
    assert parse([]).default_user == "smcroute"
    assert parse(["--default-user", "svc"]).default_user == "svc"


def test_identity_becomes_the_default_user_as_root_without_p() -> None:
    opts, note = confine.identity(Options(default_user=ROOT), euid=0)
    assert opts.user is not None and opts.user.uid == 0 and opts.user.name == ROOT
    assert note == ("info", f"No -p given: running as user {ROOT}")


def test_identity_without_such_a_user_stays_and_says_why() -> None:
    opts, note = confine.identity(Options(default_user="smcpy-no-such-user"), euid=0)
    assert opts.user is None
    assert note is not None and note[0] == "notice" and "Landlock" in note[1]


def test_identity_leaves_non_root_and_an_empty_default_alone() -> None:
    assert confine.identity(Options(default_user=ROOT), euid=1000) == (
        Options(default_user=ROOT), None)
    assert confine.identity(Options(default_user=""), euid=0) == (Options(default_user=""), None)


@pytest.mark.parametrize("name,uid", [("nobody", 65534), ("nogroup", 7), ("other", 65534)])
def test_identity_warns_of_shared_users(name: str, uid: int) -> None:
    opts = Options(user=User(name, uid, uid, ()))
    got, note = confine.identity(opts, euid=0)
    assert got == opts and note is not None and note[0] == "warning" and "safer" in note[1]


def test_identity_of_a_dedicated_p_user_says_nothing() -> None:
    opts = Options(user=User("smcroute", 999, 999, ()))
    assert confine.identity(opts, euid=0) == (opts, None)


def test_mapped(tmp_path: Path) -> None:
    m = tmp_path / "uid_map"
    m.write_text("         0          0 4294967295\n")
    assert confine.mapped(999, str(m))
    m.write_text("         0     100000      65536\n  70000 200000 10\n")
    assert confine.mapped(0, str(m)) and confine.mapped(65535, str(m))
    assert not confine.mapped(65536, str(m)) and confine.mapped(70009, str(m))
    assert not confine.mapped(70010, str(m))
    m.write_text("0 1000 1\n")  # SMCRoute's test suite: root alone
    assert not confine.mapped(999, str(m))
    assert confine.mapped(5, str(tmp_path / "absent"))  # no user namespaces at all


def test_rules_grant_writes_only_to_runtime_files() -> None:
    opts = Options(pidfile="/srv/smc/run/smcroute.pid", sock="/srv/smc/run/smcroute.sock",
                   script="/usr/local/bin/action")
    rules = dict(confine.rules(opts, ["/srv/smc/conf"]))
    writers = {p for p, r in rules.items() if r & (confine.WRITE_FILE | confine.REMOVE_FILE)}
    assert writers == {"/dev/null", "/srv/smc/run/smcroute.pid", "/srv/smc/run"}
    assert rules["/srv/smc/run"] == confine.REMOVE_FILE
    assert rules["/etc"] == rules["/proc"] == rules["/srv/smc/conf"] == confine.READ
    assert rules["/usr/local/bin/action"] == confine.READ_FILE | confine.EXECUTE
    assert "/root" not in rules and "/" not in rules


@pytest.mark.parametrize("run", ["/run", "/var/run", "/tmp"])
def test_rules_never_grant_removal_in_a_shared_directory(run: str) -> None:
    name = f"smcpy-test-{os.getpid()}"  # (no such file: nothing to resolve through)
    opts = Options(pidfile=f"{run}/{name}.pid", sock=f"{run}/{name}.sock")
    assert not [p for p, r in confine.rules(opts, []) if r & confine.REMOVE_FILE]


@pytest.mark.parametrize("uid,gid,mode,only_root", [
    (0, 0, 0o600, True), (0, 0, 0o640, True), (0, 0, 0o400, True), (0, 0, 0o644, False),
    (0, 5, 0o640, False), (0, 5, 0o600, True), (1000, 0, 0o600, False), (0, 0, 0o604, False),
])
def test_root_only(uid: int, gid: int, mode: int, only_root: bool) -> None:
    st = os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    assert root_only(st) is only_root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root-owned file")
def test_a_root_only_include_is_refused_without_its_text(tmp_path: Path) -> None:
    secret = tmp_path / "secret.conf"
    secret.write_text("secret line 1: hunter2\n")
    secret.chmod(0o600)
    main = tmp_path / "main.conf"
    main.write_text(f"include {secret}\n")
    config = read_config(str(main), root_files=False)
    (d,) = config.diagnostics
    assert d.error and "only root may read it" in str(d) and str(secret) in str(d)
    assert "hunter2" not in str(d)
    assert read_config(str(main)).diagnostics[0].where is not None  # read as before


def server(access: Access) -> ControlServer:
    return ControlServer(None, access, None, None, None)  # type: ignore[arg-type]


class Held:
    """What the server knows of a client it admitted."""

    def __init__(self, peer: Peer, full: bool) -> None:
        self.peer = peer
        self.full = full


def full_access(srv: ControlServer, peer: Peer) -> bool:
    return peer.uid in (0, srv.access.daemon_uid) or peer.member(srv.access.group)


def hold(srv: ControlServer, peer: Peer) -> None:
    """As _accept books an admitted client."""
    full = full_access(srv, peer)
    client = Held(peer, full)
    srv.clients.add(client)  # type: ignore[arg-type]
    srv.per_uid[peer.uid] += 1
    srv.shared += not full


def test_slots_are_kept_for_root_the_daemon_user_and_the_admin_group() -> None:
    srv = server(Access(daemon_uid=999, group=50, readonly_group=60))
    readers = [Peer(2000 + i, 60, 1) for i in range(SHARED_CLIENTS)]
    for peer in readers:
        for _ in range(PER_UID if peer is readers[0] else 1):
            if srv.admit(peer, full_access(srv, peer)) is None:
                hold(srv, peer)
    assert srv.shared == SHARED_CLIENTS
    assert srv.admit(Peer(3000, 60, 1), False) == "too many clients, try again later"
    assert srv.admit(Peer(0, 0, 1), True) is None and srv.admit(Peer(999, 999, 1), True) is None
    assert srv.admit(Peer(4000, 50, 1), True) is None  # the admin group
    assert srv.admit(Peer(5000, 5000, 1), False) == (
        "Permission denied: uid 5000 is neither root nor a member of group 50;"
        " ask to be added to it")


def test_a_uid_holds_at_most_per_uid_slots_but_root_and_the_daemon_more() -> None:
    srv = server(Access(daemon_uid=999, group=50))
    admin = Peer(4000, 50, 1)
    for _ in range(PER_UID):
        assert srv.admit(admin, True) is None
        hold(srv, admin)
    assert srv.admit(admin, True) == "too many clients, try again later"
    for peer in (Peer(0, 0, 1), Peer(999, 999, 1)):
        for _ in range(PER_UID + 1):
            assert srv.admit(peer, full_access(srv, peer)) is None
            hold(srv, peer)
    while len(srv.clients) < MAX_CLIENTS:
        hold(srv, Peer(0, 0, 1))
    assert srv.admit(Peer(0, 0, 1), True) == "too many clients, try again later"


def test_released_slots_come_back() -> None:
    srv = server(Access(daemon_uid=999, group=50, readonly_group=60))
    reader = Peer(2000, 60, 1)
    hold(srv, reader)
    (client,) = srv.clients
    srv.released(client)  # type: ignore[arg-type]
    assert not srv.clients and not srv.per_uid and srv.shared == 0


def test_refusals_are_audited_once_per_uid_per_10_s_with_counts() -> None:
    core = Core()
    mallory, eve = Peer(5000, 5000, 11), Peer(5001, 5001, 12)
    lines = []
    for i in range(1000):
        lines += core.refused(mallory, None, "Permission denied", 100.0 + i * 0.005)
    lines += core.refused(eve, None, "Permission denied", 101.0)
    said = [e for e in lines if getattr(e, "text", "") == "control request"]
    assert [e.fields["peer_uid"] for e in said] == [5000, 5001]
    assert core.refusals.next == pytest.approx(110.0)
    later = core.tick(110.5)
    summary = [e for e in later if getattr(e, "text", "") == "control requests refused"]
    assert [(e.fields["peer_uid"], e.fields["refused"]) for e in summary] == [(5000, 999)]
    assert not [e for e in core.tick(121.0) if "refused" in getattr(e, "text", "")]
    assert core.refusals.last == {}  # quiet uids are forgotten


@pytest.mark.parametrize("uid,gid,groups,mode,bits,ok", [
    (7, 0, (), 0o700, 5, True),  # the owner
    (8, 7, (), 0o750, 5, True),  # the primary group
    (8, 7, (), 0o700, 5, False),
    (8, 9, (9,), 0o750, 5, True),  # a supplementary group
    (8, 9, (), 0o750, 5, False),
    (8, 9, (), 0o755, 5, True),  # others
    (8, 9, (), 0o711, 1, True),
    (8, 9, (), 0o711, 4, False),
    (7, 0, (), 0o077, 4, False),  # the owner's bits decide for the owner
])
def test_may(uid: int, gid: int, groups: tuple[int, ...], mode: int, bits: int,
             ok: bool) -> None:
    user = User("u", 7, 7, groups)
    st = os.stat_result((stat.S_IFDIR | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    assert confine.may(st, user, bits) is ok


@pytest.mark.skipif(os.geteuid() == 65534, reason="runs as nobody")
def test_unreadable_names_the_first_closed_directory() -> None:
    nobody = User("nobody", 65534, 65534, ())
    top = Path(tempfile.mkdtemp(dir="/tmp", prefix="smcpy-unreadable-"))
    try:
        top.chmod(0o755)
        closed = top / "closed"
        (closed / "inner").mkdir(parents=True)
        code = closed / "inner" / "code.py"
        code.write_text("x = 1\n")
        closed.chmod(0o700)
        assert confine.unreadable(nobody, [str(code)]) == str(closed)
        closed.chmod(0o755)
        code.chmod(0o600)
        assert confine.unreadable(nobody, [str(code)]) == str(code)
        code.chmod(0o644)
        assert confine.unreadable(nobody, [str(code), "/usr/lib"]) is None
    finally:
        shutil.rmtree(top, ignore_errors=True)
