"""ipc/lite.py (smcroutectl's msgpack subset) agrees with msgpack both ways."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smcroute.ipc import lite

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.text(max_size=300))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=20)
                      | st.dictionaries(st.text(max_size=20), inner, max_size=20), max_leaves=50)


@settings(max_examples=120, deadline=None)
@given(values)
def test_encode_is_msgpack(value: object) -> None:
    assert msgpack.unpackb(lite.encode(value), raw=False, strict_map_key=False) == value


@settings(max_examples=120, deadline=None)
@given(values)
def test_decode_reads_msgpack(value: object) -> None:
    assert lite.decode(msgpack.packb(value, use_bin_type=True)) == value


@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_lite_error_only(data: bytes) -> None:
    try:
        lite.decode(data)
    except lite.LiteError:
        pass


def test_big_reply_and_frames() -> None:
    reply = {"ok": True, "text": "x" * 100_000}
    frames = lite.Frames(limit=1 << 20)
    data = lite.frame(reply) + lite.frame({"ok": False, "text": ""})
    got = []
    for i in range(0, len(data), 777):
        got += frames.feed(data[i:i + 777])
    assert got == [reply, {"ok": False, "text": ""}]


@pytest.mark.parametrize("data", [b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
def test_frame_length_checked(data: bytes) -> None:
    with pytest.raises(lite.LiteError):
        lite.Frames(limit=1024).feed(data)


def test_depth_limit() -> None:
    with pytest.raises(lite.LiteError):
        lite.decode(b"\x91" * 40 + b"\xc0")


args_lists = st.lists(st.text(max_size=300), max_size=40).map(tuple)


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=40), args_lists, st.booleans(), st.booleans())
def test_request_frame_is_the_generic_frame(cmd: str, args: tuple[str, ...], detail: bool,
                                            as_json: bool) -> None:
    wire = {"cmd": cmd, "args": list(args), "detail": detail, "json": as_json}
    assert lite.request_frame(cmd, args, detail, as_json) == lite.frame(wire)
    # and again: the second time the strings come from the cache
    assert lite.request_frame(cmd, args, detail, as_json) == lite.frame(wire)


def test_small_frames_decoded_once_across_feeds() -> None:
    ok, no = {"ok": True, "text": ""}, {"ok": False, "text": "no route"}
    data = (lite.frame(ok) + lite.frame(no)) * 50
    frames = lite.Frames(limit=1024)
    got = []
    for i in range(0, len(data), 5):  # frames split across feeds
        got += frames.feed(data[i:i + 5])
    assert got == [ok, no] * 50
    assert got[0] is got[2] and got[1] is got[3]  # shared, as documented
    assert not frames.buf


def test_bad_length_after_good_frames_keeps_nothing_half_read() -> None:
    frames = lite.Frames(limit=1024)
    with pytest.raises(lite.LiteError):
        frames.feed(lite.frame({"ok": True, "text": ""}) + b"\x00\x00\x00\x00")
