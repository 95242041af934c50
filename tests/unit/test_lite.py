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
