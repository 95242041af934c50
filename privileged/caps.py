"""Dropping every privilege, verified.

Used by the helper (once its sockets are open) and by the controller, both
keeping no capability. The result is checked from /proc/self/status, the
same place an auditor looks, so a kernel or library surprise is fatal
rather than silent. creds: (uid, gid, supplementary groups), or None to
keep the identity.
"""

from __future__ import annotations

import os

import _prctl
import prctl


class PrivilegeError(RuntimeError):
    pass


def _last_cap() -> int:
    """The highest capability this kernel knows. /proc/sys may be hidden (a
    service's ProcSubset=pid): then what prctl knows; verify() still checks
    the result, so a newer kernel's extra capability cannot slip through."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return prctl.CAP_LAST_CAP


def status_fields() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def drop_privileges(creds: tuple[int, int, tuple[int, ...]] | None) -> None:
    """Become creds (if given) with every capability set empty (bounding
    set included) and no_new_privs."""
    if creds is None and os.getuid() == 0:
        # Staying uid 0: make sure an execve can never turn it back into
        # full root (needs CAP_SETPCAP, so before the bounding set goes).
        prctl.securebits.noroot = True
        prctl.securebits.noroot_locked = True
        prctl.securebits.no_setuid_fixup = True
        prctl.securebits.no_setuid_fixup_locked = True
    for cap in range(_last_cap() + 1):
        _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    if creds is not None:
        uid, gid, groups = creds
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    prctl.set_caps((prctl.ALL_CAPS, [prctl.CAP_PERMITTED, prctl.CAP_EFFECTIVE,
                                     prctl.CAP_INHERITABLE], False))
    prctl.set_no_new_privs(1)
    verify(creds)


def verify(creds: tuple[int, int, tuple[int, ...]] | None) -> None:
    st = status_fields()
    for name in ("CapPrm", "CapEff", "CapBnd", "CapInh", "CapAmb"):
        if int(st[name], 16):
            raise PrivilegeError(f"{name} is {st[name]}, expected 0")
    if st.get("NoNewPrivs", "").strip() != "1":
        raise PrivilegeError("no_new_privs is not set")
    if creds is not None and (set(st["Uid"].split()) != {str(creds[0])}
                              or set(st["Gid"].split()) != {str(creds[1])}):
        raise PrivilegeError(f"credentials are Uid {st['Uid']} Gid {st['Gid']}")
