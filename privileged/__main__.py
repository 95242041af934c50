"""Entry point: started by smcrouted (launch_helper) as python -I -S with
--fd N [options].

Started by smcrouted with root privileges and only its end of a
SOCK_SEQPACKET socketpair. It opens and initialises every socket it will
use, drops every capability (the kernel checks only that an mroute option
comes through the table's own mroute socket), becomes undumpable, enters
its Landlock domain (privileged/sandbox.py), then serves the controller
until EOF.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from dataclasses import dataclass

import prctl
from smcroute.ipc import codec
from smcroute.policy.helper import HelperState
from smcroute.policy.limits import DEFAULT_MAX_MFC, MAX_MFC_CAP, MAX_TABLE
from smcroute.privileged import sandbox as jail
from smcroute.privileged.caps import Credentials, PrivilegeError, drop_privileges
from smcroute.privileged.kernel import Mroute
from smcroute.privileged.server import ProtocolViolation, Server

PROG = "smcroute-helper"

INIT_ERRORS = {
    errno.EADDRINUSE: "multicast routing table {table} is already in use"
                      " (is another multicast routing daemon running?)",
    errno.ENOPROTOOPT: "the kernel does not support multicast routing",
    errno.EOPNOTSUPP: "the kernel does not support multicast routing",
}


@dataclass(frozen=True)
class Args:
    fd: int
    table: int = 0
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    max_mfc: int = DEFAULT_MAX_MFC
    rcvbuf: int = 16 * 1024 * 1024


class UsageError(ValueError):
    pass


_RANGES = {"--fd": (0, 2**31 - 1), "--table": (0, MAX_TABLE), "--uid": (0, 2**32 - 2),
           "--gid": (0, 2**32 - 2), "--max-mfc": (1, MAX_MFC_CAP), "--rcvbuf": (1, 2**31 - 1)}


def parse_args(argv: list[str]) -> Args:
    """The controller builds this command line: "--name value" pairs, each
    at most once, all numbers (--groups: a comma-separated list)."""
    if len(argv) % 2:
        raise UsageError("options come in pairs")
    values: dict[str, object] = {}
    for name, text in zip(argv[::2], argv[1::2], strict=True):
        if name in values or (name not in _RANGES and name != "--groups"):
            raise UsageError(f"unknown or repeated option {name}")
        try:
            if name == "--groups":
                values[name] = tuple(int(g) for g in text.split(",") if g)
            else:
                lo, hi = _RANGES[name]
                values[name] = number = int(text)
                if not lo <= number <= hi:
                    raise ValueError(f"{number} outside {lo}..{hi}")
        except ValueError as exc:
            raise UsageError(f"{name} {text!r}: {exc}") from None
    if "--fd" not in values or ("--uid" in values) != ("--gid" in values):
        raise UsageError("--fd is required, --uid and --gid go together")
    return Args(**{k[2:].replace("-", "_"): v for k, v in values.items()})  # type: ignore[arg-type]


def fatal(chan: socket.socket | None, text: str, status: int = 1) -> int:
    """Tell the controller why we stop (it may have no stderr), then stop."""
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)
    if chan is not None:
        try:
            chan.send(codec.encode({"t": "fatal", "error": text}))
        except OSError:
            pass
    return status


def main(argv: list[str]) -> int:
    parent = os.getppid()
    # Our lifetime is the channel's: stop on EOF (or SIGKILL), not on the
    # terminal's or the service manager's signals meant for the controller.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return fatal(None, str(exc), 2)
    try:
        chan = socket.socket(fileno=args.fd)
    except OSError as exc:
        return fatal(None, f"--fd {args.fd}: {exc.strerror}", 2)
    if chan.family != socket.AF_UNIX or chan.type != socket.SOCK_SEQPACKET:
        return fatal(None, f"--fd {args.fd} is not an AF_UNIX SOCK_SEQPACKET socket", 2)
    chan.setblocking(True)
    try:
        mroute = Mroute(args.table, args.rcvbuf)
    except OSError as exc:
        text = INIT_ERRORS.get(exc.errno or 0, "cannot initialise multicast routing table"
                               " {table}: " + (exc.strerror or str(exc)))
        return fatal(chan, text.format(table=args.table))
    creds = None
    if args.uid is not None and args.gid is not None:
        creds = Credentials(args.uid, args.gid, args.groups)
    try:
        drop_privileges(creds, keep=())
        # Not ptrace-able, no /proc/PID/mem or pidfd_getfd for a process of
        # our uid: the sockets we hold are the whole privilege.
        prctl.set_dumpable(False)
        if prctl.get_dumpable():
            raise PrivilegeError("still dumpable")
    except (OSError, PrivilegeError, ValueError) as exc:
        return fatal(chan, f"cannot drop privileges: {exc}")
    # Fate sharing: die with the controller even if EOF never arrives.
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        return fatal(chan, "the controller is gone")
    # Every module is imported, every socket open: no filesystem, no new
    # socket, no exec from here on.
    sandbox = jail.apply()
    try:
        return Server(chan, mroute, HelperState(max_mfc=args.max_mfc), sandbox).run()
    except ProtocolViolation as exc:
        return fatal(chan, f"protocol violation, exiting: {exc}", 3)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        mroute.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
