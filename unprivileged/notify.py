"""sd_notify(3) for Type=notify services: a datagram to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


def notify(*assignments: str) -> bool:
    """Send "KEY=value" lines to the service manager; False if there is none."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), path)
    except OSError:
        return False
    return True
