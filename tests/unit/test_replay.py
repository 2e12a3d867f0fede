"""socp.replay: duplicate detection, freshness window, expiry, capacity (WIRE §2)."""

from __future__ import annotations

import pytest

from socp.envelope import Envelope, FrameType
from socp.errors import ErrorCode, RateLimited, StaleFrame
from socp.replay import DEFAULT_WINDOW_MS, ReplayCache

NOW = 1_760_000_000_000
WINDOW = 60_000


def heartbeat(ts: int, n: int = 0) -> Envelope:
    return Envelope(FrameType.HEARTBEAT, "a", "b", ts, {"n": n})


def test_default_window_is_ten_minutes() -> None:
    assert DEFAULT_WINDOW_MS == 600_000
    assert ReplayCache().window_ms == DEFAULT_WINDOW_MS


def test_duplicate_detected() -> None:
    cache = ReplayCache(WINDOW)
    assert cache.admit(heartbeat(NOW), NOW) is True
    assert cache.admit(heartbeat(NOW), NOW) is False
    assert cache.admit(heartbeat(NOW), NOW + 1000) is False
    assert len(cache) == 1


def test_duplicate_ignores_sig_but_not_content() -> None:
    cache = ReplayCache(WINDOW)
    first = heartbeat(NOW)
    assert cache.admit(first, NOW)
    assert not cache.admit(Envelope(first.type, first.sender, first.to, first.ts, first.payload, sig="other"), NOW)
    assert cache.admit(heartbeat(NOW, n=1), NOW)
    assert cache.admit(heartbeat(NOW + 1), NOW)


@pytest.mark.parametrize(("offset", "direction"), [(-WINDOW - 1, "behind"), (WINDOW + 1, "ahead of"),
                                                   (-10 * WINDOW, "behind"), (10 * WINDOW, "ahead of")])
def test_stale_both_directions(offset: int, direction: str) -> None:
    cache = ReplayCache(WINDOW)
    frame = heartbeat(NOW + offset)
    with pytest.raises(StaleFrame) as info:
        cache.admit(frame, NOW)
    assert info.value.code is ErrorCode.STALE
    assert info.value.msg_ref == frame.msg_ref
    assert direction in info.value.detail
    assert len(cache) == 0                            # stale frames are not recorded
    with pytest.raises(StaleFrame):
        cache.check_fresh(frame, NOW)


@pytest.mark.parametrize("offset", [-WINDOW, WINDOW, 0, -1, 1])
def test_window_edges_are_fresh(offset: int) -> None:
    cache = ReplayCache(WINDOW)
    cache.check_fresh(heartbeat(NOW + offset), NOW)
    assert cache.admit(heartbeat(NOW + offset), NOW)


def test_expiry_after_window() -> None:
    cache = ReplayCache(WINDOW)
    assert cache.admit(heartbeat(NOW), NOW)
    cache.expire(NOW + WINDOW)
    assert len(cache) == 1                            # still able to pass the freshness check
    assert not cache.admit(heartbeat(NOW), NOW + WINDOW)
    cache.expire(NOW + WINDOW + 1)
    assert len(cache) == 0
    with pytest.raises(StaleFrame):                   # and once forgotten it is refused as stale
        cache.admit(heartbeat(NOW), NOW + WINDOW + 1)


def test_admit_expires_old_keys() -> None:
    cache = ReplayCache(WINDOW)
    for i in range(5):
        cache.admit(heartbeat(NOW, i), NOW)
    cache.admit(heartbeat(NOW + 2 * WINDOW), NOW + 2 * WINDOW)
    assert len(cache) == 1


def test_a_full_cache_refuses_new_frames_and_never_forgets_a_live_one() -> None:
    """Issue 11 finding 9: flooding the cache must not flush a live entry out (its frame would replay);
    the sender is refused with RATE_LIMITED instead, until entries expire."""
    cache = ReplayCache(WINDOW, capacity=3)
    for i in range(3):
        assert cache.admit(heartbeat(NOW, i), NOW)
    with pytest.raises(RateLimited):
        cache.admit(heartbeat(NOW, 3), NOW)
    assert cache.refused == 1 and len(cache) == 3
    assert not cache.admit(heartbeat(NOW, 0), NOW)        # the oldest is still remembered: a replay is caught
    later = NOW + WINDOW + 1                                # the three expire; room again
    assert cache.admit(heartbeat(later, 3), later)


def test_capacity_bound_under_flood() -> None:
    cache = ReplayCache(WINDOW, capacity=100)
    refused = 0
    for i in range(1000):
        try:
            cache.admit(heartbeat(NOW + i % 50, i), NOW)
        except RateLimited:
            refused += 1
    assert len(cache) == 100 and refused == 900 == cache.refused
    assert not cache.admit(heartbeat(NOW, 0), NOW)


def test_a_full_cache_finds_room_behind_a_live_entry() -> None:
    """Expired keys inserted after a live one (out of ts order) are reclaimed when the cache is full."""
    cache = ReplayCache(WINDOW, capacity=2)
    assert cache.admit(heartbeat(NOW + WINDOW, 0), NOW + WINDOW)   # lives long
    assert cache.admit(heartbeat(NOW, 1), NOW + WINDOW)            # expires first, but sits behind it
    later = NOW + WINDOW + 1
    assert cache.admit(heartbeat(later, 2), later)


@pytest.mark.parametrize(("window", "capacity"), [(0, 10), (-1, 10), (10, 0), (10, -5)])
def test_invalid_parameters(window: int, capacity: int) -> None:
    with pytest.raises(ValueError):
        ReplayCache(window, capacity)
