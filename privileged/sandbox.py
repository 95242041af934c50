"""The helper's Landlock domain: no filesystem access at all, no TCP bind or
connect (ABI 4), no abstract unix sockets or signals outside it (ABI 6).

Applied after every socket is open and every module imported: from then on
the helper needs none of these. Plain syscalls through ctypes (the numbers
are the same on every Linux architecture); on a kernel without Landlock the
helper runs without it and says so in its hello reply.
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


def restrict() -> str:
    """Enter the domain (no_new_privs must be set); what was applied, e.g.
    "landlock ABI 7", or "none: WHY"."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(CREATE_RULESET_VERSION))
    if abi < 0:
        return f"none: Landlock unavailable ({os.strerror(ctypes.get_errno())})"
    attr = RulesetAttr(_fs_rights(abi),
                       NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    # the struct grew with the ABI: give the kernel the size it knows
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                      ctypes.c_uint32(0))
    if fd < 0:
        return f"none: cannot create a Landlock ruleset ({os.strerror(ctypes.get_errno())})"
    try:
        if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) < 0:
            return f"none: cannot enter the Landlock domain ({os.strerror(ctypes.get_errno())})"
    finally:
        os.close(fd)
    return f"landlock ABI {abi}"
