"""msgpack encoding with hard limits, shared by both channels.

Every decode is bounded: the byte length first, then the Unpacker limits on
each container and string, so a hostile peer cannot make us allocate more
than a datagram's worth of objects. Any failure is a DecodeError.
"""

from __future__ import annotations

import msgpack

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: smcroutectl starts faster without typing
if TYPE_CHECKING:
    from typing import Any

MAX_DATAGRAM = 256 * 1024  # helper channel: one datagram, one message
MAX_STR = 4096
MAX_BIN = 64
MAX_ARRAY = 4096
MAX_MAP = 64


class DecodeError(ValueError):
    """The bytes are not one well-formed, in-limits message."""


class EncodeError(ValueError):
    """The object cannot be encoded within the limits."""


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"extension type {code} not allowed")


def _str_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    # strict_map_key still lets bytes keys through; our schemas use str only.
    for key, _ in pairs:
        if type(key) is not str:
            raise DecodeError(f"map key of type {type(key).__name__}, expected str")
    result = dict(pairs)
    if len(result) != len(pairs):  # msgpack keeps the last one silently
        raise DecodeError("duplicate map key")
    return result


def encode(obj: Any, limit: int = MAX_DATAGRAM) -> bytes:
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode message: {exc}") from None
    if len(data) > limit:
        raise EncodeError(f"message of {len(data)} bytes exceeds {limit}")
    return data


def decode(data: bytes, limit: int = MAX_DATAGRAM) -> Any:
    if len(data) > limit:
        raise DecodeError(f"message of {len(data)} bytes exceeds {limit}")
    if not data:
        raise DecodeError("empty message")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_no_ext,
            object_pairs_hook=_str_keys,
            max_str_len=MAX_STR,
            max_bin_len=MAX_BIN,
            max_array_len=MAX_ARRAY,
            max_map_len=MAX_MAP,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
