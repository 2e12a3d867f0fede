"""Freshness and replay protection (WIRE §2): a bounded, time-limited cache of frames seen."""

from __future__ import annotations

from collections import OrderedDict

from socp.envelope import Envelope
from socp.errors import StaleFrame
from socp.settings import DEFAULT_TIMINGS

DEFAULT_WINDOW_MS = DEFAULT_TIMINGS.replay_window_ms
DEFAULT_CAPACITY = 100_000


class ReplayCache:
    """Remembers frames by :attr:`Envelope.replay_key` until they could no longer pass the window check.

    A frame is fresh while ``|ts - now| <= window_ms``; the cache keeps a key until ``ts + window_ms``,
    after which the frame would be refused as stale anyway. When more than ``capacity`` keys are live
    the oldest are forgotten first (bounded memory under flooding).
    """

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = DEFAULT_CAPACITY) -> None:
        if window_ms <= 0 or capacity <= 0:
            raise ValueError("replay window and capacity must be positive")
        self.window_ms = window_ms
        self.capacity = capacity
        self._expiry: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def check_fresh(self, envelope: Envelope, now: int) -> None:
        """Raise :class:`StaleFrame` when ``envelope.ts`` lies outside the window around ``now``."""
        skew = envelope.ts - now
        if abs(skew) > self.window_ms:
            raise StaleFrame(
                f"timestamp {envelope.ts} is {abs(skew) // 1000} s {'ahead of' if skew > 0 else 'behind'} "
                f"this server's clock (window {self.window_ms // 1000} s)", msg_ref=envelope.msg_ref)

    def admit(self, envelope: Envelope, now: int) -> bool:
        """Check freshness, then record the frame: True if new, False if it is a duplicate.

        Raises :class:`StaleFrame` for frames outside the window (they are not recorded).
        """
        self.check_fresh(envelope, now)
        self.expire(now)
        key = envelope.replay_key
        if key in self._expiry:
            return False
        self._expiry[key] = envelope.ts + self.window_ms
        while len(self._expiry) > self.capacity:
            self._expiry.popitem(last=False)
        return True

    def expire(self, now: int) -> None:
        """Forget keys whose frames could no longer pass the freshness check."""
        # Insertion order is close to ts order; scanning from the front until the first live key is cheap
        # and a slightly out-of-order key merely lives a little longer.
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry >= now:
                break
            del self._expiry[key]
