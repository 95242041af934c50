"""smcrouted: start-up as root, the helper, the privilege drop, the controller.

Start-up order (SPEC 11.1, adapted to the two processes): options; verify
mode (-F) and exit; root check; daemonize; logging; startup delay; spawn the
privileged helper with its end of a socketpair; create the PID file; drop
every privilege; run the asyncio controller (config, routes, "Ready").

Only light modules are imported before the helper is spawned: it boots on
the other core while this process imports asyncio and parses the config.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Any

from smcroute.policy.limits import DEFAULT_MAX_MFC, MAX_MFC_CAP
from smcroute.unprivileged import options, texts
from smcroute.unprivileged.bootlog import DeferredLog

EX_OSERR = 71
EX_NOPERM = 77
MAX_FD = 2**31 - 1  # close_range's end: every descriptor
CHANNEL_BUFFER = 4 * 1024 * 1024
UPCALL_TRUESIZE = 768
GC_THRESHOLDS = (50_000, 20, 20)  # gen0 allocations, gen0 runs per gen1, gen1 runs per gen2


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


# The helper runs with -I -S: no site module, so no .pth file and no
# sitecustomize runs as root; its sys.path is the standard library and
# exactly the directories of its three dependencies, passed here, after the
# standard library (nothing there can shadow a standard module).
HELPER_BOOT = ("import sys; n = int(sys.argv[1]); sys.path += sys.argv[2:2 + n];"
               " del sys.argv[1:2 + n]; from smcroute.privileged.__main__ import main;"
               " sys.exit(main(sys.argv[1:]))")


def helper_path() -> list[str]:
    """The directories holding smcroute, msgpack and prctl (and _prctl)."""
    import _prctl
    import msgpack
    import prctl
    import smcroute
    dirs = [os.path.dirname(next(iter(smcroute.__path__))),
            os.path.dirname(os.path.dirname(msgpack.__file__)),
            os.path.dirname(prctl.__file__), os.path.dirname(_prctl.__file__)]
    return list(dict.fromkeys(dirs))


def helper_mfc_cap(opts: options.Options) -> int:
    """The helper's MFC cap: configured (S,G) routes, learned routes, stop
    filters and overload stops all fit (smcrouted(8) BUDGETS), so it never
    refuses what the budgets allow."""
    return min(DEFAULT_MAX_MFC + 2 * opts.max_learned + options.OVERLOAD_STOPS, MAX_MFC_CAP)


def upcall_rcvbuf(queue: int) -> int:
    """The mroute sockets' receive buffer for a queue of that many upcalls:
    the kernel charges about 768 bytes each (6.1: 342 in 256 KiB) and
    doubles what it is given."""
    return queue * UPCALL_TRUESIZE // 2


def helper_command(fd: int, table: int, user: options.User | None, max_mfc: int,
                   queue: int = options.UPCALL_QUEUE) -> list[str]:
    path = helper_path()
    cmd = [sys.executable, "-I", "-S", "-c", HELPER_BOOT, str(len(path)), *path,
           "--fd", str(fd), "--table", str(table), "--max-mfc", str(max_mfc),
           "--rcvbuf", str(upcall_rcvbuf(queue))]
    if user:
        cmd += ["--uid", str(user.uid), "--gid", str(user.gid),
                "--groups", ",".join(map(str, user.groups))]
    return cmd


def launch_helper(opts: options.Options) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start the helper as a fresh interpreter holding only its end of the pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (ours, theirs):
        for opt in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE: room for upcall bursts
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, CHANNEL_BUFFER)
            except OSError:
                pass
    cmd = helper_command(theirs.fileno(), opts.table, opts.user, helper_mfc_cap(opts),
                         opts.upcall_queue)
    try:
        proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, env={}, cwd="/")
    finally:
        theirs.close()
    return proc, ours


class EarlySignals:
    """Until the event loop takes over, remember SIGHUP/SIGTERM/SIGINT
    instead of dying on them (SIGHUP's default) or raising KeyboardInterrupt."""

    def __init__(self) -> None:
        self.received: list[int] = []
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._keep)

    def _keep(self, signum: int, frame: object) -> None:
        self.received.append(signum)


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: group joins take sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):  # e.g. a seccomp filter: the soft limit will do
            pass


def privileged() -> bool:
    """Root, or (under a service manager's ambient capabilities) a user holding
    what the start needs: raw sockets and MRT_* for the helper, and
    CAP_SETPCAP to empty both processes' bounding sets."""
    if os.geteuid() == 0:
        return True
    import prctl
    from smcroute.privileged.caps import status_fields

    mask = int(status_fields()["CapEff"], 16)
    return all(mask >> cap & 1 for cap in (prctl.CAP_NET_ADMIN, prctl.CAP_NET_RAW,
                                           prctl.CAP_SETPCAP))


def group_name(gid: int | None) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name if gid is not None else ""
    except KeyError:
        return ""


def control_socket(opts: options.Options, log: Any) -> tuple[socket.socket, Any] | None:
    """Bind the control socket while still root: owner the -p user, group the
    socket group, mode 0660 (0666 when a read-only group needs to connect:
    every connection is then checked against SO_PEERCRED only)."""
    from smcroute.policy.control import Access

    user = opts.user
    uid = user.uid if user else os.getuid()
    gid = user.gid if user else os.getgid()
    group = opts.socket_group if opts.socket_group is not None else gid
    access = Access(uid, group, opts.readonly_group, group_name(group),
                    group_name(opts.readonly_group))
    path = opts.sock_path
    if len(path.encode()) > 107:
        log.warning(f"Too long socket path {path}, max 108 chars: client disabled")
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if live_socket(path):
            sock.close()
            log.err(f"IPC socket {path} is in use by another smcrouted (another -i NAME or"
                    " -u FILE is needed to run two)")
            return None
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale: nobody listens
        except FileNotFoundError:
            pass
        sock.bind(path)
        os.chown(path, uid, group)
        os.chmod(path, 0o666 if opts.readonly_group is not None else 0o660)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning(f"Failed binding IPC socket, client disabled: {exc.strerror or exc}")
        return None
    return sock, access


def live_socket(path: str) -> bool:
    """Does a daemon still listen on this socket path?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def spawn(opts: options.Options) -> tuple[subprocess.Popen[bytes], socket.socket] | OSError:
    try:
        return launch_helper(opts)
    except OSError as exc:
        return exc


def main(argv: list[str] | None = None) -> int:
    # Rules, routes and flows are many small long-lived objects without
    # reference cycles: with the default thresholds the cycle collector
    # scanned them over and over (a sixth of an smcroutectl batch's time).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        opts = options.parse(sys.argv[1:] if argv is None else argv)
    except options.Exit as exc:
        return exc.status
    if opts.verify:
        from smcroute.unprivileged.verify import verify

        return verify(opts)
    from smcroute.unprivileged.levels import PRIORITY, parse_level

    level = parse_level(opts.log_level) if opts.log_level else PRIORITY["notice"]
    if not privileged():
        real_log(opts, level).err("Need root privileges to start smcrouted (or the"
                                  " capabilities CAP_NET_ADMIN, CAP_NET_RAW and"
                                  " CAP_SETPCAP, as the systemd unit gives them)")
        return EX_NOPERM
    # Nothing the starter left open (a pipe, a socket, a file of root's)
    # lives on in a daemon: one close_range(2) call.
    os.closerange(3, MAX_FD)
    from smcroute.unprivileged.confine import code_paths, identity, unreadable

    opts, identity_note = identity(opts)
    # Modules are imported after the privilege drop: the user must be able
    # to read them, or the daemon would die of a traceback half-started.
    if opts.user and (path := unreadable(opts.user, code_paths())):
        real_log(opts, level).err(
            f"User {opts.user.name} cannot read {path}, which holds smcrouted's Python code;"
            " install smcroute-py where that user can read it (a venv under /opt, or the"
            " Debian package), or choose another user with -p")
        return EX_NOPERM
    if not opts.foreground:
        daemonize()
    early = EarlySignals()
    raise_nofile_limit()
    # Spawn first: the helper boots on the other core while we import and parse.
    spawned = None if opts.startup_delay else spawn(opts)
    boot_log = DeferredLog()
    try:
        return run(opts, level, spawned, boot_log, early, identity_note)
    finally:
        if boot_log.events:  # a way out before the real logger took over
            boot_log.replay(real_log(opts, level))


def real_log(opts: options.Options, level: int) -> Any:
    from smcroute.unprivileged.log import configure

    return configure(opts.ident, level, opts.log_to_stderr, opts.log_to_syslog, opts.log_json)


def run(opts: options.Options, level: int,
        spawned: tuple[subprocess.Popen[bytes], socket.socket] | OSError | None,
        log: DeferredLog, early: EarlySignals,
        identity_note: tuple[str, str] | None = None) -> int:
    """Everything after the helper is spawned; logs go to log until the
    initial routes are in, then to the real logger."""
    log.notice(f"{texts.PACKAGE} v{texts.VERSION} ({texts.COMPATIBLE} compatible)")
    if identity_note:
        getattr(log, identity_note[0])(identity_note[1])
    if opts.startup_delay:
        log.info(f"Startup delay requested, waiting {opts.startup_delay} sec before continuing.")
        log.replay(real_log(opts, level))  # show it before we sleep
        time.sleep(opts.startup_delay)
        spawned = spawn(opts)
    if opts.exit_delay:
        log.info(f"Exit delay requested, starting background timer, {opts.exit_delay} sec")
    if opts.table:
        log.info(f"Setting multicast routing table id {opts.table}")
    if isinstance(spawned, OSError) or spawned is None:
        log.err(f"Cannot start the mrouter helper: {spawned}")
        return EX_OSERR
    helper, sock = spawned
    from smcroute.privileged.caps import PrivilegeError, drop_privileges
    from smcroute.unprivileged.pidfile import PidFile

    user = opts.user
    pidfile = None
    try:
        pidfile = PidFile.create(opts.pid_path, user.uid if user else None,
                                 user.gid if user else None)
    except OSError as exc:
        log.warning(f"Failed create/chown PID file {opts.pid_path}: {exc.strerror}")
    control = control_socket(opts, log)
    creds = (user.uid, user.gid, tuple(user.groups)) if user else None

    def give_up(status: int) -> int:
        """Leave no PID file or socket of ours behind."""
        if pidfile:
            pidfile.remove()
        if control:
            control[0].close()
            with contextlib.suppress(OSError):
                os.unlink(opts.sock_path)
        return status

    try:
        drop_privileges(creds)
    except (OSError, PrivilegeError, ValueError) as exc:
        log.err(f"Could not drop root privileges: {exc}")
        helper.send_signal(signal.SIGKILL)
        helper.wait()
        return give_up(1)
    if user:
        log.info(f"Root privileges dropped: Current UID {os.getuid()}, GID {os.getgid()}.")
    from smcroute.unprivileged.boot import EXIT_HELPER_LOST, boot

    booted = boot(opts, log, level, helper, sock)
    if booted is None:
        return give_up(EXIT_HELPER_LOST)
    if os.geteuid() == 0:  # no user to become: uid 0 in a Landlock domain
        from smcroute.unprivileged.confine import confine

        applied = confine(opts, booted.config_dirs)
        if "none" in applied:
            log.warning(f"smcrouted runs as uid 0 without its Landlock domain: {applied}")
        else:
            log.info(f"Running as uid 0 without capabilities, confined ({applied})")
    # The initial routes are in the kernel: now the heavy imports.
    import asyncio

    from smcroute.unprivileged.controller import Controller

    real = real_log(opts, level)
    log.replay(real)
    controller = Controller(opts, real, helper, booted, pidfile, control)
    gc.freeze()  # what start-up built lives on: no collection need ever scan it
    return asyncio.run(controller.run(early.received))


if __name__ == "__main__":
    sys.exit(main())
