"""Freshness and replay protection (WIRE §2): a bounded, time-limited cache of frames seen."""

from __future__ import annotations

from collections import OrderedDict

from socp.envelope import Envelope
from socp.errors import RateLimited, StaleFrame
from socp.settings import DEFAULT_REPLAY_CAPACITY, DEFAULT_TIMINGS

DEFAULT_WINDOW_MS = DEFAULT_TIMINGS.replay_window_ms
DEFAULT_CAPACITY = DEFAULT_REPLAY_CAPACITY


class ReplayCache:
    """Remembers frames by :attr:`Envelope.replay_key` until they could no longer pass the window check.

    A frame is fresh while ``|ts - now| <= window_ms``; the cache keeps a key until ``ts + window_ms``,
    after which the frame would be refused as stale anyway. Memory is bounded by ``capacity`` live keys, and
    a live key is **never** forgotten early (a flood could otherwise flush a frame out and replay it): when
    the cache is full, a new frame is refused with RATE_LIMITED until keys expire (the sender slows down).
    """

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = DEFAULT_CAPACITY) -> None:
        if window_ms <= 0 or capacity <= 0:
            raise ValueError("replay window and capacity must be positive")
        self.window_ms = window_ms
        self.capacity = capacity
        self._expiry: OrderedDict[bytes, int] = OrderedDict()
        self.refused = 0
        self._full_scan_at = -1_000_000
        """Frames refused because the cache was full."""

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
        if len(self._expiry) >= self.capacity:
            if now - self._full_scan_at >= 1000:  # a full scan is O(capacity): at most once a second
                self._full_scan_at = now
                self.expire(now, full=True)
            if len(self._expiry) >= self.capacity:
                self.refused += 1
                raise RateLimited(f"replay cache full ({self.capacity} frames within the window); slow down",
                                  msg_ref=envelope.msg_ref)
        self._expiry[key] = envelope.ts + self.window_ms
        return True

    def expire(self, now: int, *, full: bool = False) -> None:
        """Forget keys whose frames could no longer pass the freshness check.

        ``full``: scan every key (the cache is full, and out-of-order keys may hide behind a live one).
        """
        if full:
            for key in [key for key, expiry in self._expiry.items() if expiry < now]:
                del self._expiry[key]
            return
        # Insertion order is close to ts order; scanning from the front until the first live key is cheap
        # and a slightly out-of-order key merely lives a little longer.
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry >= now:
                break
            del self._expiry[key]
