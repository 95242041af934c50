"""Length-prefixed msgpack frames for stream sockets (the control socket).

A frame is a 4-byte big-endian length followed by that many bytes of one
msgpack message. The decoder is incremental and refuses a length above its
limit before buffering it, so a peer cannot make us hold more than one frame.
"""

from __future__ import annotations

import struct

from smcroute.ipc.codec import DecodeError, decode, encode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: smcroutectl starts faster without typing
if TYPE_CHECKING:
    from typing import Any

MAX_FRAME = 64 * 1024
_HEADER = struct.Struct(">I")


def encode_frame(obj: Any, limit: int = MAX_FRAME) -> bytes:
    body = encode(obj, limit)
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes as they arrive; each feed returns the messages completed."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._buf = bytearray()
        self.error: DecodeError | None = None

    def feed(self, data: bytes) -> list[Any]:
        """Buffer data; return the messages it completes (maybe none).

        A malformed frame raises DecodeError, unless good messages came
        before it in this call: then they are returned and the error waits
        in .error (the stream is broken either way)."""
        if self.error is not None:
            raise self.error
        self._buf += data
        out = []
        while len(self._buf) >= _HEADER.size:
            try:
                (length,) = _HEADER.unpack_from(self._buf)
                if length == 0 or length > self._limit:
                    raise DecodeError(f"frame length {length} outside 1..{self._limit}")
                if len(self._buf) < _HEADER.size + length:
                    break
                body = bytes(self._buf[_HEADER.size:_HEADER.size + length])
                del self._buf[:_HEADER.size + length]
                out.append(decode(body, self._limit))
            except DecodeError as exc:
                self.error = exc
                if not out:
                    raise
                break
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf)
