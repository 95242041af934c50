"""Whether this kernel can route multicast (CONFIG_IP_MROUTE, CONFIG_IPV6_MROUTE).

    python3 tests/integration/mroute_probe.py      (as root)

Tries MRT_INIT on a raw IGMP socket and MRT6_INIT on a raw ICMPv6 socket in
a fresh network namespace (``unshare --net``: a multicast router already
running in this one would make MRT_INIT fail with EADDRINUSE). Exit status
0 if both work; 1 if the kernel has no multicast routing, with the reason
on stdout; 2 if the probe cannot tell (not root, no unshare), with why on
stderr. Standard library only: the test and demo scripts run it with any
python3. The integration tests' conftest runs it once per session.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys

MRT_INIT = MRT6_INIT = 200  # linux/mroute.h, linux/mroute6.h
PROBES = (
    ("MRT_INIT", "CONFIG_IP_MROUTE", socket.AF_INET, socket.IPPROTO_IGMP, socket.IPPROTO_IP),
    ("MRT6_INIT", "CONFIG_IPV6_MROUTE", socket.AF_INET6, socket.IPPROTO_ICMPV6,
     socket.IPPROTO_IPV6),
)
# what a kernel without the option (or without IPv6) answers
MISSING = (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)
IN_NETNS = "--in-fresh-netns"


def probe_here() -> int:
    """Try both here (in the fresh namespace); print the reason if missing."""
    for name, config, family, proto, level in PROBES:
        try:
            with socket.socket(family, socket.SOCK_RAW, proto) as sock:
                sock.setsockopt(level, MRT_INIT, struct.pack("i", 1))
        except OSError as exc:
            if exc.errno in MISSING:
                print(f"this kernel has no multicast routing ({config} unset)")
                print(f"mroute_probe: {name}: {os.strerror(exc.errno)}", file=sys.stderr)
                return 1
            print(f"mroute_probe: {name} failed: {exc}", file=sys.stderr)
            return 2
    return 0


def main() -> int:
    if sys.argv[1:] == [IN_NETNS]:
        return probe_here()
    if os.geteuid() != 0:
        print("mroute_probe: needs root", file=sys.stderr)
        return 2
    try:
        proc = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__),
                               IN_NETNS], timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"mroute_probe: cannot run unshare: {exc}", file=sys.stderr)
        return 2
    return proc.returncode if proc.returncode in (0, 1) else 2


if __name__ == "__main__":
    sys.exit(main())
