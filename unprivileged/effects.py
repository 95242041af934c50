"""What the daemon core asks its executor to do (the core itself does no I/O).

The executor performs effects in the order given and feeds what comes of
them back as events: a Send's replies (Core.answered), a Memberships'
failures (Core.memberships_done), a LoadConfig's file (Core.load).

Values: NamedTuples (a dataclass costs its module about a millisecond at
import, and these are imported before the first route is in the kernel).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping

    from smcroute.ipc.helper import Request
    from smcroute.unprivileged.groups import Membership

_NONE: Mapping[str, Any] = MappingProxyType({})


class Send(NamedTuple):
    """One batch of helper requests, to be answered as a whole."""

    batch: int
    requests: tuple[Request, ...]


class Memberships(NamedTuple):
    """Leave, then join, on the controller's own sockets (no privilege)."""

    token: int
    leave: tuple[Membership, ...] = ()
    join: tuple[Membership, ...] = ()


class Log(NamedTuple):
    level: str  # a syslog priority name: err, warning, notice, info, debug
    text: str
    fields: Mapping[str, Any] = _NONE


class Script(NamedTuple):
    """Run the -e script with this action (and source/group for install)."""

    action: str
    source: str | None = None
    group: str | None = None


class Answer(NamedTuple):
    """The replies to one control request (or group of edits), in order."""

    token: int
    replies: tuple[dict[str, Any], ...]


class LoadConfig(NamedTuple):
    """Read the configuration file now and hand it to Core.load."""

    token: int | None  # the control request waiting for it (None: SIGHUP)


class Notify(NamedTuple):
    """A message for the service manager (sd_notify)."""

    lines: tuple[str, ...]


class ReturnMemory(NamedTuple):
    """Most of the flows went (expiry, flush): hand freed memory back to the
    system (a collection, then malloc_trim), so a flood's peak does not stay."""


class Ready:
    """Configuration applied: PID file, READY=1 for the service manager."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Ready

    def __hash__(self) -> int:
        return hash(Ready)

    def __repr__(self) -> str:
        return "Ready()"


class Stop:
    """Exit once the Answer that follows has gone out (kill)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Stop

    def __hash__(self) -> int:
        return hash(Stop)

    def __repr__(self) -> str:
        return "Stop()"


Effect = (Send | Memberships | Log | Script | Answer | LoadConfig | Ready | Notify | Stop
          | ReturnMemory)
