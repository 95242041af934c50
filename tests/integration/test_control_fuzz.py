"""The control socket under hostile or broken clients (DESIGN: "Hostile or
broken clients get an error reply or a closed connection").

Against one running smcrouted per test (in R of the conftest topology),
written straight to its socket from the test process (as root, so every
command is allowed; "kill" is never sent):

* random bytes, random msgpack in valid frames, request-shaped maps with
  wrong types, oversized declared lengths, truncated frames, and well-formed
  add/remove/show requests with arbitrary arguments: each connection ends
  with well-formed error replies (or none) and the daemon's close, never a
  hang or a crash; afterwards the daemon is alive, logged no traceback, and
  answers `smcroutectl show`;
* a client that stalls half-way through a frame does not delay others, and
  is dropped by the idle timeout;
* 50 concurrent clients, busy or idle, are answered or turned away, and the
  daemon serves normally once they are gone.

Every wait is bounded; hypothesis runs a bounded number of examples.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smcroute.ipc.stream import FrameDecoder

from .netns import netns_available, wait_for

_ok, _why = netns_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not _ok, reason=_why)]

CTL = Path(sys.executable).parent / "smcroutectl"
SRC = "10.0.1.2"
CONF = f"""\
phyint r-s enable
phyint r-a enable
mroute from r-s source {SRC} group 225.3.2.1 to r-a
mroute from r-s group 225.1.2.0/24 to r-a
"""
SAFE_COMMANDS = ("show", "add", "remove", "flush", "reload", "join", "leave")  # never kill
MAX_FRAME = 64 * 1024
REPLY_TIMEOUT = 5.0
FUZZ = settings(max_examples=150, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def request(cmd: str, *args: str, detail: bool = False, as_json: bool = False) -> bytes:
    return frame({"cmd": cmd, "args": list(args), "detail": detail, "json": as_json})


def connect(path: Path, timeout: float = REPLY_TIMEOUT) -> socket.socket:
    """A blocking connect, bounded by SO_SNDTIMEO: it waits while the
    daemon's listen backlog is full (a non-blocking one fails with EAGAIN)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                     struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)))
        s.connect(str(path))
        s.settimeout(timeout)
    except BaseException:
        s.close()
        raise
    return s


def talk(path: Path, data: bytes, timeout: float = REPLY_TIMEOUT) -> tuple[list[Any], bool]:
    """Send data, close our writing side, read until the daemon closes.

    Returns the reply messages and whether the daemon reset the connection.
    Fails if the daemon neither closes nor answers within timeout (a hang)."""
    with connect(path, timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        received = b""
        reset = False
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no close within {timeout}s after {data[:64]!r}...")
            try:
                chunk = s.recv(256 * 1024)
            except ConnectionResetError:
                reset = True
                break
            except TimeoutError:
                raise AssertionError(
                    f"daemon neither answered nor closed after {data[:64]!r}...") from None
            if not chunk:
                break
            received += chunk
    decoder = FrameDecoder(limit=64 * MAX_FRAME)
    replies = decoder.feed(received)
    assert decoder.pending == 0, f"partial reply frame: {received[-64:]!r}"
    for r in replies:
        assert type(r) is dict and set(r) == {"ok", "text"}, r
        assert type(r["ok"]) is bool and type(r["text"]) is str, r
    return replies, reset


def ctl(daemon, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", daemon.ns.name, str(CTL), "-u",
                           str(daemon.sock), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_healthy(daemon) -> None:
    """Alive, no traceback logged, and a normal show is answered."""
    assert daemon.proc.poll() is None, daemon.log()
    res = ctl(daemon, "-p", "show", "interfaces")
    assert res.returncode == 0 and "r-s" in res.stdout, (res.returncode, res.stdout, res.stderr)
    log = daemon.log()
    for bad in ("Traceback", "exception was never retrieved", "Unhandled", "Task exception"):
        assert bad not in log, log[-5000:]


@pytest.fixture
def daemon(topo, smcrouted):
    # notice level: the audit lines, without a debug line per fuzz example
    return smcrouted(CONF, ["-l", "notice"])


# -- strategies ------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40))
objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=6),
    max_leaves=20)
any_value = st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=20) \
    | st.binary(max_size=10) | st.lists(st.text(max_size=5), max_size=3) \
    | st.floats(allow_nan=False)
ARG_WORDS = ["r-s", "r-a", "r-b", "lo", "nosuch", "r-+", "+", "", "wg0", SRC, "0.0.0.0",
             "225.1.2.3", "225.3.2.1", "225.1.2.0/24", "10.0.1.0/24", "224.0.0.1",
             "255.255.255.255", "ff2e::42", "fd00:1::2", "::", "ff02::1", "1.2.3.999",
             "225.1.1.1/33", "225.1.1.1/0", "225.1.1.1/x", "r-s:1", "-", "a/b", "x" * 16]
args_words = st.lists(st.sampled_from(ARG_WORDS) | st.text(max_size=20), max_size=36)


@st.composite
def request_like(draw) -> dict:
    """A map shaped like a request, each field right or wrong."""
    msg = {
        "cmd": draw(st.sampled_from(SAFE_COMMANDS) | any_value),
        "args": draw(args_words | any_value | st.lists(any_value, max_size=4)),
        "detail": draw(st.booleans() | any_value),
        "json": draw(st.booleans() | any_value),
    }
    for key in draw(st.lists(st.sampled_from(list(msg)), max_size=2)):
        msg.pop(key, None)
    if draw(st.booleans()):
        msg[draw(st.text(max_size=6))] = draw(any_value)
    return msg


def not_kill(msg: Any) -> bool:
    return not (isinstance(msg, dict) and msg.get("cmd") == "kill")


# -- fuzzing ------------------------------------------------------------------------
# Each fuzz_* runs its hypothesis examples against one daemon; the test
# then checks the daemon is still healthy.

@FUZZ
@given(data=st.binary(max_size=4096))
def fuzz_random_bytes(daemon, data):
    talk(daemon.sock, data)


@FUZZ
@given(objs=st.lists(objects.filter(not_kill), min_size=1, max_size=4),
       tail=st.binary(max_size=16))
def fuzz_random_msgpack_frames(daemon, objs, tail):
    frames = []
    for obj in objs:
        try:
            frames.append(frame(obj))
        except (OverflowError, ValueError, TypeError):
            continue
    replies, _ = talk(daemon.sock, b"".join(frames) + tail)
    # at most one reply per frame, and one for a malformed tail, which ends
    # the connection
    assert len(replies) <= len(frames) + (1 if tail else 0)
    assert all(not r["ok"] for r in replies), replies


@FUZZ
@given(msgs=st.lists(request_like().filter(not_kill), min_size=1, max_size=5))
def fuzz_request_shaped_maps(daemon, msgs):
    replies, _ = talk(daemon.sock, b"".join(frame(m) for m in msgs))
    # well-framed maps: every one is answered, in order
    assert len(replies) == len(msgs), (msgs, replies)
    for m, r in zip(msgs, replies, strict=True):
        if not r["ok"]:
            assert r["text"], (m, r)


@FUZZ
@given(cmd=st.sampled_from(["add", "remove", "show", "join", "leave"]), args=args_words,
       detail=st.booleans(), as_json=st.booleans())
def fuzz_valid_requests_with_arbitrary_arguments(daemon, cmd, args, detail, as_json):
    msg = {"cmd": cmd, "args": args, "detail": detail, "json": as_json}
    (r,), _ = talk(daemon.sock, frame(msg))
    if cmd == "show":
        printable = all(a.isprintable() and len(a) <= 256 for a in args) and len(args) <= 35
        assert r["ok"] == printable, (msg, r)
    elif not r["ok"]:
        assert r["text"] and "Traceback" not in r["text"], (msg, r)


@FUZZ
@given(length=st.integers(MAX_FRAME + 1, 2**32 - 1) | st.just(0),
       body=st.binary(max_size=1024))
def fuzz_oversized_or_zero_declared_length(daemon, length, body):
    replies, _ = talk(daemon.sock, struct.pack(">I", length) + body)
    assert len(replies) == 1 and not replies[0]["ok"], replies
    assert "frame length" in replies[0]["text"]


@FUZZ
@given(cut=st.integers(1, 200), cmd=st.sampled_from(["show", "add"]))
def fuzz_truncated_frames(daemon, cut, cmd):
    data = request(cmd, "r-s", SRC, "225.4.4.4", "r-a")
    replies, _ = talk(daemon.sock, data[:min(cut, len(data) - 1)])
    assert replies == []


def test_random_bytes(daemon):
    fuzz_random_bytes(daemon)
    assert_healthy(daemon)


def test_random_msgpack_frames(daemon):
    fuzz_random_msgpack_frames(daemon)
    assert_healthy(daemon)


def test_request_shaped_maps_with_wrong_types(daemon):
    fuzz_request_shaped_maps(daemon)
    assert_healthy(daemon)


def test_valid_requests_with_arbitrary_arguments(daemon):
    fuzz_valid_requests_with_arbitrary_arguments(daemon)
    assert_healthy(daemon)
    # the configured (S,G) is still there: no request broke the state
    res = ctl(daemon, "-pt", "show")
    assert f"({SRC}, 225.3.2.1)" in res.stdout, res.stdout


def test_oversized_zero_and_truncated_frames(daemon):
    fuzz_oversized_or_zero_declared_length(daemon)
    fuzz_truncated_frames(daemon)
    assert_healthy(daemon)


# -- specific cases -------------------------------------------------------------------

def read_replies(s: socket.socket, n: int, timeout: float = REPLY_TIMEOUT) -> list[Any]:
    decoder = FrameDecoder(limit=64 * MAX_FRAME)
    replies: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(replies) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(replies)} of {n} replies"
        s.settimeout(left)
        chunk = s.recv(256 * 1024)
        if not chunk:
            break
        replies += decoder.feed(chunk)
    return replies


def test_oversized_length_refused_before_the_body(daemon):
    """A frame above 64 KiB is refused on its header alone: the daemon does
    not wait for (or buffer) the body."""
    with connect(daemon.sock) as s:
        s.sendall(struct.pack(">I", MAX_FRAME + 1))
        replies = read_replies(s, 1)
        assert len(replies) == 1 and not replies[0]["ok"], replies
        assert wait_for(lambda: peer_closed(s), 5.0)  # and closed
        assert s.recv(10) == b""
    assert_healthy(daemon)


def test_pipelined_requests_answered_in_order(daemon):
    with connect(daemon.sock) as s:
        s.sendall(request("show", "interfaces", as_json=True) + request("show", "pending")
                  + frame({"cmd": "help", "args": [], "detail": False, "json": False})
                  + request("show", "routes", as_json=True))
        r = read_replies(s, 4)
    assert [x["ok"] for x in r] == [True, True, False, True], r
    assert r[0]["text"].startswith('{"interfaces":')
    assert r[1]["text"].startswith("No pending routes or groups")
    assert "help" in r[2]["text"]
    assert r[3]["text"].startswith('{"routes":')


def test_request_over_one_connection_then_garbage(daemon):
    """A valid request, then a malformed frame in the same write: the
    request is answered, then the error, then the connection closes (one
    reply per request, in order, however the bytes arrive)."""
    replies, _ = talk(daemon.sock, request("show", "interfaces", as_json=True)
                      + b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
    assert [x["ok"] for x in replies] == [True, False], replies


def test_stalled_client_does_not_block_others_and_is_dropped(daemon):
    stalled = []
    try:
        # one stalls inside a header, one inside a body
        s1 = connect(daemon.sock)
        stalled.append(s1)
        s1.sendall(b"\x00\x00")
        s2 = connect(daemon.sock)
        stalled.append(s2)
        s2.sendall(request("show", "interfaces")[:10])
        time.sleep(0.2)  # both are being read by the daemon
        res = ctl(daemon, "-p", "show", "interfaces", timeout=30)
        assert res.returncode == 0 and "r-s" in res.stdout, res
        # answered while both were still connected and stalled
        for s in stalled:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        # the idle timeout drops them (bounded wait)
        for s in stalled:
            s.settimeout(30)
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in stalled:
            s.close()
    assert_healthy(daemon)


def test_a_byte_now_and_then_buys_no_time(daemon):
    # a frame must be whole FRAME_TIMEOUT (2 s) after its first byte: a
    # request sent one byte every 0.5 s (never its last) is dropped
    frame = request("show", "interfaces")
    assert len(frame) > 12
    with connect(daemon.sock, timeout=10) as s:
        start = time.monotonic()
        closed_after = None
        for i in range(len(frame) - 1):
            try:
                s.sendall(frame[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
            s.setblocking(False)
            try:
                if s.recv(1024) == b"":
                    closed_after = time.monotonic() - start
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - start
                break
            finally:
                s.setblocking(True)
            time.sleep(0.5)
    assert closed_after is not None, "a trickling client was never dropped"
    assert closed_after < 5.0, closed_after  # (2 s, and then some for a busy machine)
    assert_healthy(daemon)


def test_fifty_busy_clients_are_all_answered(daemon):
    socks = []
    try:
        for _ in range(50):
            socks.append(connect(daemon.sock, timeout=10))
        for s in socks:
            try:
                s.sendall(request("show", "interfaces"))
            except BrokenPipeError:  # refused at accept: the refusal is there to read
                pass
        answers = []
        for s in socks:
            (r,) = read_replies(s, 1, timeout=15)
            answers.append(r)
    finally:
        for s in socks:
            s.close()
    for r in answers:
        assert r["ok"] or "too many clients" in r["text"], r
    assert sum(r["ok"] for r in answers) >= 1
    assert_healthy(daemon)


def test_fifty_idle_clients_do_not_hang_the_daemon(daemon):
    socks = []
    try:
        for _ in range(50):
            socks.append(connect(daemon.sock, timeout=10))
        time.sleep(0.2)
        # with every slot taken, a client is told so at once; it does not hang
        res = ctl(daemon, "-p", "show", "interfaces", timeout=30)
        assert res.returncode == 0 or "too many clients" in res.stderr, res
        assert "Traceback" not in res.stderr
    finally:
        for s in socks:
            s.close()
    # once they are gone, normal service
    def served() -> bool:
        r = ctl(daemon, "-p", "show", "interfaces")
        return r.returncode == 0 and "r-s" in r.stdout
    assert wait_for(served, 10.0, 0.2)
    assert_healthy(daemon)


def test_fifty_idle_clients_then_burst_of_closes(daemon):
    """Clients that vanish without a word (no request, reset) are cleaned
    up: the slots come back."""
    for _ in range(3):
        socks = [connect(daemon.sock, timeout=10) for _ in range(40)]
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def answered() -> dict | None:
        with connect(daemon.sock) as s:
            try:
                s.sendall(request("show", "interfaces"))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at accept (still full): its reason is there to read
            replies = read_replies(s, 1)
        return replies[0] if replies and replies[0]["ok"] else None

    # the daemon may still be counting some of the vanished clients (and
    # refuses at accept while it is full): bounded retry
    assert wait_for(answered, 10.0, 0.2)
    assert_healthy(daemon)


def peer_closed(s: socket.socket) -> bool:
    """Whether the daemon has closed its end (POLLHUP/POLLRDHUP), without
    reading what it sent."""
    p = select.poll()
    p.register(s, select.POLLRDHUP | select.POLLHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in p.poll(0))


def test_client_that_never_reads_is_dropped(daemon):
    """A client that pipelines requests and never reads the replies fills
    the daemon's send buffer; others are served meanwhile, and the daemon
    drops it after its write timeout instead of holding it forever."""
    with connect(daemon.sock, timeout=30) as s:
        data = request("show", "interfaces") * 20_000
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += s.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                break  # dropped already (a slow machine takes this long to send)
        assert sent > 0
        res = ctl(daemon, "-p", "show", "interfaces", timeout=30)
        assert res.returncode == 0 and "r-s" in res.stdout, res
        assert wait_for(lambda: peer_closed(s), 30.0, 0.5), "still held after 30 s"
    assert_healthy(daemon)
