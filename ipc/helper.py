"""The controller's view of the helper channel: typed requests, upcalls
and replies.

Transport: one AF_UNIX SOCK_SEQPACKET socketpair; every datagram is one
msgpack message (smcroute.ipc.codec). What a request may hold, and what
the helper does with it, is its op table (smcroute.policy.ops, the wire
schema's one definition: OPS names each op's fields); the helper never
imports this module.

controller -> helper: a list of 1..MAX_BATCH request maps.
helper -> controller: {"t": "replies"}, {"t": "upcalls"} or {"t": "fatal"}
maps, as policy/ops.py describes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from smcroute.policy.ops import ABSENT, OPS, PROTOCOL_VERSION, UPCALL_KINDS

__all__ = ["ABSENT", "PROTOCOL_VERSION", "UPCALL_KINDS"]

# Request fields by op; "op" and "id" are in every request.
FIELDS: dict[str, tuple[str, ...]] = {op: fields for op, (fields, _) in OPS.items()}


@dataclass(frozen=True)
class Hello:
    id: int
    op = "hello"


@dataclass(frozen=True)
class Modules:
    id: int
    op = "modules"


@dataclass(frozen=True)
class AddVif:
    id: int
    family: int
    vif: int
    ifindex: int
    threshold: int
    op = "add_vif"


@dataclass(frozen=True)
class DelVif:
    id: int
    family: int
    vif: int
    op = "del_vif"


@dataclass(frozen=True)
class AddMfc:
    id: int
    family: int
    source: bytes
    group: bytes
    iif: int
    oifs: tuple[tuple[int, int], ...]  # (vif, ttl), ascending vif
    op = "add_mfc"


@dataclass(frozen=True)
class DelMfc:
    id: int
    family: int
    source: bytes
    group: bytes
    op = "del_mfc"


@dataclass(frozen=True)
class SgCount:
    id: int
    family: int
    source: bytes
    group: bytes
    op = "sg_count"


@dataclass(frozen=True)
class Mrdisc:
    """Send one multicast router advertisement (or termination) on an IPv4 VIF."""

    id: int
    vif: int
    interval: int  # seconds, the advertisement's code field
    terminate: bool
    op = "mrdisc"


@dataclass(frozen=True)
class Template:
    """A (*,G) rule on one inbound VIF, as the helper's fast path matches it."""

    family: int
    iif: int
    source: bytes  # network; all zero with source_len 0: any source
    source_len: int
    group: bytes  # network
    group_len: int
    oifs: tuple[tuple[int, int], ...]  # (vif, ttl), ascending vif

    def to_wire(self) -> list[Any]:
        return [self.family, self.iif, self.source, self.source_len, self.group,
                self.group_len, [list(pair) for pair in self.oifs]]


@dataclass(frozen=True)
class SetTemplates:
    """Replace the fast path's templates (first match wins); all limits 0."""

    id: int
    generation: int
    templates: tuple[Template, ...]
    op = "templates"


@dataclass(frozen=True)
class Allow:
    """Raise the fast path's limits (cumulative per template this generation)."""

    id: int
    generation: int
    limits: tuple[int, ...]
    op = "allow"


Request = (Hello | Modules | AddVif | DelVif | AddMfc | DelMfc | SgCount | Mrdisc
           | SetTemplates | Allow)


def to_wire(req: Request) -> dict[str, Any]:
    msg: dict[str, Any] = {"op": req.op, "id": req.id}
    for name in FIELDS[req.op]:
        value = getattr(req, name)
        if name == "oifs":
            value = [list(pair) for pair in value]
        elif name == "templates":
            value = [t.to_wire() for t in value]
        elif name == "limits":
            value = list(value)
        msg[name] = value
    return msg


@dataclass(frozen=True)
class Upcall:
    family: int
    kind: str
    vif: int
    source: bytes
    group: bytes
    generation: int = 0  # "learned": the template that matched
    index: int = -1

    def to_wire(self) -> list[Any]:
        item = [self.family, self.kind, self.vif, self.source, self.group]
        return [*item, self.generation, self.index] if self.kind == "learned" else item


def upcalls_message(upcalls: list[Upcall]) -> dict[str, Any]:
    return {"t": "upcalls", "upcalls": [u.to_wire() for u in upcalls]}


# Replies, as the controller reads them: NamedTuples (cheap to define, and
# the controller imports this before its first route goes in), each with
# id, ok, errno and error; a successful reply to sg_count, hello or modules
# carries its results too.

class Reply(NamedTuple):
    """The helper's answer to one request (a failure carries errno and text)."""

    id: int
    ok: bool
    errno: int = 0
    error: str = ""


class Counts(NamedTuple):
    """sg_count: what the kernel counted for one (S,G)."""

    id: int
    ok: bool
    errno: int = 0
    error: str = ""
    packets: int = 0
    bytes: int = 0
    wrong_if: int = 0


class HelloReply(NamedTuple):
    id: int
    ok: bool
    errno: int = 0
    error: str = ""
    version: int = 0
    maxvifs: int = 0
    max_mfc: int = 0
    table: int = 0
    pid: int = 0
    sandbox: str = ""  # "landlock ABI N", or "none: why"


class ModulesReply(NamedTuple):
    id: int
    ok: bool
    errno: int = 0
    error: str = ""
    modules: tuple[str, ...] = ()


AnyReply = Reply | Counts | HelloReply | ModulesReply

# The result fields of a successful reply, by op (every other op: none).
RESULTS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "sg_count": (Counts, ("packets", "bytes", "wrong_if")),
    "hello": (HelloReply, ("version", "maxvifs", "max_mfc", "table", "pid", "sandbox")),
    "modules": (ModulesReply, ("modules",)),
}


class BadReply(ValueError):
    """A reply that does not answer its request as the schema says."""


def parse_reply(req: Request, msg: Any) -> AnyReply:
    """The typed reply to req, checked (the controller's side of the schema)."""
    if type(msg) is not dict or type(msg.get("id")) is not int or msg["id"] != req.id:
        raise BadReply(f"not a reply to request {req.id} ({req.op})")
    ok = msg.get("ok")
    if ok is False:
        if msg.keys() != {"id", "ok", "errno", "error"} or type(msg["errno"]) is not int \
                or type(msg["error"]) is not str:
            raise BadReply(f"malformed error reply to {req.op}")
        return Reply(req.id, False, msg["errno"], msg["error"])
    kind, names = RESULTS.get(req.op, (Reply, ()))
    if ok is not True or msg.keys() != {"id", "ok", *names}:
        raise BadReply(f"malformed reply to {req.op}")
    values: dict[str, Any] = {}
    for name in names:
        value = msg[name]
        if name == "modules":
            if type(value) is not list or not all(type(m) is str for m in value):
                raise BadReply("modules must be a list of names")
            value = tuple(value)
        elif name == "sandbox":
            if type(value) is not str:
                raise BadReply("sandbox must be a string")
        elif type(value) is not int or value < 0:
            raise BadReply(f"{name} of {req.op} must be a non-negative integer")
        values[name] = value
    return kind(req.id, True, **values)
