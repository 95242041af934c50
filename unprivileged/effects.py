"""What the daemon core asks its executor to do (the core itself does no I/O).

The executor performs effects in the order given and feeds what comes of
them back as events: a Send's replies (Core.answered), a Memberships'
failures (Core.memberships_done), a LoadConfig's file (Core.load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smcroute.ipc.helper import Request
from smcroute.unprivileged.groups import Membership


@dataclass(frozen=True)
class Send:
    """One batch of helper requests, to be answered as a whole."""

    batch: int
    requests: tuple[Request, ...]


@dataclass(frozen=True)
class Memberships:
    """Leave, then join, on the controller's own sockets (no privilege)."""

    token: int
    leave: tuple[Membership, ...] = ()
    join: tuple[Membership, ...] = ()


@dataclass(frozen=True)
class Log:
    level: str  # a syslog priority name: err, warning, notice, info, debug
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Script:
    """Run the -e script with this action (and source/group for install)."""

    action: str
    source: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Answer:
    """The replies to one control request (or group of edits), in order."""

    token: int
    replies: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class LoadConfig:
    """Read the configuration file now and hand it to Core.load."""

    token: int | None  # the control request waiting for it (None: SIGHUP)


@dataclass(frozen=True)
class Ready:
    """Configuration applied: PID file, READY=1 for the service manager."""


@dataclass(frozen=True)
class Notify:
    """A message for the service manager (sd_notify)."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    """Exit once the Answer that follows has gone out (kill)."""


Effect = Send | Memberships | Log | Script | Answer | LoadConfig | Ready | Notify | Stop
