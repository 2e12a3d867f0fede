"""Protocol timings and limits: the one place their defaults are written.

The node's command line, the server core (:class:`socp.server.ServerSettings`), the client, the testbed and
the unit harness all take their defaults from here, so a default changes in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

DEFAULT_MAX_FILE_BYTES = 16 * MIB
"""Largest file a sender sends, a server routes and a receiver accepts (FILE_START ``size``)."""
DEFAULT_MAX_FRAME_BYTES = 2 * MIB
"""Largest frame a server or client accepts; larger ones get TOO_LARGE."""
DEFAULT_RATE_PER_SECOND = 200.0
"""Sustained frames per second allowed on one user connection."""
DEFAULT_RATE_BURST = 1000
"""Burst of frames allowed on one user connection."""
DEFAULT_SERVER_RATE_PER_SECOND = 2000.0
"""Sustained frames per second allowed on one server link: ten times what the scale scenario's busiest link
carries (every user's DMs, adverts and public fan-out of a whole peer funnel through it), so honest traffic
never trips it, yet a flood (re-timestamped heartbeats) cannot outrun the replay cache."""
DEFAULT_SERVER_RATE_BURST = 20_000
"""Burst of frames allowed on one server link (a link coming up carries registry and presence snapshots)."""
DEFAULT_REPLAY_CAPACITY = 200_000
"""Frames the replay cache holds at most; when it is full, new frames are refused (RATE_LIMITED), never is an
unexpired entry evicted (an evicted entry would let its frame be replayed)."""
DEFAULT_MAX_CONNECTIONS = 4096
"""Concurrent connections a node accepts in total (users, servers and handshakes)."""
DEFAULT_MAX_CONNECTIONS_PER_IP = 256
"""Concurrent connections a node accepts from one source address (a Docker host or NAT may carry many
honest users, so this is generous; it bounds one stranger, not a network)."""
DEFAULT_LOGIN_ATTEMPTS = 5
"""Failed password logins (and login requests beyond the free ones) allowed per source address within
:data:`LOGIN_WINDOW_MS` before that source is slowed down by a doubling backoff."""
LOGIN_WINDOW_MS = 60_000
"""Window of the login rate limit."""
JOIN_TIMEOUT_FLOOR_MS = 10_000
"""Shortest wait for a SERVER_WELCOME, whatever the peer timeout: an introducer welcoming tens of joiners at
once does tens of RSA operations for each, and a joiner that gives up too early only adds a join to the queue."""
DELIVERY_GRACE_MS = 8_000
"""What a forwarded user frame may wait beyond the peer timeout for its delivery receipt (the far node noticed
dead, restarting and linking again): the delivery bound is ``peer timeout + this``
(:attr:`Timings.delivery_bound_ms`)."""
SENT_LATE_GRACE_MS = 2_000
"""A forwarded frame sent (or sent again) on a live link less than this before its delivery bound waits for its
receipt until this long after that send: a frame resent as its recipient came back just before the bound is
not reported ``TIMEOUT`` while its receipt is on the way (it is below :data:`CLIENT_RECEIPT_GRACE_MS`, so the
server's outcome still comes before the client's own)."""
CLIENT_RECEIPT_GRACE_MS = 5_000
"""How much longer than the servers' delivery bound a client waits for a receipt before it reports the message
as failed on its own (a server that went silent still leaves no message unresolved)."""
RECEIPT_BATCH_MS = 20
"""How long a delivery receipt may wait to be coalesced with others on the same link (far server → origin) or
to the same user (origin → sender) into one signed ACK. 20 ms is about 4-10 RSA-4096 signatures here: under a
burst the link carries many receipts within it, so one signature replaces tens; alone, a receipt is 20 ms later
per hop, negligible against the delivery bound (seconds) and below human notice. A busy core runs its timer
late, which only makes the batches larger (fewer signatures exactly when they are dearest)."""
RECEIPT_BATCH_BUSY_MS = 250
"""How long a batch may keep growing while the core has input waiting (the shell's ``processed_until``): a
backlog means the receipts are late anyway, and a busy core is exactly when signatures are dearest (a burst
spreads its receipts over many links and seconds, so 20 ms windows alone would catch about one each). Still
far below the delivery bound (10 s with the fast timings), so no receipt is pushed past it."""
RECEIPT_BATCH_MAX = 512
"""Receipts in one coalesced ACK at most: flushed at once when reached (bounds the frame: about 25 KB of
digests, well below the frame limit)."""
STALL_FLOOR_MS = 1_000
"""A server's timer running later than ``max(heartbeat interval, this)`` counts as a stall of its own (event
loop lag, a paused process): peers' silence during it is not held against them."""


@dataclass(frozen=True, slots=True)
class Timings:
    """The protocol's timers, in seconds (the units of the node's flags and of scenario files)."""

    heartbeat_interval: float = 15.0
    """HEARTBEAT period on server links."""
    peer_timeout: float = 45.0
    """Silence after which a server link is declared dead (must exceed ``heartbeat_interval``)."""
    presence_sync_interval: float = 30.0
    """Period of SERVER_PRESENCE_SYNC anti-entropy snapshots."""
    replay_window: float = 600.0
    """Frames further than this from the receiver's clock are STALE."""

    def __post_init__(self) -> None:
        if min(self.heartbeat_interval, self.peer_timeout, self.presence_sync_interval, self.replay_window) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if self.peer_timeout <= self.heartbeat_interval:
            raise ValueError("the peer timeout must be longer than the heartbeat interval")

    @property
    def heartbeat_interval_ms(self) -> int:
        """:attr:`heartbeat_interval` in milliseconds (the core's unit)."""
        return round(self.heartbeat_interval * 1000)

    @property
    def peer_timeout_ms(self) -> int:
        """:attr:`peer_timeout` in milliseconds."""
        return round(self.peer_timeout * 1000)

    @property
    def presence_sync_interval_ms(self) -> int:
        """:attr:`presence_sync_interval` in milliseconds."""
        return round(self.presence_sync_interval * 1000)

    @property
    def replay_window_ms(self) -> int:
        """:attr:`replay_window` in milliseconds."""
        return round(self.replay_window * 1000)

    @property
    def delivery_bound_ms(self) -> int:
        """How long a forwarded user frame waits for its delivery receipt (kept across link loss, sent again
        when the link is back) before its sender gets ``ERROR TIMEOUT``: peer timeout +
        :data:`DELIVERY_GRACE_MS`."""
        return delivery_bound_ms(self.peer_timeout_ms)


def delivery_bound_ms(peer_timeout_ms: int) -> int:
    """The delivery bound for a peer timeout (see :attr:`Timings.delivery_bound_ms`)."""
    return peer_timeout_ms + DELIVERY_GRACE_MS


DEFAULT_TIMINGS = Timings()
"""What a node runs with unless told otherwise: cheap on a real network (one heartbeat per link per 15 s)."""
FAST_TIMINGS = Timings(heartbeat_interval=0.5, peer_timeout=2.0, presence_sync_interval=2.0)
"""Short timers for tests and failure scenarios: a dead peer is noticed within about two seconds."""
FEDERATION_TIMINGS = Timings(heartbeat_interval=2.0, peer_timeout=6.0, presence_sync_interval=10.0)
"""The ``make up`` federation's timers: failures show within seconds, yet an idle federation stays quiet."""
