"""Entry point: started by smcrouted (launch_helper) as python -I -S with
--fd N [options], root and holding only its end of a SOCK_SEQPACKET
socketpair. It opens and initialises every socket it will use, drops every
capability (the kernel checks only that an mroute option comes through the
table's own mroute socket), becomes undumpable, enters its sandbox
(privileged/sandbox.py), then serves the controller until EOF.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys

import prctl
from smcroute.ipc import codec
from smcroute.policy import ops
from smcroute.policy.limits import DEFAULT_MAX_MFC, MAX_MFC_CAP, MAX_TABLE
from smcroute.privileged import sandbox
from smcroute.privileged.caps import PrivilegeError, drop_privileges
from smcroute.privileged.kernel import Mroute
from smcroute.privileged.server import ProtocolViolation, Server

PROG = "smcroute-helper"
INIT_ERRORS = {
    errno.EADDRINUSE: "multicast routing table {table} is already in use"
                      " (is another multicast routing daemon running?)",
    errno.ENOPROTOOPT: "the kernel does not support multicast routing",
    errno.EOPNOTSUPP: "the kernel does not support multicast routing",
}
# The options, all numbers, with their ranges and defaults (None: none).
OPTIONS = {"fd": (0, 2**31 - 1, None), "table": (0, MAX_TABLE, 0), "uid": (0, 2**32 - 2, None),
           "gid": (0, 2**32 - 2, None), "max-mfc": (1, MAX_MFC_CAP, DEFAULT_MAX_MFC),
           "rcvbuf": (1, 2**31 - 1, 768_000)}  # smcrouted: --upcall-queue


class UsageError(ValueError):
    pass


def parse_args(argv: list[str]) -> dict:
    """The controller builds this command line: "--name value" pairs, each
    at most once (--groups: a comma-separated list of numbers)."""
    if len(argv) % 2:
        raise UsageError("options come in pairs")
    args: dict = {}
    for name, text in zip(argv[::2], argv[1::2], strict=True):
        key = name[2:]
        if name != "--" + key or key in args or key not in (*OPTIONS, "groups"):
            raise UsageError(f"unknown or repeated option {name}")
        try:
            if key == "groups":
                args[key] = tuple(int(g) for g in text.split(",") if g)
                if not all(0 <= g <= OPTIONS["gid"][1] for g in args[key]):
                    raise ValueError("a group outside the gid range")
                continue
            lo, hi, _ = OPTIONS[key]
            args[key] = number = int(text)
            if not lo <= number <= hi:
                raise ValueError(f"{number} outside {lo}..{hi}")
        except ValueError as exc:
            raise UsageError(f"{name} {text!r}: {exc}") from None
    if "fd" not in args or ("uid" in args) != ("gid" in args):
        raise UsageError("--fd is required, --uid and --gid go together")
    return {"groups": ()} | {key: default for key, (_, _, default) in OPTIONS.items()} | args


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
        # Our end of the pair and stdio, nothing else (close_range(2)).
        os.closerange(3, args["fd"])
        os.closerange(args["fd"] + 1, 2**31 - 1)
        chan = socket.socket(fileno=args["fd"])
        if chan.family != socket.AF_UNIX or chan.type != socket.SOCK_SEQPACKET:
            raise UsageError(f"--fd {args['fd']} is not an AF_UNIX SOCK_SEQPACKET socket")
    except (UsageError, OSError) as exc:
        return fatal(None, str(exc), 2)
    chan.setblocking(True)
    try:
        mroute = Mroute(args["table"], args["rcvbuf"])
    except OSError as exc:
        text = INIT_ERRORS.get(exc.errno or 0, "cannot initialise multicast routing table"
                               " {table}: " + (exc.strerror or str(exc)))
        return fatal(chan, text.format(table=args["table"]))
    try:
        drop_privileges(None if args["uid"] is None else
                        (args["uid"], args["gid"], args["groups"]))
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
    about = {"table": args["table"], "pid": os.getpid(), "sandbox": sandbox.apply()}
    try:
        return Server(chan, mroute, ops.State(args["max-mfc"], about)).run()
    except ProtocolViolation as exc:
        return fatal(chan, f"protocol violation, exiting: {exc}", 3)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        mroute.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
