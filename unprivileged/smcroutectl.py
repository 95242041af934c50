"""smcroutectl: the control client (SPEC 1.4-1.6, 3.6, 4.2).

Start-up is most of its run time, so it imports as little as it can: no
asyncio, structlog or pyroute2, and not even typing, dataclasses or socket
(whose enums cost more than the rest; _socket is the same socket), nor the
msgpack package (ipc/lite.py speaks the subset the protocol uses).
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import sys
import time

from smcroute.ipc.control import ControlRequest
from smcroute.ipc.lite import Frames, LiteError, request_frame
from smcroute.unprivileged import texts
from smcroute.unprivileged.cmdline import OptError, getopt

PROG = "smcroutectl"
OPTSTRING = "bdhI:i:jptu:v"
# (word, minimum arguments, help text, example), in SMCRoute's order: it
# decides abbreviations ("r" is reload, not remove).
COMMANDS = (
    ("help", 0, "Show help text", ""),
    ("version", 0, "Show program version and support information", ""),
    ("flush", 0, "Flush all dynamically installed (*,G) multicast routes", ""),
    ("kill", 0, "Kill running daemon", ""),
    ("reload", 0, "Reload .conf file, like SIGHUP", ""),
    ("restart", 0, "Reload .conf file, like SIGHUP", ""),
    ("show", 0, "Show status of routes, joined groups, interfaces, etc.", ""),
    ("add", 3, "Add a multicast route", "eth0 192.168.2.42 225.1.2.3 eth1 eth2"),
    ("remove", 2, "Remove a multicast route", "eth0 192.168.2.42 225.1.2.3"),
    ("del", 2, "Remove a multicast route", "eth0 192.168.2.42 225.1.2.3"),
    ("join", 2, "Join multicast group on an interface", "eth0 225.1.2.3"),
    ("leave", 2, "Leave joined multicast group", "eth0 225.1.2.3"),
)
ALIASES = {"del": "remove", "restart": "reload"}
RETRIES = 30  # connection refused (stale socket file): 100 ms apart
REPLY_TIMEOUT = 120.0  # a reload of a large configuration takes a while; a hung daemon not


class Failure(Exception):
    """Print to stderr (prefixed), exit 1."""


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class Settings:
    """What the options say."""

    def __init__(self) -> None:
        self.batch = False
        self.detail = False
        self.json = False
        self.help = False
        self.plain = False
        self.no_headings = False
        self.ident = texts.DEFAULT_IDENT
        self.sock: str | None = None
        self.words: list[str] = []

    @property
    def path(self) -> str:
        return self.sock or f"{texts.RUNSTATEDIR}/{self.ident}.sock"


def lookup(word: str) -> tuple[str, int, str, str] | None:
    """SMCRoute's rule: the first row sharing min(len(row), len(word)) chars."""
    if word in _LOOKED_UP:  # a batch asks for the same few words 2000 times
        return _LOOKED_UP[word]
    found = None
    for row in COMMANDS:
        n = min(len(row[0]), len(word))
        if row[0][:n] == word[:n]:
            found = row
            break
    _LOOKED_UP[word] = found
    return found


_LOOKED_UP: dict[str, tuple[str, int, str, str] | None] = {}


def command_help(row: tuple[str, int, str, str]) -> str:
    name = ALIASES.get(row[0], row[0])
    real = next(r for r in COMMANDS if r[0] == name)
    return f"Help:\n  {real[2]}\n\nExample:\n  {PROG} {name} {real[3]}\n\n"


# -- connection -----------------------------------------------------------

def who_may(path: str) -> str:
    """Why a connect was refused, and who may connect: the socket file's
    owner and group (names, not numbers), and how to get in."""
    import grp
    import pwd

    try:
        st = os.stat(path)
    except OSError:
        return f"Permission denied connecting to daemon at {path}"
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return (f"Permission denied connecting to daemon at {path}: root, user {user} and"
            f" members of group {group} may; ask to be added to group {group}")


def connect(settings: Settings) -> _socket.socket:
    path = settings.path
    for attempt in range(RETRIES):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ECONNREFUSED and attempt + 1 < RETRIES:
                time.sleep(0.1)
                continue
            if exc.errno == errno.ENOENT:
                raise Failure(f"Cannot find IPC socket {path}\n" + (
                    "Daemon may be running with another -i NAME" if settings.sock is None
                    else f"Failed connecting to daemon: {exc.strerror}")) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise Failure(who_may(path)) from None
            if exc.errno == errno.ECONNREFUSED:
                raise Failure("Daemon not running") from None
            raise Failure(f"Failed connecting to daemon: {exc.strerror}") from None
    raise Failure("Daemon not running")


def exchange(settings: Settings, requests: list[ControlRequest]) -> list[dict[str, object]]:
    """Send every request on one connection, return the replies in order.

    Writing and reading go together: a long batch would otherwise fill both
    directions' buffers and stall client and daemon alike.
    """
    sock = connect(settings)
    data = b"".join(request_frame(r.cmd, r.args, r.detail, r.json) for r in requests)
    sent = 0
    decoder = Frames(limit=64 * 1024 * 64)
    replies: list[dict[str, object]] = []
    sock.setblocking(False)
    try:
        while len(replies) < len(requests):
            readable, writable, _ = select.select(
                [sock], [sock] if sent < len(data) else [], [], REPLY_TIMEOUT)
            if not readable and not writable:
                raise Failure("the daemon did not answer")
            if writable:
                try:
                    sent += sock.send(data[sent:sent + 256 * 1024])
                    if sent == len(data):  # all said: the daemon may close once it answers
                        sock.shutdown(_socket.SHUT_WR)
                except BlockingIOError:
                    pass
                except OSError:  # the daemon closed (a refusal): read what it said
                    sent = len(data)
            if readable:
                try:
                    chunk = sock.recv(256 * 1024)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                try:
                    replies += [r for r in decoder.feed(chunk) if isinstance(r, dict)]
                except LiteError as exc:
                    raise Failure(f"garbled reply from the daemon: {exc}") from None
    except OSError as exc:
        raise Failure(f"Failed talking to daemon: {exc.strerror}") from None
    finally:
        sock.close()
    if not replies:
        raise Failure("the daemon closed the connection without a reply")
    return replies


# -- output ---------------------------------------------------------------

def width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except OSError:
        return 79


def render(lines: Iterable[str], settings: Settings) -> str:
    """SMCRoute's headings: "..._" a title, "...=" a column heading."""
    out = []
    for line in lines:
        marker = line[-1:] if len(line) >= 2 else ""
        if marker not in ("_", "="):
            out.append(line + "\n")
            continue
        if settings.no_headings:
            continue
        text = line[:-1]
        if settings.plain:
            bar = (marker if marker == "_" else "=") * max(79, len(text))
            out.append(f"{bar}\n{text}\n" if marker == "_" else f"{bar}\n{text}\n{bar}\n")
        elif marker == "_":
            out.append(f"\033[4m{' ' * width()}\033[0m\n{text}\n")
        else:
            out.append(f"\033[7m{text.ljust(width())}\033[0m\n")
    return "".join(out)


# -- commands -------------------------------------------------------------

class Local:
    """A command answered without the daemon: what to print, and the status."""

    def __init__(self, out: str = "", err: str = "", status: int = 0) -> None:
        self.out = out
        self.err = err
        self.status = status

    def show(self) -> int:
        if self.err:
            sys.stderr.write(self.err)
        sys.stdout.write(self.out)
        return self.status


def parse_words(words: list[str], settings: Settings) -> ControlRequest | Local:
    """The request the words ask for, or what to print instead."""
    for i, word in enumerate(words):
        row = lookup(word)
        if row is None:
            continue  # SMCRoute skips words it does not know
        name = row[0]
        if name == "help":
            settings.help = True
            continue
        if name == "version":
            return Local(texts.version_text())
        args = words[i + 1:]
        if settings.help:
            return Local(command_help(row))
        if len(args) < row[1]:
            return Local(command_help(row),
                         f"{PROG}: Not enough arguments to command {name}\n", 1)
        return ControlRequest(ALIASES.get(name, name), tuple(args), settings.detail,
                              settings.json)
    if settings.help:
        return Local(texts.SMCROUTECTL_USAGE)
    return ControlRequest("show", (), settings.detail, settings.json)


def report(req: ControlRequest, reply: dict[str, object], settings: Settings) -> int:
    text = str(reply.get("text", ""))
    if req.cmd == "show" and reply.get("ok"):
        if text:
            sys.stdout.write(render(text.split("\n"), settings) + "\n")
        return 0
    if reply.get("ok"):
        return 0
    lines = text.split("\n") if text else ["failed"]
    for line in lines if req.cmd == "reload" else lines[:1]:
        print(f"{PROG}: {line}", file=sys.stderr)
    return 1


def run_batch(settings: Settings) -> int:
    """-b: one command per line of stdin, all on one connection."""
    status = 0
    plan: list[ControlRequest | Local] = []
    for raw in sys.stdin:
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        settings.help = False  # each line on its own (SMCRoute's help flag sticks: a quirk)
        plan.append(parse_words(words, settings))
    requests = [p for p in plan if isinstance(p, ControlRequest)]
    replies = iter(exchange(settings, requests) if requests else [])
    for item in plan:
        if isinstance(item, ControlRequest):
            reply = next(replies, {"ok": False, "text": "no reply from the daemon"})
            status += report(item, reply, settings)
        else:
            status += item.show()
    return min(status, 255)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = Settings()
    try:
        for flag, value in getopt(args, OPTSTRING, settings.words):
            if flag == "-v":
                sys.stdout.write(texts.version_text())
                return 0
            apply_flag(settings, flag, value)
    except OptError as exc:
        print(f"{PROG}: {exc.message()}", file=sys.stderr)
        sys.stdout.write(texts.SMCROUTECTL_USAGE)
        return 1
    try:
        if settings.batch:
            return run_batch(settings)
        what = parse_words(settings.words, settings)
        if isinstance(what, Local):
            return what.show()
        (reply,) = exchange(settings, [what])[:1]
        return report(what, reply, settings)
    except Failure as exc:
        for line in str(exc).split("\n"):
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


def apply_flag(settings: Settings, flag: str, value: str) -> None:
    match flag:
        case "-b":
            settings.batch = True
        case "-d":
            settings.detail = True
        case "-h":
            settings.help = True
        case "-i" | "-I":
            settings.ident = value
        case "-j":
            settings.json = True
        case "-p":
            settings.plain = True
        case "-t":
            settings.no_headings = True
        case "-u":
            settings.sock = value


if __name__ == "__main__":
    sys.exit(main())
