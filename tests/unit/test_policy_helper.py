"""smcroute.policy.helper: the helper's trust boundary (shape rules and state rules)."""

from __future__ import annotations

import copy
import errno
import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smcroute.ipc import codec
from smcroute.ipc.helper import (
    FIELDS,
    AddMfc,
    AddVif,
    DelMfc,
    DelVif,
    Hello,
    Modules,
    Mrdisc,
    SgCount,
    to_wire,
)
from smcroute.policy import limits
from smcroute.policy.helper import (
    HelperState,
    Refusal,
    Violation,
    check,
    is_multicast,
    parse_batch,
    parse_request,
)

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
# The key sets, written out independently of smcroute.ipc.helper.FIELDS.
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


def with_(msg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(msg)
    out.update(changes)
    return out


# -- well-formed requests ------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_valid_requests_parse_to_their_values(family: int) -> None:
    src, grp = (V4_SRC, V4_GRP) if family == 4 else (V6_SRC, V6_GRP)
    assert parse_request(valid("hello")) == Hello(1)
    assert parse_request(valid("modules")) == Modules(2)
    assert parse_request(valid("add_vif", family)) == AddVif(3, family, 0, 2, 1)
    assert parse_request(valid("del_vif", family)) == DelVif(4, family, 0)
    # oifs come back as sorted (vif, ttl) tuples
    assert parse_request(valid("add_mfc", family)) == AddMfc(5, family, src, grp, 0,
                                                             ((1, 1), (2, 3)))
    assert parse_request(valid("del_mfc", family)) == DelMfc(6, family, src, grp)
    assert parse_request(valid("sg_count", family)) == SgCount(7, family, src, grp)


def test_schema_key_sets_match_the_design() -> None:
    for op in ALL_OPS:
        assert {"op", "id", *FIELDS[op]} == KEYS[op]
    assert set(FIELDS) == set(ALL_OPS)


@pytest.mark.parametrize("op", ALL_OPS)
def test_to_wire_round_trip(op: str) -> None:
    for family in (4, 6):
        req = parse_request(valid(op, family))
        wire = to_wire(req)
        assert set(wire) == KEYS[op]
        assert parse_request(wire) == req
        assert parse_request(codec.decode(codec.encode(wire))) == req


# -- message shape: map, op, exact key set ----------------------------------------


@pytest.mark.parametrize("msg", [None, [], [valid("hello")], "hello", b"hello", 1, True, 1.5,
                                 ("op", "hello")])
def test_request_must_be_a_map(msg: Any) -> None:
    with pytest.raises(Violation):
        parse_request(msg)


@pytest.mark.parametrize("op", [None, "", "HELLO", "frob", "add_vif ", b"hello", 1, True,
                                ["hello"], "__init__"])
def test_unknown_op(op: Any) -> None:
    with pytest.raises(Violation):
        parse_request({"op": op, "id": 1})


def test_missing_op() -> None:
    with pytest.raises(Violation):
        parse_request({"id": 1})


@pytest.mark.parametrize(("op", "key"), [(op, key) for op in ALL_OPS for key in sorted(KEYS[op])
                                         if key != "op"])
def test_missing_key(op: str, key: str) -> None:
    msg = valid(op)
    del msg[key]
    with pytest.raises(Violation):
        parse_request(msg)


EXTRA_KEYS = ["extra", "ID", "oifs", "family", "ifindex", 1, b"id", None]


@pytest.mark.parametrize(("op", "extra"), [(op, extra) for op in ALL_OPS for extra in EXTRA_KEYS
                                           if extra not in KEYS[op]])
def test_extra_key(op: str, extra: Any) -> None:
    msg = valid(op)
    msg[extra] = 1
    with pytest.raises(Violation):
        parse_request(msg)


def test_bytes_key_does_not_stand_in_for_a_str_key() -> None:
    msg = valid("del_vif")
    msg[b"vif"] = msg.pop("vif")
    with pytest.raises(Violation):
        parse_request(msg)


# -- exact types and ranges ------------------------------------------------------------

BAD_INT_TYPES = [True, False, 1.0, 0.0, "1", b"\x01", None, [1], {"v": 1}]

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
    # ifindex >= 1 (the family's upper bound: test_ifindex_range_follows_the_family)
    *[("add_vif", "ifindex", v, True) for v in (1, 2, 2**16 - 1)],
    *[("add_vif", "ifindex", v, False) for v in (0, -1, 2**31, *BAD_INT_TYPES)],
    # threshold 1..255
    *[("add_vif", "threshold", v, True) for v in (1, 128, 255)],
    *[("add_vif", "threshold", v, False) for v in (0, -1, 256, *BAD_INT_TYPES)],
    # iif 0..31 (the valid add_mfc uses oifs 1 and 2)
    *[("add_mfc", "iif", v, True) for v in (0, 3, 31)],
    *[("add_mfc", "iif", v, False) for v in (-1, 32, *BAD_INT_TYPES)],
]


@pytest.mark.parametrize(("op", "key", "value", "ok"), INT_TABLE,
                         ids=[f"{o}-{k}-{v!r}" for o, k, v, _ in INT_TABLE])
def test_integer_fields(op: str, key: str, value: Any, ok: bool) -> None:
    for family in (4, 6) if op in FAMILY_OPS else (4,):
        msg = with_(valid(op, family), **{key: value})
        if ok:
            req = parse_request(msg)
            assert getattr(req, key) == value
            assert type(getattr(req, key)) is int
        else:
            with pytest.raises(Violation):
                parse_request(msg)


@pytest.mark.parametrize(("family", "value", "ok"), [
    (4, 2**31 - 1, True), (4, 2**31, False),
    (6, 2**16 - 1, True), (6, 2**16, False), (6, 70000, False),  # mif6c_pifi is 16 bits
])
def test_ifindex_range_follows_the_family(family: int, value: int, ok: bool) -> None:
    msg = with_(valid("add_vif", family), ifindex=value)
    if ok:
        assert parse_request(msg).ifindex == value
    else:
        with pytest.raises(Violation, match="ifindex"):
            parse_request(msg)


@pytest.mark.parametrize("op", FAMILY_OPS)
@pytest.mark.parametrize("family", [True, False, 0, 1, 2, 5, 44, 46, -4, 4.0, 6.0, "4", "6",
                                    b"\x04", None, [4]])
def test_family_only_4_or_6(op: str, family: Any) -> None:
    with pytest.raises(Violation):
        parse_request(with_(valid(op), family=family))


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize("key", ["source", "group"])
def test_address_length_follows_family(op: str, key: str) -> None:
    v4, v6 = valid(op, 4), valid(op, 6)
    # an IPv6-sized address in an IPv4 request and the other way round
    with pytest.raises(Violation):
        parse_request(with_(v4, **{key: v6[key]}))
    with pytest.raises(Violation):
        parse_request(with_(v6, **{key: v4[key]}))
    for n in (0, 1, 3, 5, 15, 17, 64):
        pad = (v4[key] + bytes(64))[:n]
        with pytest.raises(Violation):
            parse_request(with_(v4, **{key: pad}))
        pad6 = (v6[key] + bytes(64))[:n]
        with pytest.raises(Violation):
            parse_request(with_(v6, **{key: pad6}))


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize("key", ["source", "group"])
def test_address_must_be_bytes(op: str, key: str) -> None:
    msg = valid(op, 4)
    raw = msg[key]
    text = str(ipaddress.ip_address(raw))
    for bad in (text, bytearray(raw), list(raw), int.from_bytes(raw, "big"), None, memoryview(raw)):
        with pytest.raises(Violation):
            parse_request(with_(msg, **{key: bad}))


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
        assert parse_request(msg).group == ipaddress.ip_address(text).packed
    else:
        with pytest.raises(Violation):
            parse_request(msg)


SOURCES = [
    (4, "0.0.0.0", True), (4, "10.0.0.1", True), (4, "223.255.255.255", True),
    (4, "240.0.0.1", True), (4, "255.255.255.254", True),
    (4, "224.0.0.0", False), (4, "225.1.2.3", False), (4, "239.255.255.255", False),
    (4, "255.255.255.255", False),
    (6, "::", True), (6, "2001:db8::1", True), (6, "fe80::1", True), (6, "::ffff:225.1.2.3", True),
    (6, "ff02::1", False), (6, "ff05::42", False), (6, "ff00::", False),
]


@pytest.mark.parametrize("op", ADDR_OPS)
@pytest.mark.parametrize(("family", "text", "ok"), SOURCES)
def test_source_must_not_be_multicast(op: str, family: int, text: str, ok: bool) -> None:
    msg = with_(valid(op, family), source=ipaddress.ip_address(text).packed)
    if ok:
        assert parse_request(msg).source == ipaddress.ip_address(text).packed
    else:
        with pytest.raises(Violation):
            parse_request(msg)


def test_is_multicast() -> None:
    assert is_multicast(4, bytes([224, 0, 0, 0]))
    assert is_multicast(4, bytes([239, 255, 255, 255]))
    assert not is_multicast(4, bytes([223, 255, 255, 255]))
    assert not is_multicast(4, bytes([240, 0, 0, 0]))
    assert is_multicast(6, bytes([0xFF]) + bytes(15))
    assert not is_multicast(6, bytes([0xFE]) + bytes(15))


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
            with pytest.raises(Violation):
                parse_request(msg)
        else:
            assert parse_request(msg).oifs == expected


def test_more_than_max_oifs_is_refused_before_anything_else() -> None:
    many = [[1 + (v % 31), 1] for v in range(limits.MAX_OIFS + 1)]
    with pytest.raises(Violation, match="at most"):
        parse_request(with_(valid("add_mfc"), oifs=many))


def test_iif_among_oifs_whatever_the_iif() -> None:
    # SMCRoute installs it (point-to-multipoint links need it), both families
    for family in (4, 6):
        for iif in range(limits.MAXVIFS):
            req = parse_request(with_(valid("add_mfc", family), iif=iif, oifs=[[iif, 1]]))
            assert req.oifs == ((iif, 1),)


# -- batches -----------------------------------------------------------------------------


def test_batch_of_valid_requests() -> None:
    batch = [valid(op, fam) for op in ALL_OPS for fam in (4, 6)]
    batch = [m for i, m in enumerate(batch) if m["op"] != "modules" or i % 2 == 0]
    reqs = parse_batch(batch)
    assert len(reqs) == 2 * len(ALL_OPS) - 1
    assert [r.op for r in reqs] == [m["op"] for m in batch]


def test_at_most_one_modules_request_per_batch() -> None:
    # its reply is the one long one: 1024 of them made 1.37 MB, over the limit
    assert len(parse_batch([valid("modules"), valid("hello"), valid("hello")])) == 3
    with pytest.raises(Violation, match="more than one modules"):
        parse_batch([valid("modules"), valid("modules")])


@pytest.mark.parametrize("msg", [None, {}, valid("hello"), "x", b"x", 1, (valid("hello"),)])
def test_batch_must_be_a_list(msg: Any) -> None:
    with pytest.raises(Violation):
        parse_batch(msg)


def test_batch_size_limits() -> None:
    with pytest.raises(Violation):
        parse_batch([])
    assert len(parse_batch([valid("hello")])) == 1
    assert len(parse_batch([valid("hello")] * limits.MAX_BATCH)) == limits.MAX_BATCH
    with pytest.raises(Violation):
        parse_batch([valid("hello")] * (limits.MAX_BATCH + 1))


def test_one_bad_request_spoils_the_batch() -> None:
    with pytest.raises(Violation):
        parse_batch([valid("hello"), valid("add_vif"), with_(valid("del_vif"), vif=True)])
    with pytest.raises(Violation):
        parse_batch([valid("hello"), None])


def test_limits_values() -> None:
    assert limits.MAXVIFS == 32
    assert limits.MAX_OIFS == 32
    assert (limits.TTL_MIN, limits.TTL_MAX) == (1, 255)
    assert limits.FAMILIES == (4, 6)
    assert limits.ADDR_LEN == {4: 4, 6: 16}
    assert limits.MAX_BATCH >= 1
    assert limits.DEFAULT_MAX_MFC >= 1


# -- state rules: check() and HelperState.apply -----------------------------------------


def add_vif(vif: int, ifindex: int, family: int = 4) -> AddVif:
    return AddVif(1, family, vif, ifindex, 1)


def add_mfc(iif: int, oifs: tuple[tuple[int, int], ...] = (), family: int = 4,
            source: bytes | None = None) -> AddMfc:
    if family == 4:
        return AddMfc(1, 4, source or V4_SRC, V4_GRP, iif, oifs)
    return AddMfc(1, 6, source or V6_SRC, V6_GRP, iif, oifs)


def refusal(req: Any, state: HelperState) -> int | None:
    try:
        check(req, state)
    except Refusal as exc:
        assert exc.text
        assert str(exc) == exc.text
        return exc.errno
    return None


def test_fresh_state() -> None:
    state = HelperState()
    assert state.vifs == {4: {}, 6: {}}
    assert state.mfc == set()
    assert state.max_mfc == limits.DEFAULT_MAX_MFC
    other = HelperState()
    other.vifs[4][0] = 1
    assert state.vifs == {4: {}, 6: {}}  # no shared default


@pytest.mark.parametrize("family", [4, 6])
def test_add_vif_rules(family: int) -> None:
    state = HelperState()
    assert refusal(add_vif(0, 2, family), state) is None
    state.apply(add_vif(0, 2, family))
    assert state.vifs[family] == {0: 2}
    assert refusal(add_vif(0, 3, family), state) == errno.EADDRINUSE  # slot in use
    assert refusal(add_vif(1, 2, family), state) == errno.EEXIST  # ifindex has a vif
    assert refusal(add_vif(0, 2, family), state) == errno.EADDRINUSE
    assert refusal(add_vif(1, 3, family), state) is None
    # the other family's table is separate
    other = 6 if family == 4 else 4
    assert refusal(add_vif(0, 2, other), state) is None


@pytest.mark.parametrize("family", [4, 6])
def test_del_vif_rules(family: int) -> None:
    state = HelperState()
    assert refusal(DelVif(1, family, 0), state) == errno.ENODEV
    state.apply(add_vif(0, 2, family))
    other = 6 if family == 4 else 4
    assert refusal(DelVif(1, other, 0), state) == errno.ENODEV
    assert refusal(DelVif(1, family, 0), state) is None
    state.apply(DelVif(1, family, 0))
    assert state.vifs[family] == {}
    assert refusal(DelVif(1, family, 0), state) == errno.ENODEV
    # the slot and the ifindex are free again
    assert refusal(add_vif(0, 2, family), state) is None
    state.apply(DelVif(1, family, 5))  # deleting an absent vif is harmless bookkeeping


@pytest.mark.parametrize("family", [4, 6])
def test_add_mfc_needs_every_vif(family: int) -> None:
    state = HelperState()
    assert refusal(add_mfc(0, (), family), state) == errno.ENODEV
    state.apply(add_vif(0, 10, family))
    assert refusal(add_mfc(0, (), family), state) is None
    assert refusal(add_mfc(0, ((1, 1),), family), state) == errno.ENODEV
    assert refusal(add_mfc(1, (), family), state) == errno.ENODEV
    state.apply(add_vif(1, 11, family))
    assert refusal(add_mfc(0, ((1, 1),), family), state) is None
    assert refusal(add_mfc(1, ((0, 1),), family), state) is None
    assert refusal(add_mfc(0, ((1, 1), (2, 1)), family), state) == errno.ENODEV
    # vifs of the other family do not count
    other = 6 if family == 4 else 4
    assert refusal(add_mfc(0, ((1, 1),), other), state) == errno.ENODEV
    state.apply(DelVif(1, family, 1))
    assert refusal(add_mfc(0, ((1, 1),), family), state) == errno.ENODEV


def test_mfc_cap() -> None:
    state = HelperState(max_mfc=2)
    state.apply(add_vif(0, 10))
    first = add_mfc(0, source=bytes([10, 0, 0, 1]))
    second = add_mfc(0, source=bytes([10, 0, 0, 2]))
    third = add_mfc(0, source=bytes([10, 0, 0, 3]))
    assert refusal(first, state) is None
    state.apply(first)
    assert refusal(second, state) is None
    state.apply(second)
    assert len(state.mfc) == 2
    assert refusal(third, state) == errno.ENOSPC
    # replacing an installed entry is not a new entry
    assert refusal(first, state) is None
    assert refusal(AddMfc(9, 4, first.source, first.group, 0, ()), state) is None
    # a different family with the same bytes is another entry
    state.apply(add_vif(0, 10, 6))
    assert refusal(add_mfc(0, (), 6), state) == errno.ENOSPC
    # del_mfc and sg_count are never refused
    assert refusal(DelMfc(1, 4, third.source, third.group), state) is None
    assert refusal(SgCount(1, 4, third.source, third.group), state) is None
    state.apply(DelMfc(1, 4, first.source, first.group))
    assert len(state.mfc) == 1
    assert refusal(third, state) is None


def test_mfc_cap_zero() -> None:
    state = HelperState(max_mfc=0)
    state.apply(add_vif(0, 10))
    assert refusal(add_mfc(0), state) == errno.ENOSPC


def test_apply_bookkeeping() -> None:
    state = HelperState()
    state.apply(Hello(1))
    state.apply(Modules(1))
    assert state == HelperState()
    state.apply(add_vif(3, 7, 4))
    state.apply(add_vif(5, 7, 6))
    assert state.vifs == {4: {3: 7}, 6: {5: 7}}
    req4 = add_mfc(3, (), 4)
    req6 = add_mfc(5, (), 6)
    state.apply(req4)
    state.apply(req4)  # idempotent
    state.apply(req6)
    assert state.mfc == {(4, V4_SRC, V4_GRP), (6, V6_SRC, V6_GRP)}
    state.apply(SgCount(1, 4, V4_SRC, V4_GRP))
    assert len(state.mfc) == 2
    state.apply(DelMfc(1, 4, V4_SRC, V4_GRP))
    state.apply(DelMfc(1, 4, V4_SRC, V4_GRP))  # absent: no error
    assert state.mfc == {(6, V6_SRC, V6_GRP)}
    state.apply(DelVif(1, 6, 5))
    assert state.vifs == {4: {3: 7}, 6: {}}


def test_hello_modules_are_always_allowed() -> None:
    state = HelperState(max_mfc=0)
    check(Hello(1), state)
    check(Modules(1), state)
    check(DelMfc(1, 4, V4_SRC, V4_GRP), state)


# -- property: whatever parse_request accepts satisfies every invariant ---------------------

MAX_ID = 2**63 - 1


def independent_invariants(msg: Any, req: Any) -> None:
    """Re-check an accepted request from scratch, without the policy module."""
    assert type(msg) is dict
    op = msg["op"]
    assert type(op) is str and op in KEYS
    assert set(msg) == KEYS[op]
    assert all(type(k) is str for k in msg)
    assert req.op == op
    assert type(msg["id"]) is int and 0 <= msg["id"] <= MAX_ID and req.id == msg["id"]
    if op in ("hello", "modules"):
        return
    if op == "mrdisc":
        assert type(msg["vif"]) is int and 0 <= msg["vif"] <= 31 and req.vif == msg["vif"]
        assert type(msg["interval"]) is int and 4 <= msg["interval"] <= 180
        assert type(msg["terminate"]) is bool and req.terminate == msg["terminate"]
        return
    if op in ("templates", "allow"):
        assert type(msg["generation"]) is int and 0 <= msg["generation"] <= MAX_ID
        assert req.generation == msg["generation"]
    if op == "allow":
        limits_ = msg["limits"]
        assert type(limits_) is list and len(limits_) <= 64
        assert all(type(n) is int and 0 <= n < 2**31 for n in limits_)
        assert req.limits == tuple(limits_)
        return
    if op == "templates":
        assert type(msg["templates"]) is list and len(msg["templates"]) <= 64
        for item, t in zip(msg["templates"], req.templates, strict=True):
            template_invariants(item, t)
        return
    family = msg["family"]
    assert type(family) is int and family in (4, 6) and req.family == family
    if op in ("add_vif", "del_vif"):
        assert type(msg["vif"]) is int and 0 <= msg["vif"] <= 31 and req.vif == msg["vif"]
    if op == "add_vif":
        assert type(msg["ifindex"]) is int and msg["ifindex"] >= 1
        assert type(msg["threshold"]) is int and 1 <= msg["threshold"] <= 255
        assert (req.ifindex, req.threshold) == (msg["ifindex"], msg["threshold"])
    if op in ADDR_OPS:
        size = 4 if family == 4 else 16
        source, group = msg["source"], msg["group"]
        assert type(source) is bytes and len(source) == size
        assert type(group) is bytes and len(group) == size
        assert ipaddress.ip_address(group).is_multicast
        assert not ipaddress.ip_address(source).is_multicast
        assert source != b"\xff\xff\xff\xff"
        assert (req.source, req.group) == (source, group)
    if op == "add_mfc":
        iif, oifs = msg["iif"], msg["oifs"]
        assert type(iif) is int and 0 <= iif <= 31 and req.iif == iif
        assert type(oifs) is list and len(oifs) <= 32
        vifs = []
        for pair in oifs:
            assert type(pair) is list and len(pair) == 2
            vif, ttl = pair
            assert type(vif) is int and 0 <= vif <= 31 and vif != iif
            assert type(ttl) is int and 1 <= ttl <= 255
            vifs.append(vif)
        assert len(set(vifs)) == len(vifs)
        assert req.oifs == tuple(sorted((v, t) for v, t in oifs))


def template_invariants(item: Any, t: Any) -> None:
    assert type(item) is list and len(item) == 7
    family, iif, source, source_len, group, group_len, oifs = item
    assert type(family) is int and family in (4, 6) and t.family == family
    assert type(iif) is int and 0 <= iif <= 31 and t.iif == iif
    size = 4 if family == 4 else 16
    for addr_, length in ((source, source_len), (group, group_len)):
        assert type(addr_) is bytes and len(addr_) == size
        assert type(length) is int and 0 <= length <= 8 * size
        net = ipaddress.ip_network((addr_, length))  # raises if host bits are set
        assert net.prefixlen == length
    if source_len:
        assert not ipaddress.ip_address(source).is_multicast and source != b"\xff" * 4
    assert ipaddress.ip_network((group, group_len)).subnet_of(
        ipaddress.ip_network("224.0.0.0/4" if family == 4 else "ff00::/8"))
    assert type(oifs) is list and len(oifs) <= 32
    vifs = [pair[0] for pair in oifs]
    assert all(type(v) is int and 0 <= v <= 31 and v != iif for v in vifs)
    assert len(set(vifs)) == len(vifs)
    assert all(type(p[1]) is int and 1 <= p[1] <= 255 for p in oifs)
    assert (t.source, t.source_len, t.group, t.group_len) == (source, source_len, group, group_len)
    assert t.oifs == tuple(sorted((v, ttl) for v, ttl in oifs))


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
    vifs = draw(st.lists(st.integers(0, 31).filter(lambda v: v != iif), unique=True,
                         max_size=31))
    return [family, iif, source, slen, network(draw(multicast(size)), glen), glen,
            [[v, draw(st.integers(1, 255))] for v in vifs]]


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
        iif = draw(st.integers(0, 31))
        vifs = draw(st.lists(st.integers(0, 31).filter(lambda v: v != iif), unique=True,
                             max_size=31))
        msg["iif"] = iif
        msg["oifs"] = [[v, draw(st.integers(1, 255))] for v in vifs]
    return msg


INTERESTING = st.sampled_from([
    True, False, None, 0, 1, -1, 4, 6, 31, 32, 255, 256, 2**31 - 1, 2**31, 2**63 - 1, 2**63,
    2**64 - 1, -(2**63), 1.0, 4.0, float("nan"), "", "4", "hello", b"", b"\x00" * 4,
    b"\xe1\x01\x02\x03", b"\x0a\x00\x00\x01", b"\xff" * 4, b"\xff" * 16, b"\x00" * 16,
    [], [[1, 1]], [[0, 1]], [[1, 1], [1, 1]], [[True, 1]], {}, [1, 1],
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
        req = parse_request(msg)
    except Violation:
        return
    independent_invariants(msg, req)
    wire = to_wire(req)
    assert parse_request(wire) == req
    assert parse_request(codec.decode(codec.encode(wire))) == req


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_requests())
def test_property_valid_requests_are_accepted(msg: dict[str, Any]) -> None:
    req = parse_request(msg)
    independent_invariants(msg, req)
    assert parse_request(to_wire(req)) == req


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
        reqs = parse_batch(batch)
    except Violation:
        return
    assert type(batch) is list and 1 <= len(batch) <= limits.MAX_BATCH
    for msg, req in zip(batch, reqs, strict=True):
        independent_invariants(msg, req)


# -- mrdisc ------------------------------------------------------------------


def test_mrdisc_parses() -> None:
    assert parse_request(valid("mrdisc")) == Mrdisc(8, 0, 20, False)
    assert parse_request(with_(valid("mrdisc"), terminate=True)).terminate is True


@pytest.mark.parametrize("changes", [
    {"vif": 32}, {"vif": -1}, {"vif": True}, {"interval": 3}, {"interval": 181},
    {"interval": 20.0}, {"terminate": 1}, {"terminate": None},
])
def test_mrdisc_shape_is_checked(changes: dict[str, Any]) -> None:
    with pytest.raises(Violation):
        parse_request(with_(valid("mrdisc"), **changes))


def test_mrdisc_needs_an_ipv4_vif_the_helper_added() -> None:
    state = HelperState()
    req = parse_request(valid("mrdisc"))
    with pytest.raises(Refusal) as exc:
        check(req, state)
    assert exc.value.errno == errno.ENODEV
    state.vifs[6][0] = 2  # a MIF is not enough: mrdisc is IPv4
    with pytest.raises(Refusal):
        check(req, state)
    state.vifs[4][0] = 2
    check(req, state)
