"""Syslog priorities and the -l argument (SPEC 12.1); no structlog here, so
smcrouted can parse its options before importing anything heavy."""

from __future__ import annotations

from smcroute.unprivileged.cmdline import atoi

PRIORITY = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4, "warn": 4,
            "notice": 5, "info": 6, "debug": 7}
# SPEC 12.1: names tried in this order, compared on min(len(name), len(arg)) chars.
LEVEL_NAMES = (("alert", 1), ("crit", 2), ("debug", 7), ("emerg", 0), ("err", 3), ("error", 3),
               ("info", 6), ("none", -1), ("notice", 5), ("panic", 0), ("warn", 4),
               ("warning", 4))


def parse_level(arg: str) -> int:
    """-l argument to a syslog priority threshold; "none" logs nothing.

    (SMCRoute's "none" enables every level, a bug; the usage text means none.)
    """
    low = arg.lower()
    for name, value in LEVEL_NAMES:
        n = min(len(name), len(low))
        if name[:n] == low[:n]:
            return value
    return atoi(arg)
