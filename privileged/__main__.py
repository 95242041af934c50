"""Entry point: python -I -m smcroute.privileged --fd N [options].

Started by smcrouted with root privileges and only its end of a
SOCK_SEQPACKET socketpair. It opens and initialises the mroute sockets,
drops to CAP_NET_ADMIN alone, then serves the controller until EOF.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys

import prctl
from smcroute.ipc import codec
from smcroute.policy.helper import HelperState
from smcroute.policy.limits import DEFAULT_MAX_MFC
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, add_help=False)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--table", type=int, default=0)
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--groups", default="")
    p.add_argument("--max-mfc", type=int, default=DEFAULT_MAX_MFC)
    p.add_argument("--rcvbuf", type=int, default=16 * 1024 * 1024)
    args = p.parse_args(argv)
    if args.table < 0 or args.max_mfc < 1 or (args.uid is None) != (args.gid is None):
        p.error("invalid --table, --max-mfc or --uid/--gid")
    return args


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
    args = parse_args(argv)
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
    if args.uid is not None:
        groups = tuple(int(g) for g in args.groups.split(",") if g)
        creds = Credentials(args.uid, args.gid, groups)
    try:
        drop_privileges(creds, keep=(prctl.CAP_NET_ADMIN,))
    except (OSError, PrivilegeError, ValueError) as exc:
        return fatal(chan, f"cannot drop privileges: {exc}")
    # Fate sharing: die with the controller even if EOF never arrives.
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        return fatal(chan, "the controller is gone")
    try:
        return Server(chan, mroute, HelperState(max_mfc=args.max_mfc)).run()
    except ProtocolViolation as exc:
        return fatal(None, f"protocol violation, exiting: {exc}", 3)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        mroute.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
