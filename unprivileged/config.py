"""smcroute.conf parser (SPEC section 2): pure functions from text to Config.

Nothing here touches the system except read_config(), which only reads the
file. Every diagnostic names file and line; nothing but ConfigError-free
values come out, whatever the input.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import ipaddress
import itertools
import os
import socket
import stat
from dataclasses import dataclass
from typing import NamedTuple

from smcroute.policy.limits import MAX_OIFS
from smcroute.policy.ops import is_multicast
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
MAX_INCLUDE_DEPTH = 16
MAX_FILES = 256
MAX_LINES = 100_000
MAX_BYTES = 16 * 1024 * 1024
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

    def error(self, message: str) -> None:
        self.diagnostics.append(Diagnostic(message, self.where))


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


def _threshold(ifname: str, value: object) -> int | None:
    if value is None:
        return None
    text = str(value)
    if text.isdigit() and text.isascii() and 1 <= int(text) <= 255:
        return int(text)
    raise ConfigError(f"phyint {ifname} ttl {text} out of range (1-255)")


def _phyint(line: _Line) -> Phyint:
    if len(line.tokens) < 2:
        raise ConfigError("phyint missing interface pattern")
    ifname = line.tokens[1]
    check_ifname(ifname)
    found = _scan(line, 2)
    return Phyint(line.where, ifname, found.get("enable"),  # type: ignore[arg-type]
                  bool(found.get("mrdisc")), _threshold(ifname, found.get("ttl-threshold")))


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


def _addresses(found: dict[str, object], what: str) -> tuple[Prefix | None, Prefix]:
    """addresses() of a config line, its errors named by the directive."""
    source = found.get("source")
    try:
        return addresses(None if source is None else str(source), str(found["group"]), what)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(f"{what}: "):
            message = f"{what}: {message}"
        raise ConfigError(f"{message}, skipping line") from None


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


def _mroute(line: _Line) -> Mroute:
    key = tuple(line.tokens)
    hit = _MROUTE_CACHE.get(key)
    if hit is not None:
        return Mroute(line.where, *hit)
    rule = _parse_mroute(line)  # (a line in error raises: nothing is cached)
    if len(_MROUTE_CACHE) >= _MROUTE_CACHE_MAX:
        _MROUTE_CACHE.clear()
    _MROUTE_CACHE[key] = (rule.iif, rule.source, rule.group, rule.oifs)
    return rule


def _parse_mroute(line: _Line) -> Mroute:
    found = _scan(line, 0)
    iif = _required(found, "mroute")
    oifs = tuple(str(o) for o in found.get("to", ()))  # type: ignore[union-attr]
    if len(oifs) > MAX_OIFS:
        raise ConfigError(f"mroute: {len(oifs)} outbound interfaces, at most {MAX_OIFS}")
    for oif in oifs:
        check_ifname(oif)
    return Mroute(line.where, iif, *_addresses(found, "mroute"), oifs)


def _mgroup(line: _Line) -> Mgroup:
    found = _scan(line, 0)
    iif = _required(found, "mgroup")
    return Mgroup(line.where, iif, *_addresses(found, "mgroup"))


class Limits(NamedTuple):
    """How much configuration one read may take (smcroute.conf(5), LIMITS):
    a hostile or broken include tree costs bounded time and memory."""

    depth: int = MAX_INCLUDE_DEPTH  # include nesting
    files: int = MAX_FILES  # files read, the main one included
    lines: int = MAX_LINES  # lines in all of them
    size: int = MAX_BYTES  # bytes in all of them


def _pseudo_devices() -> frozenset[int]:
    """Devices of /proc and /sys: their "regular files" are kernel state,
    generated on read (some block, some are endless), never configuration."""
    devs = set()
    for path in ("/proc", "/sys"):
        try:
            devs.add(os.stat(path).st_dev)
        except OSError:
            pass
    return frozenset(devs)


_KINDS = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO"),
          (stat.S_ISSOCK, "is a socket"), (stat.S_ISCHR, "is a character device"),
          (stat.S_ISBLK, "is a block device"))


def _refusal(st: os.stat_result, pseudo: frozenset[int]) -> str | None:
    """Why this file is not read as configuration, if it is not."""
    for test, text in _KINDS:
        if test(st.st_mode):
            return text
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_dev in pseudo:
        return "is a kernel (/proc or /sys) file, not a regular file"
    return None


def root_only(st: os.stat_result) -> bool:
    """Only root may read it: root's, and no read bit for anyone else (a
    group's only if the group is root's)."""
    mode = st.st_mode
    return st.st_uid == 0 and not mode & stat.S_IROTH and not (
        mode & stat.S_IRGRP and st.st_gid != 0)


class _Reader:
    """Reads a config file and everything it includes, depth first, within
    limits. Only regular files are read: a FIFO, device, socket, directory
    or /proc file is refused before anything is read from it (opening
    never blocks: O_NONBLOCK)."""

    def __init__(self, limits: Limits | None = None, root_files: bool = True) -> None:
        self.limits = limits or Limits()
        self.root_files = root_files  # False: refuse files only root may read
        self.directives: list[Directive] = []
        self.diagnostics: list[Diagnostic] = []
        self.stack: list[tuple[int, int]] = []  # (dev, inode) being read: the loop guard
        self.includes: dict[str, Where] = {}
        self.files = 0
        self.lines = 0
        self.size = 0
        self.full = False  # a limit was reached: read nothing more
        self.pseudo = _pseudo_devices()

    def file(self, path: str, where: Where | None = None) -> None:
        if where is not None:
            self.includes.setdefault(path, where)
        text = self._load(path, where)
        if text is not None:
            self.text(text, path)
            self.stack.pop()

    def _over(self, what: str, limit: int, where: Where | None, path: str = "") -> None:
        self.full = True
        at = f" at {path}" if path else ""
        self.diagnostics.append(Diagnostic(
            f"configuration too large{at}: more than {limit} {what} with its includes,"
            " the rest is not read", where))

    def _load(self, path: str, where: Where | None) -> str | None:
        """The file's text, on the include stack; None (said why) if not read."""
        def fail(message: str) -> None:
            self.diagnostics.append(Diagnostic(message, where))

        if self.files >= self.limits.files:
            self._over("files", self.limits.files, where, path)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            fail(f"Configuration file {path} does not exist")
            return None
        except OSError as exc:
            fail(f"Failed opening {path}: {os.strerror(exc.errno or 0)}")
            return None
        try:
            st = os.fstat(fd)
            if (why := _refusal(st, self.pseudo)) is not None:
                fail(f"Failed opening {path}: {why}")
                return None
            if not self.root_files and root_only(st):
                fail(f"Failed opening {path}: only root may read it, and smcrouted reads its"
                     " configuration without root's rights (see -p in smcrouted(8))")
                return None
            if (st.st_dev, st.st_ino) in self.stack:
                fail(f"include loop: {path} is already being read")
                return None
            room = self.limits.size - self.size
            data = _read(fd, room + 1)
        except OSError as exc:
            fail(f"Failed reading {path}: {os.strerror(exc.errno or 0)}")
            return None
        finally:
            os.close(fd)
        self.files += 1
        if len(data) > room:
            self._over("bytes", self.limits.size, where, path)
            return None
        self.size += len(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            self.diagnostics.append(Diagnostic("not UTF-8 text", Where(path, line)))
            return None
        self.stack.append((st.st_dev, st.st_ino))
        return text

    def include(self, line: _Line) -> None:
        if len(line.tokens) < 2:
            line.error("include: missing file pattern")
            return
        pattern = line.tokens[1]
        if not os.path.isabs(pattern):  # relative to the including file, not the cwd
            pattern = os.path.join(glob.escape(os.path.dirname(line.where.file)), pattern)
        # glob(3) order: sorted bytewise; more matches than files may be read is an error
        matches = sorted(itertools.islice(glob.iglob(pattern), self.limits.files + 1))
        if len(matches) > self.limits.files:
            self._over("files", self.limits.files, line.where, pattern)
            return
        for path in matches:
            if self.full:
                return
            if len(self.stack) >= self.limits.depth:
                line.error(f"include: nested more than {self.limits.depth} deep at {path}")
            else:
                self.file(path, line.where)

    def text(self, text: str, filename: str) -> None:
        for number, raw in enumerate(text.split("\n"), start=1):
            if self.full:
                return
            self.lines += 1
            line = _Line(Where(filename, number), [], self.diagnostics)
            if self.lines > self.limits.lines:
                self._over("lines", self.limits.lines, line.where)
                return
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
                line.error(f"Unknown command {word}, skipping.")
            elif directive == "include":
                self.include(line)
            else:
                parse = {"phyint": _phyint, "mroute": _mroute}.get(directive, _mgroup)
                self.directives.append(parse(line))
        except ConfigError as exc:
            line.error(str(exc))

    def config(self) -> Config:
        return Config(tuple(self.directives), tuple(self.diagnostics),
                      tuple(self.includes.items()))


def _read(fd: int, most: int) -> bytes:
    """Up to most bytes of a regular file."""
    chunks = []
    while most > 0:
        chunk = os.read(fd, min(most, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        most -= len(chunk)
    return b"".join(chunks)


def parse_text(text: str, filename: str, limits: Limits | None = None) -> Config:
    """Parse a whole configuration; every problem becomes a Diagnostic.

    include lines are followed (relative to filename's directory).
    """
    reader = _Reader(limits)
    with contextlib.suppress(OSError):
        st = os.stat(filename)
        reader.stack.append((st.st_dev, st.st_ino))
    reader.text(text, filename)
    return reader.config()


def read_config(path: str, limits: Limits | None = None, root_files: bool = True) -> Config:
    """Read and parse path and its includes; an unreadable file is an error
    naming it. root_files=False: so is a file only root may read (the
    daemon at uid 0, where its own rights would not stop it)."""
    reader = _Reader(limits, root_files)
    reader.file(path)
    return reader.config()
