"""Per-principal token buckets: a steady request rate with a burst allowance."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second per principal, bursts up to `burst`. rate <= 0 disables it."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_principals: int = 100_000
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._max = max_principals

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, principal: str, cost: float = 1.0) -> float:
        """0.0 when allowed (and charged), else the seconds until `cost` tokens will be there (nothing charged)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(principal)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._forget_full(now)
            bucket = self._buckets[principal] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping it bounds memory without changing answers.
        full_after = self.burst / self.rate
        stale = [p for p, b in self._buckets.items() if now - b.updated >= full_after]
        for p in stale:
            del self._buckets[p]
        if len(self._buckets) >= self._max:  # still full of active callers: drop the oldest
            oldest = min(self._buckets, key=lambda p: self._buckets[p].updated)
            del self._buckets[oldest]


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds; round up so a client that waits that long is let through."""
    return str(max(1, math.ceil(seconds)))
