"""Numeric limits shared by the controller and the helper (standard library only)."""

from __future__ import annotations

MAXVIFS = 32  # Linux MAXVIFS / MAXMIFS: slots in each kernel VIF/MIF table
MAX_OIFS = MAXVIFS  # one TTL slot per VIF
TTL_MIN = 1
TTL_MAX = 255
DEFAULT_MAX_MFC = 100_000  # cap on (S,G) entries the helper will hold installed
MAX_MFC_CAP = 2**31 - 1  # the largest cap the helper takes
MAX_BATCH = 1024  # requests in one helper datagram
FAMILIES = (4, 6)
# Kernel struct fields: vifctl's lcl_ifindex is an int, mif6ctl's mif6c_pifi
# 16 bits (a larger ifindex has no IPv6 MIF); MRT_TABLE takes a u32, which
# SMCRoute's int option cannot exceed.
MAX_IFINDEX = {4: 2**31 - 1, 6: 2**16 - 1}
MAX_TABLE = 2**31 - 1
ADDR_LEN = {4: 4, 6: 16}
MRDISC_INTERVAL = (4, 180)  # RFC 4286 advertisement interval, seconds
# The helper's own cap on mrdisc messages per VIF: the controller sends one
# every interval and answers solicitations at most once a second.
MRDISC_RATE = 2.0  # per second
MRDISC_BURST = 8
# (*,G) fast path: templates the helper matches upcalls against (each
# non-matching upcall is compared with all of them), and how many new flows
# the controller lets it install ahead of its own bookkeeping.
MAX_TEMPLATES = 64
MAX_FAST_LIMIT = 2**31 - 1
