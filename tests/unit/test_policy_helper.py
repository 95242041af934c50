"""smcroute.policy.ops: the helper's trust boundary (shape rules, parse and
parse_batch; state rules, each op through ops.execute over a fake kernel)."""

from __future__ import annotations

import copy
import dataclasses
import errno
import ipaddress
import os
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec
from smcroute.ipc.helper import (
    FIELDS,
    PROTOCOL_VERSION,
    AddMfc,
    AddVif,
    Allow,
    DelMfc,
    DelVif,
    Hello,
    Modules,
    Mrdisc,
    SetTemplates,
    SgCount,
    Template,
    parse_reply,
    to_wire,
)
from smcroute.policy import limits, ops

from .fakes import FakeKernel

Violation = ops.Violation

V4_SRC = bytes([10, 0, 0, 1])
V4_GRP = bytes([225, 1, 2, 3])
V6_SRC = ipaddress.IPv6Address("2001:db8::1").packed
V6_GRP = ipaddress.IPv6Address("ff05::42").packed


def valid(op: str, family: int = 4) -> dict[str, Any]:
    """A well-formed request of each op (a fresh copy every time)."""
    src, grp = (V4_SRC, V4_GRP) if family == 4 else (V6_SRC, V6_GRP)
    return copy.deepcopy({
        "hello": {"op": "hello", "id": 1},
        "modules": {"op": "modules", "id": 2},
        "add_vif": {"op": "add_vif", "id": 3, "family": family, "vif": 0, "ifindex": 2,
                    "threshold": 1},
        "del_vif": {"op": "del_vif", "id": 4, "family": family, "vif": 0},
        "add_mfc": {"op": "add_mfc", "id": 5, "family": family, "source": src, "group": grp,
                    "iif": 0, "oifs": [[2, 3], [1, 1]]},
        "del_mfc": {"op": "del_mfc", "id": 6, "family": family, "source": src, "group": grp},
        "sg_count": {"op": "sg_count", "id": 7, "family": family, "source": src, "group": grp},
        "mrdisc": {"op": "mrdisc", "id": 8, "vif": 0, "interval": 20, "terminate": False},
        "templates": {"op": "templates", "id": 9, "generation": 3, "templates": [
            [family, 0, bytes(len(src)), 0, grp, 8 * len(grp), [[2, 3], [1, 1]]],
            [family, 1, src, 8 * len(src), grp[:2] + bytes(len(grp) - 2), 16, []]]},
        "allow": {"op": "allow", "id": 10, "generation": 3, "limits": [64, 0]},
    }[op])


ALL_OPS = ("hello", "modules", "add_vif", "del_vif", "add_mfc", "del_mfc", "sg_count",
           "mrdisc", "templates", "allow")
FAMILY_OPS = ("add_vif", "del_vif", "add_mfc", "del_mfc", "sg_count")
ADDR_OPS = ("add_mfc", "del_mfc", "sg_count")
# The key sets, written out independently of ops.OPS (and FIELDS, derived from it).
KEYS = {
    "hello": {"op", "id"},
    "modules": {"op", "id"},
    "add_vif": {"op", "id", "family", "vif", "ifindex", "threshold"},
    "del_vif": {"op", "id", "family", "vif"},
    "add_mfc": {"op", "id", "family", "source", "group", "iif", "oifs"},
    "del_mfc": {"op", "id", "family", "source", "group"},
    "sg_count": {"op", "id", "family", "source", "group"},
    "mrdisc": {"op", "id", "vif", "interval", "terminate"},
    "templates": {"op", "id", "generation", "templates"},
    "allow": {"op", "id", "generation", "limits"},
}
# The controller's typed request of each op (smcroute.ipc.helper).
TYPES = {"hello": Hello, "modules": Modules, "add_vif": AddVif, "del_vif": DelVif,
         "add_mfc": AddMfc, "del_mfc": DelMfc, "sg_count": SgCount, "mrdisc": Mrdisc,
         "templates": SetTemplates, "allow": Allow}


def with_(msg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(msg)
    out.update(changes)
    return out


def addr_int(data: bytes) -> int:
    return int(ipaddress.ip_address(data))


def prefix(data: bytes, length: int) -> tuple[int, int]:
    """(network, mask) of a prefix as ints, by ipaddress (raises on host bits)."""
    net = ipaddress.ip_network((data, length))
    return int(net.network_address), int(net.netmask)


def template_of(t: tuple[Any, ...]) -> Template:
    """A parsed template back as the controller's Template."""
    family, iif, snet, smask, gnet, gmask, oifs = t
    size = limits.ADDR_LEN[family]
    return Template(family, iif, snet.to_bytes(size, "big"), bin(smask).count("1"),
                    gnet.to_bytes(size, "big"), bin(gmask).count("1"), oifs)


def typed(r: dict[str, Any]) -> Any:
    """The controller's typed request with the values of a parsed request."""
    values = {k: v for k, v in r.items() if k != "op"}
    if r["op"] == "templates":
        values["templates"] = tuple(map(template_of, r["templates"]))
    return TYPES[r["op"]](**values)


def typed_valid(op: str, family: int = 4) -> Any:
    """valid(op, family) written as the controller writes it."""
    src, grp = (V4_SRC, V4_GRP) if family == 4 else (V6_SRC, V6_GRP)
    n = len(src)
    return {
        "hello": Hello(1),
        "modules": Modules(2),
        "add_vif": AddVif(3, family, 0, 2, 1),
        "del_vif": DelVif(4, family, 0),
        "add_mfc": AddMfc(5, family, src, grp, 0, ((1, 1), (2, 3))),
        "del_mfc": DelMfc(6, family, src, grp),
        "sg_count": SgCount(7, family, src, grp),
        "mrdisc": Mrdisc(8, 0, 20, False),
        "templates": SetTemplates(9, 3, (
            Template(family, 0, bytes(n), 0, grp, 8 * n, ((1, 1), (2, 3))),
            Template(family, 1, src, 8 * n, grp[:2] + bytes(n - 2), 16, ()))),
        "allow": Allow(10, 3, (64, 0)),
    }[op]


# -- well-formed requests ------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_valid_requests_parse_to_their_values(family: int) -> None:
    src, grp = (V4_SRC, V4_GRP) if family == 4 else (V6_SRC, V6_GRP)
    bits = 8 * len(src)
    assert ops.parse(valid("hello")) == {"op": "hello", "id": 1}
    assert ops.parse(valid("modules")) == {"op": "modules", "id": 2}
    assert ops.parse(valid("add_vif", family)) == {
        "op": "add_vif", "id": 3, "family": family, "vif": 0, "ifindex": 2, "threshold": 1}
    assert ops.parse(valid("del_vif", family)) == {
        "op": "del_vif", "id": 4, "family": family, "vif": 0}
    # oifs come back as sorted (vif, ttl) tuples
    assert ops.parse(valid("add_mfc", family)) == {
        "op": "add_mfc", "id": 5, "family": family, "source": src, "group": grp, "iif": 0,
        "oifs": ((1, 1), (2, 3))}
    assert ops.parse(valid("del_mfc", family)) == {
        "op": "del_mfc", "id": 6, "family": family, "source": src, "group": grp}
    assert ops.parse(valid("sg_count", family)) == {
        "op": "sg_count", "id": 7, "family": family, "source": src, "group": grp}
    assert ops.parse(valid("mrdisc")) == {
        "op": "mrdisc", "id": 8, "vif": 0, "interval": 20, "terminate": False}
    # templates: (family, iif, source net, mask, group net, mask, oifs) as ints
    assert ops.parse(valid("templates", family)) == {
        "op": "templates", "id": 9, "generation": 3, "templates": (
            (family, 0, 0, 0, addr_int(grp), (1 << bits) - 1, ((1, 1), (2, 3))),
            (family, 1, addr_int(src), (1 << bits) - 1, *prefix(grp[:2] + bytes(len(grp) - 2),
                                                                16), ()))}
    assert ops.parse(valid("allow")) == {"op": "allow", "id": 10, "generation": 3,
                                         "limits": (64, 0)}


@pytest.mark.parametrize("op", ALL_OPS)
def test_parsed_values_have_exact_types(op: str) -> None:
    for family in (4, 6):
        r = ops.parse(valid(op, family))
        assert set(r) == KEYS[op]
        assert type(r["op"]) is str and type(r["id"]) is int
        for name in ("family", "vif", "ifindex", "threshold", "iif", "interval", "generation"):
            if name in r:
                assert type(r[name]) is int, name
        for name in ("source", "group"):
            if name in r:
                assert type(r[name]) is bytes
        if "oifs" in r:
            assert type(r["oifs"]) is tuple
            assert all(type(p) is tuple and list(map(type, p)) == [int, int] for p in r["oifs"])
        if "terminate" in r:
            assert r["terminate"] is False
        if "limits" in r:
            assert type(r["limits"]) is tuple and all(type(n) is int for n in r["limits"])
        for t in r.get("templates", ()):
            assert type(t) is tuple and len(t) == 7
            assert all(type(v) is int for v in t[:6]) and type(t[6]) is tuple


def test_schema_key_sets_match_the_design() -> None:
    assert set(ops.OPS) == set(ALL_OPS)
    assert set(FIELDS) == set(ALL_OPS)
    for op in ALL_OPS:
        assert {"op", "id", *ops.OPS[op][0]} == KEYS[op]
        assert {"op", "id", *FIELDS[op]} == KEYS[op]
    # every field has its rule, and every rule a field
    assert set(ops.FIELD) == set().union(*KEYS.values()) - {"op"}


@pytest.mark.parametrize("op", ALL_OPS)
def test_typed_requests_have_the_op_and_fields_of_the_table(op: str) -> None:
    kind = TYPES[op]
    assert kind.op == op
    assert [f.name for f in dataclasses.fields(kind)] == ["id", *FIELDS[op]]


@pytest.mark.parametrize("op", ALL_OPS)
def test_to_wire_round_trip(op: str) -> None:
    for family in (4, 6):
        r = ops.parse(valid(op, family))
        wire = to_wire(typed_valid(op, family))
        assert set(wire) == KEYS[op]
        assert ops.parse(wire) == r
        assert ops.parse(codec.decode(codec.encode(wire))) == r
        # and back: the parsed values as a typed request give the same wire map
        assert typed(r) == typed_valid(op, family)
        assert ops.parse(to_wire(typed(r))) == r


# -- message shape: map, op, exact key set ----------------------------------------


@pytest.mark.parametrize("msg", [None, [], [valid("hello")], "hello", b"hello", 1, True, 1.5,
                                 ("op", "hello")])
def test_request_must_be_a_map(msg: Any) -> None:
    with pytest.raises(Violation, match="must be a map"):
        ops.parse(msg)


@pytest.mark.parametrize("op", [None, "", "HELLO", "frob", "add_vif ", b"hello", 1, True,
                                ["hello"], "__init__", "execute", "parse"])
def test_unknown_op(op: Any) -> None:
    with pytest.raises(Violation, match="unknown op"):
        ops.parse({"op": op, "id": 1})


def test_missing_op() -> None:
    with pytest.raises(Violation):
        ops.parse({"id": 1})


@pytest.mark.parametrize(("op", "key"), [(op, key) for op in ALL_OPS for key in sorted(KEYS[op])
                                         if key != "op"])
def test_missing_key(op: str, key: str) -> None:
    msg = valid(op)
    del msg[key]
    with pytest.raises(Violation, match="keys"):
        ops.parse(msg)


EXTRA_KEYS = ["extra", "ID", "oifs", "family", "ifindex", 1, b"id", None]


@pytest.mark.parametrize(("op", "extra"), [(op, extra) for op in ALL_OPS for extra in EXTRA_KEYS
                                           if extra not in KEYS[op]])
def test_extra_key(op: str, extra: Any) -> None:
    msg = valid(op)
    msg[extra] = 1
    with pytest.raises(Violation, match="keys"):
        ops.parse(msg)


def test_bytes_key_does_not_stand_in_for_a_str_key() -> None:
    msg = valid("del_vif")
    msg[b"vif"] = msg.pop("vif")
    with pytest.raises(Violation):
        ops.parse(msg)


# -- exact types and ranges ------------------------------------------------------------

BAD_INT_TYPES = [True, False, 1.0, 0.0, "1", b"\x01", None, [1], {"v": 1}]
MAX_ID = 2**63 - 1

# (op, key, value, accepted)
INT_TABLE = [
    # id: integer >= 0 (and fits in a signed 64-bit field)
    *[("hello", "id", v, True) for v in (0, 1, 2**63 - 1)],
    *[("hello", "id", v, False) for v in (-1, 2**63, 2**64 - 1, *BAD_INT_TYPES)],
    *[("add_mfc", "id", v, False) for v in (-1, True, 1.0)],
    # vif (and MIF): 0..31
    *[("add_vif", "vif", v, True) for v in (0, 1, 31)],
    *[("add_vif", "vif", v, False) for v in (-1, 32, 255, 2**32, *BAD_INT_TYPES)],
    *[("del_vif", "vif", v, True) for v in (0, 31)],
    *[("del_vif", "vif", v, False) for v in (-1, 32, *BAD_INT_TYPES)],
    *[("mrdisc", "vif", v, True) for v in (0, 31)],
    *[("mrdisc", "vif", v, False) for v in (-1, 32, *BAD_INT_TYPES)],
    # ifindex >= 1 (the family's upper bound: test_ifindex_range_follows_the_family)
    *[("add_vif", "ifindex", v, True) for v in (1, 2, 2**16 - 1)],
    *[("add_vif", "ifindex", v, False) for v in (0, -1, 2**31, *BAD_INT_TYPES)],
    # threshold 1..255
    *[("add_vif", "threshold", v, True) for v in (1, 128, 255)],
    *[("add_vif", "threshold", v, False) for v in (0, -1, 256, *BAD_INT_TYPES)],
    # iif 0..31 (the valid add_mfc uses oifs 1 and 2)
    *[("add_mfc", "iif", v, True) for v in (0, 3, 31)],
    *[("add_mfc", "iif", v, False) for v in (-1, 32, *BAD_INT_TYPES)],
    # the RFC 4286 advertisement interval, 4..180 seconds
    *[("mrdisc", "interval", v, True) for v in (4, 20, 180)],
    *[("mrdisc", "interval", v, False) for v in (3, 181, 0, -1, *BAD_INT_TYPES)],
    # generation 0..2**63-1
    *[(op, "generation", v, True) for op in ("templates", "allow") for v in (0, MAX_ID)],
    *[(op, "generation", v, False) for op in ("templates", "allow")
      for v in (-1, MAX_ID + 1, *BAD_INT_TYPES)],
]


@pytest.mark.parametrize(("op", "key", "value", "ok"), INT_TABLE,
                         ids=[f"{o}-{k}-{v!r}" for o, k, v, _ in INT_TABLE])
def test_integer_fields(op: str, key: str, value: Any, ok: bool) -> None:
    for family in (4, 6) if op in FAMILY_OPS else (4,):
        msg = with_(valid(op, family), **{key: value})
        if ok:
            r = ops.parse(msg)
            assert r[key] == value
            assert type(r[key]) is int
        else:
            with pytest.raises(Violation, match=f"^{op} {key}: "):
                ops.parse(msg)


@pytest.mark.parametrize(("family", "value", "ok"), [
    (4, limits.MAX_IFINDEX[4], True), (4, limits.MAX_IFINDEX[4] + 1, False),
    (4, 2**31 - 1, True), (4, 2**31, False), (4, 70000, True),
    (6, limits.MAX_IFINDEX[6], True), (6, limits.MAX_IFINDEX[6] + 1, False),
    (6, 2**16 - 1, True), (6, 2**16, False), (6, 70000, False),  # mif6c_pifi is 16 bits
])
def test_ifindex_range_follows_the_family(family: int, value: int, ok: bool) -> None:
    msg = with_(valid("add_vif", family), ifindex=value)
    if ok:
        assert ops.parse(msg)["ifindex"] == value
    else:
        with pytest.raises(Violation, match="ifindex"):
            ops.parse(msg)


@pytest.mark.parametrize(("op", "field", "bad"), [
    ("hello", "id", -1), ("add_vif", "vif", 32), ("add_vif", "ifindex", 0),
    ("add_vif", "threshold", 0), ("del_vif", "vif", True), ("add_mfc", "source", V4_GRP),
    ("add_mfc", "group", V4_SRC), ("add_mfc", "iif", 32), ("add_mfc", "oifs", [[1, 1], [1, 2]]),
    ("del_mfc", "group", b""), ("sg_count", "source", None), ("mrdisc", "interval", 3),
    ("mrdisc", "terminate", 0), ("templates", "generation", -1), ("templates", "templates", [[]]),
    ("allow", "limits", [-1]),
])
def test_a_field_error_names_its_op_and_field(op: str, field: str, bad: Any) -> None:
    with pytest.raises(Violation, match=f"^{op} {field}: ."):
        ops.parse(with_(valid(op), **{field: bad}))


@pytest.mark.parametrize("op", FAMILY_OPS)
@pytest.mark.parametrize("family", [True, False, 0, 1, 2, 5, 44, 46, -4, 4.0, 6.0, "4", "6",
                                    b"\x04", None, [4]])
def test_family_only_4_or_6(op: str, family: Any) -> None:
    with pytest.raises(Violation, match="family"):
        ops.parse(with_(valid(op), family=family))


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize("key", ["source", "group"])
def test_address_length_follows_family(op: str, key: str) -> None:
    v4, v6 = valid(op, 4), valid(op, 6)
    # an IPv6-sized address in an IPv4 request and the other way round
    with pytest.raises(Violation):
        ops.parse(with_(v4, **{key: v6[key]}))
    with pytest.raises(Violation):
        ops.parse(with_(v6, **{key: v4[key]}))
    for n in (0, 1, 3, 5, 15, 17, 64):
        pad = (v4[key] + bytes(64))[:n]
        with pytest.raises(Violation):
            ops.parse(with_(v4, **{key: pad}))
        pad6 = (v6[key] + bytes(64))[:n]
        with pytest.raises(Violation):
            ops.parse(with_(v6, **{key: pad6}))


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize("key", ["source", "group"])
def test_address_must_be_bytes(op: str, key: str) -> None:
    msg = valid(op, 4)
    raw = msg[key]
    text = str(ipaddress.ip_address(raw))
    for bad in (text, bytearray(raw), list(raw), int.from_bytes(raw, "big"), None, memoryview(raw)):
        with pytest.raises(Violation):
            ops.parse(with_(msg, **{key: bad}))


GROUPS = [
    (4, "224.0.0.0", True), (4, "224.0.0.1", True), (4, "225.1.2.3", True),
    (4, "239.255.255.255", True),
    (4, "223.255.255.255", False), (4, "240.0.0.0", False), (4, "255.255.255.255", False),
    (4, "0.0.0.0", False), (4, "10.0.0.1", False), (4, "127.0.0.1", False),
    (6, "ff00::", True), (6, "ff02::1", True), (6, "ff05::42", True),
    (6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    (6, "::", False), (6, "fe80::1", False), (6, "feff::1", False), (6, "2001:db8::1", False),
    (6, "::ffff:225.1.2.3", False),  # IPv4-mapped is not IPv6 multicast
]


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize(("family", "text", "ok"), GROUPS)
def test_group_must_be_multicast(op: str, family: int, text: str, ok: bool) -> None:
    msg = with_(valid(op, family), group=ipaddress.ip_address(text).packed)
    if ok:
        assert ops.parse(msg)["group"] == ipaddress.ip_address(text).packed
    else:
        with pytest.raises(Violation, match="not a multicast"):
            ops.parse(msg)


SOURCES = [
    (4, "0.0.0.0", True), (4, "10.0.0.1", True), (4, "223.255.255.255", True),
    (4, "240.0.0.1", True), (4, "255.255.255.254", True),
    (4, "224.0.0.0", False), (4, "225.1.2.3", False), (4, "239.255.255.255", False),
    (4, "255.255.255.255", False),
    (6, "::", True), (6, "2001:db8::1", True), (6, "fe80::1", True), (6, "::ffff:225.1.2.3", True),
    (6, "ff02::1", False), (6, "ff05::42", False), (6, "ff00::", False),
    # all-ones is IPv4's broadcast only; in IPv6 it is a multicast address
    (6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
]


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize(("family", "text", "ok"), SOURCES)
def test_source_must_not_be_multicast(op: str, family: int, text: str, ok: bool) -> None:
    msg = with_(valid(op, family), source=ipaddress.ip_address(text).packed)
    if ok:
        assert ops.parse(msg)["source"] == ipaddress.ip_address(text).packed
    else:
        with pytest.raises(Violation, match=f"^{op} source: source is "):
            ops.parse(msg)


def test_is_multicast() -> None:
    assert ops.is_multicast(4, bytes([224, 0, 0, 0]))
    assert ops.is_multicast(4, bytes([239, 255, 255, 255]))
    assert not ops.is_multicast(4, bytes([223, 255, 255, 255]))
    assert not ops.is_multicast(4, bytes([240, 0, 0, 0]))
    assert ops.is_multicast(6, bytes([0xFF]) + bytes(15))
    assert not ops.is_multicast(6, bytes([0xFE]) + bytes(15))


def test_source_problem() -> None:
    assert ops.source_problem(4, V4_SRC) is None
    assert ops.source_problem(6, V6_SRC) is None
    assert ops.source_problem(4, bytes(4)) is None
    assert "multicast" in ops.source_problem(4, V4_GRP)  # type: ignore[operator]
    assert "multicast" in ops.source_problem(6, V6_GRP)  # type: ignore[operator]
    assert "broadcast" in ops.source_problem(4, b"\xff" * 4)  # type: ignore[operator]


# -- oifs ------------------------------------------------------------------------------

OIFS_TABLE: list[tuple[Any, Any]] = [
    # (oifs value with iif 0, expected tuple or None for Violation)
    ([], ()),
    ([[1, 1]], ((1, 1),)),
    ([[31, 255]], ((31, 255),)),
    ([[5, 2], [3, 9], [4, 1]], ((3, 9), (4, 1), (5, 2))),
    ([[v, 1] for v in range(1, 32)], tuple((v, 1) for v in range(1, 32))),
    (None, None),
    ((), None),  # a tuple is not a msgpack array
    ({"1": 1}, None),
    ("oifs", None),
    (b"\x01\x01", None),
    (1, None),
    ([[1, 1]] * 2, None),  # duplicate pair
    ([[1, 1], [1, 2]], None),  # duplicate vif
    ([[0, 1]], ((0, 1),)),  # the inbound vif may be one, as in SMCRoute
    ([[1, 1], [0, 1]], ((0, 1), (1, 1))),
    ([[1]], None),
    ([[1, 1, 1]], None),
    ([[]], None),
    ([(1, 1)], None),  # a tuple pair
    ([1, 1], None),
    ([[1, 1], 2], None),
    ([[True, 1]], None),
    ([[1, True]], None),
    ([[1.0, 1]], None),
    ([[1, 1.0]], None),
    ([["1", 1]], None),
    ([[1, None]], None),
    ([[32, 1]], None),
    ([[-1, 1]], None),
    ([[1, 0]], None),
    ([[1, 256]], None),
    ([[1, -1]], None),
    ([{"vif": 1, "ttl": 1}], None),
    ([[v % 32, 1] for v in range(1, 34)], None),  # 33 oifs
    ([[v, 1] for v in range(32)], tuple((v, 1) for v in range(32))),  # every VIF
]


@pytest.mark.parametrize(("oifs", "expected"), OIFS_TABLE,
                         ids=[repr(o)[:40] for o, _ in OIFS_TABLE])
def test_oifs(oifs: Any, expected: Any) -> None:
    for family in (4, 6):
        msg = with_(valid("add_mfc", family), iif=0, oifs=oifs)
        if expected is None:
            with pytest.raises(Violation, match=r"^add_mfc oifs: "):
                ops.parse(msg)
        else:
            assert ops.parse(msg)["oifs"] == expected


@pytest.mark.parametrize(("oifs", "expected"), OIFS_TABLE,
                         ids=[repr(o)[:40] for o, _ in OIFS_TABLE])
def test_template_oifs_follow_the_same_rules(oifs: Any, expected: Any) -> None:
    item = [4, 0, bytes(4), 0, V4_GRP, 32, oifs]
    msg = with_(valid("templates"), templates=[item])
    if expected is None:
        with pytest.raises(Violation, match=r"^templates templates: "):
            ops.parse(msg)
    else:
        assert ops.parse(msg)["templates"][0][6] == expected


def test_more_than_max_oifs_is_refused_before_anything_else() -> None:
    many = [[1 + (v % 31), 1] for v in range(limits.MAX_OIFS + 1)]
    with pytest.raises(Violation, match="at most"):
        ops.parse(with_(valid("add_mfc"), oifs=many))


def test_iif_among_oifs_whatever_the_iif() -> None:
    # SMCRoute installs it (point-to-multipoint links need it), both families
    for family in (4, 6):
        for iif in range(limits.MAXVIFS):
            r = ops.parse(with_(valid("add_mfc", family), iif=iif, oifs=[[iif, 1]]))
            assert r["oifs"] == ((iif, 1),)


# -- templates and limits ------------------------------------------------------------------


def b(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# [family, iif, source, source_len, group, group_len, oifs] and whether it is accepted
TEMPLATE_TABLE: list[tuple[list[Any], bool]] = [
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 16, [[1, 1]]], True),
    ([4, 31, bytes(4), 0, b("225.1.0.0"), 16, []], True),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 16, [[0, 1]]], True),  # the inbound VIF as an oif
    ([4, 0, b("10.0.0.0"), 8, b("225.1.0.0"), 16, []], True),
    ([4, 0, b("10.0.0.1"), 32, b("225.1.2.3"), 32, []], True),
    ([4, 0, b("240.0.0.0"), 4, b("225.1.0.0"), 16, []], True),  # class E is a source
    ([4, 0, bytes(4), 0, b("224.0.0.0"), 4, []], True),  # the widest group prefix
    ([4, 0, bytes(4), 32, b("225.1.0.0"), 16, []], True),  # the source 0.0.0.0 exactly
    ([6, 0, bytes(16), 0, b("ff00::"), 8, []], True),
    ([6, 0, b("2001:db8::"), 32, b("ff05::"), 16, [[1, 1]]], True),
    ([6, 0, b("2001:db8::1"), 128, b("ff05::42"), 128, []], True),
    # the group: a multicast prefix, within 224/4 or ff00::/8, no host bits
    ([4, 0, bytes(4), 0, b("224.0.0.0"), 3, []], False),
    ([4, 0, bytes(4), 0, bytes(4), 0, []], False),
    ([4, 0, bytes(4), 0, b("240.0.0.0"), 4, []], False),
    ([4, 0, bytes(4), 0, b("10.0.0.0"), 8, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.1"), 16, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 33, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 128, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), -1, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), True, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 16.0, []], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), "16", []], False),
    ([6, 0, bytes(16), 0, b("ff00::"), 7, []], False),
    ([6, 0, bytes(16), 0, b("ff00::"), 4, []], False),
    ([6, 0, bytes(16), 0, b("fe80::"), 10, []], False),
    ([6, 0, bytes(16), 0, b("ff05::42"), 16, []], False),
    ([6, 0, bytes(16), 0, b("ff05::"), 129, []], False),
    # the source: a unicast prefix, no host bits; all zero of length 0 for any
    ([4, 0, b("10.0.0.1"), 8, b("225.1.0.0"), 16, []], False),
    ([4, 0, b("10.0.0.0"), 0, b("225.1.0.0"), 16, []], False),
    ([4, 0, b("224.0.0.0"), 4, b("225.1.0.0"), 16, []], False),
    ([4, 0, b("225.1.2.3"), 32, b("225.1.0.0"), 16, []], False),
    ([4, 0, b("255.255.255.255"), 32, b("225.1.0.0"), 16, []], False),
    ([4, 0, bytes(4), 33, b("225.1.0.0"), 16, []], False),
    ([4, 0, bytes(4), -1, b("225.1.0.0"), 16, []], False),
    ([4, 0, bytes(4), True, b("225.1.0.0"), 16, []], False),
    ([4, 0, bytes(4), None, b("225.1.0.0"), 16, []], False),
    ([6, 0, b("ff05::"), 16, b("ff05::"), 16, []], False),
    ([6, 0, b("2001:db8::1"), 64, b("ff05::"), 16, []], False),
    ([6, 0, bytes(16), 129, b("ff05::"), 16, []], False),
    # addresses of the template's own family, as bytes
    ([4, 0, bytes(16), 0, b("225.1.0.0"), 16, []], False),
    ([4, 0, bytes(4), 0, b("ff05::"), 16, []], False),
    ([6, 0, bytes(4), 0, b("ff05::"), 16, []], False),
    ([6, 0, bytes(16), 0, b("225.1.0.0"), 4, []], False),
    ([4, 0, "0.0.0.0", 0, b("225.1.0.0"), 16, []], False),
    ([4, 0, bytes(4), 0, "225.1.0.0", 16, []], False),
    ([4, 0, bytes(4), 0, bytearray(b("225.1.0.0")), 16, []], False),
    # family and iif
    *[([family, 0, bytes(4), 0, b("225.1.0.0"), 16, []], False)
      for family in (5, 0, True, 4.0, "4", None)],
    *[([4, iif, bytes(4), 0, b("225.1.0.0"), 16, []], False)
      for iif in (-1, 32, True, 1.0, None)],
    # the item itself: a list of 7
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 16], False),
    ([4, 0, bytes(4), 0, b("225.1.0.0"), 16, [], 0], False),
    ((4, 0, bytes(4), 0, b("225.1.0.0"), 16, []), False),
    ([], False),
]


@pytest.mark.parametrize(("item", "ok"), TEMPLATE_TABLE,
                         ids=[repr(t)[:60] for t, _ in TEMPLATE_TABLE])
def test_template_prefix_rules(item: list[Any], ok: bool) -> None:
    msg = with_(valid("templates"), templates=[copy.deepcopy(item)])
    if not ok:
        with pytest.raises(Violation, match=r"^templates templates: "):
            ops.parse(msg)
        return
    (t,) = ops.parse(msg)["templates"]
    family, iif, source, slen, group, glen, oifs = item
    assert t == (family, iif, *prefix(source, slen), *prefix(group, glen),
                 tuple(sorted(map(tuple, oifs))))


@pytest.mark.parametrize(("value", "ok"), [
    ([], True),
    ([valid("templates")["templates"][0]] * limits.MAX_TEMPLATES, True),
    ([valid("templates")["templates"][0]] * (limits.MAX_TEMPLATES + 1), False),
    (tuple(valid("templates")["templates"]), False),
    (None, False), ({}, False), (b"", False),
])
def test_templates_is_a_list_of_at_most_max_templates(value: Any, ok: bool) -> None:
    msg = with_(valid("templates"), templates=value)
    if ok:
        assert len(ops.parse(msg)["templates"]) == len(value)
    else:
        with pytest.raises(Violation, match=r"^templates templates: "):
            ops.parse(msg)


@pytest.mark.parametrize(("value", "ok"), [
    ([], True), ([0], True), ([limits.MAX_FAST_LIMIT, 0, 5], True),
    ([1] * limits.MAX_TEMPLATES, True),
    ([1] * (limits.MAX_TEMPLATES + 1), False),
    ([limits.MAX_FAST_LIMIT + 1], False), ([-1], False), ([True], False), ([1.0], False),
    ([None], False), ([[1]], False), ((1,), False), (1, False), (None, False),
])
def test_limits_field(value: Any, ok: bool) -> None:
    msg = with_(valid("allow"), limits=value)
    if ok:
        assert ops.parse(msg)["limits"] == tuple(value)
    else:
        with pytest.raises(Violation, match=r"^allow limits: "):
            ops.parse(msg)


# -- batches -----------------------------------------------------------------------------


def test_batch_of_valid_requests() -> None:
    batch = [valid(op, fam) for op in ALL_OPS for fam in (4, 6)]
    batch = [m for i, m in enumerate(batch) if m["op"] != "modules" or i % 2 == 0]
    reqs = ops.parse_batch(batch)
    assert len(reqs) == 2 * len(ALL_OPS) - 1
    assert reqs == [ops.parse(m) for m in batch]
    assert [r["op"] for r in reqs] == [m["op"] for m in batch]


def test_at_most_one_modules_request_per_batch() -> None:
    # its reply is the one long one: 1024 of them made 1.37 MB, over the limit
    assert len(ops.parse_batch([valid("modules"), valid("hello"), valid("hello")])) == 3
    with pytest.raises(Violation, match="more than one modules"):
        ops.parse_batch([valid("modules"), valid("modules")])
    with pytest.raises(Violation, match="more than one modules"):
        ops.parse_batch([valid("modules"), valid("hello"), valid("modules")])


@pytest.mark.parametrize("msg", [None, {}, valid("hello"), "x", b"x", 1, (valid("hello"),)])
def test_batch_must_be_a_list(msg: Any) -> None:
    with pytest.raises(Violation):
        ops.parse_batch(msg)


def test_batch_size_limits() -> None:
    with pytest.raises(Violation):
        ops.parse_batch([])
    assert len(ops.parse_batch([valid("hello")])) == 1
    assert len(ops.parse_batch([valid("hello")] * limits.MAX_BATCH)) == limits.MAX_BATCH
    with pytest.raises(Violation):
        ops.parse_batch([valid("hello")] * (limits.MAX_BATCH + 1))


def test_one_bad_request_spoils_the_batch() -> None:
    with pytest.raises(Violation):
        ops.parse_batch([valid("hello"), valid("add_vif"), with_(valid("del_vif"), vif=True)])
    with pytest.raises(Violation):
        ops.parse_batch([valid("hello"), None])


def test_limits_values() -> None:
    assert limits.MAXVIFS == 32
    assert limits.MAX_OIFS == 32
    assert (limits.TTL_MIN, limits.TTL_MAX) == (1, 255)
    assert limits.FAMILIES == (4, 6)
    assert limits.ADDR_LEN == {4: 4, 6: 16}
    assert limits.MAX_IFINDEX == {4: 2**31 - 1, 6: 2**16 - 1}
    assert limits.MAX_BATCH >= 1
    assert limits.DEFAULT_MAX_MFC >= 1


# -- state rules: each op through ops.execute -----------------------------------------


class Kernel(FakeKernel):
    """A FakeKernel that records each call and can be told to fail the next
    call of an op: fail[op] = errno (None: an OSError without one)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, int | None] = {}

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            err = self.fail.pop(name)
            raise OSError(err, os.strerror(err)) if err else OSError("no errno")

    def add_vif(self, family: int, vif: int, ifindex: int, threshold: int) -> None:
        self._call("add_vif", family, vif, ifindex, threshold)
        super().add_vif(family, vif, ifindex, threshold)

    def del_vif(self, family: int, vif: int) -> None:
        self._call("del_vif", family, vif)
        super().del_vif(family, vif)

    def add_mfc(self, family: int, source: bytes, group: bytes, iif: int,
                oifs: tuple[tuple[int, int], ...]) -> None:
        self._call("add_mfc", family, source, group, iif, oifs)
        super().add_mfc(family, source, group, iif, oifs)

    def del_mfc(self, family: int, source: bytes, group: bytes) -> None:
        self._call("del_mfc", family, source, group)
        super().del_mfc(family, source, group)

    def sg_count(self, family: int, source: bytes, group: bytes) -> tuple[int, int, int]:
        self._call("sg_count", family, source, group)
        return super().sg_count(family, source, group)

    def send_mrdisc(self, ifindex: int, kind: int, interval: int) -> None:
        self._call("send_mrdisc", ifindex, kind, interval)
        super().send_mrdisc(ifindex, kind, interval)


def request(op: str, family: int = 4, **changes: Any) -> dict[str, Any]:
    """valid(op, family) with changes, parsed."""
    return ops.parse(with_(valid(op, family), **changes))


def reply_errno(reply: dict[str, Any], r: dict[str, Any]) -> int | None:
    """None for a success, else its errno; either way a reply as the schema says
    (the controller's parse_reply takes it)."""
    assert reply["id"] == r["id"] and type(reply["ok"]) is bool
    parse_reply(typed(r), reply)
    if reply["ok"]:
        return None
    assert reply.keys() == {"id", "ok", "errno", "error"}
    assert type(reply["errno"]) is int and reply["errno"] > 0
    assert type(reply["error"]) is str and reply["error"]
    return reply["errno"]


def attempt(k: Kernel, state: ops.State, op: str, family: int = 4, **changes: Any) -> int | None:
    """Execute one request: None if it succeeded, else its errno."""
    r = request(op, family, **changes)
    return reply_errno(ops.execute(k, state, r), r)


def refusal(k: Kernel, state: ops.State, op: str, family: int = 4,
            **changes: Any) -> int | None:
    """Like attempt(); an error must be the state's: the kernel is not asked."""
    calls = len(k.calls)
    err = attempt(k, state, op, family, **changes)
    if err is not None:
        assert len(k.calls) == calls, f"{op} refused after a kernel call"
    return err


def add_vif(k: Kernel, state: ops.State, vif: int, ifindex: int, family: int = 4) -> int | None:
    return refusal(k, state, "add_vif", family, vif=vif, ifindex=ifindex)


def add_mfc(k: Kernel, state: ops.State, iif: int, oifs: list[list[int]] | None = None,
            family: int = 4, source: bytes | None = None) -> int | None:
    changes: dict[str, Any] = {"iif": iif, "oifs": oifs or []}
    if source is not None:
        changes["source"] = source
    return refusal(k, state, "add_mfc", family, **changes)


def snapshot(state: ops.State) -> tuple[Any, ...]:
    return (copy.deepcopy(state.vifs), set(state.mfc), dict(state.mrdisc_tokens),
            state.generation, state.templates, copy.deepcopy(state.by_vif), list(state.used),
            list(state.limits), state.max_mfc)


def test_refusal_carries_its_errno_and_text() -> None:
    exc = ops.Refusal(errno.ENODEV, "vif 3 was not added")
    assert (exc.errno, exc.text, str(exc)) == (errno.ENODEV, "vif 3 was not added",
                                               "vif 3 was not added")


def test_fresh_state() -> None:
    state = ops.State()
    assert state.vifs == {4: {}, 6: {}}
    assert state.mfc == set()
    assert state.mrdisc_tokens == {}
    assert state.max_mfc == limits.DEFAULT_MAX_MFC
    assert (state.generation, state.templates, state.by_vif, state.used, state.limits) == (
        0, (), {}, [], [])
    other = ops.State()
    other.vifs[4][0] = 1
    other.mfc.add(V4_SRC + V4_GRP)
    assert state.vifs == {4: {}, 6: {}} and state.mfc == set()  # no shared default
    assert ops.State(7).max_mfc == 7


def test_state_vif() -> None:
    state = ops.State()
    state.vifs[4][3] = 9
    assert state.vif(4, 3) == 9
    for family, vif in ((4, 0), (6, 3)):
        with pytest.raises(ops.Refusal) as exc:
            state.vif(family, vif)
        assert exc.value.errno == errno.ENODEV and f"vif {vif}" in exc.value.text


@pytest.mark.parametrize("family", [4, 6])
def test_add_vif_rules(family: int) -> None:
    k, state = Kernel(), ops.State()
    assert add_vif(k, state, 0, 2, family) is None
    assert k.calls == [("add_vif", family, 0, 2, 1)]
    assert state.vifs[family] == {0: 2} and k.vifs[family] == {0: 2}
    assert add_vif(k, state, 0, 3, family) == errno.EADDRINUSE  # slot in use
    assert add_vif(k, state, 1, 2, family) == errno.EEXIST  # ifindex has a vif
    assert add_vif(k, state, 0, 2, family) == errno.EADDRINUSE
    assert state.vifs[family] == {0: 2}
    assert add_vif(k, state, 1, 3, family) is None
    # the other family's table is separate
    other = 6 if family == 4 else 4
    assert add_vif(k, state, 0, 2, other) is None
    assert state.vifs == {family: {0: 2, 1: 3}, other: {0: 2}}


def test_add_vif_kernel_error_changes_nothing() -> None:
    k, state = Kernel(), ops.State()
    k.fail["add_vif"] = errno.EINVAL
    r = request("add_vif")
    assert ops.execute(k, state, r) == {"id": 3, "ok": False, "errno": errno.EINVAL,
                                        "error": os.strerror(errno.EINVAL)}
    assert state.vifs == {4: {}, 6: {}}
    # the slot and the ifindex are still free
    assert add_vif(k, state, 0, 2) is None


def test_an_oserror_without_errno_is_eio() -> None:
    k, state = Kernel(), ops.State()
    k.fail["add_vif"] = None
    reply = ops.execute(k, state, request("add_vif"))
    assert (reply["ok"], reply["errno"], reply["error"]) == (False, errno.EIO,
                                                             os.strerror(errno.EIO))


@pytest.mark.parametrize("family", [4, 6])
def test_del_vif_rules(family: int) -> None:
    k, state = Kernel(), ops.State()
    assert refusal(k, state, "del_vif", family) == errno.ENODEV
    assert add_vif(k, state, 0, 2, family) is None
    other = 6 if family == 4 else 4
    assert refusal(k, state, "del_vif", other) == errno.ENODEV
    assert refusal(k, state, "del_vif", family, vif=1) == errno.ENODEV
    assert refusal(k, state, "del_vif", family) is None
    assert k.calls[-1] == ("del_vif", family, 0)
    assert state.vifs[family] == {} and k.vifs[family] == {}
    assert refusal(k, state, "del_vif", family) == errno.ENODEV
    # the slot and the ifindex are free again
    assert add_vif(k, state, 0, 2, family) is None


def test_a_vif_the_kernel_has_but_we_did_not_add_is_unknown() -> None:
    k, state = Kernel(), ops.State()
    k.vifs[4][0] = 2  # someone else's
    assert refusal(k, state, "del_vif") == errno.ENODEV
    assert add_mfc(k, state, 0) == errno.ENODEV
    assert refusal(k, state, "mrdisc") == errno.ENODEV
    assert k.vifs[4] == {0: 2}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("err", [errno.ENOENT, errno.EADDRNOTAVAIL])
def test_del_vif_of_a_vif_gone_from_the_kernel_forgets_it(family: int, err: int) -> None:
    k, state = Kernel(), ops.State()
    assert add_vif(k, state, 0, 2, family) is None
    k.unregister(2)  # the device went, and its VIF with it
    k.fail["del_vif"] = err
    assert attempt(k, state, "del_vif", family) == err  # the kernel's answer, passed on
    assert state.vifs[family] == {}  # but forgotten: the slot is not taken forever
    assert add_vif(k, state, 0, 2, family) is None


def test_del_vif_of_a_vanished_device_with_the_fake_kernel() -> None:
    k, state = Kernel(), ops.State()
    assert add_vif(k, state, 0, 2) is None
    k.unregister(2)
    assert attempt(k, state, "del_vif") == errno.EADDRNOTAVAIL
    assert state.vifs[4] == {}


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EPERM, errno.ENOBUFS])
def test_del_vif_other_errors_keep_the_vif(err: int) -> None:
    k, state = Kernel(), ops.State()
    assert add_vif(k, state, 0, 2) is None
    k.fail["del_vif"] = err
    assert attempt(k, state, "del_vif") == err
    assert state.vifs[4] == {0: 2} and k.vifs[4] == {0: 2}


@pytest.mark.parametrize("family", [4, 6])
def test_add_mfc_needs_every_vif(family: int) -> None:
    k, state = Kernel(), ops.State()
    assert add_mfc(k, state, 0, [], family) == errno.ENODEV
    assert add_vif(k, state, 0, 10, family) is None
    assert add_mfc(k, state, 0, [], family) is None
    assert add_mfc(k, state, 0, [[1, 1]], family) == errno.ENODEV
    assert add_mfc(k, state, 1, [], family) == errno.ENODEV
    assert add_vif(k, state, 1, 11, family) is None
    assert add_mfc(k, state, 0, [[1, 1]], family) is None
    assert add_mfc(k, state, 1, [[0, 1]], family) is None
    assert add_mfc(k, state, 0, [[1, 1], [2, 1]], family) == errno.ENODEV
    # vifs of the other family do not count
    other = 6 if family == 4 else 4
    assert add_mfc(k, state, 0, [[1, 1]], other) == errno.ENODEV
    assert refusal(k, state, "del_vif", family, vif=1) is None
    assert add_mfc(k, state, 0, [[1, 1]], family) == errno.ENODEV
    src, grp = (V4_SRC, V4_GRP) if family == 4 else (V6_SRC, V6_GRP)
    # what went in last: the kernel has it, with its oifs sorted
    assert k.mfc == {(family, src, grp): (1, ((0, 1),))}
    assert state.mfc == {src + grp}


def test_add_mfc_hands_the_kernel_sorted_oifs() -> None:
    k, state = Kernel(), ops.State()
    for vif in range(4):
        assert add_vif(k, state, vif, 10 + vif) is None
    assert add_mfc(k, state, 0, [[3, 7], [0, 1], [2, 2]]) is None
    assert k.mfc[(4, V4_SRC, V4_GRP)] == (0, ((0, 1), (2, 2), (3, 7)))


def test_add_mfc_kernel_error_is_not_recorded() -> None:
    k, state = Kernel(), ops.State()
    assert add_vif(k, state, 0, 10) is None
    k.refuse.add((4, V4_SRC, V4_GRP))
    assert attempt(k, state, "add_mfc", iif=0, oifs=[]) == errno.ENOMEM
    assert state.mfc == set() and k.mfc == {}


def test_mfc_cap() -> None:
    k, state = Kernel(), ops.State(max_mfc=2)
    assert add_vif(k, state, 0, 10) is None
    first, second, third = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
    assert add_mfc(k, state, 0, source=first) is None
    assert add_mfc(k, state, 0, source=second) is None
    assert len(state.mfc) == 2
    assert add_mfc(k, state, 0, source=third) == errno.ENOSPC
    assert (4, third, V4_GRP) not in k.mfc
    # replacing an installed entry is not a new entry
    assert add_mfc(k, state, 0, source=first) is None
    assert add_vif(k, state, 1, 11) is None
    assert add_mfc(k, state, 0, [[1, 1]], source=first) is None
    assert k.mfc[(4, first, V4_GRP)] == (0, ((1, 1),))
    # an entry of the other family is another entry
    assert add_vif(k, state, 0, 10, 6) is None
    assert add_mfc(k, state, 0, [], 6) == errno.ENOSPC
    # del_mfc and sg_count are never refused: they reach the kernel
    assert refusal(k, state, "sg_count", source=third) is None
    calls = len(k.calls)
    assert attempt(k, state, "del_mfc", source=third) == errno.ENOENT  # the kernel's
    assert k.calls[calls:] == [("del_mfc", 4, third, V4_GRP)]
    assert refusal(k, state, "del_mfc", source=first) is None
    assert state.mfc == {second + V4_GRP}
    assert add_mfc(k, state, 0, source=third) is None
    assert set(k.mfc) == {(4, second, V4_GRP), (4, third, V4_GRP)}
    assert state.mfc == {second + V4_GRP, third + V4_GRP}


def test_mfc_cap_zero() -> None:
    k, state = Kernel(), ops.State(max_mfc=0)
    assert add_vif(k, state, 0, 10) is None
    assert add_mfc(k, state, 0) == errno.ENOSPC
    assert k.mfc == {}


def test_install_is_add_mfcs_rule_set() -> None:
    k, state = Kernel(), ops.State(max_mfc=1)
    with pytest.raises(ops.Refusal) as exc:
        ops.install(k, state, 4, V4_SRC, V4_GRP, 0, ())
    assert exc.value.errno == errno.ENODEV
    state.vifs[4].update({0: 10, 1: 11})
    with pytest.raises(ops.Refusal) as exc:
        ops.install(k, state, 4, V4_SRC, V4_GRP, 0, ((2, 1),))
    assert exc.value.errno == errno.ENODEV
    assert ops.install(k, state, 4, V4_SRC, V4_GRP, 0, ((1, 1),)) == {}
    assert k.mfc == {(4, V4_SRC, V4_GRP): (0, ((1, 1),))} and len(state.mfc) == 1
    with pytest.raises(ops.Refusal) as exc:
        ops.install(k, state, 4, bytes([10, 0, 0, 2]), V4_GRP, 0, ())
    assert exc.value.errno == errno.ENOSPC
    k.refuse.add((4, bytes([10, 0, 0, 2]), V4_GRP))
    state.max_mfc = 2
    with pytest.raises(OSError):  # the kernel's error is the caller's to handle
        ops.install(k, state, 4, bytes([10, 0, 0, 2]), V4_GRP, 0, ())
    assert len(state.mfc) == 1


@pytest.mark.parametrize("err", [errno.ENOENT, errno.EADDRNOTAVAIL])
def test_del_mfc_of_an_entry_gone_from_the_kernel_forgets_it(err: int) -> None:
    k, state = Kernel(), ops.State(max_mfc=1)
    assert add_vif(k, state, 0, 10) is None
    assert add_mfc(k, state, 0) is None
    k.mfc.clear()  # gone from the kernel (its VIF went)
    k.fail["del_mfc"] = err
    assert attempt(k, state, "del_mfc") == err
    assert state.mfc == set()  # and it no longer counts against the cap
    assert add_mfc(k, state, 0, source=bytes([10, 0, 0, 9])) is None


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EPERM])
def test_del_mfc_other_errors_keep_the_entry(err: int) -> None:
    k, state = Kernel(), ops.State()
    assert add_vif(k, state, 0, 10) is None
    assert add_mfc(k, state, 0) is None
    k.fail["del_mfc"] = err
    assert attempt(k, state, "del_mfc") == err
    assert state.mfc == {V4_SRC + V4_GRP} and set(k.mfc) == {(4, V4_SRC, V4_GRP)}


def test_execute_bookkeeping() -> None:
    k, state = Kernel(), ops.State()
    fresh = snapshot(state)
    assert refusal(k, state, "hello") is None
    assert refusal(k, state, "modules") is None
    assert snapshot(state) == fresh and k.calls == []
    assert add_vif(k, state, 3, 7, 4) is None
    assert add_vif(k, state, 5, 7, 6) is None  # one ifindex, one VIF per family
    assert state.vifs == {4: {3: 7}, 6: {5: 7}}
    assert add_mfc(k, state, 3, [], 4) is None
    assert add_mfc(k, state, 3, [], 4) is None  # idempotent
    assert add_mfc(k, state, 5, [], 6) is None
    assert state.mfc == {V4_SRC + V4_GRP, V6_SRC + V6_GRP}
    k.counts[(4, V4_SRC, V4_GRP)] = (10, 1000, 2)
    r = request("sg_count")
    assert ops.execute(k, state, r) == {"id": 7, "ok": True, "packets": 10, "bytes": 1000,
                                        "wrong_if": 2}
    assert reply_errno(ops.execute(k, state, r), r) is None
    assert len(state.mfc) == 2
    assert attempt(k, state, "del_mfc") is None
    assert attempt(k, state, "del_mfc") == errno.ENOENT  # absent: the kernel says so
    assert state.mfc == {V6_SRC + V6_GRP}
    assert attempt(k, state, "del_vif", 6, vif=5) is None
    assert state.vifs == {4: {3: 7}, 6: {}}
    assert state.mfc == {s + g for _, s, g in k.mfc}


def test_hello_modules_are_always_allowed() -> None:
    k, state = Kernel(), ops.State(max_mfc=0)
    assert attempt(k, state, "hello") is None
    assert attempt(k, state, "modules") is None
    assert k.calls == []
    # and a delete still reaches the kernel
    assert attempt(k, state, "del_mfc") == errno.ENOENT
    assert k.calls == [("del_mfc", 4, V4_SRC, V4_GRP)]


def test_hello_reply() -> None:
    about = {"table": 5, "pid": 1234, "sandbox": "landlock ABI 4"}
    state = ops.State(max_mfc=77, about=about)
    reply = ops.execute(Kernel(), state, request("hello"))
    assert reply == {"id": 1, "ok": True, "version": PROTOCOL_VERSION,
                     "maxvifs": limits.MAXVIFS, "max_mfc": 77, **about}
    got = parse_reply(Hello(1), reply)
    assert (got.version, got.max_mfc, got.table, got.pid, got.sandbox) == (
        PROTOCOL_VERSION, 77, 5, 1234, "landlock ABI 4")
    # without its main()'s facts: this process, no sandbox
    default = ops.execute(Kernel(), ops.State(), request("hello"))
    assert default["pid"] == os.getpid() and default["sandbox"].startswith("none")
    assert parse_reply(Hello(1), default).max_mfc == limits.DEFAULT_MAX_MFC


def test_modules_reply() -> None:
    reply = ops.execute(Kernel(), ops.State(), request("modules"))
    assert reply.keys() == {"id", "ok", "modules"}
    assert reply["modules"] == sorted(reply["modules"]) and "smcroute.policy.ops" in \
        reply["modules"]
    assert parse_reply(Modules(2), codec.decode(codec.encode(reply))).modules == \
        tuple(reply["modules"])


def test_every_op_is_its_one_function() -> None:
    for op in ALL_OPS:
        assert ops.OPS[op][1] is getattr(ops, op)


# -- property: whatever parse accepts satisfies every invariant ---------------------


def independent_invariants(msg: Any, r: Any) -> None:
    """Re-check an accepted request from scratch, without the policy module."""
    assert type(msg) is dict and type(r) is dict
    op = msg["op"]
    assert type(op) is str and op in KEYS
    assert set(msg) == KEYS[op] == set(r)
    assert all(type(k) is str for k in msg)
    assert r["op"] == op
    assert type(msg["id"]) is int and 0 <= msg["id"] <= MAX_ID and r["id"] == msg["id"]
    if op in ("hello", "modules"):
        return
    if op == "mrdisc":
        assert type(msg["vif"]) is int and 0 <= msg["vif"] <= 31 and r["vif"] == msg["vif"]
        assert type(msg["interval"]) is int and 4 <= msg["interval"] <= 180
        assert r["interval"] == msg["interval"]
        assert type(msg["terminate"]) is bool and r["terminate"] is msg["terminate"]
        return
    if op in ("templates", "allow"):
        assert type(msg["generation"]) is int and 0 <= msg["generation"] <= MAX_ID
        assert r["generation"] == msg["generation"]
    if op == "allow":
        limits_ = msg["limits"]
        assert type(limits_) is list and len(limits_) <= 64
        assert all(type(n) is int and 0 <= n < 2**31 for n in limits_)
        assert r["limits"] == tuple(limits_)
        return
    if op == "templates":
        assert type(msg["templates"]) is list and len(msg["templates"]) <= 64
        assert type(r["templates"]) is tuple
        for item, t in zip(msg["templates"], r["templates"], strict=True):
            template_invariants(item, t)
        return
    family = msg["family"]
    assert type(family) is int and family in (4, 6) and r["family"] == family
    if op in ("add_vif", "del_vif"):
        assert type(msg["vif"]) is int and 0 <= msg["vif"] <= 31 and r["vif"] == msg["vif"]
    if op == "add_vif":
        assert type(msg["ifindex"]) is int
        assert 1 <= msg["ifindex"] <= (2**31 - 1 if family == 4 else 2**16 - 1)
        assert type(msg["threshold"]) is int and 1 <= msg["threshold"] <= 255
        assert (r["ifindex"], r["threshold"]) == (msg["ifindex"], msg["threshold"])
    if op in ADDR_OPS:
        size = 4 if family == 4 else 16
        source, group = msg["source"], msg["group"]
        assert type(source) is bytes and len(source) == size
        assert type(group) is bytes and len(group) == size
        assert ipaddress.ip_address(group).is_multicast
        assert not ipaddress.ip_address(source).is_multicast
        assert source != b"\xff\xff\xff\xff"
        assert (r["source"], r["group"]) == (source, group)
    if op == "add_mfc":
        iif, oifs = msg["iif"], msg["oifs"]
        assert type(iif) is int and 0 <= iif <= 31 and r["iif"] == iif
        oifs_invariants(oifs, r["oifs"])


def oifs_invariants(oifs: Any, parsed: Any) -> None:
    """(The inbound VIF may be among them: SMCRoute installs that.)"""
    assert type(oifs) is list and len(oifs) <= 32
    vifs = []
    for pair in oifs:
        assert type(pair) is list and len(pair) == 2
        vif, ttl = pair
        assert type(vif) is int and 0 <= vif <= 31
        assert type(ttl) is int and 1 <= ttl <= 255
        vifs.append(vif)
    assert len(set(vifs)) == len(vifs)
    assert parsed == tuple(sorted((v, t) for v, t in oifs))
    assert all(type(p) is tuple for p in parsed)


def template_invariants(item: Any, t: Any) -> None:
    assert type(item) is list and len(item) == 7
    assert type(t) is tuple and len(t) == 7
    family, iif, source, source_len, group, group_len, oifs = item
    assert type(family) is int and family in (4, 6) and t[0] == family
    assert type(iif) is int and 0 <= iif <= 31 and t[1] == iif
    size = 4 if family == 4 else 16
    for addr_, length in ((source, source_len), (group, group_len)):
        assert type(addr_) is bytes and len(addr_) == size
        assert type(length) is int and 0 <= length <= 8 * size
        net = ipaddress.ip_network((addr_, length))  # raises if host bits are set
        assert net.prefixlen == length
    if source_len:
        assert not ipaddress.ip_address(source).is_multicast and source != b"\xff" * 4
    else:
        assert source == bytes(size)
    assert ipaddress.ip_network((group, group_len)).subnet_of(
        ipaddress.ip_network("224.0.0.0/4" if family == 4 else "ff00::/8"))
    assert t[2:6] == (*prefix(source, source_len), *prefix(group, group_len))
    oifs_invariants(oifs, t[6])


def not_multicast(size: int) -> st.SearchStrategy[bytes]:
    def ok(b: bytes) -> bool:
        return not ipaddress.ip_address(b).is_multicast and b != b"\xff" * 4
    return st.binary(min_size=size, max_size=size).filter(ok)


def multicast(size: int) -> st.SearchStrategy[bytes]:
    if size == 4:
        return st.tuples(st.integers(224, 239), st.binary(min_size=3, max_size=3)).map(
            lambda t: bytes([t[0]]) + t[1])
    return st.binary(min_size=15, max_size=15).map(lambda b: b"\xff" + b)


def network(address: bytes, length: int) -> bytes:
    bits = 8 * len(address)
    value = int.from_bytes(address, "big") & (((1 << length) - 1) << (bits - length))
    return value.to_bytes(len(address), "big")


def oif_lists(draw: st.DrawFn) -> list[list[int]]:
    """Any VIFs, the inbound one included (SMCRoute installs that too)."""
    vifs = draw(st.lists(st.integers(0, 31), unique=True, max_size=32))
    return [[v, draw(st.integers(1, 255))] for v in vifs]


@st.composite
def templates(draw: st.DrawFn) -> list[Any]:
    family = draw(st.sampled_from([4, 6]))
    size = 4 if family == 4 else 16
    glen = draw(st.integers(4 if family == 4 else 8, 8 * size))
    slen = draw(st.integers(0, 8 * size))
    source = network(draw(not_multicast(size)), slen) if slen else bytes(size)
    if slen and (ipaddress.ip_address(source).is_multicast or source == b"\xff" * 4):
        slen, source = 0, bytes(size)
    iif = draw(st.integers(0, 31))
    return [family, iif, source, slen, network(draw(multicast(size)), glen), glen,
            oif_lists(draw)]


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(ALL_OPS))
    msg: dict[str, Any] = {"op": op, "id": draw(st.integers(0, MAX_ID))}
    if op in ("hello", "modules"):
        return msg
    if op == "mrdisc":
        msg.update(vif=draw(st.integers(0, 31)), interval=draw(st.integers(4, 180)),
                   terminate=draw(st.booleans()))
        return msg
    if op == "allow":
        msg.update(generation=draw(st.integers(0, MAX_ID)),
                   limits=draw(st.lists(st.integers(0, 2**31 - 1), max_size=64)))
        return msg
    if op == "templates":
        msg.update(generation=draw(st.integers(0, MAX_ID)),
                   templates=draw(st.lists(templates(), max_size=5)))
        return msg
    family = draw(st.sampled_from([4, 6]))
    msg["family"] = family
    size = 4 if family == 4 else 16
    if op in ("add_vif", "del_vif"):
        msg["vif"] = draw(st.integers(0, 31))
    if op == "add_vif":
        msg["ifindex"] = draw(st.integers(1, limits.MAX_IFINDEX[family]))
        msg["threshold"] = draw(st.integers(1, 255))
    if op in ADDR_OPS:
        msg["source"] = draw(not_multicast(size))
        msg["group"] = draw(multicast(size))
    if op == "add_mfc":
        msg["iif"] = draw(st.integers(0, 31))
        msg["oifs"] = oif_lists(draw)
    return msg


INTERESTING = st.sampled_from([
    True, False, None, 0, 1, -1, 4, 6, 31, 32, 255, 256, 2**16 - 1, 2**16, 2**31 - 1, 2**31,
    2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1.0, 4.0, float("nan"), "", "4", "hello", b"",
    b"\x00" * 4, b"\xe1\x01\x02\x03", b"\x0a\x00\x00\x01", b"\xff" * 4, b"\xff" * 16,
    b"\x00" * 16, [], [[1, 1]], [[0, 1]], [[1, 1], [1, 1]], [[True, 1]], {}, [1, 1],
])

msgpack_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                   | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=20))
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=20,
)
any_value = INTERESTING | msgpack_values


@st.composite
def mutated_requests(draw: st.DrawFn) -> Any:
    msg = draw(valid_requests())
    action = draw(st.sampled_from(["replace", "delete", "add", "op", "oif", "none"]))
    keys = sorted(msg)
    if action == "replace":
        msg[draw(st.sampled_from(keys))] = draw(any_value)
    elif action == "delete":
        del msg[draw(st.sampled_from(keys))]
    elif action == "add":
        msg[draw(st.text(max_size=8) | st.sampled_from(sorted(set().union(*KEYS.values()))))] = (
            draw(any_value))
    elif action == "op":
        msg["op"] = draw(st.sampled_from(ALL_OPS) | st.text(max_size=10))
    elif action == "oif" and msg["op"] == "templates" and msg["templates"]:
        item = draw(st.sampled_from(msg["templates"]))
        item[draw(st.integers(0, 6))] = draw(any_value)
    elif action == "oif" and msg["op"] == "allow" and msg["limits"]:
        msg["limits"][draw(st.integers(0, len(msg["limits"]) - 1))] = draw(any_value)
    elif action == "oif" and msg["op"] == "add_mfc":
        oifs = msg["oifs"]
        if oifs:
            i = draw(st.integers(0, len(oifs) - 1))
            j = draw(st.integers(0, 1))
            oifs[i][j] = draw(any_value)
        else:
            oifs.append([draw(any_value), draw(any_value)])
    return msg


def accepts_or_violates(msg: Any) -> None:
    try:
        r = ops.parse(msg)
    except Violation as exc:
        assert str(exc)
        return
    independent_invariants(msg, r)
    # the controller's typed request of the same values goes over the wire as is
    wire = to_wire(typed(r))
    assert ops.parse(wire) == r
    assert ops.parse(codec.decode(codec.encode(wire))) == r


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_requests())
def test_property_valid_requests_are_accepted(msg: dict[str, Any]) -> None:
    r = ops.parse(msg)
    independent_invariants(msg, r)
    assert ops.parse(to_wire(typed(r))) == r
    assert ops.parse(codec.decode(codec.encode(msg))) == r


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_requests())
def test_property_mutated_requests(msg: Any) -> None:
    accepts_or_violates(msg)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values | st.dictionaries(st.sampled_from(["op", "id", "family", "vif", "ifindex",
                                                          "threshold", "source", "group", "iif",
                                                          "oifs", "x"]),
                                         any_value, max_size=8))
def test_property_random_objects(msg: Any) -> None:
    accepts_or_violates(msg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_requests(), min_size=0, max_size=4) | msgpack_values)
def test_property_batches(batch: Any) -> None:
    try:
        reqs = ops.parse_batch(batch)
    except Violation:
        return
    assert type(batch) is list and 1 <= len(batch) <= limits.MAX_BATCH
    assert sum(msg["op"] == "modules" for msg in batch) <= 1
    for msg, r in zip(batch, reqs, strict=True):
        independent_invariants(msg, r)


# -- property: the state follows the kernel, whatever the requests -------------------

SMALL_SOURCES = {4: [bytes([10, 0, 0, i]) for i in range(1, 4)],
                 6: [V6_SRC[:-1] + bytes([i]) for i in range(1, 4)]}
SMALL_GROUPS = {4: [V4_GRP, bytes([225, 1, 2, 4])], 6: [V6_GRP]}


@st.composite
def small_world_steps(draw: st.DrawFn) -> tuple[str, Any]:
    """A request among few VIFs, ifindexes and (S,G)s, so they collide; or a
    device going away; or the kernel failing its next call of an op."""
    kind = draw(st.sampled_from(["req"] * 6 + ["gone", "fail"]))
    if kind == "gone":
        return kind, draw(st.integers(1, 4))
    if kind == "fail":
        return kind, (draw(st.sampled_from(["add_vif", "del_vif", "add_mfc", "del_mfc",
                                            "sg_count", "send_mrdisc"])),
                      draw(st.sampled_from([errno.EINVAL, errno.EPERM, errno.ENOBUFS, None])))
    op = draw(st.sampled_from(["add_vif", "add_vif", "del_vif", "add_mfc", "add_mfc",
                               "del_mfc", "sg_count", "mrdisc", "hello"]))
    family = draw(st.sampled_from([4, 6]))
    msg = valid(op, family)
    if "vif" in msg:
        msg["vif"] = draw(st.integers(0, 3))
    if "ifindex" in msg:
        msg["ifindex"] = draw(st.integers(1, 4))
    if "source" in msg:
        msg["source"] = draw(st.sampled_from(SMALL_SOURCES[family]))
        msg["group"] = draw(st.sampled_from(SMALL_GROUPS[family]))
    if op == "add_mfc":
        msg["iif"] = draw(st.integers(0, 3))
        vifs = draw(st.lists(st.integers(0, 3), unique=True, max_size=3))
        msg["oifs"] = [[v, 1] for v in vifs]
    return kind, msg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4), st.lists(small_world_steps(), max_size=40))
def test_property_state_follows_the_kernel(max_mfc: int, steps: list[tuple[str, Any]]) -> None:
    k, state = Kernel(), ops.State(max_mfc)
    gone = False
    for kind, what in steps:
        if kind == "gone":
            k.unregister(what)
            gone = True
            continue
        if kind == "fail":
            k.fail[what[0]] = what[1]
            continue
        r = ops.parse(what)
        before = snapshot(state)
        calls = len(k.calls)
        err = reply_errno(ops.execute(k, state, r), r)
        if err is not None and len(k.calls) == calls:  # refused: nothing changed
            # (but the mrdisc tokens, which a refusal updates)
            assert snapshot(state)[:2] + snapshot(state)[3:] == before[:2] + before[3:]
        # the state holds what the kernel holds
        assert state.mfc == {s + g for _, s, g in k.mfc}
        assert len(state.mfc) <= state.max_mfc
        for family in (4, 6):
            vifs, kvifs = state.vifs[family], k.vifs[family]
            assert all(0 <= v < limits.MAXVIFS for v in vifs)
            assert len(set(vifs.values())) == len(vifs)  # one VIF per ifindex
            assert kvifs.items() <= vifs.items()
            if not gone:
                assert vifs == kvifs


# -- mrdisc ------------------------------------------------------------------


def test_mrdisc_parses() -> None:
    assert ops.parse(valid("mrdisc")) == {"op": "mrdisc", "id": 8, "vif": 0, "interval": 20,
                                          "terminate": False}
    assert ops.parse(with_(valid("mrdisc"), terminate=True))["terminate"] is True


@pytest.mark.parametrize("changes", [
    {"vif": 32}, {"vif": -1}, {"vif": True}, {"interval": 3}, {"interval": 181},
    {"interval": 20.0}, {"terminate": 1}, {"terminate": 0}, {"terminate": None},
    {"terminate": "false"},
])
def test_mrdisc_shape_is_checked(changes: dict[str, Any]) -> None:
    with pytest.raises(Violation):
        ops.parse(with_(valid("mrdisc"), **changes))


def test_mrdisc_needs_an_ipv4_vif_the_helper_added() -> None:
    k, state = Kernel(), ops.State()
    assert refusal(k, state, "mrdisc") == errno.ENODEV
    state.vifs[6][0] = 2  # a MIF is not enough: mrdisc is IPv4
    assert refusal(k, state, "mrdisc") == errno.ENODEV
    assert k.mrdisc == [] and state.mrdisc_tokens == {}
    state.vifs[4][0] = 2
    assert refusal(k, state, "mrdisc") is None
    assert refusal(k, state, "mrdisc", terminate=True, interval=4) is None
    # sent out of the VIF's ifindex
    assert k.mrdisc == [(2, False, 20), (2, True, 4)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_mrdisc_token_bucket() -> None:
    clock, k = Clock(), Kernel()
    state = ops.State(clock=clock)
    state.vifs[4].update({0: 2, 1: 3})
    assert limits.MRDISC_BURST == 8 and limits.MRDISC_RATE == 2.0
    for _ in range(limits.MRDISC_BURST):  # a burst
        assert refusal(k, state, "mrdisc") is None
    assert refusal(k, state, "mrdisc") == errno.EAGAIN
    assert len(k.mrdisc) == limits.MRDISC_BURST  # the refused one was not sent
    # another VIF has its own bucket
    assert refusal(k, state, "mrdisc", vif=1) is None
    # then MRDISC_RATE a second; a refused attempt keeps the credit earned
    clock.now += 0.25
    assert refusal(k, state, "mrdisc") == errno.EAGAIN
    clock.now += 0.25
    assert refusal(k, state, "mrdisc") is None
    assert refusal(k, state, "mrdisc") == errno.EAGAIN
    clock.now += 1.0
    assert refusal(k, state, "mrdisc") is None
    assert refusal(k, state, "mrdisc") is None
    assert refusal(k, state, "mrdisc") == errno.EAGAIN
    # a long pause refills the burst, no more
    clock.now += 3600
    sent = 0
    while refusal(k, state, "mrdisc") is None:
        sent += 1
    assert sent == limits.MRDISC_BURST
    # terminations count too
    clock.now += 3600
    for _ in range(limits.MRDISC_BURST):
        assert refusal(k, state, "mrdisc", terminate=True) is None
    assert refusal(k, state, "mrdisc", terminate=True) == errno.EAGAIN


def test_mrdisc_error_reply_text() -> None:
    clock, k = Clock(), Kernel()
    state = ops.State(clock=clock)
    state.vifs[4][5] = 2
    r = request("mrdisc", vif=5)
    for _ in range(limits.MRDISC_BURST):
        ops.execute(k, state, r)
    assert ops.execute(k, state, r) == {"id": 8, "ok": False, "errno": errno.EAGAIN,
                                        "error": "mrdisc rate limit of vif 5"}


@pytest.mark.parametrize("family", [4, 6])
def test_star_g_entries_are_add_mfc_with_a_zero_source_under_the_same_checks(
        family: int) -> None:
    """--kernel-star-g's entries: a zero source (0.0.0.0, ::) with a multicast
    group, its inbound VIF among its TTLs; VIFs we added and the MFC cap as
    for any entry. A (*,*) entry cannot be asked for: the group is checked."""
    zero = bytes(limits.ADDR_LEN[family])
    k, state = Kernel(), ops.State(max_mfc=1)
    assert add_vif(k, state, 0, 2, family) is None
    assert add_vif(k, state, 1, 3, family) is None
    assert add_mfc(k, state, 0, [[0, 1], [1, 1]], family, zero) is None
    assert k.mfc[(family, zero, valid("add_mfc", family)["group"])] == (0, ((0, 1), (1, 1)))
    assert add_mfc(k, state, 0, [[0, 1], [2, 1]], family, zero) == errno.ENODEV
    other = with_(valid("add_mfc", family), source=zero, group=V4_GRP[:3] + b"\x09"
                  if family == 4 else V6_GRP[:15] + b"\x09", oifs=[[0, 1]])
    assert reply_errno(ops.execute(k, state, other), other) == errno.ENOSPC
    with pytest.raises(ops.Violation):
        ops.parse(with_(valid("add_mfc", family), source=zero, group=zero))


def test_mfc_set_is_rebuilt_once_a_flood_has_gone() -> None:
    """The helper's set of entries gives its peak's table back (issue 17)."""
    k, state = Kernel(), ops.State(max_mfc=10 * ops.COMPACT_AT)
    assert add_vif(k, state, 0, 10) is None
    sources = [(0x0A000000 + i).to_bytes(4, "big") for i in range(ops.COMPACT_AT)]
    for s in sources:
        assert add_mfc(k, state, 0, source=s) is None
    assert state.mfc_peak == ops.COMPACT_AT
    big = state.mfc
    for s in sources[: ops.COMPACT_AT * 3 // 4 - 1]:
        assert refusal(k, state, "del_mfc", source=s) is None
    assert state.mfc is big  # most entries still there: left alone
    assert refusal(k, state, "del_mfc", source=sources[ops.COMPACT_AT * 3 // 4 - 1]) is None
    assert state.mfc is not big and state.mfc_peak == len(state.mfc) == ops.COMPACT_AT // 4
    assert state.mfc == {s + V4_GRP for s in sources[ops.COMPACT_AT * 3 // 4:]}
    assert sys.getsizeof(state.mfc) < sys.getsizeof(big)
