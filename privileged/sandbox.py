"""The helper's sandbox, entered after every socket is open and every
module imported: from then on the helper needs none of what it forbids.

* Landlock: no filesystem access at all, no TCP bind or connect (ABI 4),
  no abstract unix sockets or signals outside the domain (ABI 6). Plain
  syscalls through ctypes (their numbers are the same on every Linux
  architecture).
* seccomp: the system calls the request loop makes are allowed; the
  dangerous ones kill the process; every other one fails with EPERM.
  Through libseccomp (it knows each architecture's numbers), called with
  ctypes: Debian's binding (python3-seccomp) is not on PyPI, and the one on
  PyPI runs ldconfig in a subprocess to find the library.

On a kernel (or system) without one of them the helper runs without it and
says so in its hello reply.
"""

from __future__ import annotations

import ctypes
import os

SYS_CREATE_RULESET, SYS_RESTRICT_SELF = 444, 446
CREATE_RULESET_VERSION = 1
# Filesystem rights each ABI handles: 13 in ABI 1, then REFER (2),
# TRUNCATE (3), IOCTL_DEV (5).
FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2  # ABI 6


class RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))


def _fs_rights(abi: int) -> int:
    return FS_RIGHTS[max(v for v in FS_RIGHTS if v <= abi)]


def ruleset(libc: ctypes.CDLL, fs_only: bool = False) -> tuple[int, int] | str:
    """(ABI, ruleset fd) handling every right the kernel's ABI knows (with
    fs_only, its filesystem rights only), or "none: WHY"."""
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(CREATE_RULESET_VERSION))
    if abi < 0:
        return f"none: Landlock unavailable ({os.strerror(ctypes.get_errno())})"
    attr = RulesetAttr(_fs_rights(abi),
                       NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    # the struct grew with the ABI: give the kernel the size it knows
    size = 8 if abi < 4 or fs_only else 16 if abi < 6 else 24
    fd = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                      ctypes.c_uint32(0))
    if fd < 0:
        return f"none: cannot create a Landlock ruleset ({os.strerror(ctypes.get_errno())})"
    return abi, fd


def enter(libc: ctypes.CDLL, abi: int, fd: int) -> str:
    """Enter the ruleset's domain (no_new_privs must be set); what was applied."""
    try:
        if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) < 0:
            return f"none: cannot enter the Landlock domain ({os.strerror(ctypes.get_errno())})"
    finally:
        os.close(fd)
    return f"landlock ABI {abi}"


def restrict() -> str:
    """The helper's domain: no rule, so nothing is allowed; e.g. "landlock
    ABI 7", or "none: WHY"."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    made = ruleset(libc)
    return made if isinstance(made, str) else enter(libc, *made)


# What the request loop, the interpreter and exit need (names libseccomp
# does not know on an architecture are skipped).
ALLOWED = (
    "read", "write", "writev", "close", "lseek", "fstat", "newfstatat", "statx",
    "poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait",
    "recvmsg", "recvfrom", "sendmsg", "sendto", "setsockopt", "getsockopt", "ioctl",
    "fcntl", "shutdown", "dup", "getsockname",
    "brk", "mmap", "munmap", "mremap", "madvise", "mprotect",
    "futex", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "restart_syscall", "sched_yield", "getrandom",
    "clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    "exit", "exit_group",
)
# Never wanted, and the usual first steps of an exploit: the process dies.
KILLED = (
    "execve", "execveat", "fork", "vfork", "clone", "clone3", "socket", "socketpair",
    "connect", "bind", "listen", "accept", "accept4", "ptrace", "process_vm_readv",
    "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "setns", "unshare",
    "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
    "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "keyctl", "add_key", "request_key", "pidfd_getfd", "open_by_handle_at",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "capset", "prctl", "seccomp", "personality", "iopl", "ioperm", "reboot", "swapon",
    "swapoff",
)
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_EPERM = 0x00050000 | 1


def libseccomp() -> ctypes.CDLL:
    """The library, loaded (before Landlock closes the filesystem)."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint)
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    return lib


def filter_syscalls(lib: ctypes.CDLL, rules: tuple = ((ALLOWED, SCMP_ACT_ALLOW),
                                                         (KILLED, SCMP_ACT_KILL_PROCESS)),
                    default: int = SCMP_ACT_ERRNO_EPERM) -> str:
    """Load a seccomp filter, by default the helper's (no_new_privs must be
    set): rules are (names, action) pairs, default the action for the rest."""
    ctx = lib.seccomp_init(default)
    if not ctx:
        return "none: seccomp_init failed"
    try:
        for names, action in rules:
            for name in names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr != -1:  # (__NR_SCMP_ERROR: not on this architecture)
                    lib.seccomp_rule_add(ctx, action, nr, 0)
        if (rc := lib.seccomp_load(ctx)) < 0:
            return f"none: cannot load the seccomp filter ({os.strerror(-rc)})"
    finally:
        lib.seccomp_release(ctx)
    return "seccomp"


def apply() -> str:
    """The whole sandbox: what was applied, e.g. "landlock ABI 7, seccomp"."""
    try:
        lib = libseccomp()
    except OSError as exc:
        return f"{restrict()}, none: no libseccomp ({exc})"
    return f"{restrict()}, {filter_syscalls(lib)}"
