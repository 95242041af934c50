"""smcroute.ipc.codec and smcroute.ipc.stream: bounded msgpack and length-prefixed frames."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec, stream
from smcroute.ipc.codec import DecodeError, EncodeError, decode, encode
from smcroute.ipc.stream import MAX_FRAME, FrameDecoder, encode_frame

SAMPLES: list[Any] = [
    None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, "", "héllo", b"", b"\x00\xff",
    [], [1, [2, [3]]], {}, {"a": 1, "b": [b"x", None]},
    [{"op": "add_mfc", "id": 1, "family": 4, "source": b"\n\0\0\1", "group": b"\xe1\1\2\3",
      "iif": 0, "oifs": [[1, 1]]}],
]


def raw(obj: Any) -> bytes:
    """msgpack bytes made without our limits, for building hostile input."""
    return msgpack.packb(obj, use_bin_type=True)


# -- codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", SAMPLES)
def test_round_trip(obj: Any) -> None:
    data = encode(obj)
    assert isinstance(data, bytes)
    assert decode(data) == obj


def test_tuples_become_lists_and_bytes_stay_bytes() -> None:
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]
    assert type(decode(encode(b"ab"))) is bytes
    assert type(decode(encode("ab"))) is str


@pytest.mark.parametrize("obj", [{1, 2}, object(), 2**64, -(2**63) - 1, "\ud800", 1j])
def test_encode_refuses_what_msgpack_cannot_carry(obj: Any) -> None:
    with pytest.raises(EncodeError):
        encode(obj)


def test_encode_refuses_too_deep() -> None:
    obj: Any = []
    for _ in range(2000):
        obj = [obj]
    with pytest.raises(EncodeError):
        encode(obj)


def test_encode_limit() -> None:
    data = encode(b"x" * 10)
    assert len(encode(b"x" * 10, limit=len(data))) == len(data)
    with pytest.raises(EncodeError):
        encode(b"x" * 10, limit=len(data) - 1)
    with pytest.raises(EncodeError):
        encode("x" * (codec.MAX_DATAGRAM + 1))


def test_decode_empty_and_oversize() -> None:
    with pytest.raises(DecodeError):
        decode(b"")
    with pytest.raises(DecodeError):
        decode(b"\xc0" * (codec.MAX_DATAGRAM + 1))
    with pytest.raises(DecodeError):
        decode(raw("abc"), limit=3)
    assert decode(raw("abc"), limit=4) == "abc"


def test_decode_errors_are_value_errors() -> None:
    assert issubclass(DecodeError, ValueError)
    assert issubclass(EncodeError, ValueError)


@pytest.mark.parametrize("data", [
    b"\xc1",  # never used
    b"\x92\x01",  # array of 2, one element
    b"\xa5abc",  # truncated str
    b"\xc4\x05ab",  # truncated bin
    b"\xdc\x00",  # truncated array16 header
    b"\x01\x02",  # extra data after one object
    b"\xc0\xc0",
    raw([1]) + b"\x00",
], ids=repr)
def test_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("data", [
    b"\xd4\x05\x00",  # fixext1
    b"\xd5\x05\x00\x00",
    b"\xd6\x05" + b"\x00" * 4,
    b"\xd7\x05" + b"\x00" * 8,
    b"\xd8\x05" + b"\x00" * 16,
    b"\xc7\x00\x05",  # ext8 of length 0
    b"\xc7\x01\x05\x00",
    b"\xc8\x00\x01\x05\x00",
    b"\xc9\x00\x00\x00\x01\x05\x00",
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp 32
    b"\xd7\xff" + b"\x00" * 8,  # timestamp 64
    b"\xc7\x0c\xff" + b"\x00" * 12,  # timestamp 96
    b"\x91\xd4\x01\x00",  # nested in an array
    b"\x81\xa1k\xd4\x01\x00",  # as a map value
], ids=repr)
def test_extension_types_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("data", [
    b"\xa2\xff\xfe",  # fixstr
    b"\xd9\x02\xc3\x28",
    b"\xda\x00\x01\x80",
    b"\xa3\xed\xa0\x80",  # an encoded surrogate
    b"\x81\xa1\xff\x01",  # as a map key
    b"\x91\xa1\xc0",
], ids=repr)
def test_invalid_utf8_strings(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("data", [
    b"\x81\x01\x02",  # int key
    b"\x81\xc0\x02",  # nil key
    b"\x81\xc3\x02",  # bool key
    b"\x81\xca\x00\x00\x00\x00\x01",  # float key
    b"\x81\x90\x01",  # array key
    b"\x81\x80\x01",  # map key
    b"\x81\xc4\x01a\x01",  # bin (bytes) key
    b"\x81\xc4\x02op\xa5hello",
    b"\x82\xa2op\xa5hello\xc4\x02id\x01",
], ids=repr)
def test_non_string_map_keys(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_string_map_keys_are_fine() -> None:
    assert decode(raw({"op": "hello", "id": 1})) == {"op": "hello", "id": 1}


def test_deep_nesting() -> None:
    for depth in (2000, 10_000, codec.MAX_DATAGRAM):
        with pytest.raises(DecodeError):
            decode(b"\x91" * depth)
        with pytest.raises(DecodeError):
            decode(b"\x81\xa1k" * (depth // 3))


@pytest.mark.parametrize("data", [
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xdb\x00\x00\x10\x01" + b"a" * 10,  # str32 just above MAX_STR
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xc6\x00\x00\x00\x41" + b"\x00" * 65,  # bin32 of 65 bytes, above MAX_BIN
    b"\xdd\xff\xff\xff\xff",  # array32
    b"\xdd\x00\x00\x10\x01" + b"\xc0" * 4097,  # array above MAX_ARRAY
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xde\x00\x41" + b"".join(raw(f"k{i}") + b"\xc0" for i in range(65)),  # map of 65
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
], ids=lambda d: repr(d[:8]))
def test_huge_declared_lengths(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_limits_are_inclusive() -> None:
    assert decode(raw("a" * codec.MAX_STR)) == "a" * codec.MAX_STR
    assert decode(raw(b"b" * codec.MAX_BIN)) == b"b" * codec.MAX_BIN
    assert decode(raw([None] * codec.MAX_ARRAY)) == [None] * codec.MAX_ARRAY
    big_map = {f"k{i}": i for i in range(codec.MAX_MAP)}
    assert decode(raw(big_map)) == big_map
    for obj in ("a" * (codec.MAX_STR + 1), b"b" * (codec.MAX_BIN + 1),
                [None] * (codec.MAX_ARRAY + 1), {f"k{i}": i for i in range(codec.MAX_MAP + 1)}):
        with pytest.raises(DecodeError):
            decode(raw(obj))


msgpack_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                   | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=64))
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.text(max_size=8), children, max_size=8),
    max_leaves=12,
)


def decode_only_raises_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values)
def test_property_round_trip(obj: Any) -> None:
    assert decode(encode(obj)) == obj


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_property_random_bytes(data: bytes) -> None:
    decode_only_raises_decode_error(data)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(raw(draw(msgpack_values)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append"]))
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.integers(0, 255) | st.sampled_from(
            [0xC1, 0xD4, 0xC7, 0xDB, 0xDD, 0xDF, 0xC6, 0xFF, 0x91, 0x81]))
        if kind == "flip" and pos < len(data):
            data[pos] = byte
        elif kind == "insert":
            data.insert(pos, byte)
        elif kind == "delete" and pos < len(data):
            del data[pos]
        elif kind == "truncate":
            del data[pos:]
        else:
            data += draw(st.binary(max_size=8))
    return bytes(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_encodings())
def test_property_mutated_encodings(data: bytes) -> None:
    decode_only_raises_decode_error(data)
    decoder = FrameDecoder()
    try:
        list(decoder.feed(struct.pack(">I", len(data)) + data))
    except DecodeError:
        pass


# -- stream ---------------------------------------------------------------------------------


def frames(*objs: Any) -> bytes:
    return b"".join(encode_frame(o) for o in objs)


def test_encode_frame_layout() -> None:
    frame = encode_frame({"a": 1})
    body = encode({"a": 1})
    assert frame == struct.pack(">I", len(body)) + body
    assert stream.MAX_FRAME == 64 * 1024


def test_encode_frame_limit() -> None:
    with pytest.raises(EncodeError):
        encode_frame(b"x" * 100, limit=50)
    with pytest.raises(EncodeError):
        encode_frame("x" * MAX_FRAME)


@pytest.mark.parametrize("obj", SAMPLES)
def test_whole_frame_at_once(obj: Any) -> None:
    decoder = FrameDecoder()
    assert list(decoder.feed(encode_frame(obj))) == [obj]
    assert decoder.pending == 0


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    assert list(decoder.feed(frames(*SAMPLES))) == SAMPLES
    assert decoder.pending == 0


def test_byte_by_byte() -> None:
    data = frames(*SAMPLES)
    decoder = FrameDecoder()
    out: list[Any] = []
    for i in range(len(data)):
        out += list(decoder.feed(data[i:i + 1]))
    assert out == SAMPLES
    assert decoder.pending == 0


def test_partial_frame_is_held() -> None:
    data = encode_frame("hello")
    decoder = FrameDecoder()
    assert list(decoder.feed(data[:2])) == []
    assert decoder.pending == 2
    assert list(decoder.feed(data[2:-1])) == []
    assert decoder.pending == len(data) - 1
    assert list(decoder.feed(data[-1:] + data[:3])) == ["hello"]
    assert decoder.pending == 3


def test_feed_buffers_even_if_the_result_is_not_iterated() -> None:
    # "Feed bytes as they arrive": a caller that feeds a partial frame and has
    # nothing to iterate yet must not lose those bytes.
    data = encode_frame("hello")
    decoder = FrameDecoder()
    decoder.feed(data[:3])
    assert decoder.pending == 3
    assert list(decoder.feed(data[3:])) == ["hello"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(msgpack_values, min_size=1, max_size=4), st.data())
def test_property_any_chunking(objs: list[Any], data: st.DataObject) -> None:
    blob = frames(*objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    decoder = FrameDecoder()
    out: list[Any] = []
    last = 0
    for cut in [*cuts, len(blob)]:
        out += list(decoder.feed(blob[last:cut]))
        last = cut
    assert out == objs
    assert decoder.pending == 0


def test_zero_length_frame() -> None:
    decoder = FrameDecoder()
    with pytest.raises(DecodeError):
        list(decoder.feed(b"\x00\x00\x00\x00"))


def test_zero_length_frame_byte_by_byte() -> None:
    decoder = FrameDecoder()
    for b in b"\x00\x00\x00":
        assert list(decoder.feed(bytes([b]))) == []
    with pytest.raises(DecodeError):
        list(decoder.feed(b"\x00"))


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 2**31, 2**32 - 1])
def test_oversize_length_rejected_on_the_header_alone(length: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(DecodeError):
        list(decoder.feed(struct.pack(">I", length)))


def test_oversize_with_a_custom_limit() -> None:
    decoder = FrameDecoder(limit=10)
    assert list(decoder.feed(encode_frame("x" * 9, limit=10))) == ["x" * 9]
    with pytest.raises(DecodeError):
        list(decoder.feed(struct.pack(">I", 11)))


def test_max_frame_length_is_accepted() -> None:
    body = raw([b"x" * 60] * 900)
    assert len(body) <= MAX_FRAME
    decoder = FrameDecoder()
    assert list(decoder.feed(struct.pack(">I", len(body)) + body)) == [[b"x" * 60] * 900]


def test_bad_body_in_a_frame() -> None:
    # Good messages before a bad frame are delivered; the error waits in
    # .error and the stream stays broken.
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(1)) == [1]
    assert decoder.feed(encode_frame(2) + b"\x00\x00\x00\x01\xc1") == [2]
    assert isinstance(decoder.error, DecodeError)
    with pytest.raises(DecodeError):
        decoder.feed(encode_frame(3))
    # a bad frame with nothing before it raises at once
    with pytest.raises(DecodeError):
        FrameDecoder().feed(b"\x00\x00\x00\x01\xc1")


def test_trailing_data_inside_a_frame() -> None:
    body = raw(1) + raw(2)
    decoder = FrameDecoder()
    with pytest.raises(DecodeError):
        list(decoder.feed(struct.pack(">I", len(body)) + body))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_property_feed_random_bytes(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            list(decoder.feed(chunk))
    except DecodeError:
        pass
