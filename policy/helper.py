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
    Allow,
    DelMfc,
    DelVif,
    Hello,
    Modules,
    Mrdisc,
    Request,
    SetTemplates,
    SgCount,
    Template,
)
from smcroute.policy.fastpath import FastPath
from smcroute.policy.limits import (
    ADDR_LEN,
    DEFAULT_MAX_MFC,
    FAMILIES,
    MAX_BATCH,
    MAX_FAST_LIMIT,
    MAX_IFINDEX,
    MAX_OIFS,
    MAX_TEMPLATES,
    MAXVIFS,
    MRDISC_BURST,
    MRDISC_INTERVAL,
    MRDISC_RATE,
    TTL_MAX,
    TTL_MIN,
)

MAX_ID = 2**63 - 1


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
    return _address(msg[key], key, family)


def _address(value: Any, key: str, family: int) -> bytes:
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


def source_problem(family: int, source: bytes) -> str | None:
    """Why source cannot be a route's source address, if it cannot."""
    if is_multicast(family, source):
        return "source is a multicast address"
    if family == 4 and source == b"\xff\xff\xff\xff":
        return "source is the broadcast address"
    return None


def _source(msg: dict[str, Any], family: int) -> bytes:
    source = _addr(msg, "source", family)
    if problem := source_problem(family, source):
        raise Violation(problem)
    return source


def _oifs(value: Any) -> tuple[tuple[int, int], ...]:
    if type(value) is not list:
        raise Violation(f"oifs must be a list, got {type(value).__name__}")
    if len(value) > MAX_OIFS:
        raise Violation(f"{len(value)} oifs, at most {MAX_OIFS}")
    pairs: list[tuple[int, int]] = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise Violation("each oif must be a [vif, ttl] pair")
        # (the inbound VIF may be one: SMCRoute installs that, point-to-multipoint
        # links such as WireGuard or tun servers need it)
        pairs.append((_checked_int(item[0], "vif", 0, MAXVIFS - 1),
                      _checked_int(item[1], "ttl", TTL_MIN, TTL_MAX)))
    vifs = [vif for vif, _ in pairs]
    if len(set(vifs)) != len(vifs):
        raise Violation("duplicate oif")
    return tuple(sorted(pairs))


def _family(value: Any) -> int:
    if type(value) is not int or value not in FAMILIES:
        raise Violation(f"family must be 4 or 6, got {value!r}")
    return value


def _network(value: Any, length: Any, family: int, what: str) -> tuple[bytes, int]:
    """A prefix as the fast path matches it: exact length, no host bits."""
    data = _address(value, what, family)
    bits = 8 * ADDR_LEN[family]
    n = _checked_int(length, f"{what}_len", 0, bits)
    if int.from_bytes(data, "big") & ((1 << (bits - n)) - 1):
        raise Violation(f"{what} has bits set beyond its prefix length {n}")
    return data, n


def _template(item: Any) -> Template:
    if type(item) is not list or len(item) != 7:
        raise Violation("each template must be a list of 7 items")
    family = _family(item[0])
    iif = _checked_int(item[1], "iif", 0, MAXVIFS - 1)
    source, source_len = _network(item[2], item[3], family, "source")
    group, group_len = _network(item[4], item[5], family, "group")
    if source_len and (problem := source_problem(family, source)):
        raise Violation(problem)
    # a group prefix must lie within the multicast range: 224/4 or ff00::/8
    if group_len < (4 if family == 4 else 8) or not is_multicast(family, group):
        raise Violation("group is not a multicast prefix")
    return Template(family, iif, source, source_len, group, group_len, _oifs(item[6]))


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
    if op == "templates":
        generation = _int(msg, "generation", 0, MAX_ID)
        value = msg["templates"]
        if type(value) is not list or len(value) > MAX_TEMPLATES:
            raise Violation(f"templates must be a list of at most {MAX_TEMPLATES}")
        return SetTemplates(rid, generation, tuple(_template(t) for t in value))
    if op == "allow":
        generation = _int(msg, "generation", 0, MAX_ID)
        value = msg["limits"]
        if type(value) is not list or len(value) > MAX_TEMPLATES:
            raise Violation(f"limits must be a list of at most {MAX_TEMPLATES}")
        return Allow(rid, generation,
                     tuple(_checked_int(n, "limit", 0, MAX_FAST_LIMIT) for n in value))
    family = _family(msg["family"])
    if op == "add_vif":
        return AddVif(rid, family, _int(msg, "vif", 0, MAXVIFS - 1),
                      _int(msg, "ifindex", 1, MAX_IFINDEX[family]),
                      _int(msg, "threshold", TTL_MIN, TTL_MAX))
    if op == "del_vif":
        return DelVif(rid, family, _int(msg, "vif", 0, MAXVIFS - 1))
    source = _source(msg, family)
    group = _group(msg, family)
    if op == "add_mfc":
        iif = _int(msg, "iif", 0, MAXVIFS - 1)
        return AddMfc(rid, family, source, group, iif, _oifs(msg["oifs"]))
    if op == "del_mfc":
        return DelMfc(rid, family, source, group)
    return SgCount(rid, family, source, group)


def parse_batch(msg: Any) -> list[Request]:
    if type(msg) is not list:
        raise Violation(f"a request datagram must be a list, got {type(msg).__name__}")
    if not 1 <= len(msg) <= MAX_BATCH:
        raise Violation(f"batch of {len(msg)} requests, allowed 1..{MAX_BATCH}")
    batch = [parse_request(item) for item in msg]
    # Every reply but modules' is short: one of those keeps a batch's
    # replies within a datagram (a test computes the bound).
    if sum(isinstance(r, Modules) for r in batch) > 1:
        raise Violation("more than one modules request in a batch")
    return batch


@dataclass
class HelperState:
    """What the helper has installed, as far as policy needs to know."""

    max_mfc: int = DEFAULT_MAX_MFC
    vifs: dict[int, dict[int, int]] = field(default_factory=lambda: {4: {}, 6: {}})
    mfc: set[tuple[int, bytes, bytes]] = field(default_factory=set)
    fast: FastPath = field(default_factory=FastPath)
    mrdisc_tokens: dict[int, tuple[float, float]] = field(default_factory=dict)  # vif: tokens, at

    def mrdisc_allowed(self, vif: int, now: float) -> bool:
        """Take one of the VIF's mrdisc tokens (MRDISC_RATE, MRDISC_BURST)."""
        tokens, then = self.mrdisc_tokens.get(vif, (MRDISC_BURST, now))
        tokens = min(MRDISC_BURST, tokens + (now - then) * MRDISC_RATE)
        if tokens < 1:
            self.mrdisc_tokens[vif] = tokens, now
            return False
        self.mrdisc_tokens[vif] = tokens - 1, now
        return True

    def apply(self, req: Request) -> None:
        """Record a request the kernel accepted."""
        if isinstance(req, SetTemplates):
            self.fast.load(req)
        elif isinstance(req, Allow):
            self.fast.allow(req)
        elif isinstance(req, AddVif):
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
        check_mfc(state, req.family, req.source, req.group, req.iif, req.oifs)


def check_mfc(state: HelperState, family: int, source: bytes, group: bytes, iif: int,
              oifs: tuple[tuple[int, int], ...]) -> None:
    """add_mfc's state rules (also the fast path's, which builds no request)."""
    vifs = state.vifs[family]
    if iif not in vifs:
        raise Refusal(errno.ENODEV, f"vif {iif} was not added")
    for vif, _ in oifs:
        if vif not in vifs:
            raise Refusal(errno.ENODEV, f"vif {vif} was not added")
    if len(state.mfc) >= state.max_mfc and (family, source, group) not in state.mfc:
        raise Refusal(errno.ENOSPC, f"MFC entry cap of {state.max_mfc} reached")
