"""The interface table, read from the kernel over rtnetlink (pyroute2)."""

from __future__ import annotations

from smcroute.unprivileged.model import Interface

IFF_MULTICAST = 0x1000


async def read_interfaces() -> dict[str, Interface]:
    """Every link of this network namespace, in ifindex order."""
    from pyroute2 import AsyncIPRoute  # heavy import, needed only here

    async with AsyncIPRoute() as ipr:
        links = [link async for link in await ipr.link("dump")]
    table = {}
    for link in sorted(links, key=lambda m: m["index"]):
        name = link.get("ifname")
        table[name] = Interface(name, link["index"], bool(link["flags"] & IFF_MULTICAST))
    return table
