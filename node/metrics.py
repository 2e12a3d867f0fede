"""What a node reports about its own load on ``/status``: event-loop lag and process CPU and memory.

- :class:`LoopLagMonitor` is one task that sleeps a fixed short interval and records how late it woke: the time
  the event loop spent on something else (a long callback, a blocked thread, the whole process paused). The last
  :data:`LAG_SAMPLES` wake-ups are kept; ``/status`` shows ``loop_lag_ms: {p50, p99, max, samples}`` over them.
- :func:`process_load` is ``process: {cpu_seconds, rss_mib, peak_rss_mib}`` from ``getrusage`` (all threads,
  user + system) and ``/proc/self/statm`` (Linux; elsewhere the current RSS falls back to the peak).
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import sys
from collections import deque

LAG_INTERVAL_S = 0.1
"""How often the lag monitor wakes up."""
LAG_SAMPLES = 600
"""Samples kept: one minute at :data:`LAG_INTERVAL_S`."""

_MIB = 1024 * 1024
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class LoopLagMonitor:
    """Measures how late the event loop runs a timer, over a bounded window of recent samples."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S, samples: int = LAG_SAMPLES) -> None:
        self.interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=samples)

    async def run(self) -> None:
        """Sample forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, (loop.time() - start - self.interval_s) * 1000))

    def record(self, lag_ms: float) -> None:
        """Add one sample, in milliseconds (the oldest falls out of the window)."""
        self._samples.append(lag_ms)

    def summary(self) -> dict[str, float | int]:
        """``{p50, p99, max, samples}`` in milliseconds over the window (zeros before the first sample)."""
        ordered = sorted(self._samples)
        if not ordered:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0}
        return {"p50": round(_percentile(ordered, 0.50), 3), "p99": round(_percentile(ordered, 0.99), 3),
                "max": round(ordered[-1], 3), "samples": len(ordered)}


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def process_load() -> dict[str, float]:
    """CPU seconds used so far (user + system, every thread), current and peak resident memory in MiB."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = usage.ru_maxrss / (_MIB if sys.platform == "darwin" else 1024)
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * _PAGE_BYTES / _MIB
    except (OSError, IndexError, ValueError):
        rss = peak
    return {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "rss_mib": round(rss, 2),
            "peak_rss_mib": round(max(peak, rss), 2)}
