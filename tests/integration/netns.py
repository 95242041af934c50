"""Network namespaces, veth links and multicast traffic for integration tests.

Everything here runs as root and touches only namespaces it created itself:
links are created directly inside their namespaces (never in the caller's),
and every socket that sends or receives multicast is opened inside a test
namespace (pyroute2 forks a child into the namespace to create it), so no
traffic ever leaves them.  Every wait is bounded.

Plain library, no pytest: ``scripts/demo_traffic.py`` uses it too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pyroute2 import IPRoute
from pyroute2.netns import create_socket

PREFIX = "smcpy-"
NETNS_DIR = "/run/netns"

# rtm_family of the kernel's multicast routing tables (linux/rtnetlink.h).
# Bounds a test puts on how long the daemon takes to answer are for a real
# CPU; scripts/test.sh sets this to 10 when the tests run under emulation.
TIME_SCALE = float(os.environ.get("SMCROUTE_TEST_TIME_SCALE", "1") or 1)
RTNL_FAMILY_IPMR = 128
RTNL_FAMILY_IP6MR = 129
MR_FAMILY = {socket.AF_INET: RTNL_FAMILY_IPMR, socket.AF_INET6: RTNL_FAMILY_IP6MR}


class CommandError(RuntimeError):
    pass


def run(argv: Sequence[str], *, timeout: float = 10.0, check: bool = True) -> str:
    """Run a command, return its stdout; raise CommandError naming it on failure."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise CommandError(f"exit {proc.returncode}: {' '.join(argv)}\n{proc.stderr.strip()}")
    return proc.stdout


def family_of(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def netns_available() -> tuple[bool, str]:
    """Whether this process can create network namespaces, and why not."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, multicast routing)"
    try:
        run(["ip", "netns", "list"], timeout=5)
    except (OSError, CommandError) as exc:
        return False, f"'ip netns' is unavailable: {exc}"
    return True, ""


def list_netns(prefix: str = PREFIX) -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def pids_in_netns(name: str) -> list[int]:
    """PIDs of processes whose network namespace is the named one."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_pid(pid: int, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after timeout; by PID only."""
    for sig, wait in ((15, timeout), (9, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def remove_stale_netns(prefix: str = PREFIX) -> list[str]:
    """Delete leftover namespaces of test runs that no longer exist.

    Names are PREFIX + creating pid + '-' + ..., so namespaces of a run that is
    still alive (a parallel session) are left alone.
    """
    removed = []
    for name in list_netns(prefix):
        owner = name[len(prefix) :].split("-", 1)[0]
        if not owner.isdigit() or pid_alive(int(owner)):
            continue  # not named by this library, or its run is still going
        for pid in pids_in_netns(name):
            kill_pid(pid)
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy or ``timeout``
    passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as {field: value}."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


class Netns:
    """A named network namespace (``ip netns``) created by this process."""

    def __init__(self, name: str):
        if len(name) > 200 or "/" in name:
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name
        self._ifindex: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def create(self) -> Netns:
        run(["ip", "netns", "add", self.name])
        # Link-local addresses usable at once; no DAD delays for anything.
        self.sysctl(
            {
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
            }
        )
        self.ip("link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        """Kill what still runs in the namespace (by PID), then delete it."""
        for pid in pids_in_netns(self.name):
            kill_pid(pid)
        run(["ip", "netns", "del", self.name], check=False)

    def exists(self) -> bool:
        return os.path.exists(os.path.join(NETNS_DIR, self.name))

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])

    def exec(self, *argv: str, timeout: float = 10.0, check: bool = True) -> str:
        return run(["ip", "netns", "exec", self.name, *argv], timeout=timeout, check=check)

    def sysctl(self, settings: Mapping[str, str]) -> None:
        """Set net.* sysctls of this namespace (via /proc/sys; no procps needed)."""
        script = " && ".join(
            f"echo {value} >/proc/sys/{key.replace('.', '/')}" for key, value in settings.items()
        )
        self.exec("sh", "-c", script)

    def iproute(self) -> IPRoute:
        """A pyroute2 IPRoute bound to this namespace (flags=0: never create it)."""
        return IPRoute(netns=self.name, flags=0)

    def ifindex(self, ifname: str) -> int:
        if ifname not in self._ifindex:
            with self.iproute() as ipr:
                found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise LookupError(f"no interface {ifname} in {self.name}")
            self._ifindex[ifname] = found[0]
        return self._ifindex[ifname]

    def forget_ifindex(self, *ifnames: str) -> None:
        """Drop cached ifindexes (the interface was deleted or re-created)."""
        for name in ifnames:
            self._ifindex.pop(name, None)

    def ifnames(self) -> dict[int, str]:
        with self.iproute() as ipr:
            return {link["index"]: link.get("ifname") for link in ipr.get_links()}

    def socket(self, family: int, type_: int = socket.SOCK_DGRAM, proto: int = 0):
        """A socket that lives in this namespace (the caller stays where it is)."""
        return create_socket(self.name, family, type_, proto, flags=0)


class MfcEntry(NamedTuple):
    """One kernel MFC entry; compares equal to a plain 4-tuple."""

    source: str
    group: str
    iif: str | None
    oifs: frozenset[str]


def read_mfc(ns: Netns, family: int, table: int | None = None) -> set[MfcEntry]:
    """The multicast forwarding cache of a namespace, read over rtnetlink.

    Returns {(source, group, iif_name, frozenset(oif_names))} with addresses in
    canonical text form.  ``table`` restricts to one multicast routing table
    (the kernel default is 253 for IPv4 and 254 for IPv6); None means all.
    An entry without inbound interface (unresolved) has iif None.
    """
    names = ns.ifnames()
    entries: set[MfcEntry] = set()
    # attributes are decoded lazily: keep pyroute2 quiet over the whole loop
    with ns.iproute() as ipr, _quiet_pyroute2():
        for msg in ipr.get_routes(family=MR_FAMILY[family]):
            if table is not None and msg.get("table") != table:
                continue
            iif = msg.get("iif")
            oifs = frozenset(
                names.get(hop["oif"], f"#{hop['oif']}") for hop in (msg.get("multipath") or [])
            )
            entries.add(
                MfcEntry(
                    _mr_addr(family, msg.get("src")),
                    _mr_addr(family, msg.get("dst")),
                    None if iif is None else names.get(iif, f"#{iif}"),
                    oifs,
                )
            )
    return entries


@contextlib.contextmanager
def _quiet_pyroute2():
    # pyroute2 logs a warning with a traceback for every RTA_SRC/RTA_DST of
    # the IPMR/IP6MR families, whose addresses it cannot decode.
    logger = logging.getLogger("pyroute2.netlink")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _mr_addr(family: int, value) -> str:
    """Address of an RTA_SRC/RTA_DST of family 128/129.

    pyroute2 (0.9) cannot decode these and hands back the raw attribute,
    4-byte netlink attribute header included; accept text or bare bytes too.
    """
    if isinstance(value, str):
        return str(ipaddress.ip_address(value))
    size = 4 if family == socket.AF_INET else 16
    raw = bytes(value)
    if len(raw) == size + 4:
        raw = raw[4:]
    if len(raw) != size:
        raise ValueError(f"cannot decode multicast route address {raw!r}")
    return socket.inet_ntop(family, raw)


def mfc_entry(source: str, group: str, iif: str, oifs: Iterable[str]) -> MfcEntry:
    return MfcEntry(
        str(ipaddress.ip_address(source)), str(ipaddress.ip_address(group)), iif, frozenset(oifs)
    )


# --------------------------------------------------------------------------
# Topology


@dataclass(frozen=True)
class Link:
    """A veth pair: ``local`` in namespace ``ns`` <-> ``peer`` in ``peer_ns``."""

    ns: Netns
    ifname: str
    peer_ns: Netns
    peer_ifname: str
    addr4: str  # interface address in ns, "10.0.1.1/24"
    peer_addr4: str
    addr6: str
    peer_addr6: str

    @property
    def ip4(self) -> str:
        return self.addr4.split("/")[0]

    @property
    def peer_ip4(self) -> str:
        return self.peer_addr4.split("/")[0]

    @property
    def ip6(self) -> str:
        return self.addr6.split("/")[0]

    @property
    def peer_ip6(self) -> str:
        return self.peer_addr6.split("/")[0]

    def peer_ip(self, family: int) -> str:
        return self.peer_ip6 if family == socket.AF_INET6 else self.peer_ip4


def veth(ns: Netns, ifname: str, peer_ns: Netns, peer_ifname: str, net: int) -> Link:
    """Create a veth pair between two namespaces on subnet number ``net``.

    ``ns`` gets 10.0.NET.1/24 and fd00:NET::1/64, ``peer_ns`` .2 and ::2.
    IPv6 addresses are 'nodad'.  Both ends and their peers are set up.
    """
    for name in (ifname, peer_ifname):
        if not 0 < len(name) <= 15:
            raise ValueError(f"bad interface name {name!r}")
    link = Link(
        ns,
        ifname,
        peer_ns,
        peer_ifname,
        f"10.0.{net}.1/24",
        f"10.0.{net}.2/24",
        f"fd00:{net:x}::1/64",
        f"fd00:{net:x}::2/64",
    )
    ns.ip("link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", peer_ns.name)
    for side, name, a4, a6 in (
        (ns, ifname, link.addr4, link.addr6),
        (peer_ns, peer_ifname, link.peer_addr4, link.peer_addr6),
    ):
        side.ip("addr", "add", a4, "dev", name)
        side.ip("-6", "addr", "add", a6, "dev", name, "nodad")
        side.ip("link", "set", name, "up")
    return link


def wait_links_ready(ifaces: Iterable[tuple[Netns, str]], timeout: float = 10.0) -> None:
    """Wait until every (ns, ifname) has carrier and IPv6 is configured on it.

    A fresh veth drops received IPv6 multicast until the kernel has processed
    the carrier change (up to ~1 s, linkwatch) and added ff00::/8 to the local
    table; IPv4 works earlier.  Poll both facts, bounded.
    """
    pending = {(ns.name, ifname): ns for ns, ifname in ifaces}
    deadline = time.monotonic() + timeout
    while True:
        for key, ns in list(pending.items()):
            if _link_ready(ns, key[1]):
                del pending[key]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"links not ready after {timeout}s: {sorted(pending)}")
        time.sleep(0.05)


def _link_ready(ns: Netns, ifname: str) -> bool:
    index = ns.ifindex(ifname)
    with ns.iproute() as ipr:
        links = ipr.get_links(index)
        if not links or links[0].get("operstate") != "UP":
            return False
        routes = ipr.get_routes(family=socket.AF_INET6, table=255)
    return any(
        r.get("dst") == "ff00::" and r["dst_len"] == 8 and r.get("oif") == index for r in routes
    )


@dataclass
class Topology:
    """Sender S -- router R -- receivers, one veth pair per receiver.

    Router-side interfaces are named r-<role>, the far ends <role>-r (lower
    case).  Link i (1 = sender) uses 10.0.i.0/24 and fd00:i::/64, router .1.
    Receivers and the sender have default routes via the router.
    """

    tag: str
    receivers: tuple[str, ...] = ("A", "B", "C")
    ns: dict[str, Netns] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)

    @classmethod
    def build(cls, receivers: Sequence[str] = ("A", "B", "C"), tag: str | None = None):
        tag = tag or f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        topo = cls(tag, tuple(receivers))
        try:
            topo._build()
        except BaseException:
            topo.destroy()
            raise
        return topo

    def _build(self) -> None:
        for role in ("S", "R", *self.receivers):
            self.ns[role] = Netns(f"{self.tag}-{role}")
            self.ns[role].create()
        router = self.ns["R"]
        for net, role in enumerate(("S", *self.receivers), start=1):
            low = role.lower()
            link = veth(router, f"r-{low}", self.ns[role], f"{low}-r", net)
            self.links[role] = link
            leaf = self.ns[role]
            leaf.ip("route", "add", "default", "via", link.ip4)
            leaf.ip("-6", "route", "add", "default", "via", link.ip6)
        ends = []
        for link in self.links.values():
            ends += [(link.ns, link.ifname), (link.peer_ns, link.peer_ifname)]
        wait_links_ready(ends)

    def destroy(self) -> None:
        for ns in reversed(list(self.ns.values())):
            ns.delete()

    @property
    def router(self) -> Netns:
        return self.ns["R"]

    @property
    def sender(self) -> Netns:
        return self.ns["S"]

    def rif(self, role: str) -> str:
        """Router interface facing ``role``."""
        return self.links[role].ifname

    def leaf_if(self, role: str) -> str:
        return self.links[role].peer_ifname

    def source(self, family: int) -> str:
        """The sender's address, as seen by the router on r-s."""
        return self.links["S"].peer_ip(family)

    def connect(self, role: str, net: int, wait: bool = True) -> Link:
        """After build: link namespace ``role`` (created, and destroyed with
        the topology, if it is new) to the router as r-<role> / <role>-r on
        subnet ``net``, with default routes via the router, like build()
        does.  Also re-creates the link of a role whose link was deleted.
        With ``wait``, returns once both ends are ready (wait_links_ready).
        """
        if role not in self.ns:
            self.ns[role] = Netns(f"{self.tag}-{role}")
            self.ns[role].create()
        leaf, low = self.ns[role], role.lower()
        self.router.forget_ifindex(f"r-{low}")
        leaf.forget_ifindex(f"{low}-r")
        link = veth(self.router, f"r-{low}", leaf, f"{low}-r", net)
        self.links[role] = link
        leaf.ip("route", "replace", "default", "via", link.ip4)
        leaf.ip("-6", "route", "replace", "default", "via", link.ip6)
        if wait:
            wait_links_ready([(self.router, link.ifname), (leaf, link.peer_ifname)])
        return link

    def disconnect(self, role: str) -> None:
        """Delete role's veth pair (both ends go); its namespace stays."""
        link = self.links.pop(role)
        self.router.ip("link", "del", link.ifname)
        self.router.forget_ifindex(link.ifname)
        link.peer_ns.forget_ifindex(link.peer_ifname)


# --------------------------------------------------------------------------
# Traffic


class Receiver:
    """A UDP socket in ``ns`` joined to ``group`` on ``ifname``, counting datagrams.

    Only datagrams whose payload starts with ``marker`` count.
    """

    def __init__(self, ns: Netns, ifname: str, group: str, port: int, marker: bytes):
        self.ns, self.ifname, self.group, self.port = ns, ifname, group, port
        self.marker = marker
        self.count = 0
        self.family = family_of(group)
        index = ns.ifindex(ifname)
        sock = ns.socket(self.family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            grp = socket.inet_pton(self.family, group)
            if self.family == socket.AF_INET:
                sock.bind((group, port))
                mreqn = struct.pack("4s4si", grp, bytes(4), index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            else:
                sock.bind((group, port))
                mreq = grp + struct.pack("@I", index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def __repr__(self) -> str:
        return f"Receiver({self.ns.name}/{self.ifname} {self.group}:{self.port})"

    def drain(self) -> int:
        """Read what is queued now; return the running count."""
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return self.count
            if data.startswith(self.marker):
                self.count += 1

    def close(self) -> None:
        self.sock.close()


def send(
    ns: Netns,
    source: str,
    group: str,
    port: int,
    count: int,
    marker: bytes,
    ifname: str,
    ttl: int = 8,
    interval: float = 0.002,
) -> int:
    """Send ``count`` datagrams from ``source`` (bound) out of ``ifname``; return count."""
    family = family_of(group)
    index = ns.ifindex(ifname)
    with ns.socket(family) as sock:
        if family == socket.AF_INET:
            sock.bind((source, 0))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            mreqn = struct.pack("4s4si", bytes(4), socket.inet_aton(source), index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            dest: tuple = (group, port)
        else:
            sock.bind((source, 0, 0, 0))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            dest = (group, port, 0, index)
        for seq in range(count):
            sock.sendto(marker + b" %d" % seq, dest)
            if interval:
                time.sleep(interval)
    return count


def collect(
    receivers: Mapping[str, Receiver],
    expect: Mapping[str, int],
    timeout: float = 3.0,
    settle: float = 0.3,
) -> dict[str, int]:
    """Poll receivers until each has at least its expected count (bounded by
    ``timeout``), then keep reading for ``settle`` seconds so that extra or
    unexpected datagrams are counted too.  Returns {name: count}."""
    deadline = time.monotonic() + timeout
    socks = [r.sock for r in receivers.values()]
    while time.monotonic() < deadline:
        counts = {name: r.drain() for name, r in receivers.items()}
        if all(counts[name] >= n for name, n in expect.items()):
            break
        select.select(socks, [], [], 0.05)
    end = time.monotonic() + settle
    while (left := end - time.monotonic()) > 0:
        select.select(socks, [], [], min(left, 0.05))
        for r in receivers.values():
            r.drain()
    return {name: r.drain() for name, r in receivers.items()}


def new_marker() -> bytes:
    return b"smcpy-" + secrets.token_hex(6).encode()


def flow(
    topo: Topology,
    group: str,
    listeners: Sequence[str],
    expect: Mapping[str, int],
    count: int = 20,
    port: int = 5000,
    timeout: float = 3.0,
    source: str | None = None,
) -> dict[str, int]:
    """Join ``group`` on each listener's leaf interface, send ``count``
    datagrams from ``source`` (default: the sender's first address) and
    return what each listener received."""
    family = family_of(group)
    marker = new_marker()
    receivers: dict[str, Receiver] = {}
    try:
        for role in listeners:
            receivers[role] = Receiver(topo.ns[role], topo.leaf_if(role), group, port, marker)
        source = source or topo.source(family)
        send(topo.sender, source, group, port, count, marker, topo.leaf_if("S"))
        return collect(receivers, expect, timeout=timeout)
    finally:
        for r in receivers.values():
            r.close()


# --------------------------------------------------------------------------
# Long-lived senders and the MFC as /proc shows it ((*,G) tests, benchmarks)


class McastSender:
    """A sending socket kept open in ``ns``: bound to ``source``, out of ``ifname``.

    Unlike send(), every datagram goes out of the same socket, so a test can
    keep one flow alive across a reload, or send to many groups quickly.
    """

    def __init__(self, ns: Netns, source: str, ifname: str, ttl: int = 8):
        self.ns, self.source, self.ifname = ns, source, ifname
        self.family = family_of(source)
        self.index = ns.ifindex(ifname)
        sock = ns.socket(self.family)
        try:
            if self.family == socket.AF_INET:
                sock.bind((source, 0))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                mreqn = struct.pack("4s4si", bytes(4), socket.inet_aton(source), self.index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            else:
                sock.bind((source, 0, 0, 0))
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def __repr__(self) -> str:
        return f"McastSender({self.ns.name}/{self.ifname} from {self.source})"

    def dest(self, group: str, port: int) -> tuple:
        if self.family == socket.AF_INET:
            return (group, port)
        return (group, port, 0, self.index)

    def send(self, group: str, port: int, payload: bytes) -> None:
        self.sock.sendto(payload, self.dest(group, port))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> McastSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Ticker:
    """Send one datagram to each group in ``groups`` every ``interval`` seconds,
    from a thread, until stop() or ``limit`` seconds have passed (bounded).

    ``groups`` may be reassigned while it runs.  Payloads are ``marker`` and
    a sequence number, like send()'s, so a Receiver with the same marker
    counts them.
    """

    def __init__(self, sender: McastSender, groups: Sequence[str], port: int, marker: bytes,
                 interval: float = 0.05, limit: float = 30.0):
        self.sender, self.port, self.marker = sender, port, marker
        self.groups = tuple(groups)
        self.interval, self.limit = interval, limit
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ticker-{marker!r}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                for group in self.groups:
                    self.sender.send(group, self.port, self.marker + b" %d" % self.sent)
                    self.sent += 1
                self._stop.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sending; return how many datagrams went out."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self.error is not None:
            raise RuntimeError(f"{self!r} failed") from self.error
        return self.sent

    def __repr__(self) -> str:
        return f"Ticker({self.sender!r} -> {self.groups} every {self.interval}s)"

    def __enter__(self) -> Ticker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)


class MrCacheEntry(NamedTuple):
    """One line of /proc/net/ip_mr_cache or ip6_mr_cache.

    ``iif`` is the inbound VIF/MIF number, -1 while unresolved (the kernel
    waits for the daemon); ``oifs`` are (vif, ttl) pairs.
    """

    source: str
    group: str
    iif: int
    packets: int
    bytes: int
    wrong_if: int
    oifs: tuple[tuple[int, int], ...]

    @property
    def resolved(self) -> bool:
        return self.iif >= 0


def read_mr_cache(pid: int, family: int) -> list[MrCacheEntry]:
    """The MFC of the network namespace of process ``pid``, with counters.

    Cheaper than read_mfc() (a file read, no netlink child), so it suits
    polling; interfaces are VIF numbers here, not names.
    """
    name = "ip6_mr_cache" if family == socket.AF_INET6 else "ip_mr_cache"
    with open(f"/proc/{pid}/net/{name}") as f:
        lines = f.read().splitlines()[1:]
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        group, source = fields[0], fields[1]
        if family == socket.AF_INET:
            # the kernel prints the big-endian address as a host-order integer
            group, source = (
                socket.inet_ntoa(int(a, 16).to_bytes(4, sys.byteorder)) for a in (group, source)
            )
        else:
            group, source = (str(ipaddress.ip_address(a)) for a in (group, source))
        oifs = tuple(
            (int(vif), int(ttl)) for vif, ttl in (o.split(":") for o in fields[6:])
        )
        entries.append(
            MrCacheEntry(source, group, int(fields[2]), int(fields[3]), int(fields[4]),
                         int(fields[5]), oifs)
        )
    return entries


def read_mr_vifs(pid: int) -> dict[int, dict[str, int]]:
    """{family: {ifname: vif}} of the default multicast routing table of
    pid's namespace, from /proc/PID/net/ip_mr_vif and ip6_mr_vif."""
    out: dict[int, dict[str, int]] = {}
    for family, name in ((socket.AF_INET, "ip_mr_vif"), (socket.AF_INET6, "ip6_mr_vif")):
        with open(f"/proc/{pid}/net/{name}") as f:
            rows = [row.split() for row in f.read().splitlines()[1:]]  # heading first
        out[family] = {row[1]: int(row[0]) for row in rows if len(row) >= 2}
    return out


# --------------------------------------------------------------------------
# Group memberships as /proc shows them, and IGMP/MLD reports on the wire


def _host_hex_ip4(text: str) -> str:
    """An IPv4 address the kernel printed as its big-endian value read as a
    host-order integer (/proc/net/igmp, ip_mr_cache)."""
    return socket.inet_ntoa(int(text, 16).to_bytes(4, sys.byteorder))


def read_igmp(pid: int, family: int = socket.AF_INET) -> dict[str, dict[str, int]]:
    """Multicast memberships of pid's network namespace, per interface:
    ``{ifname: {group: users}}`` from /proc/PID/net/igmp (IPv4) or igmp6.

    ``users`` counts the sockets (and kernel users) joined to the group on
    that interface; groups the kernel joins itself (224.0.0.1, ff02::1, ...)
    are included.
    """
    out: dict[str, dict[str, int]] = {}
    if family == socket.AF_INET6:
        with open(f"/proc/{pid}/net/igmp6") as f:
            for line in f:
                fields = line.split()  # idx dev addr users flags timer
                if len(fields) >= 4:
                    group = str(ipaddress.IPv6Address(bytes.fromhex(fields[2])))
                    out.setdefault(fields[1], {})[group] = int(fields[3])
        return out
    device = None
    with open(f"/proc/{pid}/net/igmp") as f:
        next(f, None)  # Idx Device : Count Querier Group Users Timer Reporter
        for line in f:
            if not line.strip():
                continue
            if not line[0].isspace():  # "3\tr-a       :     3      V3"
                device = line.split(":", 1)[0].split()[1]
                out.setdefault(device, {})
                continue
            fields = line.split()  # group users timer reporter
            if device is not None and len(fields) >= 2:
                out[device][_host_hex_ip4(fields[0])] = int(fields[1])
    return out


# A source-specific membership on lo, so that /proc/net/mcfilter(6) is complete.
MCFILTER_SENTINEL = {socket.AF_INET: ("232.255.255.254", "192.0.2.1"),
                     socket.AF_INET6: ("ff3e::ffff:fffe", "2001:db8::1")}
_MCAST_JOIN_SOURCE_GROUP = 46


def _sockaddr_storage(family: int, address: str) -> bytes:
    packed = socket.inet_pton(family, address)
    if family == socket.AF_INET:
        raw = struct.pack("=HH4s", family, 0, packed)
    else:
        raw = struct.pack("=HHI16sI", family, 0, 0, packed, 0)
    return raw.ljust(128, b"\0")


@contextlib.contextmanager
def mcfilter_sentinel(ns: Netns):
    """Hold an (S,G) membership on ns's lo for both families while reading
    /proc/net/mcfilter(6) there.

    The kernel's iterator for these files (igmp_mcf_get_first and its IPv6
    twin) starts at the first device whose *most recently joined* group has
    sources: every device before it is skipped, so an SSM membership on r-a
    vanishes from the file as soon as an ASM group is joined on r-a after
    it.  lo comes first and nothing else joins there, so a sentinel (S,G)
    on lo makes the files list every source filter.  read_mcfilter() leaves
    the sentinel out.
    """
    index = ns.ifindex("lo")
    socks = []
    try:
        for family, (group, source) in MCFILTER_SENTINEL.items():
            sock = ns.socket(family)
            socks.append(sock)
            level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
            req = (struct.pack("=I4x", index) + _sockaddr_storage(family, group)
                   + _sockaddr_storage(family, source))
            sock.setsockopt(level, _MCAST_JOIN_SOURCE_GROUP, req)
        yield
    finally:
        for sock in socks:
            sock.close()


def read_mcfilter(pid: int, family: int = socket.AF_INET
                  ) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Source filters of pid's namespace (SSM joins): ``{(ifname, group,
    source): (include count, exclude count)}`` from /proc/PID/net/mcfilter(6).

    Complete only while mcfilter_sentinel() is held in that namespace (see
    there).  The kernel prints at most 6 characters of each interface name.
    """
    name = "mcfilter6" if family == socket.AF_INET6 else "mcfilter"
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    with open(f"/proc/{pid}/net/{name}") as f:
        next(f, None)  # heading
        for line in f:
            fields = line.split()  # idx dev group source inc exc
            if len(fields) < 6:
                continue
            if family == socket.AF_INET6:
                group, source = (str(ipaddress.IPv6Address(bytes.fromhex(a)))
                                 for a in fields[2:4])
            else:  # "0x%08x" of the address in host order: reads as written
                group, source = (socket.inet_ntoa(int(a, 16).to_bytes(4, "big"))
                                 for a in fields[2:4])
            if (group, source) != MCFILTER_SENTINEL[family]:
                out[(fields[1], group, source)] = (int(fields[4]), int(fields[5]))
    return out


# IGMPv3 / MLDv2 group record types (RFC 3376 4.2.12, RFC 3810 5.2.12)
MODE_IS_INCLUDE, MODE_IS_EXCLUDE = 1, 2
CHANGE_TO_INCLUDE, CHANGE_TO_EXCLUDE = 3, 4
ALLOW_NEW_SOURCES, BLOCK_OLD_SOURCES = 5, 6
IGMP_V2_REPORT, IGMP_V3_REPORT, IGMP_V2_LEAVE = 0x16, 0x22, 0x17
MLD_V1_REPORT, MLD_V2_REPORT, MLD_V1_DONE = 131, 143, 132


class GroupRecord(NamedTuple):
    """One group of an IGMP or MLD report seen on the wire.

    ``kind`` is the message type (0x22 IGMPv3 report, 0x16 IGMPv2 report,
    0x17 IGMPv2 leave, 143 MLDv2 report, 131 MLDv1 report, 132 MLDv1 done);
    ``rtype`` the record type for v3/v2 reports, 0 for the older versions.
    """

    family: int
    sender: str  # IP source of the report
    kind: int
    rtype: int
    group: str
    sources: tuple[str, ...]


def parse_reports(frame: bytes) -> list[GroupRecord]:
    """The group records of an Ethernet frame holding an IGMP or MLD report
    (anything else, or anything truncated, gives [])."""
    try:
        if len(frame) < 14:
            return []
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == 0x0800:
            return _igmp_records(frame[14:])
        if ethertype == 0x86DD:
            return _mld_records(frame[14:])
    except (struct.error, ValueError, IndexError):
        pass
    return []


def _igmp_records(ip: bytes) -> list[GroupRecord]:
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_IGMP:
        return []
    sender = socket.inet_ntoa(ip[12:16])
    msg = ip[(ip[0] & 0x0F) * 4:]
    if len(msg) < 8:
        return []
    kind = msg[0]
    if kind in (IGMP_V2_REPORT, IGMP_V2_LEAVE, 0x12):
        return [GroupRecord(socket.AF_INET, sender, kind, 0, socket.inet_ntoa(msg[4:8]), ())]
    if kind != IGMP_V3_REPORT:
        return []
    (count,) = struct.unpack_from("!H", msg, 6)
    out, off = [], 8
    for _ in range(count):
        rtype, aux, nsrc = struct.unpack_from("!BBH", msg, off)
        if len(msg) < off + 8 + 4 * nsrc:
            raise ValueError("truncated IGMPv3 record")
        group = socket.inet_ntoa(msg[off + 4:off + 8])
        sources = tuple(socket.inet_ntoa(msg[off + 8 + 4 * i:off + 12 + 4 * i])
                        for i in range(nsrc))
        out.append(GroupRecord(socket.AF_INET, sender, kind, rtype, group, sources))
        off += 8 + 4 * nsrc + 4 * aux
    return out


def _mld_records(ip6: bytes) -> list[GroupRecord]:
    if len(ip6) < 40 or ip6[0] >> 4 != 6:
        return []
    sender = str(ipaddress.IPv6Address(ip6[8:24]))
    nxt, off = ip6[6], 40
    while nxt in (0, 60):  # hop-by-hop (router alert), destination options
        nxt, off = ip6[off], off + (ip6[off + 1] + 1) * 8
    if nxt != socket.IPPROTO_ICMPV6:
        return []
    msg = ip6[off:]
    if len(msg) < 8:
        return []
    kind = msg[0]

    def addr6(at: int) -> str:
        raw = msg[at:at + 16]
        if len(raw) != 16:
            raise ValueError("truncated MLD address")
        return str(ipaddress.IPv6Address(raw))

    if kind in (MLD_V1_REPORT, MLD_V1_DONE):
        return [GroupRecord(socket.AF_INET6, sender, kind, 0, addr6(8), ())]
    if kind != MLD_V2_REPORT:
        return []
    (count,) = struct.unpack_from("!H", msg, 6)
    out, at = [], 8
    for _ in range(count):
        rtype, aux, nsrc = struct.unpack_from("!BBH", msg, at)
        group = addr6(at + 4)
        sources = tuple(addr6(at + 20 + 16 * i) for i in range(nsrc))
        out.append(GroupRecord(socket.AF_INET6, sender, kind, rtype, group, sources))
        at += 20 + 16 * nsrc + 4 * aux
    return out


ETH_P_ALL = 0x0003


def packet_socket(ns: Netns, ifname: str | None) -> socket.socket:
    """A non-blocking AF_PACKET socket opened inside ns (so it sees only
    that namespace's frames), bound to ifname unless None."""
    sock = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        if ifname is not None:
            sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReportCapture:
    """Every IGMP/MLD group record arriving on ``ifname`` in ``ns`` (an
    AF_PACKET socket opened inside that namespace, so it sees only that
    namespace's veth end).  Open it before the reports are expected."""

    def __init__(self, ns: Netns, ifname: str):
        self.ns, self.ifname = ns, ifname
        self.sock = packet_socket(ns, ifname)
        self.records: list[GroupRecord] = []

    def __repr__(self) -> str:
        return f"ReportCapture({self.ns.name}/{self.ifname})"

    def poll(self, timeout: float = 0.0) -> list[GroupRecord]:
        """Read what has arrived (waiting up to ``timeout`` for the first
        frame); return the new records, which are also kept in ``records``."""
        new: list[GroupRecord] = []
        ready, _, _ = select.select([self.sock], [], [], timeout)
        while ready:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # sent by this namespace itself
            new += parse_reports(frame)
        self.records += new
        return new

    def wait(self, predicate, timeout: float) -> bool:
        """Until predicate(records so far) is true; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.1))
        return True

    def quiet(self, relevant, gap: float, timeout: float) -> bool:
        """Until no record satisfying relevant(record) has arrived for
        ``gap`` seconds (bounded by ``timeout``): the kernel has finished
        retransmitting its state-change reports."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < gap:
            if time.monotonic() > deadline:
                return False
            if any(relevant(r) for r in self.poll(0.1)):
                last = time.monotonic()
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ReportCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
