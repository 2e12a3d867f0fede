"""The failure detector of server links (WIRE §4.7): silence, suspicion, death, and our own stalls.

A server link lives on verified frames (:meth:`socp.server.peers.ServerBook.verify` sets ``last_seen``). The
detector judges each server link at every timer run:

1. **Stalls are ours, not the peer's.** The core sees time only through the ``now`` of the shell's calls. The
   shell promised to call :meth:`ServerState.handle_timer` at the deadline it last read from ``next_deadline()``
   (:meth:`FailureDetector.promised`); a timer run later than that by more than ``stall_ms`` =
   ``max(heartbeat interval, STALL_FLOOR_MS)`` (1 s), or a clock that went backwards, is a **stall** of this
   server (event-loop lag, a paused process, a suspended VM). It is counted (``stalls``) and ``awake_since``
   moves to its end: a link's silence is measured as ``now - max(last_seen, awake_since)``, so silence that
   our stall caused is never held against a peer (its frames are waiting, unread, in our socket).
2. **Suspicion before death.** A link silent (so measured) for longer than the peer timeout is first
   *suspected*; it is declared dead only if it is still silent one heartbeat interval later and no stall of
   ours began meanwhile. The extra interval covers the frames queued behind a short, undetected stall: once we
   run again they are read, and the suspicion is lifted. A death is counted (``link_deaths``).

So a live peer is never accused while we are stalled; a dead one is declared after ``peer timeout + heartbeat
interval`` (to one timer granularity) of silence during which we were awake. The price: a server that stalls
again and again (every ``peer timeout``) accuses nobody, which is right — it cannot tell; its peers judge it.

Peers send a heartbeat on every link that carried nothing else since their previous round, so a live peer is
silent for less than two heartbeat intervals; ``peer timeout > heartbeat interval`` (checked by
:class:`socp.settings.Timings`) plus the suspicion interval keeps that well inside the deadline.

Cost: O(1) per link per timer run (the link table scans its links once per run); no frames, no signatures.
"""

from __future__ import annotations

import enum
import logging

from socp.settings import STALL_FLOOR_MS


class Verdict(enum.Enum):
    """What the detector says of one server link."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class FailureDetector:
    """Stall detection and the silence → suspicion → death rule, with its counters."""

    def __init__(self, heartbeat_interval_ms: int, peer_timeout_ms: int, now: int) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.peer_timeout_ms = peer_timeout_ms
        self.stall_ms = max(heartbeat_interval_ms, STALL_FLOOR_MS)
        """A timer run later than this (past its deadline) is a stall of ours."""
        self.awake_since = now
        """End of our last stall (or our start): silence before it is not the peers'."""
        self.stalls = 0
        """Stalls of this server detected so far."""
        self.link_deaths = 0
        """Server links declared dead for silence so far."""
        self._due: int | None = None
        self._last_now = now
        self._processed_until: int | None = None

    def promised(self, due: int) -> None:
        """The shell read ``due`` from ``next_deadline()``: it will call ``handle_timer`` then."""
        self._due = due

    def timer_fired(self, now: int, log: logging.LoggerAdapter[logging.Logger], *,
                    processed_until: int | None = None) -> bool:
        """A timer run at ``now`` (before any link is judged): True, and counted, when it ends a stall.

        ``processed_until``: every frame that arrived before it has been processed, later ones may still wait
        in our queue (None: nothing waits). Silence is judged up to that moment only.
        """
        late = now - self._due if self._due is not None else 0
        backwards = self._last_now - now
        self._last_now = now
        self._processed_until = processed_until
        if late <= self.stall_ms and backwards <= self.stall_ms:
            return False
        self.stalls += 1
        self.awake_since = now
        if backwards > self.stall_ms:
            log.warning("clock went back %d ms: peer silence is measured from now", backwards)
        else:
            log.warning("stalled: timer ran %d ms late (event-loop lag or a paused process); peer silence is "
                        "measured from now, nobody is accused of our stall", late)
        return True

    def silence(self, last_seen: int, now: int) -> int:
        """How long a link that last proved itself at ``last_seen`` has been silent while we were awake, up to
        the moment our input has been processed (frames still queued here are not the peer's silence)."""
        horizon = now if self._processed_until is None else min(now, self._processed_until)
        return horizon - max(last_seen, self.awake_since)

    def judge(self, last_seen: int, suspected_at: int | None, now: int) -> Verdict:
        """The verdict on a server link (the caller records a new suspicion's time)."""
        if self.silence(last_seen, now) <= self.peer_timeout_ms:
            return Verdict.ALIVE
        if suspected_at is None or suspected_at < self.awake_since:
            return Verdict.SUSPECT           # (again) suspected: a stall of ours since voids an old suspicion
        if now - suspected_at >= self.heartbeat_interval_ms:
            self.link_deaths += 1
            return Verdict.DEAD
        return Verdict.SUSPECT

    def deadline(self, last_seen: int, suspected_at: int | None) -> int:
        """When a server link next needs judging (never a time already judged: while our own backlog holds the
        verdict back, the link is judged again a quarter interval later, not in a busy loop)."""
        if suspected_at is not None and suspected_at >= self.awake_since:
            due = suspected_at + self.heartbeat_interval_ms
        else:
            due = max(last_seen, self.awake_since) + self.peer_timeout_ms + 1
        if self._processed_until is not None and due <= self._last_now:
            due = self._last_now + max(1, self.heartbeat_interval_ms // 4)
        return due

    def since(self, opened_at: int) -> int:
        """The start of a handshake's wait, stalls of ours excluded."""
        return max(opened_at, self.awake_since)
