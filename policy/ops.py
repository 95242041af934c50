"""The helper's op table: the trust boundary, each op defined once.

A request is a msgpack map of "op", an integer "id" and exactly its op's
fields (OPS). Each field is checked by its rule in FIELD: exact type (a
bool is not an int), ranges from the kernel struct the value lands in. A
malformed request is a Violation: the peer is no correct controller, and
the helper exits. Then the op's one function does the rest, in order: its
check against the helper's state (a Refusal: an errno reply), its kernel
operation (an OSError: the kernel's errno), its state update. No op does
anything else; there is no default.

Pure: the kernel comes in as an argument. The controller runs parse() on
each request before it sends one, to give users a clear error instead of
losing its helper. Standard library only.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from smcroute.policy.limits import (
    ADDR_LEN,
    DEFAULT_MAX_MFC,
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

TYPE_CHECKING = False  # not typing's: the helper does without typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from smcroute.privileged.kernel import Mroute as Kernel

PROTOCOL_VERSION = 1
MAX_ID = 2**63 - 1
COMPACT_AT = 4096  # MFC entries at a peak from which the set is worth rebuilding
# The errnos with which the kernel says a VIF or MFC entry to delete is gone
# already (a VIF goes with its device): a delete that is done, all the same.
ABSENT = (errno.ENOENT, errno.EADDRNOTAVAIL)
# helper -> controller: {"t": "replies", "replies": [...]} in request order
# ({"id", "ok": True, ...results} or {"id", "ok": False, "errno", "error"}),
# {"t": "upcalls", "upcalls": [[family, kind, vif, source, group], ...]}
# ("learned", installed by the fast path, adds the template's generation
# and index; "solicit": an RFC 4286 solicitation, source its sender), and
# {"t": "fatal", "error"} before it exits.
UPCALL_KINDS = ("nocache", "wrongvif", "wholepkt", "solicit", "learned")


class Violation(ValueError):
    """A malformed request: wrong keys, types or ranges."""


class Refusal(Exception):
    """A well-formed request that the current state does not allow."""

    def __init__(self, err: int, text: str) -> None:
        super().__init__(text)
        self.errno = err
        self.text = text


def number(value: object, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is a subclass of int: refuse it
        raise Violation(f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise Violation(f"{value} outside {lo}..{hi}")
    return value


def is_multicast(family: int, addr: bytes) -> bool:
    return (addr[0] & 0xF0) == 0xE0 if family == 4 else addr[0] == 0xFF


def source_problem(family: int, source: bytes) -> str | None:
    """Why source cannot be a route's source address, if it cannot.

    The zero source (0.0.0.0, ::) is accepted, for both families: add_mfc
    with it is a kernel (*,G) entry (--kernel-star-g, and stop entries for
    a whole group), which the kernel uses for every source of G arriving
    on a VIF its TTLs mark, forwarding from its parent to the other marked
    VIFs. It takes the same checks as any entry (a multicast group, so
    never (*,*); VIFs we added; the MFC cap) and gives no more than the
    per-source entries a controller may already install for G."""
    if is_multicast(family, source):
        return "source is a multicast address"
    if family == 4 and source == b"\xff\xff\xff\xff":
        return "source is the broadcast address"
    return None


def _address(value: object, family: int) -> bytes:
    if type(value) is not bytes or len(value) != ADDR_LEN[family]:
        raise Violation(f"must be {ADDR_LEN[family]} bytes for IPv{family}")
    return value


def _source(value: object, family: int) -> bytes:
    if problem := source_problem(family, source := _address(value, family)):
        raise Violation(problem)
    return source


def _group(value: object, family: int) -> bytes:
    if not is_multicast(family, group := _address(value, family)):
        raise Violation("not a multicast address")
    return group


def _bool(value: object, family: int) -> bool:
    if type(value) is not bool:
        raise Violation(f"must be a boolean, got {type(value).__name__}")
    return value


def _list(value: object, limit: int) -> list[object]:
    if type(value) is not list or len(value) > limit:
        raise Violation(f"must be a list of at most {limit}")
    return value


def _oifs(value: object, family: int = 4) -> tuple[tuple[int, int], ...]:
    """(vif, ttl) pairs, ascending vif. The inbound VIF may be one: SMCRoute
    installs that, point-to-multipoint links (WireGuard, tun) need it."""
    pairs = []
    for item in _list(value, MAX_OIFS):
        if type(item) is not list or len(item) != 2:
            raise Violation("each oif must be a [vif, ttl] pair")
        pairs.append((number(item[0], 0, MAXVIFS - 1), number(item[1], TTL_MIN, TTL_MAX)))
    if len({vif for vif, _ in pairs}) != len(pairs):
        raise Violation("duplicate oif")
    return tuple(sorted(pairs))


def _family(value: object) -> int:
    if value not in (4, 6) or type(value) is not int:
        raise Violation(f"must be 4 or 6, got {value!r}")
    return value


def _network(data: bytes, length: object) -> tuple[int, int]:
    """(network, mask) of a prefix as the fast path matches it; no host bits."""
    bits = 8 * len(data)
    mask = ((1 << number(length, 0, bits)) - 1) << (bits - length)  # type: ignore[operator]
    if (net := int.from_bytes(data, "big")) & ~mask:
        raise Violation(f"bits set beyond the prefix length {length}")
    return net, mask


def _template(item: object) -> tuple[int, int, int, int, int, int, tuple[tuple[int, int], ...]]:
    """[family, iif, source, source_len, group, group_len, oifs] as
    (family, iif, source net, mask, group net, mask, oifs). An all-zero
    source of length 0: any source. The group lies within 224/4 or ff00::/8."""
    if type(item) is not list or len(item) != 7:
        raise Violation("each template must be a list of 7 items")
    family = _family(item[0])
    source, group = _address(item[2], family), _address(item[4], family)
    if item[3] and (problem := source_problem(family, source)):
        raise Violation(problem)
    if not is_multicast(family, group) or number(item[5], 0, 128) < (4 if family == 4 else 8):
        raise Violation("group is not a multicast prefix")
    return (family, number(item[1], 0, MAXVIFS - 1), *_network(source, item[3]),
            *_network(group, item[5]), _oifs(item[6]))


def _range(lo: int, hi: int) -> Callable[[object, int], int]:
    return lambda value, family: number(value, lo, hi)


# Every field of every op, by name: (value, family) -> the value to use.
FIELD = {
    "id": _range(0, MAX_ID),
    "family": lambda value, family: family,  # checked first, by parse()
    "vif": _range(0, MAXVIFS - 1),
    "iif": _range(0, MAXVIFS - 1),
    "ifindex": lambda value, family: number(value, 1, MAX_IFINDEX[family]),
    "threshold": _range(TTL_MIN, TTL_MAX),
    "source": _source,
    "group": _group,
    "oifs": _oifs,
    "interval": _range(*MRDISC_INTERVAL),
    "terminate": _bool,
    "generation": _range(0, MAX_ID),
    "templates": lambda value, family: tuple(map(_template, _list(value, MAX_TEMPLATES))),
    "limits": lambda value, family: tuple(number(n, 0, MAX_FAST_LIMIT)
                                          for n in _list(value, MAX_TEMPLATES)),
}


class State:
    """What the helper has installed, as far as the ops need to know, and
    the (*,G) fast path's templates (server.install_fast)."""

    def __init__(self, max_mfc: int = DEFAULT_MAX_MFC, about: dict | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.max_mfc = max_mfc
        # hello's fixed results (the helper's main() gives the real ones)
        self.about = about or {"table": 0, "pid": os.getpid(), "sandbox": "none: not applied"}
        self.clock = clock or time.monotonic  # for the mrdisc rate
        self.vifs: dict[int, dict[int, int]] = {4: {}, 6: {}}  # family: {vif: ifindex}
        # Installed MFC entries, keyed source + group (the length tells the
        # family): one bytes object an entry, not a tuple of three (a flood
        # fills this set; issue 17).
        self.mfc: set[bytes] = set()
        self.mfc_peak = 0  # most entries since the set was last rebuilt
        self.mrdisc_tokens: dict[int, tuple[float, float]] = {}  # vif: (tokens, at)
        self.generation = 0
        self.templates: tuple = ()  # as _template gives them
        self.by_vif: dict[tuple[int, int], list[int]] = {}  # (family, iif): indexes
        self.used: list[int] = []  # flows installed, per template
        self.limits: list[int] = []  # cumulative, per template, this generation

    def vif(self, family: int, vif: int) -> int:
        """The ifindex of a VIF we added; refused otherwise."""
        if vif not in self.vifs[family]:
            raise Refusal(errno.ENODEV, f"vif {vif} was not added")
        return self.vifs[family][vif]

    def match(self, family: int, vif: int, source: bytes, group: bytes) -> int | None:
        """The first template covering (S,G) on vif, if it has room left."""
        s, g = int.from_bytes(source, "big"), int.from_bytes(group, "big")
        for i in self.by_vif.get((family, vif), ()):
            _, _, snet, smask, gnet, gmask, _ = self.templates[i]
            if g & gmask == gnet and s & smask == snet:
                return i if self.used[i] < self.limits[i] else None
        return None


def install(k: Kernel, st: State, family: int, source: bytes, group: bytes, iif: int,
            oifs: tuple[tuple[int, int], ...]) -> dict:
    """add_mfc, also the fast path's: VIFs we added, the MFC cap."""
    for vif in (iif, *(vif for vif, _ in oifs)):
        st.vif(family, vif)
    key = source + group
    if len(st.mfc) >= st.max_mfc and key not in st.mfc:
        raise Refusal(errno.ENOSPC, f"MFC entry cap of {st.max_mfc} reached")
    k.add_mfc(family, source, group, iif, oifs)
    st.mfc.add(key)
    st.mfc_peak = max(st.mfc_peak, len(st.mfc))
    return {}


def forget_mfc(st: State, key: bytes) -> None:
    """An entry is gone. A set keeps the table of its peak: rebuilt once
    most of a flood's entries have gone, so the memory comes back."""
    st.mfc.discard(key)
    if st.mfc_peak >= COMPACT_AT and len(st.mfc) <= st.mfc_peak // 4:
        st.mfc, st.mfc_peak = set(st.mfc), len(st.mfc)


def _delete(kernel_op: Callable[[], None], forget: Callable[[], object]) -> dict:
    """A delete is done, and forgotten, also when the kernel had it gone."""
    try:
        kernel_op()
    except OSError as exc:
        if exc.errno in ABSENT:
            forget()
        raise
    forget()
    return {}


def add_vif(k: Kernel, st: State, r: dict) -> dict:
    vifs = st.vifs[r["family"]]
    if r["vif"] in vifs:
        raise Refusal(errno.EADDRINUSE, f"vif {r['vif']} is already in use")
    if r["ifindex"] in vifs.values():
        raise Refusal(errno.EEXIST, f"ifindex {r['ifindex']} already has a vif")
    k.add_vif(r["family"], r["vif"], r["ifindex"], r["threshold"])
    vifs[r["vif"]] = r["ifindex"]
    return {}


def del_vif(k: Kernel, st: State, r: dict) -> dict:
    st.vif(r["family"], r["vif"])
    return _delete(lambda: k.del_vif(r["family"], r["vif"]),
                   lambda: st.vifs[r["family"]].pop(r["vif"], None))


def add_mfc(k: Kernel, st: State, r: dict) -> dict:
    return install(k, st, r["family"], r["source"], r["group"], r["iif"], r["oifs"])


def del_mfc(k: Kernel, st: State, r: dict) -> dict:
    family, source, group = r["family"], r["source"], r["group"]
    return _delete(lambda: k.del_mfc(family, source, group),
                   lambda: forget_mfc(st, source + group))


def sg_count(k: Kernel, st: State, r: dict) -> dict:
    packets, nbytes, wrong_if = k.sg_count(r["family"], r["source"], r["group"])
    return {"packets": packets, "bytes": nbytes, "wrong_if": wrong_if}


def mrdisc(k: Kernel, st: State, r: dict) -> dict:
    """One RFC 4286 advertisement (or termination) on an IPv4 VIF, at most
    MRDISC_RATE per second after a burst of MRDISC_BURST, per VIF."""
    ifindex, now = st.vif(4, r["vif"]), st.clock()
    tokens, then = st.mrdisc_tokens.get(r["vif"], (MRDISC_BURST, now))
    tokens = min(MRDISC_BURST, tokens + (now - then) * MRDISC_RATE)
    if tokens < 1:
        st.mrdisc_tokens[r["vif"]] = tokens, now
        raise Refusal(errno.EAGAIN, f"mrdisc rate limit of vif {r['vif']}")
    st.mrdisc_tokens[r["vif"]] = tokens - 1, now
    k.send_mrdisc(ifindex, r["terminate"], r["interval"])
    return {}


def templates(k: Kernel, st: State, r: dict) -> dict:
    """Replace the fast path's templates (first match wins); all limits 0."""
    st.generation, st.templates, st.by_vif = r["generation"], r["templates"], {}
    for i, t in enumerate(st.templates):
        st.by_vif.setdefault((t[0], t[1]), []).append(i)
    st.used, st.limits = [0] * len(st.templates), [0] * len(st.templates)
    return {}


def allow(k: Kernel, st: State, r: dict) -> dict:
    """Raise the fast path's limits; ignored if meant for other templates
    (cumulative, so a late message is harmless)."""
    if r["generation"] == st.generation and len(r["limits"]) == len(st.limits):
        st.limits = [max(old, new) for old, new in zip(st.limits, r["limits"], strict=True)]
    return {}


def hello(k: Kernel, st: State, r: dict) -> dict:
    return {"version": PROTOCOL_VERSION, "maxvifs": MAXVIFS, "max_mfc": st.max_mfc, **st.about}


def modules(k: Kernel, st: State, r: dict) -> dict:
    """Debug: the helper's sys.modules, to audit its import closure."""
    return {"modules": sorted(sys.modules)}


OPS = {
    "hello": ((), hello),
    "modules": ((), modules),
    "add_vif": (("family", "vif", "ifindex", "threshold"), add_vif),
    "del_vif": (("family", "vif"), del_vif),
    "add_mfc": (("family", "source", "group", "iif", "oifs"), add_mfc),
    "del_mfc": (("family", "source", "group"), del_mfc),
    "sg_count": (("family", "source", "group"), sg_count),
    "mrdisc": (("vif", "interval", "terminate"), mrdisc),
    "templates": (("generation", "templates"), templates),
    "allow": (("generation", "limits"), allow),
}


def parse(msg: object) -> dict:
    """One request, checked against OPS and FIELD: its values by field name."""
    if type(msg) is not dict:
        raise Violation(f"request must be a map, got {type(msg).__name__}")
    op = msg.get("op")
    if type(op) is not str or op not in OPS:
        raise Violation(f"unknown op {op!r}")
    names = ("id", *OPS[op][0])
    if msg.keys() != {"op", *names}:
        raise Violation(f"{op}: keys {sorted(map(str, msg))}, expected {sorted(['op', *names])}")
    r, name = {"op": op}, "family"
    try:
        family = _family(msg["family"]) if "family" in msg else 4  # the others need it
        for name in names:
            r[name] = FIELD[name](msg[name], family)
    except Violation as exc:
        raise Violation(f"{op} {name}: {exc}") from None
    return r


def parse_batch(msg: object) -> list[dict]:
    """A datagram: 1..MAX_BATCH requests, at most one modules (every other
    reply is short, so a batch's replies fit a datagram: a test computes it)."""
    if type(msg) is not list or not 1 <= len(msg) <= MAX_BATCH:
        raise Violation(f"a request datagram must be a list of 1..{MAX_BATCH} requests")
    batch = [parse(item) for item in msg]
    if sum(r["op"] == "modules" for r in batch) > 1:
        raise Violation("more than one modules request in a batch")
    return batch


def execute(k: Kernel, st: State, r: dict) -> dict:
    """Run one parsed request: its reply."""
    try:
        return {"id": r["id"], "ok": True, **OPS[r["op"]][1](k, st, r)}
    except Refusal as exc:
        return {"id": r["id"], "ok": False, "errno": exc.errno, "error": exc.text}
    except OSError as exc:
        err = exc.errno or errno.EIO
        return {"id": r["id"], "ok": False, "errno": err, "error": os.strerror(err)}
