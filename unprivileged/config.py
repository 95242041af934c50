"""smcroute.conf parser (SPEC section 2): pure functions from text to Config.

Nothing here touches the system except read_config(), which only reads the
file. Every diagnostic names file and line; nothing but ConfigError-free
values come out, whatever the input.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from smcroute.unprivileged.model import (
    Config,
    Diagnostic,
    Directive,
    Mroute,
    Phyint,
    Prefix,
    Where,
)

MAX_LINE = 511  # SMCRoute's line buffer holds 511 characters
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


def tokenize(line: str) -> list[str]:
    """Split on C isspace characters; a token starting with # ends the line."""
    tokens: list[str] = []
    for token in line.translate({ord(c): " " for c in WHITESPACE}).split(" "):
        if not token:
            continue
        if token.startswith("#"):
            break
        tokens.append(token)
    return tokens


def _match(token: str, names: tuple[str, ...]) -> str | None:
    """SMCRoute matches keywords by prefix: "groups" is "group"."""
    for name in names:
        if token.startswith(name):
            return name
    return None


def parse_prefix(text: str, what: str) -> Prefix:
    """ADDR[/LEN] -> Prefix; LEN absent or 0 means the full length."""
    addr_text, slash, len_text = text.partition("/")
    if "%" in addr_text:
        raise ConfigError(f"Invalid {what} address: {text} (scope ids are not allowed)")
    try:
        address = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ConfigError(f"Invalid {what} address: {text}") from None
    if ":" not in addr_text and address.version == 6:  # cannot happen, kept explicit
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


def _mroute(line: _Line) -> Mroute | None:
    found = _scan(line, 0)
    iif = found.get("from")
    group_text = found.get("group")
    if iif is None:
        raise ConfigError("mroute: missing inbound interface, expected: from IFNAME")
    if group_text is None:
        raise ConfigError("mroute: missing multicast group, expected: group ADDR[/LEN]")
    check_ifname(str(iif))
    oifs = tuple(str(o) for o in found.get("to", ()))  # type: ignore[union-attr]
    for oif in oifs:
        check_ifname(oif)
    try:
        group = parse_prefix(str(group_text), "multicast group")
        source = None
        if "source" in found:
            source = parse_prefix(str(found["source"]), "source")
    except ConfigError as exc:
        line.warn(f"mroute: {exc}, skipping line")
        return None
    if not group.address.is_multicast:
        line.warn(f"mroute: Invalid multicast group: {group_text}, skipping line")
        return None
    if source is not None:
        if source.family != group.family:
            line.warn(f"mroute: source {source} and group {group} are of different address"
                      " families, skipping line")
            return None
        if source.address.is_unspecified:
            source = None  # source 0.0.0.0 / :: is the same as no source
        elif source.address.is_multicast or str(source.address) == "255.255.255.255":
            line.warn(f"mroute: Invalid source address: {source}, skipping line")
            return None
    rule = Mroute(line.where, str(iif), source, group, oifs)
    if not rule.is_ssm:
        raise ConfigError("mroute: (*,G) and prefix-range rules are not supported yet,"
                          " only source-specific (S,G) routes")
    return rule


def parse_text(text: str, filename: str) -> Config:
    """Parse a whole configuration; every problem becomes a Diagnostic."""
    directives: list[Directive] = []
    diagnostics: list[Diagnostic] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = _Line(Where(filename, number), [], diagnostics)
        if len(raw.rstrip("\r")) > MAX_LINE:
            line.error(f"line too long ({len(raw)} characters, at most {MAX_LINE})")
            continue
        if "\0" in raw:
            line.error("binary data (NUL byte) in line")
            continue
        line.tokens = tokenize(raw)
        if not line.tokens:
            continue
        word = line.tokens[0]
        directive = _match(word, DIRECTIVES)
        try:
            if directive is None:
                line.warn(f"Unknown command {word}, skipping.")
            elif directive == "phyint":
                phyint = _phyint(line)
                if phyint:
                    directives.append(phyint)
            elif directive == "mroute":
                mroute = _mroute(line)
                if mroute:
                    directives.append(mroute)
            else:
                line.error(f"{directive} is not supported yet")
        except ConfigError as exc:
            line.error(str(exc))
    return Config(tuple(directives), tuple(diagnostics))


def read_config(path: str) -> Config:
    """Read and parse path; an unreadable file is one error naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return Config((), (Diagnostic(f"Configuration file {path} does not exist"),))
    except IsADirectoryError:
        return Config((), (Diagnostic(f"Failed opening {path}: is a directory"),))
    except OSError as exc:
        return Config((), (Diagnostic(f"Failed opening {path}: {os.strerror(exc.errno or 0)}"),))
    if len(data) > MAX_FILE:
        return Config((), (Diagnostic(f"{path}: larger than {MAX_FILE} bytes"),))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return Config((), (Diagnostic("not UTF-8 text", Where(path, line)),))
    return parse_text(text, path)
