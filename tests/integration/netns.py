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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pyroute2 import IPRoute
from pyroute2.netns import create_socket

PREFIX = "smcpy-"
NETNS_DIR = "/run/netns"

# rtm_family of the kernel's multicast routing tables (linux/rtnetlink.h).
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
