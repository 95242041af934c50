"""Value objects shared by the config parser, the engine and the formatters."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Where:
    """A place in the configuration: file and 1-based line number.

    Line 0 names a source without lines, e.g. "ipc" for smcroutectl.
    """

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file} line {self.line}" if self.line else self.file


# What a diagnostic means (the table in smcroute.conf(5)); one classification
# for smcrouted -F, start-up and reload:
ERROR = "error"  # the line is wrong: skipped at start-up, rejects a reload, -F exits 78
INTERFACE = "interface"  # an interface is missing or unusable: never rejects; -F exits 78
NOTE = "note"  # worth saying (info level), never a problem


@dataclass(frozen=True)
class Diagnostic:
    """Something to say about a line of the configuration (or about the file)."""

    message: str
    where: Where | None = None
    kind: str = ERROR

    @property
    def error(self) -> bool:
        return self.kind == ERROR

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass(frozen=True)
class Prefix:
    """An address as written, with its prefix length (full length if none given)."""

    address: Address
    length: int

    # Computed once per prefix (cached_property writes the instance dict, so
    # it works on a frozen dataclass): a batch of 2000 smcroutectl edits or
    # a 2000-line config asks each prefix for these several times over.
    @functools.cached_property
    def family(self) -> int:
        return self.address.version

    @functools.cached_property
    def packed(self) -> bytes:
        return self.address.packed

    @property
    def max_length(self) -> int:
        return self.address.max_prefixlen

    @functools.cached_property
    def is_host(self) -> bool:
        return self.length == self.address.max_prefixlen

    def __str__(self) -> str:
        return str(self.address) if self.is_host else f"{self.address}/{self.length}"

    @functools.cached_property
    def _hash(self) -> int:
        return hash((int(self.address), self.length))

    def __hash__(self) -> int:
        # ipaddress hashes through hex(): rule indexes hash prefixes a lot
        return self._hash


@dataclass(frozen=True)
class Phyint:
    where: Where
    pattern: str
    enable: bool | None  # None: the default (enable, or disable with -N)
    mrdisc: bool = False
    threshold: int | None = None


@dataclass(frozen=True)
class Mroute:
    where: Where
    iif: str
    source: Prefix | None  # None: any source
    group: Prefix
    oifs: tuple[str, ...] = ()

    @property
    def family(self) -> int:
        return self.group.family

    @property
    def is_ssm(self) -> bool:
        """A source-specific (S,G) route, as opposed to a (*,G) template."""
        return self.source is not None and self.source.is_host and self.group.is_host


@dataclass(frozen=True)
class Mgroup:
    """Join GROUP (from SOURCE) on IIF: mgroup/ssmgroup lines."""

    where: Where
    iif: str
    source: Prefix | None
    group: Prefix

    @property
    def family(self) -> int:
        return self.group.family


Directive = Phyint | Mroute | Mgroup


@dataclass(frozen=True)
class Config:
    directives: tuple[Directive, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()
    includes: tuple[tuple[str, Where], ...] = ()  # included file -> the line that read it

    def reading_order(self, where: Where | None) -> tuple[int, ...]:
        """A sort key: places in the order the parser read them, through includes."""
        if where is None:
            return ()
        parents = dict(self.includes)
        key = [where.line]
        seen = {where.file}
        while where.file in parents:
            where = parents[where.file]
            if where.file in seen:
                break
            seen.add(where.file)
            key.insert(0, where.line)
        return tuple(key)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.error)


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    multicast: bool


@dataclass(frozen=True)
class Vif:
    """One slot of the kernel's VIF (IPv4) or MIF (IPv6) table."""

    family: int
    vif: int
    name: str
    ifindex: int
    threshold: int


class MfcKey(bytes):
    """An (S,G) of one family, as the kernel keys its MFC: source + group in
    one bytes object, the length telling the family (8: IPv4, 32: IPv6).
    Hashed and compared in C like a tuple, but one object of 57 (81) bytes
    instead of a tuple and two bytes objects of about 144 (176): a flood
    makes one per flow, and it is the key in two tables (issue 17)."""

    __slots__ = ()

    def __new__(cls, family: int, source: bytes, group: bytes) -> MfcKey:
        if len(source) != len(group) or len(source) != (4 if family == 4 else 16):
            raise ValueError(f"not an IPv{family} (S,G): {source!r}, {group!r}")
        return super().__new__(cls, source + group)

    @property
    def family(self) -> int:
        return 4 if len(self) == 8 else 6

    @property
    def source(self) -> bytes:
        return self[: len(self) >> 1]

    @property
    def group(self) -> bytes:
        return self[len(self) >> 1:]

    def __repr__(self) -> str:
        return f"MfcKey({self.family}, {self.source!r}, {self.group!r})"


def addr(packed: bytes) -> str:
    """An address in the kernel's packed form, as text."""
    return str(ipaddress.ip_address(packed))


def zero(family: int) -> bytes:
    """The source of a kernel (*,G) entry: 0.0.0.0 or ::."""
    return bytes(4 if family == 4 else 16)


def is_star(key: MfcKey) -> bool:
    """A kernel (*,G) entry (--kernel-star-g), not an (S,G)."""
    return not any(key.source)


def sg(key: MfcKey) -> str:
    """(S, G) as logs and show write it; a kernel (*,G) entry is (*, G)."""
    return f"({'*' if is_star(key) else addr(key.source)}, {addr(key.group)})"


@dataclass(frozen=True, slots=True)
class Mfc:
    """One kernel MFC entry and where it came from."""

    key: MfcKey
    iif: int
    oifs: tuple[tuple[int, int], ...]  # (vif, ttl), ascending vif
    iif_name: str = field(compare=False)
    oif_names: tuple[str, ...] = field(compare=False)
    where: Where | None = field(compare=False, default=None)

    @property
    def kernel(self) -> tuple[int, tuple[tuple[int, int], ...]]:
        """What the kernel holds for this key; equal means nothing to do."""
        return self.iif, self.oifs


@dataclass(frozen=True)
class Pending:
    """A config line waiting for an interface to appear."""

    rule: Mroute | Mgroup
    missing: tuple[str, ...]  # interface names (or patterns) that match nothing yet
    inbound: bool = False  # the inbound interface is missing (else only outbound ones)
