"""Validation of helper requests: the trust boundary.

Two stages, both pure:

* parse_batch / parse_request check the *shape* of a message against the
  schema in smcroute.ipc.helper: exact key set, exact types (a bool is not an
  int), every range. A failure is a Violation: the peer is not a correct
  controller, and the helper exits.
* check() decides whether a well-formed request is allowed in the helper's
  current state: vifs must be ones the helper added, the MFC cap must hold.
  A failure is a Refusal carrying an errno; the helper replies with it.

The controller runs the same functions before it sends, to give users a
clear error instead of losing its helper.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from smcroute.ipc.helper import (
    FIELDS,
    AddMfc,
    AddVif,
    DelMfc,
    DelVif,
    Hello,
    Modules,
    Mrdisc,
    Request,
    SgCount,
)
from smcroute.policy.limits import (
    ADDR_LEN,
    DEFAULT_MAX_MFC,
    FAMILIES,
    MAX_BATCH,
    MAX_OIFS,
    MAXVIFS,
    MRDISC_INTERVAL,
    TTL_MAX,
    TTL_MIN,
)

MAX_ID = 2**63 - 1
MAX_IFINDEX = 2**31 - 1


class Violation(ValueError):
    """A malformed request: wrong keys, types or ranges."""


class Refusal(Exception):
    """A well-formed request that the current state does not allow."""

    def __init__(self, err: int, text: str) -> None:
        super().__init__(text)
        self.errno = err
        self.text = text


def _int(msg: dict[str, Any], key: str, lo: int, hi: int) -> int:
    return _checked_int(msg[key], key, lo, hi)


def _checked_int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is a subclass of int: refuse it
        raise Violation(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise Violation(f"{name} {value} outside {lo}..{hi}")
    return value


def _addr(msg: dict[str, Any], key: str, family: int) -> bytes:
    value = msg[key]
    if type(value) is not bytes:
        raise Violation(f"{key} must be bytes, got {type(value).__name__}")
    if len(value) != ADDR_LEN[family]:
        raise Violation(f"{key} must be {ADDR_LEN[family]} bytes for IPv{family}, got {len(value)}")
    return value


def is_multicast(family: int, addr: bytes) -> bool:
    return (addr[0] & 0xF0) == 0xE0 if family == 4 else addr[0] == 0xFF


def _group(msg: dict[str, Any], family: int) -> bytes:
    group = _addr(msg, "group", family)
    if not is_multicast(family, group):
        raise Violation("group is not a multicast address")
    return group


def _source(msg: dict[str, Any], family: int) -> bytes:
    source = _addr(msg, "source", family)
    if is_multicast(family, source):
        raise Violation("source is a multicast address")
    if family == 4 and source == b"\xff\xff\xff\xff":
        raise Violation("source is the broadcast address")
    return source


def _oifs(msg: dict[str, Any], iif: int) -> tuple[tuple[int, int], ...]:
    value = msg["oifs"]
    if type(value) is not list:
        raise Violation(f"oifs must be a list, got {type(value).__name__}")
    if len(value) > MAX_OIFS:
        raise Violation(f"{len(value)} oifs, at most {MAX_OIFS}")
    pairs: list[tuple[int, int]] = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise Violation("each oif must be a [vif, ttl] pair")
        vif = _checked_int(item[0], "vif", 0, MAXVIFS - 1)
        ttl = _checked_int(item[1], "ttl", TTL_MIN, TTL_MAX)
        if vif == iif:
            raise Violation(f"oif {vif} is the inbound vif")
        pairs.append((vif, ttl))
    vifs = [vif for vif, _ in pairs]
    if len(set(vifs)) != len(vifs):
        raise Violation("duplicate oif")
    return tuple(sorted(pairs))


_KEYS = {op: frozenset({"op", "id", *fields}) for op, fields in FIELDS.items()}


def parse_request(msg: Any) -> Request:
    """Check one request map against the schema and return its value."""
    if type(msg) is not dict:
        raise Violation(f"request must be a map, got {type(msg).__name__}")
    op = msg.get("op")
    if type(op) is not str or op not in FIELDS:
        raise Violation(f"unknown op {op!r}")
    expected = _KEYS[op]
    if msg.keys() != expected:
        extra = sorted(map(str, set(msg) - expected))
        missing = sorted(expected - set(msg))
        raise Violation(f"{op}: wrong keys (missing {missing}, unexpected {extra})")
    rid = _int(msg, "id", 0, MAX_ID)
    if op == "hello":
        return Hello(rid)
    if op == "modules":
        return Modules(rid)
    if op == "mrdisc":
        terminate = msg["terminate"]
        if type(terminate) is not bool:
            raise Violation("terminate must be a boolean")
        return Mrdisc(rid, _int(msg, "vif", 0, MAXVIFS - 1),
                      _int(msg, "interval", *MRDISC_INTERVAL), terminate)
    family = msg["family"]
    if type(family) is not int or family not in FAMILIES:
        raise Violation(f"family must be 4 or 6, got {family!r}")
    if op == "add_vif":
        return AddVif(rid, family, _int(msg, "vif", 0, MAXVIFS - 1),
                      _int(msg, "ifindex", 1, MAX_IFINDEX),
                      _int(msg, "threshold", TTL_MIN, TTL_MAX))
    if op == "del_vif":
        return DelVif(rid, family, _int(msg, "vif", 0, MAXVIFS - 1))
    source = _source(msg, family)
    group = _group(msg, family)
    if op == "add_mfc":
        iif = _int(msg, "iif", 0, MAXVIFS - 1)
        return AddMfc(rid, family, source, group, iif, _oifs(msg, iif))
    if op == "del_mfc":
        return DelMfc(rid, family, source, group)
    return SgCount(rid, family, source, group)


def parse_batch(msg: Any) -> list[Request]:
    if type(msg) is not list:
        raise Violation(f"a request datagram must be a list, got {type(msg).__name__}")
    if not 1 <= len(msg) <= MAX_BATCH:
        raise Violation(f"batch of {len(msg)} requests, allowed 1..{MAX_BATCH}")
    return [parse_request(item) for item in msg]


@dataclass
class HelperState:
    """What the helper has installed, as far as policy needs to know."""

    max_mfc: int = DEFAULT_MAX_MFC
    vifs: dict[int, dict[int, int]] = field(default_factory=lambda: {4: {}, 6: {}})
    mfc: set[tuple[int, bytes, bytes]] = field(default_factory=set)

    def apply(self, req: Request) -> None:
        """Record a request the kernel accepted."""
        if isinstance(req, AddVif):
            self.vifs[req.family][req.vif] = req.ifindex
        elif isinstance(req, DelVif):
            self.vifs[req.family].pop(req.vif, None)
        elif isinstance(req, AddMfc):
            self.mfc.add((req.family, req.source, req.group))
        elif isinstance(req, DelMfc):
            self.mfc.discard((req.family, req.source, req.group))


def check(req: Request, state: HelperState) -> None:
    """Raise Refusal if the state does not allow this well-formed request."""
    if isinstance(req, AddVif):
        vifs = state.vifs[req.family]
        if req.vif in vifs:
            raise Refusal(errno.EADDRINUSE, f"vif {req.vif} is already in use")
        if req.ifindex in vifs.values():
            raise Refusal(errno.EEXIST, f"ifindex {req.ifindex} already has a vif")
    elif isinstance(req, DelVif):
        if req.vif not in state.vifs[req.family]:
            raise Refusal(errno.ENODEV, f"vif {req.vif} was not added")
    elif isinstance(req, Mrdisc):
        if req.vif not in state.vifs[4]:
            raise Refusal(errno.ENODEV, f"vif {req.vif} was not added")
    elif isinstance(req, AddMfc):
        vifs = state.vifs[req.family]
        for vif in (req.iif, *(v for v, _ in req.oifs)):
            if vif not in vifs:
                raise Refusal(errno.ENODEV, f"vif {vif} was not added")
        key = (req.family, req.source, req.group)
        if key not in state.mfc and len(state.mfc) >= state.max_mfc:
            raise Refusal(errno.ENOSPC, f"MFC entry cap of {state.max_mfc} reached")
