"""mgroup / join: which memberships a rule means (SPEC 6.1); pure.

A rule names an interface (or pattern), an optional source and a group,
each with an optional /LEN: it stands for every source in the source range
and every group in the group range, on every matching interface.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from smcroute.unprivileged.model import Mgroup, Prefix

MAX_EXPANSION = 16_384  # memberships one line may stand for


@dataclass(frozen=True)
class Membership:
    ifname: str
    ifindex: int
    family: int
    source: bytes | None  # None: any source (ASM)
    group: bytes
    rule: Mgroup = field(compare=False, hash=False)

    @property
    def key(self) -> tuple[int, int, bytes | None, bytes]:
        return self.ifindex, self.family, self.source, self.group


def addresses(prefix: Prefix) -> list[bytes]:
    """Every address of the range, from the network address up."""
    if prefix.is_host:
        return [prefix.packed]
    net = ipaddress.ip_network(f"{prefix.address}/{prefix.length}", strict=False)
    return [a.packed for a in (net.network_address + i for i in range(net.num_addresses))]


def size(rule: Mgroup) -> int:
    sources = 1 if rule.source is None else 2 ** (rule.source.max_length - rule.source.length)
    return sources * 2 ** (rule.group.max_length - rule.group.length)


def too_large(rule: Mgroup) -> str | None:
    n = size(rule)
    if n <= MAX_EXPANSION:
        return None
    return f"mgroup: {text(rule)} stands for {n} memberships, at most {MAX_EXPANSION}"


def expand(rule: Mgroup, ifname: str, ifindex: int) -> list[Membership]:
    sources: list[bytes | None] = [None] if rule.source is None else list(addresses(rule.source))
    groups = addresses(rule.group)
    return [Membership(ifname, ifindex, rule.family, s, g, rule) for s in sources for g in groups]


def same(a: Mgroup, b: Mgroup) -> bool:
    """SMCRoute's identity of joins: interface as written, source and group
    address, group length (the source length is not compared)."""
    def source(rule: Mgroup) -> object:
        return rule.source.address if rule.source else None

    return a.iif == b.iif and a.group == b.group and source(a) == source(b)


def text(rule: Mgroup, source: bytes | None = None, group: bytes | None = None) -> str:
    """(S, G) as show groups prints it: the rule's /LEN on each part."""
    def part(prefix: Prefix | None, packed: bytes | None) -> str:
        if prefix is None:
            return "*"
        addr = str(ipaddress.ip_address(packed)) if packed is not None else str(prefix.address)
        return addr if prefix.is_host else f"{addr}/{prefix.length}"

    return f"({part(rule.source, source)}, {part(rule.group, group)})"


def error_text(rule: Mgroup) -> str:
    """(S,G) as SMCRoute's join/leave errors print it: no space."""
    return text(rule).replace(", ", ",")
