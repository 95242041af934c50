"""smcroutectl without a daemon: command words, help, rendering, exit codes
(SPEC 1.4-1.6, 3.6, 4.2), and the client's side of the protocol against a
scripted fake daemon on a socket in tmp_path. No root needed.
"""

from __future__ import annotations

import contextlib
import grp
import io
import os
import pwd
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from smcroute.ipc.control import ControlRequest
from smcroute.ipc.stream import FrameDecoder, encode_frame
from smcroute.unprivileged import smcroutectl, texts
from smcroute.unprivileged.smcroutectl import Settings, lookup, parse_words, render

ESC = "\033"


def settings(**flags: Any) -> Settings:
    s = Settings()
    for name, value in flags.items():
        assert hasattr(s, name), name
        setattr(s, name, value)
    return s


def help_block(name: str, text: str, example: str) -> str:
    return f"Help:\n  {text}\n\nExample:\n  smcroutectl {name} {example}\n\n"


ADD_HELP = help_block("add", "Add a multicast route", "eth0 192.168.2.42 225.1.2.3 eth1 eth2")
REMOVE_HELP = help_block("remove", "Remove a multicast route", "eth0 192.168.2.42 225.1.2.3")


# -- command words (SPEC 1.4) -----------------------------------------------

@pytest.mark.parametrize("word, name", [
    ("s", "show"), ("sh", "show"), ("show", "show"), ("showx", "show"),
    ("r", "reload"), ("re", "reload"), ("rel", "reload"), ("reload", "reload"),
    ("res", "restart"), ("restart", "restart"),
    ("rem", "remove"), ("remove", "remove"), ("removeall", "remove"),
    ("d", "del"), ("del", "del"), ("delete", "del"),
    ("a", "add"), ("add", "add"),
    ("j", "join"), ("join", "join"),
    ("l", "leave"), ("leave", "leave"),
    ("k", "kill"), ("kill", "kill"), ("killall", "kill"),
    ("f", "flush"), ("flush", "flush"),
    ("v", "version"), ("version", "version"),
    ("h", "help"), ("help", "help"), ("", "help"),
])
def test_lookup_abbreviations_in_table_order(word, name):
    row = lookup(word)
    assert row is not None and row[0] == name


@pytest.mark.parametrize("word", ["x", "foo", "interfaces", "groups", "-", "SHOW", "Add"])
def test_lookup_unknown_words(word):
    assert lookup(word) is None


def test_command_table_order_and_arity():
    assert [(row[0], row[1]) for row in smcroutectl.COMMANDS] == [
        ("help", 0), ("version", 0), ("flush", 0), ("kill", 0), ("reload", 0), ("restart", 0),
        ("show", 0), ("add", 3), ("remove", 2), ("del", 2), ("join", 2), ("leave", 2)]


@pytest.mark.parametrize("words, want", [
    ([], ControlRequest("show")),
    (["foo"], ControlRequest("show")),
    (["x", "show", "groups"], ControlRequest("show", ("groups",))),
    (["show", "interfaces", "extra"], ControlRequest("show", ("interfaces", "extra"))),
    (["s", "p"], ControlRequest("show", ("p",))),
    (["r"], ControlRequest("reload")),
    (["restart"], ControlRequest("reload")),
    (["f"], ControlRequest("flush")),
    (["kill"], ControlRequest("kill")),
    (["a", "a1", "225.1.2.3", "a2"], ControlRequest("add", ("a1", "225.1.2.3", "a2"))),
    (["add", "a1", "10.0.0.1", "225.1.2.3", "a2", "a3"],
     ControlRequest("add", ("a1", "10.0.0.1", "225.1.2.3", "a2", "a3"))),
    (["rem", "a1", "225.1.2.3"], ControlRequest("remove", ("a1", "225.1.2.3"))),
    (["d", "a1", "225.1.2.3", "a2"], ControlRequest("remove", ("a1", "225.1.2.3", "a2"))),
    (["j", "a1", "225.1.2.3"], ControlRequest("join", ("a1", "225.1.2.3"))),
    (["leave", "a1", "225.1.2.3"], ControlRequest("leave", ("a1", "225.1.2.3"))),
    # the first real command stops the scan: later words are its arguments
    (["show", "add", "x"], ControlRequest("show", ("add", "x"))),
])
def test_parse_words_requests(words, want):
    assert parse_words(list(words), settings()) == want


def test_parse_words_carries_detail_and_json():
    assert parse_words(["show"], settings(detail=True)) == ControlRequest("show", (), True, False)
    assert parse_words([], settings(json=True)) == ControlRequest("show", (), False, True)


def test_parse_words_version_and_help():
    assert parse_words(["version"], settings()).out == texts.version_text()
    assert parse_words(["v", "show"], settings()).out == texts.version_text()
    assert parse_words(["help"], settings()).out == texts.SMCROUTECTL_USAGE
    assert parse_words([""], settings()).out == texts.SMCROUTECTL_USAGE
    assert parse_words(["help", "add"], settings()).out == ADD_HELP
    assert parse_words(["add"], settings(help=True)).out == ADD_HELP
    # aliases walk back to the real command's help
    assert parse_words(["help", "del"], settings()).out == REMOVE_HELP
    assert parse_words(["help", "restart"], settings()).out == help_block(
        "reload", "Reload .conf file, like SIGHUP", "")
    # commands without an example keep the space after the name
    assert parse_words(["h", "show"], settings()).out == help_block(
        "show", "Show status of routes, joined groups, interfaces, etc.", "")
    assert parse_words(["help", "join"], settings()).out == help_block(
        "join", "Join multicast group on an interface", "eth0 225.1.2.3")


@pytest.mark.parametrize("words, name, block", [
    (["add"], "add", ADD_HELP),
    (["add", "a1", "225.1.2.3"], "add", ADD_HELP),
    (["a", "a1"], "add", ADD_HELP),
    (["remove", "a1"], "remove", REMOVE_HELP),
    (["del"], "del", REMOVE_HELP),
    (["join", "a1"], "join", help_block("join", "Join multicast group on an interface",
                                        "eth0 225.1.2.3")),
    (["leave"], "leave", help_block("leave", "Leave joined multicast group", "eth0 225.1.2.3")),
])
def test_parse_words_not_enough_arguments(capsys, words, name, block):
    local = parse_words(list(words), settings())
    assert local.show() == 1  # printed when shown, so a batch keeps line order
    out, err = capsys.readouterr()
    assert err == f"smcroutectl: Not enough arguments to command {name}\n"
    assert out == block


# -- rendering (SPEC 4.2) ----------------------------------------------------

LINES = ["Title_", "COL A   COL B=", "row 1", "row 2  ", ""]


def test_render_plain():
    bar_, bar = "_" * 79, "=" * 79
    assert render(LINES, settings(plain=True)) == (
        f"{bar_}\nTitle\n{bar}\nCOL A   COL B\n{bar}\nrow 1\nrow 2  \n\n")


def test_render_plain_long_heading_widens_bars():
    text = "H" * 100
    assert render([text + "=", text + "_"], settings(plain=True)) == (
        f"{'=' * 100}\n{text}\n{'=' * 100}\n{'_' * 100}\n{text}\n")


def test_render_no_headings_drops_titles_and_headings():
    for flags in ({"no_headings": True}, {"no_headings": True, "plain": True}):
        assert render(LINES, settings(**flags)) == "row 1\nrow 2  \n\n"


def test_render_escapes_with_fixed_width(monkeypatch):
    monkeypatch.setattr(smcroutectl, "width", lambda: 40)
    assert render(LINES, settings()) == (
        f"{ESC}[4m{' ' * 40}{ESC}[0m\nTitle\n"
        f"{ESC}[7m{'COL A   COL B':<40}{ESC}[0m\n"
        "row 1\nrow 2  \n\n")


def test_render_escapes_heading_longer_than_width_is_not_cut(monkeypatch):
    monkeypatch.setattr(smcroutectl, "width", lambda: 10)
    assert render(["A" * 15 + "="], settings()) == f"{ESC}[7m{'A' * 15}{ESC}[0m\n"


def test_render_short_lines_are_never_headings():
    assert render(["_", "=", "x"], settings(plain=True)) == "_\n=\nx\n"
    # two characters already make a heading (SPEC 4.2: n = len(text) >= 1)
    assert render(["x="], settings(plain=True)) == f"{'=' * 79}\nx\n{'=' * 79}\n"


def test_render_json_passes_through():
    line = '{"routes":{"asm":[],"ssm":[],"kernel":[]}}'
    for flags in ({}, {"plain": True}, {"no_headings": True}):
        assert render([line], settings(**flags)) == line + "\n"


def test_width_without_terminal_is_79(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert smcroutectl.width() == 79


# -- main without a daemon -----------------------------------------------------

def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    status = smcroutectl.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_main_version(capsys):
    for argv in (["-v"], ["version"], ["-p", "version"], ["show", "-v"]):
        assert run_main(capsys, argv) == (0, texts.version_text(), "")


def test_main_help(capsys):
    for argv in (["-h"], ["help"], ["h"], ["help", "nosuchword"]):
        assert run_main(capsys, argv) == (0, texts.SMCROUTECTL_USAGE, "")
    assert run_main(capsys, ["-h", "add"]) == (0, ADD_HELP, "")
    assert run_main(capsys, ["add", "-h"]) == (0, ADD_HELP, "")


def test_main_invalid_option(capsys):
    assert run_main(capsys, ["-x", "show"]) == (
        1, texts.SMCROUTECTL_USAGE, "smcroutectl: invalid option -- 'x'\n")
    assert run_main(capsys, ["-u"]) == (
        1, texts.SMCROUTECTL_USAGE, "smcroutectl: option requires an argument -- 'u'\n")


def test_main_not_enough_arguments(capsys):
    assert run_main(capsys, ["-u", "/nonexistent/x.sock", "add", "a1", "225.1.2.3"]) == (
        1, ADD_HELP, "smcroutectl: Not enough arguments to command add\n")


def test_main_missing_socket_with_u(capsys, tmp_path):
    path = tmp_path / "none.sock"
    assert run_main(capsys, ["-u", str(path), "show"]) == (
        1, "", f"smcroutectl: Cannot find IPC socket {path}\n"
               "smcroutectl: Failed connecting to daemon: No such file or directory\n")


def test_main_missing_socket_with_identity(capsys):
    ident = f"smcpy-unit-{os.getpid()}-nosuch"
    path = f"{texts.RUNSTATEDIR}/{ident}.sock"
    assert not os.path.exists(path)
    assert run_main(capsys, ["-i", ident, "show"]) == (
        1, "", f"smcroutectl: Cannot find IPC socket {path}\n"
               "smcroutectl: Daemon may be running with another -i NAME\n")
    assert run_main(capsys, ["-I", ident]) == (
        1, "", f"smcroutectl: Cannot find IPC socket {path}\n"
               "smcroutectl: Daemon may be running with another -i NAME\n")


def test_main_stale_socket_is_daemon_not_running(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(smcroutectl, "RETRIES", 2)
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # bound, never listening: ECONNREFUSED
        assert run_main(capsys, ["-u", str(path), "flush"]) == (
            1, "", "smcroutectl: Daemon not running\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root is never refused by file permissions")
def test_main_eacces(capsys, tmp_path):
    path = tmp_path / "closed.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(1)
        path.chmod(0)
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
        assert run_main(capsys, ["-u", str(path), "show"]) == (
            1, "", f"smcroutectl: Permission denied connecting to daemon at {path}: root,"
                   f" user {me} and members of group {group} may; ask to be added to group"
                   f" {group}\n")


# -- against a scripted fake daemon ---------------------------------------

Reply = Callable[[dict[str, Any]], dict[str, Any] | None]


class FakeDaemon:
    """Serves the control protocol on a socket in a thread: one reply per
    request (None from the script: close without replying); records every
    connection's requests. Bounded: each connection at most 5 s."""

    def __init__(self, path: Path, script: Reply):
        self.path = str(path)
        self.script = script
        self.connections: list[list[dict[str, Any]]] = []
        self.raw: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        requests: list[dict[str, Any]] = []
        self.connections.append(requests)
        decoder = FrameDecoder()
        with contextlib.suppress(OSError):
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                self.raw.append(data)
                for msg in decoder.feed(data):
                    requests.append(msg)
                    answer = self.script(msg)
                    if answer is None:
                        return
                    conn.sendall(encode_frame(answer))

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [r for c in self.connections for r in c]

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def fake_daemon(tmp_path: Path, script: Reply) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(tmp_path / "fake.sock", script)
    daemon.thread.start()
    try:
        yield daemon
    finally:
        daemon.close()


SHOW_TEXT = "Kernel MFC Table_\nROUTE (S,G)      IIF  OIFS=\n(10.0.0.1, 225.1.1.1) a1   a2"


def scripted(msg: dict[str, Any]) -> dict[str, Any] | None:
    """show -> SHOW_TEXT (groups: empty); add/remove of group 225.9.9.9 and
    join fail; reload fails with two lines; everything else succeeds."""
    cmd, args = msg["cmd"], msg["args"]
    if cmd == "show":
        if args[:1] and args[0].startswith("g"):
            return {"ok": True, "text": ""}
        return {"ok": True, "text": SHOW_TEXT}
    if cmd in ("add", "remove") and "225.9.9.9" in args:
        return {"ok": False, "text": f"{cmd} failed for 225.9.9.9\nsecond line"}
    if cmd == "reload":
        return {"ok": False, "text": "/etc/x.conf line 3: bad\n/etc/x.conf line 7: worse"}
    if cmd == "join":
        return {"ok": False, "text": "join: group membership is not supported yet"}
    return {"ok": True, "text": ""}


PLAIN_SHOW = (f"{'_' * 79}\nKernel MFC Table\n{'=' * 79}\nROUTE (S,G)      IIF  OIFS\n"
              f"{'=' * 79}\n(10.0.0.1, 225.1.1.1) a1   a2\n\n")


def test_fake_show_plain_and_wire_format(capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        assert run_main(capsys, ["-u", d.path, "-p", "show", "routes"]) == (0, PLAIN_SHOW, "")
        # GNU permutation: options after the command word
        assert run_main(capsys, ["-u", d.path, "show", "-p"]) == (0, PLAIN_SHOW, "")
        assert run_main(capsys, ["-u", d.path, "-pt"])[1] == "(10.0.0.1, 225.1.1.1) a1   a2\n\n"
        assert run_main(capsys, ["-u", d.path, "-dj", "sh", "i"])[0] == 0
    assert d.requests == [
        {"cmd": "show", "args": ["routes"], "detail": False, "json": False},
        {"cmd": "show", "args": [], "detail": False, "json": False},
        {"cmd": "show", "args": [], "detail": False, "json": False},
        {"cmd": "show", "args": ["i"], "detail": True, "json": True},
    ]
    assert [len(c) for c in d.connections] == [1, 1, 1, 1]


def test_fake_empty_show_prints_nothing(capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        assert run_main(capsys, ["-u", d.path, "show", "groups"]) == (0, "", "")


def test_fake_escape_form_when_stdout_is_not_a_tty(capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        status, out, _ = run_main(capsys, ["-u", d.path, "show"])
    assert status == 0
    assert out == (f"{ESC}[4m{' ' * 79}{ESC}[0m\nKernel MFC Table\n"
                   f"{ESC}[7m{'ROUTE (S,G)      IIF  OIFS':<79}{ESC}[0m\n"
                   "(10.0.0.1, 225.1.1.1) a1   a2\n\n")


def test_fake_errors_print_first_line_exit_1(capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        assert run_main(capsys, ["-u", d.path, "add", "a1", "225.9.9.9", "a2"]) == (
            1, "", "smcroutectl: add failed for 225.9.9.9\n")
        assert run_main(capsys, ["-u", d.path, "join", "a1", "225.1.1.1"]) == (
            1, "", "smcroutectl: join: group membership is not supported yet\n")
        assert run_main(capsys, ["-u", d.path, "add", "a1", "225.1.1.1", "a2"]) == (0, "", "")
        assert run_main(capsys, ["-u", d.path, "flush"]) == (0, "", "")


def test_fake_reload_prints_every_error_line(capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        assert run_main(capsys, ["-u", d.path, "reload"]) == (
            1, "", "smcroutectl: /etc/x.conf line 3: bad\n"
                   "smcroutectl: /etc/x.conf line 7: worse\n")


def test_fake_closed_without_reply(capsys, tmp_path):
    with fake_daemon(tmp_path, lambda msg: None) as d:
        status, out, err = run_main(capsys, ["-u", d.path, "flush"])
    assert (status, out) == (1, "")
    assert err.startswith("smcroutectl: ") and err.count("\n") == 1


def test_fake_garbled_reply(capsys, tmp_path):
    path = tmp_path / "garbled.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(1)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"\xff\xff\xff\xff garbage")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        status, out, err = run_main(capsys, ["-u", str(path), "flush"])
        t.join(5)
    assert (status, out) == (1, "")
    assert err.startswith("smcroutectl: ") and "Traceback" not in err


def batch(monkeypatch, capsys, path: str, text: str, *flags: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    return run_main(capsys, ["-u", path, *flags, "-b", "ignored", "words"])


BATCH = """\
add a1 10.0.0.1 225.1.1.1 a2
# a comment line
add a1 10.0.0.1 225.9.9.9 a2
show
remove a1 225.9.9.9

del a1 10.0.0.1 225.1.1.1
"""


def test_fake_batch_one_connection_in_order_exit_is_failures(monkeypatch, capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        status, out, err = batch(monkeypatch, capsys, d.path, BATCH, "-p")
    assert status == 2
    assert len(d.connections) == 1
    assert [(r["cmd"], r["args"]) for r in d.requests] == [
        ("add", ["a1", "10.0.0.1", "225.1.1.1", "a2"]),
        ("add", ["a1", "10.0.0.1", "225.9.9.9", "a2"]),
        ("show", []),
        ("remove", ["a1", "225.9.9.9"]),
        ("remove", ["a1", "10.0.0.1", "225.1.1.1"]),
    ]
    assert out == PLAIN_SHOW
    assert err == ("smcroutectl: add failed for 225.9.9.9\n"
                   "smcroutectl: remove failed for 225.9.9.9\n")


def test_fake_batch_not_enough_arguments_counts_as_failure(monkeypatch, capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        status, out, err = batch(monkeypatch, capsys, d.path,
                                 "add a1\nflush\nadd a1 225.9.9.9 a2\n")
    assert status == 2
    assert [r["cmd"] for r in d.requests] == ["flush", "add"]
    assert ADD_HELP in out
    assert "smcroutectl: Not enough arguments to command add\n" in err
    assert "smcroutectl: add failed for 225.9.9.9\n" in err


def test_fake_batch_output_follows_line_order(monkeypatch, capsys, tmp_path):
    """Each line's output appears in line order, as when SMCRoute runs
    the lines one after the other (SPEC 3.6)."""
    with fake_daemon(tmp_path, scripted) as d:
        status, out, err = batch(monkeypatch, capsys, d.path,
                                 "show\nadd a1\nadd a1 225.9.9.9 a2\nremove a1\n", "-p")
    assert status == 3
    assert out == PLAIN_SHOW + ADD_HELP + REMOVE_HELP
    assert err == ("smcroutectl: Not enough arguments to command add\n"
                   "smcroutectl: add failed for 225.9.9.9\n"
                   "smcroutectl: Not enough arguments to command remove\n")


def test_fake_batch_help_is_not_sticky(monkeypatch, capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        status, out, _ = batch(monkeypatch, capsys, d.path,
                               "help add\nadd a1 225.1.1.1 a2\nversion\n")
    assert status == 0
    assert out == ADD_HELP + texts.version_text()
    assert [r["cmd"] for r in d.requests] == ["add"]


def test_fake_batch_exit_status_capped_at_255(monkeypatch, capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        status, _, err = batch(monkeypatch, capsys, d.path, "add a1 225.9.9.9 a2\n" * 300)
    assert status == 255
    assert err.count("\n") == 300
    assert len(d.connections) == 1


def test_fake_batch_without_requests_does_not_connect(monkeypatch, capsys, tmp_path):
    with fake_daemon(tmp_path, scripted) as d:
        status, out, _ = batch(monkeypatch, capsys, d.path, "# nothing\n\nversion\n")
    assert (status, out) == (0, texts.version_text())
    assert d.connections == []


def refusing_daemon(path: Path, reason: str) -> tuple[socket.socket, threading.Thread]:
    """Like smcrouted for a peer it refuses at connect: reply at once, close
    without reading the request."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(encode_frame({"ok": False, "text": reason}))
                conn.shutdown(socket.SHUT_RDWR)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_refusal_before_the_request_is_read_is_reported(monkeypatch, capsys, tmp_path):
    """The daemon may answer and close before the client has written its
    request (a refused peer); the client must print the answer, not die of
    EPIPE/ECONNRESET in silence. A batch larger than the socket buffer makes
    the client still be writing when the daemon closes."""
    reason = "Permission denied: uid 1000 is neither root nor a member of group 2000"
    srv, t = refusing_daemon(tmp_path / "refusing.sock", reason)
    try:
        monkeypatch.setattr("sys.stdin", io.StringIO("show groups\n" * 50_000))
        status, _, err = run_main(capsys, ["-u", str(tmp_path / "refusing.sock"), "-b"])
    finally:
        t.join(5)
        srv.close()
    assert status != 0
    assert err.startswith(f"smcroutectl: {reason}\n"), err
