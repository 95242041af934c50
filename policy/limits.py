"""Numeric limits shared by the controller and the helper (standard library only)."""

from __future__ import annotations

MAXVIFS = 32  # Linux MAXVIFS / MAXMIFS: slots in each kernel VIF/MIF table
MAX_OIFS = MAXVIFS  # one TTL slot per VIF
TTL_MIN = 1
TTL_MAX = 255
DEFAULT_MAX_MFC = 100_000  # cap on (S,G) entries the helper will hold installed
MAX_BATCH = 1024  # requests in one helper datagram
FAMILIES = (4, 6)
ADDR_LEN = {4: 4, 6: 16}
MRDISC_INTERVAL = (4, 180)  # RFC 4286 advertisement interval, seconds
# (*,G) fast path: templates the helper matches upcalls against (each
# non-matching upcall is compared with all of them), and how many new flows
# the controller lets it install ahead of its own bookkeeping.
MAX_TEMPLATES = 64
MAX_FAST_LIMIT = 2**31 - 1
