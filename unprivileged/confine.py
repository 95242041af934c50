"""Who the controller runs as, and what it may touch (SECURITY.md, "Modes").

uid 0 owns root's files, with or without capabilities: a controller left
at uid 0 could rewrite /etc, /root or the helper's own code. So without
-p the daemon becomes a dedicated system user (--default-user, "smcroute"
by default) where one exists and the user namespace maps it. Where none
can be used (SMCRoute's own test suite runs smcrouted as root in a user
namespace) it stays uid 0 inside a Landlock domain: it may read the
system's programs and libraries, /etc, /proc and the directories its
configuration and includes came from, run its -e script, write nothing but
its PID file (and /dev/null), and remove its PID file and socket where
their directory is its own; a seccomp filter refuses (EPERM) changing any
file's mode, owner or extended attributes. The action script inherits
both.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from dataclasses import replace

from smcroute.privileged import sandbox
from smcroute.unprivileged.options import Options, User, resolve_user

SYS_ADD_RULE = 445
RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR, REMOVE_FILE = 1, 2, 4, 8, 32
TRUNCATE = 1 << 14  # ABI 3
READ = READ_FILE | READ_DIR
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SHARED_USERS = ("nobody", "nogroup")
# What Landlock does not cover and uid 0 may do to its own files: modes,
# owners, extended attributes (ACLs among them). EPERM, to the script too.
ATTRIBUTES = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
              "fchownat", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
              "lremovexattr", "fremovexattr", "setxattrat", "removexattrat")
# Directories others' files live in: the PID file and socket stay behind
# (emptied) rather than the controller holding the right to remove there.
SHARED_DIRS = ("/", "/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm", "/etc", "/var",
               "/var/lib", "/root", "/home")


def mapped(ident: int, map_path: str) -> bool:
    """Does this user namespace map the id (a uid_map or gid_map)?"""
    try:
        with open(map_path) as f:
            ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    except (OSError, ValueError):
        return True  # no such file: no user namespaces, every id is real
    return any(inside <= ident < inside + count for inside, _outside, count in ranges)


def identity(opts: Options, euid: int | None = None
             ) -> tuple[Options, tuple[str, str] | None]:
    """opts with the user the daemon will run as, and a (level, text) note
    on the choice (None: nothing to say). Without -p, as root: the dedicated user where
    it can be used; otherwise opts as they are (the Landlock fallback)."""
    if opts.user is not None:
        if opts.user.name in SHARED_USERS or opts.user.uid == 65534:
            return opts, ("warning", f"Running as {opts.user.name}: every other process of"
                          " that user may use the control socket and signal smcrouted;"
                          " a dedicated user such as smcroute is safer")
        return opts, None
    if (os.geteuid() if euid is None else euid) != 0 or not opts.default_user:
        return opts, None
    try:
        user = resolve_user(opts.default_user)
    except ValueError:
        return opts, ("notice", f"No user {opts.default_user} to run as: staying uid 0 without"
                      " capabilities, in a Landlock domain")
    if not (mapped(user.uid, "/proc/self/uid_map") and mapped(user.gid, "/proc/self/gid_map")):
        return opts, ("notice", f"User {opts.default_user} is not mapped in this user"
                      " namespace: staying uid 0 without capabilities, in a Landlock domain")
    return replace(opts, user=user), ("info", f"No -p given: running as user {user.name}")


def may(st: os.stat_result, user: User, bits: int) -> bool:
    """Do the mode bits give user bits (4 read, 1 search/execute)? (root's
    own files included: the user is not root here)."""
    if st.st_uid == user.uid:
        return st.st_mode >> 6 & bits == bits
    if st.st_gid == user.gid or st.st_gid in user.groups:
        return st.st_mode >> 3 & bits == bits
    return st.st_mode & bits == bits


def unreadable(user: User, paths: list[str]) -> str | None:
    """The first of paths (or a directory above one) that user cannot
    read (or search), as the kernel would decide by the mode bits; None if
    every one is readable."""
    for path in paths:
        path = os.path.realpath(path)
        parts = path.split("/")
        for depth in range(2, len(parts) + 1):
            here = "/".join(parts[:depth]) or "/"
            try:
                st = os.stat(here)
            except OSError:
                break
            last = depth == len(parts)
            if not may(st, user, (4 if last else 0) | (1 if os.path.isdir(here) else 0)):
                return here
    return None


def code_paths() -> list[str]:
    """What the daemon will import after the privilege drop: the
    interpreter, its standard library and the directories on sys.path."""
    import smcroute

    return [sys.executable, os.path.dirname(os.__file__),
            *(os.path.dirname(p) for p in smcroute.__path__),
            *(p for p in sys.path if p and os.path.isdir(p))]


def _add(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    """Allow rights beneath path (a file: its file rights only); a path
    that does not exist is skipped."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            rights &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                     attr, ctypes.c_uint32(0))
    finally:
        os.close(fd)


def rules(opts: Options, config_dirs: list[str]) -> list[tuple[str, int]]:
    """What the uid-0 controller may touch: paths and their rights."""
    code = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                          os.path.dirname(sys.executable), *sys.path) if p}
    out = [(p, READ | EXECUTE) for p in (*SYSTEM, *sorted(code))]
    out += [("/etc", READ), ("/proc", READ), ("/dev/null", READ_FILE | WRITE_FILE)]
    out += [(d, READ) for d in config_dirs]
    if opts.script:
        out.append((opts.script, READ_FILE | EXECUTE))
    out.append((opts.pid_path, WRITE_FILE | TRUNCATE))
    # removing them at exit (SMCRoute's test suite looks for the PID file),
    # where the directory is not a shared one
    for runtime in {os.path.dirname(os.path.realpath(p)) for p in (opts.pid_path,
                                                                     opts.sock_path)}:
        if runtime not in SHARED_DIRS:
            out.append((runtime, REMOVE_FILE))
    return out


def confine(opts: Options, config_dirs: list[str]) -> str:
    """Enter the uid-0 controller's confinement (no_new_privs set): what
    was applied, e.g. "landlock ABI 7, seccomp", or "none: WHY" for a part."""
    try:
        lib = sandbox.libseccomp()  # (loaded before Landlock closes /usr)
    except OSError as exc:
        lib = None
        filtered = f"none: no libseccomp ({exc})"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    made = sandbox.ruleset(libc, fs_only=True)  # (it signals its helper, outside the domain)
    if isinstance(made, str):
        landlock = made
    else:
        abi, fd = made
        for path, rights in rules(opts, config_dirs):
            _add(libc, fd, path, rights if abi >= 3 else rights & ~TRUNCATE)
        landlock = sandbox.enter(libc, abi, fd)
    if lib is not None:
        filtered = sandbox.filter_syscalls(lib, ((ATTRIBUTES, sandbox.SCMP_ACT_ERRNO_EPERM),),
                                           sandbox.SCMP_ACT_ALLOW)
    return f"{landlock}, {filtered}"
