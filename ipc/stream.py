"""Length-prefixed msgpack frames for stream sockets (the control socket).

A frame is a 4-byte big-endian length followed by that many bytes of one
msgpack message. The decoder is incremental and refuses a length above its
limit before buffering it, so a peer cannot make us hold more than one frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from smcroute.ipc.codec import DecodeError, decode, encode

MAX_FRAME = 64 * 1024
_HEADER = struct.Struct(">I")


def encode_frame(obj: Any, limit: int = MAX_FRAME) -> bytes:
    body = encode(obj, limit)
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes as they arrive; iterate to get complete messages."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length == 0 or length > self._limit:
                raise DecodeError(f"frame length {length} outside 1..{self._limit}")
            if len(self._buf) < _HEADER.size + length:
                return
            body = bytes(self._buf[_HEADER.size:_HEADER.size + length])
            del self._buf[:_HEADER.size + length]
            yield decode(body, self._limit)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf)
