"""Dropping privileges to an exact, verified capability set.

Used by the helper and by the controller, both keeping nothing (the helper
once its sockets are open). The result is checked from /proc/self/status, the same place an
auditor looks, so a kernel or library surprise is fatal rather than silent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import _prctl
import prctl


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]


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


def effective(*caps: int) -> bool:
    """Do we hold all these capabilities (effective set)?"""
    mask = int(status_fields()["CapEff"], 16)
    return all(mask & (1 << cap) for cap in caps)


def status_fields() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def drop_privileges(creds: Credentials | None, keep: tuple[int, ...]) -> None:
    """Become creds (if given) holding exactly the capabilities in keep.

    keep is in permitted and effective; inheritable, ambient and every other
    bounding-set capability are gone, and no_new_privs is set.
    """
    if creds is None and os.getuid() == 0:
        # Staying uid 0: make sure an execve can never turn it back into
        # full root (needs CAP_SETPCAP, so before the bounding set goes).
        prctl.securebits.noroot = True
        prctl.securebits.noroot_locked = True
        prctl.securebits.no_setuid_fixup = True
        prctl.securebits.no_setuid_fixup_locked = True
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    if creds is not None:
        prctl.set_keepcaps(bool(keep))
        os.setgroups(list(creds.groups))
        os.setresgid(creds.gid, creds.gid, creds.gid)
        os.setresuid(creds.uid, creds.uid, creds.uid)
        prctl.set_keepcaps(False)
    others = [cap for cap in prctl.ALL_CAPS if cap not in keep]
    both = [prctl.CAP_PERMITTED, prctl.CAP_EFFECTIVE]
    prctl.set_caps((list(keep), both, True), (others, both, False),
                   (prctl.ALL_CAPS, prctl.CAP_INHERITABLE, False))
    prctl.set_no_new_privs(1)
    verify(creds, keep)


def verify(creds: Credentials | None, keep: tuple[int, ...]) -> None:
    mask = sum(1 << cap for cap in keep)
    st = status_fields()
    want = {"CapPrm": mask, "CapEff": mask, "CapBnd": mask, "CapInh": 0, "CapAmb": 0}
    for name, value in want.items():
        if int(st[name], 16) != value:
            raise PrivilegeError(f"{name} is {st[name]}, expected {value:016x}")
    if st.get("NoNewPrivs", "").strip() != "1":
        raise PrivilegeError("no_new_privs is not set")
    if creds is not None:
        uids = set(st["Uid"].split())
        gids = set(st["Gid"].split())
        if uids != {str(creds.uid)} or gids != {str(creds.gid)}:
            raise PrivilegeError(f"credentials are Uid {st['Uid']} Gid {st['Gid']}")
