"""smcrouted's command line (SPEC 1.1), parsed like glibc getopt.

getopt rather than argparse: SMCRoute's users rely on getopt's exact rules
(permutation, "-f -x" taking "-x" as the value, later options overriding
earlier ones) and its error texts, which argparse does not reproduce.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass, field, replace

from smcroute.policy.limits import MAX_TABLE
from smcroute.unprivileged import texts
from smcroute.unprivileged.cmdline import OptError, atoi, getopt

# Overload stops the controller may hold at once beside its budgets (one
# stop entry per group while it is over the upcall rate or the stop-filter
# budget: flows.py); the helper's MFC cap leaves room for them.
OVERLOAD_STOPS = 1024
# New flows that may wait in the kernel for the daemon, each an unresolved
# entry holding its first packets: the mroute sockets' queue (sized in
# smcrouted.helper_command). A burst of 2000 new flows fits (C SMCRoute's
# queue, the kernel's default, holds about 280).
UPCALL_QUEUE = 2000
MAX_UPCALL_QUEUE = 1_000_000

OPTSTRING = "c:d:D:e:f:F:hI:i:l:m:nNp:P:st:u:v"
# Our extensions are long options only: SMCRoute's letters keep their meaning.
LONGOPTS = ("max-learned=", "max-learned-per-rule=", "upcall-rate=", "upcall-queue=",
            "socket-group=", "readonly-group=", "log-json", "default-user=", "kernel-star-g",
            "help", "version")
PROG = "smcrouted"
EX_USAGE = 64


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Options:
    cache_timeout: int = 60
    startup_delay: int = 0
    exit_delay: int = 0
    script: str | None = None
    conf: str | None = None
    verify: bool = False
    ident: str = texts.DEFAULT_IDENT
    log_level: str | None = None
    mrdisc_interval: int = 20
    foreground: bool = False
    no_vifs: bool = False
    user: User | None = None
    pidfile: str | None = None
    syslog_votes: int = 1  # -n decrements, -s increments (order-independent)
    table: int = 0
    sock: str | None = None
    max_learned: int = 50_000  # learned (*,G) routes in total; stop filters too
    max_learned_per_rule: int = 20_000
    upcall_rate: int = 10_000  # kernel upcalls handled per second (burst the same)
    upcall_queue: int = UPCALL_QUEUE  # new flows that may wait in the kernel for us
    socket_group: int | None = None  # full access to the control socket (default: -p group)
    readonly_group: int | None = None  # may only "show"
    log_json: bool = False  # JSON lines instead of text
    default_user: str = "smcroute"  # run as this user without -p, where it exists
    kernel_star_g: bool = False  # exact-group (*,G) rules as kernel (*,G) entries
    extra: tuple[str, ...] = field(default=())

    @property
    def conf_path(self) -> str:
        return self.conf or f"{texts.SYSCONFDIR}/{self.ident}.conf"

    @property
    def pid_path(self) -> str:
        name = self.pidfile or self.ident
        return name if name.startswith("/") else f"{texts.RUNSTATEDIR}/{name}.pid"

    @property
    def sock_path(self) -> str:
        return self.sock or f"{texts.RUNSTATEDIR}/{self.ident}.sock"

    @property
    def log_to_stderr(self) -> bool:
        return self.foreground and self.syslog_votes < 1

    @property
    def log_to_syslog(self) -> bool:
        return not self.log_to_stderr


class Exit(Exception):
    """Stop now with this status, output already written."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def usage(opts: Options) -> str:
    return texts.smcrouted_usage(opts.conf_path, opts.ident, opts.pid_path, opts.sock_path)


def _fail_usage(message: str, opts: Options) -> Exit:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.stdout.write(usage(opts))
    return Exit(EX_USAGE)


def resolve_user(spec: str) -> User:
    """USER[:GROUP] -> ids; GROUP defaults to the user's primary group."""
    name, _, group = spec.partition(":")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user {name!r}") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None
    return User(name, pw.pw_uid, gid, tuple(sorted(set(os.getgrouplist(name, gid)))))


def parse(argv: list[str]) -> Options:
    """Parse argv (without the program name); raises Exit for -h, -v, errors."""
    opts = Options()
    extra: list[str] = []
    try:
        for flag, value in getopt(argv, OPTSTRING, extra, LONGOPTS):
            opts = _apply(opts, flag, value)
    except OptError as exc:
        raise _fail_usage(exc.message(), opts) from None
    return replace(opts, extra=tuple(extra))


def _apply(opts: Options, flag: str, value: str) -> Options:
    """One option, in command-line order; raises Exit for -h, -v and bad values."""
    match flag:
        case "-c":
            opts = replace(opts, cache_timeout=atoi(value))
        case "-d":
            opts = replace(opts, startup_delay=max(0, atoi(value)))
        case "-D":
            opts = replace(opts, exit_delay=max(0, atoi(value)))
        case "-e":
            opts = replace(opts, script=value)
        case "-f":
            opts = replace(opts, conf=value)
        case "-F":
            opts = replace(opts, conf=value, verify=True)
        case "-h" | "--help":  # SMCRoute's text, exactly, then our long options
            sys.stdout.write(usage(opts) + texts.SMCROUTED_LONG_USAGE)
            raise Exit(0)
        case "-i" | "-I":
            opts = replace(opts, ident=value)
        case "-l":
            opts = replace(opts, log_level=value)
        case "-m":
            interval = atoi(value)
            if not 4 <= interval <= 180:
                print(f"{PROG}: Invalid mrdisc announcement interval, 4-180.",
                      file=sys.stderr)
                raise Exit(1)
            opts = replace(opts, mrdisc_interval=interval)
        case "-n":
            opts = replace(opts, foreground=True, syslog_votes=opts.syslog_votes - 1)
        case "-N":
            opts = replace(opts, no_vifs=True)
        case "-p":
            try:
                opts = replace(opts, user=resolve_user(value))
            except ValueError as exc:
                print(f"{PROG}: Invalid user:group argument: {exc}", file=sys.stderr)
                raise Exit(1) from None
        case "-P":
            opts = replace(opts, pidfile=value)
        case "-s":
            opts = replace(opts, syslog_votes=opts.syslog_votes + 1)
        case "-t":
            table = atoi(value)
            if not 0 <= table <= MAX_TABLE:  # (MRT_TABLE's u32; SMCRoute's is an int)
                raise _fail_usage(f"invalid table id -- '{value}'", opts)
            opts = replace(opts, table=table)
        case "-u":
            opts = replace(opts, sock=value)
        case "-v" | "--version":
            sys.stdout.write(texts.version_text())
            raise Exit(0)
        case "--log-json":
            opts = replace(opts, log_json=True)
        case "--kernel-star-g":
            opts = replace(opts, kernel_star_g=True)
        case "--default-user":
            opts = replace(opts, default_user=value)
        case "--socket-group" | "--readonly-group":
            try:
                gid = grp.getgrnam(value).gr_gid
            except KeyError:
                print(f"{PROG}: Invalid {flag} argument: no such group {value!r}",
                      file=sys.stderr)
                raise Exit(1) from None
            opts = replace(opts, **{flag[2:].replace("-", "_"): gid})
        case "--max-learned" | "--max-learned-per-rule" | "--upcall-rate" | "--upcall-queue":
            if not value.isdigit() or int(value) < 1:
                raise _fail_usage(f"{flag} needs a positive integer, not '{value}'", opts)
            if flag == "--upcall-queue" and int(value) > MAX_UPCALL_QUEUE:
                raise _fail_usage(f"{flag} is at most {MAX_UPCALL_QUEUE}, not '{value}'", opts)
            opts = replace(opts, **{flag[2:].replace("-", "_"): int(value)})
    return opts
