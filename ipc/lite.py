"""A small msgpack subset for smcroutectl, which starts for every command.

Importing the msgpack package costs a command-line tool more than all of
its own work (it pulls in datetime). The control protocol only needs maps,
arrays, strings, booleans, nil and integers, so the client encodes and
decodes those here; the daemon decodes with msgpack itself, with all its
limits. tests/unit check both directions against the real msgpack.
"""

from __future__ import annotations

import struct


class LiteError(ValueError):
    """Not a message this subset reads."""


def encode(obj: object) -> bytes:
    out = bytearray()
    _encode(obj, out)
    return bytes(out)


def _encode(obj: object, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif type(obj) is int:
        if 0 <= obj < 0x80:
            out.append(obj)
        elif -32 <= obj < 0:
            out.append(obj & 0xFF)
        elif 0 <= obj < 2**64:
            out += b"\xcf" + struct.pack(">Q", obj)
        elif -(2**63) <= obj < 0:
            out += b"\xd3" + struct.pack(">q", obj)
        else:
            raise LiteError(f"integer out of range: {obj}")
    elif type(obj) is str:
        data = obj.encode()
        n = len(data)
        out += bytes([0xA0 | n]) if n < 32 else (b"\xda" + struct.pack(">H", n) if n < 2**16
                                                else b"\xdb" + struct.pack(">I", n))
        out += data
    elif type(obj) in (list, tuple):
        seq: list[object] | tuple[object, ...] = obj  # type: ignore[assignment]
        n = len(seq)
        out += bytes([0x90 | n]) if n < 16 else b"\xdd" + struct.pack(">I", n)
        for item in seq:
            _encode(item, out)
    elif type(obj) is dict:
        n = len(obj)
        out += bytes([0x80 | n]) if n < 16 else b"\xdf" + struct.pack(">I", n)
        for key, value in obj.items():
            _encode(key, out)
            _encode(value, out)
    else:
        raise LiteError(f"cannot encode {type(obj).__name__}")


def decode(data: bytes, max_depth: int = 16) -> object:
    value, end = _decode(data, 0, max_depth)
    if end != len(data):
        raise LiteError("trailing data after the message")
    return value


_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
_INTS = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
         0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
_LENGTHS = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}


def _take(data: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise LiteError("truncated message")
    return data[pos:pos + n]


def _decode(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    if depth < 0:
        raise LiteError("nested too deep")
    tag = _take(data, pos, 1)[0]
    pos += 1
    if tag < 0x80:
        return tag, pos
    if tag >= 0xE0:
        return tag - 0x100, pos
    if tag in _FIXED:
        return _FIXED[tag], pos
    if tag in _INTS:
        fmt = _INTS[tag]
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, _take(data, pos, size))[0], pos + size
    if 0xA0 <= tag <= 0xBF or tag in (0xD9, 0xDA, 0xDB):
        if tag in _LENGTHS:
            size = struct.calcsize(_LENGTHS[tag])
            n = struct.unpack(_LENGTHS[tag], _take(data, pos, size))[0]
            pos += size
        else:
            n = tag & 0x1F
        try:
            return _take(data, pos, n).decode(), pos + n
        except UnicodeDecodeError:
            raise LiteError("invalid UTF-8 in a string") from None
    if 0x90 <= tag <= 0x9F or 0x80 <= tag <= 0x8F or tag in (0xDC, 0xDD, 0xDE, 0xDF):
        if tag in _LENGTHS:
            size = struct.calcsize(_LENGTHS[tag])
            n = struct.unpack(_LENGTHS[tag], _take(data, pos, size))[0]
            pos += size
        else:
            n = tag & 0x0F
        if n > len(data) - pos:  # each element takes at least one byte
            raise LiteError("truncated message")
        if tag in (0xDE, 0xDF) or 0x80 <= tag <= 0x8F:
            result: dict[object, object] = {}
            for _ in range(n):
                key, pos = _decode(data, pos, depth - 1)
                if type(key) is not str:
                    raise LiteError("map keys must be strings")
                result[key], pos = _decode(data, pos, depth - 1)
            return result, pos
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth - 1)
            items.append(item)
        return items, pos
    raise LiteError(f"unsupported msgpack type 0x{tag:02x}")


def frame(obj: object) -> bytes:
    """A control-socket frame (smcroute.ipc.stream's format)."""
    body = encode(obj)
    return struct.pack(">I", len(body)) + body


def _str(text: str) -> bytes:
    encoded = _STRS.get(text)
    if encoded is not None:
        return encoded
    data = text.encode()
    n = len(data)
    if n < 32:
        encoded = bytes((0xA0 | n,)) + data
    else:
        encoded = (b"\xda" + struct.pack(">H", n) if n < 2**16
                   else b"\xdb" + struct.pack(">I", n)) + data
    if len(_STRS) < 4096:  # interface names and sources recur in a batch
        _STRS[text] = encoded
    return encoded


_STRS: dict[str, bytes] = {}


def request_frame(cmd: str, args: tuple[str, ...], detail: bool, as_json: bool) -> bytes:
    """frame() of a control request map, without the generic walk: a batch
    encodes thousands of them (same bytes as frame(ControlRequest.to_wire()))."""
    n = len(args)
    parts = [b"\x84\xa3cmd", _str(cmd), b"\xa4args",
             bytes((0x90 | n,)) if n < 16 else b"\xdd" + struct.pack(">I", n)]
    parts += map(_str, args)
    parts += (b"\xa6detail", b"\xc3" if detail else b"\xc2", b"\xa4json",
              b"\xc3" if as_json else b"\xc2")
    body = b"".join(parts)
    return struct.pack(">I", len(body)) + body


class Frames:
    """Incremental frame reader for the client; limit caps one frame.

    The messages it returns are read-only: small frames seen before (a
    batch's thousand identical "ok" replies) share one decoded value.
    """

    SHARED = 64  # frames up to this size are decoded once

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.seen: dict[bytes, object] = {}

    def feed(self, data: bytes) -> list[object]:
        self.buf += data
        buf, pos, end = self.buf, 0, len(self.buf)
        out = []
        try:
            while end - pos >= 4:
                (n,) = struct.unpack_from(">I", buf, pos)
                if n == 0 or n > self.limit:
                    raise LiteError(f"frame length {n} outside 1..{self.limit}")
                if end - pos - 4 < n:
                    break
                body = bytes(buf[pos + 4:pos + 4 + n])
                pos += 4 + n
                if n > self.SHARED:
                    out.append(decode(body))
                    continue
                value = self.seen.get(body)
                if value is None:
                    value = self.seen[body] = decode(body)
                out.append(value)
        finally:
            del buf[:pos]
        return out
