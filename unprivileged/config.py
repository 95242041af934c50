"""smcroute.conf parser (SPEC section 2): pure functions from text to Config.

Nothing here touches the system except read_config(), which only reads the
file. Every diagnostic names file and line; nothing but ConfigError-free
values come out, whatever the input.
"""

from __future__ import annotations

import functools
import glob
import ipaddress
import os
import socket
from dataclasses import dataclass

from smcroute.policy.helper import is_multicast
from smcroute.unprivileged.model import (
    Config,
    Diagnostic,
    Directive,
    Mgroup,
    Mroute,
    Phyint,
    Prefix,
    Where,
)

MAX_LINE = 511  # SMCRoute's line buffer holds 511 characters
MAX_OIFS = 32  # one per VIF
MAX_INCLUDE_DEPTH = 16
MAX_FILE = 16 * 1024 * 1024
IFNAMSIZ = 16
WHITESPACE = " \t\r\v\f"
DIRECTIVES = ("mgroup", "ssmgroup", "mroute", "phyint", "include")
KEYWORDS = ("from", "source", "group", "to", "enable", "disable", "mrdisc", "ttl-threshold")
VALUE_KEYWORDS = {"from", "source", "group", "ttl-threshold"}


class ConfigError(ValueError):
    """One problem with one line; turned into a Diagnostic by the parser."""


@dataclass
class _Line:
    where: Where
    tokens: list[str]
    diagnostics: list[Diagnostic]

    def warn(self, message: str) -> None:
        self.diagnostics.append(Diagnostic(message, self.where, error=False))

    def error(self, message: str) -> None:
        self.diagnostics.append(Diagnostic(message, self.where, error=True))


_C_SPACE = {ord(c): " " for c in WHITESPACE}
_PY_ONLY_SPACE = "\x1c\x1d\x1e\x1f"  # str.split() splits here, C isspace does not


def tokenize(line: str) -> list[str]:
    """Split on C isspace characters; a token starting with # ends the line."""
    if line.isascii() and not any(c in line for c in _PY_ONLY_SPACE):
        tokens = line.split()  # the common case, at C speed
    else:
        tokens = [t for t in line.translate(_C_SPACE).split(" ") if t]
    if "#" in line:
        for i, token in enumerate(tokens):
            if token.startswith("#"):
                return tokens[:i]
    return tokens


def _match(token: str, names: tuple[str, ...]) -> str | None:
    """SMCRoute matches keywords by prefix: "groups" is "group"."""
    if token in names:
        return token
    for name in names:
        if token.startswith(name):
            return name
    return None


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """inet_pton(3) semantics: IPv6 if the text has a colon; None if invalid."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):  # ValueError: embedded NUL
        return None


@functools.lru_cache(maxsize=4096)
def parse_prefix(text: str, what: str) -> Prefix:
    """ADDR[/LEN] -> Prefix; LEN absent or 0 means the full length.

    Cached: a config or an smcroutectl batch names the same sources (and
    often groups) again and again, and a Prefix is immutable.
    """
    addr_text, slash, len_text = text.partition("/")
    address = parse_address(addr_text)
    if address is None:
        raise ConfigError(f"Invalid {what} address: {text}")
    length = address.max_prefixlen
    if slash:
        if not len_text.isdigit() or not len_text.isascii():
            raise ConfigError(f"Invalid {what} prefix length: {text}")
        value = int(len_text)
        if value > address.max_prefixlen:
            raise ConfigError(
                f"Invalid {what} prefix length (0-{address.max_prefixlen}): {value}")
        if value:
            length = value
    return Prefix(address, length)


def check_ifname(name: str) -> None:
    base = name[:-1] if name.endswith("+") else name
    if len(name) >= IFNAMSIZ:
        raise ConfigError(f"interface name {name} is too long (at most {IFNAMSIZ - 1} characters)")
    if not base.isprintable() or "/" in base or "+" in base:
        raise ConfigError(f"invalid interface name {name!r}")


def _scan(line: _Line, start: int) -> dict[str, object]:
    """Collect keyword values from tokens[start:], in any order."""
    found: dict[str, object] = {}
    tokens = line.tokens
    i = start
    while i < len(tokens):
        token = tokens[i]
        key = _match(token, KEYWORDS)
        if key is None:  # SMCRoute ignores unknown words (SPEC 2.2)
            i += 1
            continue
        if key == "to":
            found["to"] = tuple(tokens[i + 1:])
            break
        if key in VALUE_KEYWORDS:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{key}: missing value")
            found[key] = tokens[i + 1]
            i += 2
            continue
        if key in ("enable", "disable"):
            found["enable"] = key == "enable"
        else:
            found[key] = True
        i += 1
    return found


def _threshold(line: _Line, ifname: str, value: object) -> int | None:
    if value is None:
        return None
    text = str(value)
    if text.isdigit() and text.isascii() and 1 <= int(text) <= 255:
        return int(text)
    line.warn(f"phyint {ifname} ttl {text} out of range (1-255)")
    return 1


def _phyint(line: _Line) -> Phyint | None:
    if len(line.tokens) < 2:
        line.warn("phyint missing interface pattern")
        return None
    ifname = line.tokens[1]
    check_ifname(ifname)
    found = _scan(line, 2)
    return Phyint(line.where, ifname, found.get("enable"),  # type: ignore[arg-type]
                  bool(found.get("mrdisc")), _threshold(line, ifname, found.get("ttl-threshold")))


def addresses(source_text: str | None, group_text: str,
              what: str) -> tuple[Prefix | None, Prefix]:
    """Source (None: any) and group of a route or join; ConfigError if unusable.

    Also used for smcroutectl's add/remove/join/leave arguments.
    """
    group = parse_prefix(group_text, "multicast group")
    source = None if source_text is None else parse_prefix(source_text, "source")
    return checked(source, group, group_text, what)


def checked(source: Prefix | None, group: Prefix, group_text: str,
            what: str) -> tuple[Prefix | None, Prefix]:
    """The rules for a parsed source and group (ConfigError if broken)."""
    # (byte tests: ipaddress' properties cost a start-up of 2000 lines dearly)
    if not is_multicast(group.family, group.packed):
        raise ConfigError(f"{what}: Invalid multicast group: {group_text}")
    if source is None:
        return None, group
    if source.family != group.family:
        raise ConfigError(f"{what}: source {source} and group {group} are of different"
                          " address families")
    packed = source.packed
    if not any(packed):
        return None, group  # source 0.0.0.0 / :: is the same as no source
    if is_multicast(source.family, packed) or packed == b"\xff\xff\xff\xff":
        raise ConfigError(f"{what}: Invalid source address: {source}")
    return source, group


def _addresses(line: _Line, found: dict[str, object], what: str
               ) -> tuple[Prefix | None, Prefix] | None:
    """addresses() of a config line; None (warned) if unusable: invalid
    addresses skip the line with a warning, as in SMCRoute."""
    source = found.get("source")
    try:
        return addresses(None if source is None else str(source), str(found["group"]), what)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(f"{what}: "):
            message = f"{what}: {message}"
        line.warn(f"{message}, skipping line")
        return None


def _required(found: dict[str, object], what: str) -> str:
    iif = found.get("from")
    if iif is None:
        raise ConfigError(f"{what}: missing inbound interface, expected: from IFNAME")
    if found.get("group") is None:
        raise ConfigError(f"{what}: missing multicast group, expected: group ADDR[/LEN]")
    check_ifname(str(iif))
    return str(iif)


# Parsed mroute lines by their tokens: a reload of a large file parses most
# of its lines again unchanged. Only clean parses are kept; bounded.
_MROUTE_CACHE: dict[tuple[str, ...], tuple[str, Prefix | None, Prefix, tuple[str, ...]]] = {}
_MROUTE_CACHE_MAX = 200_000


def _mroute(line: _Line) -> Mroute | None:
    key = tuple(line.tokens)
    hit = _MROUTE_CACHE.get(key)
    if hit is not None:
        return Mroute(line.where, *hit)
    seen = len(line.diagnostics)
    rule = _parse_mroute(line)
    if rule is not None and len(line.diagnostics) == seen:
        if len(_MROUTE_CACHE) >= _MROUTE_CACHE_MAX:
            _MROUTE_CACHE.clear()
        _MROUTE_CACHE[key] = (rule.iif, rule.source, rule.group, rule.oifs)
    return rule


def _parse_mroute(line: _Line) -> Mroute | None:
    found = _scan(line, 0)
    iif = _required(found, "mroute")
    oifs = tuple(str(o) for o in found.get("to", ()))  # type: ignore[union-attr]
    if len(oifs) > MAX_OIFS:
        raise ConfigError(f"mroute: {len(oifs)} outbound interfaces, at most {MAX_OIFS}")
    for oif in oifs:
        check_ifname(oif)
    addresses = _addresses(line, found, "mroute")
    if addresses is None:
        return None
    return Mroute(line.where, iif, *addresses, oifs)


def _mgroup(line: _Line) -> Mgroup | None:
    found = _scan(line, 0)
    iif = _required(found, "mgroup")
    addresses = _addresses(line, found, "mgroup")
    if addresses is None:
        return None
    return Mgroup(line.where, iif, *addresses)


class _Reader:
    """Reads a config file and everything it includes, depth first."""

    def __init__(self) -> None:
        self.directives: list[Directive] = []
        self.diagnostics: list[Diagnostic] = []
        self.stack: list[str] = []  # real paths being read: the include-loop guard
        self.includes: dict[str, Where] = {}

    def file(self, path: str, where: Where | None = None) -> None:
        if where is not None:
            self.includes.setdefault(path, where)
        text = self._load(path, where)
        if text is not None:
            self.stack.append(os.path.realpath(path))
            self.text(text, path)
            self.stack.pop()

    def _load(self, path: str, where: Where | None) -> str | None:
        def fail(message: str) -> None:
            self.diagnostics.append(Diagnostic(message, where))

        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE + 1)
        except FileNotFoundError:
            fail(f"Configuration file {path} does not exist")
        except IsADirectoryError:
            fail(f"Failed opening {path}: is a directory")
        except OSError as exc:
            fail(f"Failed opening {path}: {os.strerror(exc.errno or 0)}")
        else:
            if len(data) > MAX_FILE:
                fail(f"Failed reading {path}: larger than {MAX_FILE} bytes")
                return None
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data[:exc.start].count(b"\n") + 1
                self.diagnostics.append(Diagnostic("not UTF-8 text", Where(path, line)))
        return None

    def include(self, line: _Line) -> None:
        if len(line.tokens) < 2:
            line.warn("include: missing file pattern")
            return
        pattern = line.tokens[1]
        if not os.path.isabs(pattern):  # relative to the including file, not the cwd
            pattern = os.path.join(glob.escape(os.path.dirname(line.where.file)), pattern)
        for path in sorted(glob.glob(pattern)):  # glob(3) order: sorted bytewise
            if os.path.realpath(path) in self.stack:
                line.error(f"include loop: {path} is already being read")
            elif len(self.stack) >= MAX_INCLUDE_DEPTH:
                line.error(f"include: nested more than {MAX_INCLUDE_DEPTH} deep at {path}")
            else:
                self.file(path, line.where)

    def text(self, text: str, filename: str) -> None:
        for number, raw in enumerate(text.split("\n"), start=1):
            line = _Line(Where(filename, number), [], self.diagnostics)
            if len(raw.rstrip("\r")) > MAX_LINE:
                line.error(f"line too long ({len(raw)} characters, at most {MAX_LINE})")
                continue
            if "\0" in raw:
                line.error("binary data (NUL byte) in line")
                continue
            line.tokens = tokenize(raw)
            if line.tokens:
                self.line(line)

    def line(self, line: _Line) -> None:
        word = line.tokens[0]
        directive = _match(word, DIRECTIVES)
        try:
            if directive is None:
                line.warn(f"Unknown command {word}, skipping.")
            elif directive == "include":
                self.include(line)
            else:
                parse = {"phyint": _phyint, "mroute": _mroute}.get(directive, _mgroup)
                result = parse(line)
                if result:
                    self.directives.append(result)
        except ConfigError as exc:
            line.error(str(exc))

    def config(self) -> Config:
        return Config(tuple(self.directives), tuple(self.diagnostics),
                      tuple(self.includes.items()))


def parse_text(text: str, filename: str) -> Config:
    """Parse a whole configuration; every problem becomes a Diagnostic.

    include lines are followed (relative to filename's directory).
    """
    reader = _Reader()
    reader.stack.append(os.path.realpath(filename))
    reader.text(text, filename)
    return reader.config()


def read_config(path: str) -> Config:
    """Read and parse path and its includes; an unreadable file is an error naming it."""
    reader = _Reader()
    reader.file(path)
    return reader.config()
