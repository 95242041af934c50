"""smcrouted: start-up as root, the helper, the privilege drop, the controller.

Start-up order (SPEC 11.1, adapted to the two processes): options; verify
mode (-F) and exit; logging; root check; daemonize; startup delay; spawn the
privileged helper with its end of a socketpair; create the PID file; drop
every privilege; run the asyncio controller (config, routes, "Ready").
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from smcroute.privileged.caps import Credentials, PrivilegeError, drop_privileges
from smcroute.unprivileged import engine, options, texts
from smcroute.unprivileged.config import read_config
from smcroute.unprivileged.controller import Controller, pending_text
from smcroute.unprivileged.log import PRIORITY, configure, parse_level
from smcroute.unprivileged.pidfile import PidFile

EX_OSERR = 71
EX_NOPERM = 77
EX_CONFIG = 78
CHANNEL_BUFFER = 4 * 1024 * 1024


def verify(opts: options.Options) -> int:
    """-F FILE: check the file against the live interfaces, touch nothing."""
    level = parse_level(opts.log_level) if opts.log_level else PRIORITY["info"]

    def say(prio: str, text: str) -> None:
        if PRIORITY[prio] <= level:
            print(text, flush=True)

    path = opts.conf_path
    say("info", f"Verifying configuration file {path} ...")
    config = read_config(path)
    problems = list(config.diagnostics)
    pending = []
    if not config.errors:
        from smcroute.unprivileged.interfaces import read_interfaces

        interfaces = asyncio.run(read_interfaces())
        target = engine.plan(config, interfaces, {}, default_enable=not opts.no_vifs)
        problems += target.diagnostics
        pending = target.pending
    for d in problems:
        say("warning", str(d))
    for p in pending:
        say("notice", pending_text(p))
    if problems:
        say("warning", f"Parse error in {path}")
        return EX_CONFIG
    return 0


def daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def launch_helper(opts: options.Options) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start the helper as a fresh interpreter holding only its end of the pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (ours, theirs):
        for opt in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE: room for upcall bursts
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, CHANNEL_BUFFER)
            except OSError:
                pass
    cmd = [sys.executable, "-I", "-m", "smcroute.privileged", "--fd", str(theirs.fileno()),
           "--table", str(opts.table)]
    if opts.user:
        cmd += ["--uid", str(opts.user.uid), "--gid", str(opts.user.gid),
                "--groups", ",".join(map(str, opts.user.groups))]
    try:
        proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, env={}, cwd="/")
    finally:
        theirs.close()
    return proc, ours


def main(argv: list[str] | None = None) -> int:
    try:
        opts = options.parse(sys.argv[1:] if argv is None else argv)
    except options.Exit as exc:
        return exc.status
    if opts.verify:
        return verify(opts)
    level = parse_level(opts.log_level) if opts.log_level else PRIORITY["notice"]
    log = configure(opts.ident, level, stderr=opts.log_to_stderr, use_syslog=opts.log_to_syslog)
    if os.geteuid() != 0:
        log.err("Need root privileges to start smcrouted")
        return EX_NOPERM
    if not opts.foreground:
        daemonize()
    log.notice(f"{texts.PACKAGE} v{texts.VERSION}")
    if opts.startup_delay:
        log.info(f"Startup delay requested, waiting {opts.startup_delay} sec before continuing.")
        time.sleep(opts.startup_delay)
    if opts.table:
        log.info(f"Setting multicast routing table id {opts.table}")
    try:
        helper, sock = launch_helper(opts)
    except OSError as exc:
        log.err(f"Cannot start the mrouter helper: {exc}")
        return EX_OSERR
    user = opts.user
    pidfile = None
    try:
        pidfile = PidFile.create(opts.pid_path, user.uid if user else None,
                                 user.gid if user else None)
    except OSError as exc:
        log.warning(f"Failed create/chown PID file {opts.pid_path}: {exc.strerror}")
    creds = Credentials(user.uid, user.gid, user.groups) if user else None
    try:
        drop_privileges(creds, keep=())
    except (OSError, PrivilegeError, ValueError) as exc:
        log.err(f"Could not drop root privileges: {exc}")
        helper.send_signal(signal.SIGKILL)
        helper.wait()
        return 1
    if user:
        log.info(f"Root privileges dropped: Current UID {os.getuid()}, GID {os.getgid()}.")
    return asyncio.run(Controller(opts, log, helper, sock, pidfile).run())


if __name__ == "__main__":
    sys.exit(main())
