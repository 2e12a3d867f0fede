"""The server's protocol logic as a sans-I/O state machine (WIRE §4, §5): :class:`ServerState` and its parts.

Layout (each component owns its state and handles its own frames, ``handler(link, frame, now)``):

- :mod:`~socp.server.state` — the facade :class:`ServerState` (the shell's whole API) and the wiring;
- :mod:`~socp.server.routes` — THE route table: handler, link roles, verification and replay rule per frame;
- :mod:`~socp.server.hooks` — link up / down, user joined / left, peer lacks a frame type, sweep;
- :mod:`~socp.server.links` — the link table, link roles, liveness, per-link rate limit;
- :mod:`~socp.server.liveness` — the failure detector: our own stalls, suspicion before death, counters;
- :mod:`~socp.server.outbox` — making, signing (signature cache) and sending frames, faults, events;
- :mod:`~socp.server.peers` — known servers: key pins, server-frame verification, reconnection backoff;
- :mod:`~socp.server.mesh` — join / welcome, announces, direct links, heartbeats;
- :mod:`~socp.server.presence` — local users, USER_ADVERTISE / USER_REMOVE / SERVER_PRESENCE_SYNC;
- :mod:`~socp.server.routing` — user frames, SERVER_DELIVER, forwards and bounces, server ERROR / ACK;
- :mod:`~socp.server.public` — the public channel (WIRE §5);
- :mod:`~socp.server.files` — file transfers;
- :mod:`~socp.server.registry` — user registry, password login, DIRECTORY_QUERY, SERVER_USER_RECORDS;
- :mod:`~socp.server.config` — :class:`ServerSettings`, :class:`BootstrapEntry` and fixed limits.
"""

from socp.server.config import (
    FILE_FRAMES,
    LOGIN_GRACE_MS,
    MAX_FILES_PER_SENDER,
    MAX_SHARES,
    PUBLIC_FRAMES,
    PUBLIC_KINDS,
    RECORDS_PER_FRAME,
    ROUTED_USER_FRAMES,
    SIGNATURE_CACHE_SIZE,
    BootstrapEntry,
    ServerSettings,
)
from socp.server.links import LinkRole
from socp.server.state import ServerState

__all__ = [
    "FILE_FRAMES",
    "LOGIN_GRACE_MS",
    "MAX_FILES_PER_SENDER",
    "MAX_SHARES",
    "PUBLIC_FRAMES",
    "PUBLIC_KINDS",
    "RECORDS_PER_FRAME",
    "ROUTED_USER_FRAMES",
    "SIGNATURE_CACHE_SIZE",
    "BootstrapEntry",
    "LinkRole",
    "ServerSettings",
    "ServerState",
]
