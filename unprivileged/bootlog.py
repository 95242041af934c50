"""A stand-in logger for start-up, until the initial routes are in the kernel.

Importing structlog costs about 50 ms (it imports asyncio), a fifth of the
start-up budget. Until the first routes are installed, log calls are kept
in order and then replayed into the real logger, so nothing is lost or
reordered; smcrouted replays them on every way out, errors included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DeferredLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Callable[..., None]:
        def keep(event: str, **kw: Any) -> None:
            self.events.append((method, event, kw))

        return keep

    def replay(self, log: Any) -> None:
        events, self.events = self.events, []
        for method, event, kw in events:
            getattr(log, method)(event, **kw)
