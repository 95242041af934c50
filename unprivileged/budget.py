"""Budgets for kernel upcalls: how fast, and how many learned routes.

A flood of new (S,G) (spoofed sources, a scan) must not make the daemon
unresponsive or let the MFC grow without bound. Pure and clock-injected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """rate per second, bursts up to capacity."""

    rate: float
    capacity: float
    tokens: float = -1.0
    stamp: float = 0.0

    def _refill(self, now: float) -> None:
        if self.tokens < 0:  # first use: full
            self.tokens, self.stamp = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def take_share(self, most: int, now: float) -> int:
        """Take up to half of the whole tokens there are (the rest stays for
        others), at most `most`; returns how many were taken."""
        self._refill(now)
        got = max(0, min(most, int(self.tokens) // 2))
        self.tokens -= got
        return got


@dataclass
class Throttle:
    """Say something at most once per interval, with how often it happened."""

    interval: float = 10.0
    last: dict[str, float] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def hit(self, what: str, now: float) -> int:
        """Count one occurrence; return how many to report now (0: stay quiet)."""
        self.counts[what] += 1
        if now - self.last.get(what, -self.interval) < self.interval:
            return 0
        self.last[what] = now
        return self.counts.pop(what)

    def due(self, now: float) -> list[tuple[str, int]]:
        """What was counted but not said, whose interval has passed: say it
        now (it counts as said). Forgets what has been quiet for an interval,
        so the throttle holds only what happened lately."""
        out = []
        for what, then in list(self.last.items()):
            if now - then < self.interval:
                continue
            if n := self.counts.pop(what, 0):
                out.append((what, n))
                self.last[what] = now
            else:
                del self.last[what]
        return out

    @property
    def next(self) -> float | None:
        """When due() has something to say (None: nothing waits)."""
        times = [self.last[what] + self.interval for what in self.counts if what in self.last]
        return min(times) if times else None
