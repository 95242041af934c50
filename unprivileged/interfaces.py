"""The interface table: every link of this network namespace.

Read with if_nameindex(3) (an rtnetlink dump inside libc) and SIOCGIFFLAGS.
pyroute2 would do the same, but importing it costs about 0.3 s, more than
the whole start-up budget; it is kept for the netlink event monitor, which
is off the start-up path.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from smcroute.unprivileged.model import Interface

IFF_MULTICAST = 0x1000
SIOCGIFFLAGS = 0x8913
IFREQ = struct.Struct("16sH22x")


def read_interfaces() -> dict[str, Interface]:
    """name -> Interface, in ifindex order; links that vanish meanwhile are left out."""
    table: dict[str, Interface] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for index, name in sorted(socket.if_nameindex()):
            try:
                reply = fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ.pack(name.encode(), 0))
            except OSError:
                continue
            flags = IFREQ.unpack(reply)[1]
            table[name] = Interface(name, index, bool(flags & IFF_MULTICAST))
    return table
