"""One token bucket, used by the server for each user connection and by the client to pace file frames."""

from __future__ import annotations


class TokenBucket:
    """``rate_per_second`` tokens a second, at most ``burst`` stored; it starts full.

    Time is ``now`` in milliseconds (any monotonic origin, as long as one bucket always sees the same).
    """

    __slots__ = ("_tokens", "_updated_at", "burst", "rate_per_second")

    def __init__(self, rate_per_second: float, burst: float) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least one")
        self.rate_per_second = rate_per_second
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated_at: int | None = None

    def _refill(self, now: int) -> None:
        if self._updated_at is not None:
            elapsed_s = max(0, now - self._updated_at) / 1000
            self._tokens = min(self.burst, self._tokens + elapsed_s * self.rate_per_second)
        self._updated_at = now

    def take(self, now: int) -> bool:
        """Spend one token if there is one; False when the caller is over its rate."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait_ms(self, now: int) -> float:
        """Milliseconds until :meth:`take` would succeed (0 when it would now)."""
        self._refill(now)
        return max(0.0, (1 - self._tokens) * 1000 / self.rate_per_second)
