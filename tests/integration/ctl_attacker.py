"""A hostile control-socket client for the tests, bounded in time and count:

    ctl_attacker.py flood SOCK SECONDS  -- connect and close, as fast as it can
    ctl_attacker.py slow SOCK SECONDS N -- hold N connections, each sending one
                                           byte of a frame now and then

Prints how many connections it made. Standard library only (it runs as an
unprivileged test user).
"""

from __future__ import annotations

import socket
import sys
import time

MAX_CONNECTS = 2_000_000


def connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def flood(path: str, seconds: float) -> int:
    made = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and made < MAX_CONNECTS:
        sock = connect(path)
        if sock is not None:
            made += 1
            sock.close()
    return made


def slow(path: str, seconds: float, n: int) -> int:
    made = 0
    held: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and made < MAX_CONNECTS:
        while len(held) < n and made < MAX_CONNECTS:  # (re)fill what was dropped
            sock = connect(path)
            if sock is None:
                break
            made += 1
            held.append(sock)
        for sock in list(held):
            try:
                sock.send(b"\x00")  # the start of a frame header, never finished
            except OSError:
                held.remove(sock)
                sock.close()
        time.sleep(0.5)
    for sock in held:
        sock.close()
    return made


if __name__ == "__main__":
    mode, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    print(flood(path, seconds) if mode == "flood" else slow(path, seconds, int(sys.argv[4])))
