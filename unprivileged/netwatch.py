"""Link and address events from rtnetlink (pyroute2), debounced.

Like SMCRoute, an event is only a reason to look again: the controller
re-reads the interface table and re-plans, which activates pending lines
whose interfaces appeared and sends routes and joins of vanished ones back
to the pending list. pyroute2 is imported here, off the start-up path.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable

DEBOUNCE = 0.05  # a burst of events (link, addresses, flags) becomes one refresh


class LinkWatch:
    def __init__(self, on_change: Callable[[], Awaitable[None]],
                 on_error: Callable[[str], None]) -> None:
        self.on_change = on_change
        self.on_error = on_error
        self.changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # A thread keeps the loop serving while the (large) package loads.
            await loop.run_in_executor(None, importlib.import_module, "pyroute2")
            from pyroute2 import AsyncIPRoute
            from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

            ipr = AsyncIPRoute()
            await ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        except Exception as exc:  # pyroute2 or the socket: run on without events
            self.on_error(f"Failed opening/binding netlink socket: {exc}")
            return
        refresher = loop.create_task(self._refresh())
        self.changed.set()  # anything that changed before we listened
        try:
            while True:
                async for _ in ipr.get():
                    self.changed.set()
        finally:
            refresher.cancel()
            ipr.close()

    async def _refresh(self) -> None:
        while True:
            await self.changed.wait()
            await asyncio.sleep(DEBOUNCE)
            self.changed.clear()
            await self.on_change()
