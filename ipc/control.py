"""Schema of the control socket (smcroutectl <-> smcrouted).

Transport: AF_UNIX SOCK_STREAM, frames of smcroute.ipc.stream (a 4-byte
length, then one msgpack map). A connection may carry several requests;
each gets one reply, in order.

request: {"cmd": str, "args": [str, ...], "detail": bool, "json": bool}
reply:   {"ok": bool, "text": str}
  show commands: text is the output, lines SMCRoute-style (a trailing "_"
  marks a section title, "=" a column heading); others: empty on success,
  the error (one or more lines) otherwise.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: smcroutectl starts faster without typing
if TYPE_CHECKING:
    from typing import Any

COMMANDS = ("flush", "kill", "reload", "show", "add", "remove", "join", "leave")
MAX_ARGS = 35  # 32 OIFs + inbound interface, source and group
MAX_ARG_LEN = 256


class BadRequest(ValueError):
    """The message is not a valid control request; the text says why."""


class ControlRequest:
    """One request (a value; a plain class, as importing dataclasses would
    cost smcroutectl a good part of its start-up)."""

    __slots__ = ("args", "cmd", "detail", "json")

    def __init__(self, cmd: str, args: tuple[str, ...] = (), detail: bool = False,
                 json: bool = False) -> None:
        self.cmd = cmd
        self.args = args
        self.detail = detail
        self.json = json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ControlRequest) and self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash((self.cmd, self.args, self.detail, self.json))

    def __repr__(self) -> str:
        return f"ControlRequest({self.cmd!r}, {self.args!r}, {self.detail}, {self.json})"

    def to_wire(self) -> dict[str, Any]:
        return {"cmd": self.cmd, "args": list(self.args), "detail": self.detail,
                "json": self.json}


_KEYS = frozenset({"cmd", "args", "detail", "json"})


def parse_request(msg: Any) -> ControlRequest:
    if type(msg) is not dict:
        raise BadRequest("a request must be a map")
    if msg.keys() != _KEYS:
        raise BadRequest("a request has exactly the keys cmd, args, detail, json")
    cmd, args, detail, as_json = msg["cmd"], msg["args"], msg["detail"], msg["json"]
    if type(cmd) is not str or cmd not in COMMANDS:
        raise BadRequest(f"unknown command {cmd!r}")
    if type(args) is not list or len(args) > MAX_ARGS:
        raise BadRequest(f"args must be a list of at most {MAX_ARGS} strings")
    for arg in args:
        if type(arg) is not str or len(arg) > MAX_ARG_LEN or not arg.isprintable():
            raise BadRequest(f"each argument must be printable text of at most {MAX_ARG_LEN}"
                             " characters")
    if type(detail) is not bool or type(as_json) is not bool:
        raise BadRequest("detail and json must be booleans")
    return ControlRequest(cmd, tuple(args), detail, as_json)


def reply(ok: bool, text: str = "") -> dict[str, Any]:
    return {"ok": ok, "text": text}
