"""What one server is told once, by its shell: :class:`ServerSettings`, the bootstrap list, fixed limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from socp.envelope import FrameType
from socp.settings import (
    DEFAULT_LOGIN_ATTEMPTS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_REPLAY_CAPACITY,
    DEFAULT_SERVER_RATE_BURST,
    DEFAULT_SERVER_RATE_PER_SECOND,
    DEFAULT_TIMINGS,
    JOIN_TIMEOUT_FLOOR_MS,
    LOGIN_WINDOW_MS,
)

# User frames a server routes to one recipient without reading them: delivered under their own type locally,
# wrapped in SERVER_DELIVER with ``kind`` between servers (WIRE §4.6). File frames are routed only once their
# FILE_START passed the sender-binding and content_sig checks (see socp.server.files).
ROUTED_USER_FRAMES = frozenset({FrameType.MSG_DIRECT, FrameType.FILE_START, FrameType.FILE_CHUNK,
                                FrameType.FILE_END})
FILE_FRAMES = frozenset({FrameType.FILE_START, FrameType.FILE_CHUNK, FrameType.FILE_END})
PUBLIC_FRAMES = frozenset({FrameType.MSG_PUBLIC_CHANNEL, FrameType.PUBLIC_CHANNEL_KEY_SHARE})
# What may travel in SERVER_DELIVER with ``user_id: "public"`` (WIRE §4.6): public-channel frames and
# public-mode files.
PUBLIC_KINDS = PUBLIC_FRAMES | FILE_FRAMES

LOGIN_GRACE_MS = 60_000
"""How long a connection may take from USER_LOGIN_CHALLENGE to USER_HELLO (the client runs a slow KDF)."""
LOGIN_REQUESTS_PER_SECOND = 1.0
"""Sustained USER_LOGIN_REQUESTs per second from one source address (each costs a challenge and a decryption)."""
LOGIN_REQUEST_BURST = 30
"""Burst of USER_LOGIN_REQUESTs from one source address (users behind one NAT logging in together)."""
LOGIN_SOURCES_TRACKED = 100_000
"""Source addresses whose login-request rate is remembered (the table is cleared past this: bounded memory)."""
RECORDS_PER_FRAME = 50
"""Registry records per SERVER_USER_RECORDS frame (about 5 kB each, far below the frame limit)."""
MAX_SHARES = 5_000
"""Most shares one PUBLIC_CHANNEL_KEY_SHARE may carry (a bound on the work one frame can cause)."""
FILE_SLACK = 64 * 1024
"""Ciphertext characters a transfer may carry beyond twice its announced size (encoding overhead)."""
MAX_FILES_PER_SENDER = 64
"""Transfers one user may have in flight through this server at once (bounded memory)."""
SIGNATURE_CACHE_SIZE = 4096
"""Distinct payloads whose transport signature is kept for reuse."""
SIGNATURE_CACHE_MAX_BYTES = 64 * 1024
"""Payloads larger than this (file chunks) are signed without entering the signature cache: 4096 cached
chunks would hold gigabytes."""
PUBKEY_CACHE_SIZE = 10_000
"""Decoded public keys kept for reuse (the cache is cleared when it grows past this)."""


@dataclass(frozen=True, slots=True)
class BootstrapEntry:
    """One introducer of the bootstrap list; ``pubkey`` pins it (None: trust on first use)."""

    host: str
    port: int
    pubkey: str | None = None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the protocol logic of one server needs to know; built once by the shell."""

    server_id: str
    """This server's UUID v4 (the introducer may assign another at join)."""
    advertise_host: str
    """Host other servers dial to reach this one."""
    advertise_port: int
    """Port other servers dial to reach this one."""
    introducer: bool = False
    """Introducer mode: registry of servers, no users, joins nobody."""
    bootstrap: tuple[BootstrapEntry, ...] = ()
    """Introducers to join through, tried in order (peer mode)."""
    heartbeat_interval_ms: int = DEFAULT_TIMINGS.heartbeat_interval_ms
    """HEARTBEAT period on every server link."""
    peer_timeout_ms: int = DEFAULT_TIMINGS.peer_timeout_ms
    """Silence after which a server link is declared dead."""
    presence_sync_interval_ms: int = DEFAULT_TIMINGS.presence_sync_interval_ms
    """Period of SERVER_PRESENCE_SYNC anti-entropy snapshots."""
    replay_window_ms: int = DEFAULT_TIMINGS.replay_window_ms
    """Frames further than this from our clock are STALE."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Larger frames get TOO_LARGE and the connection is closed."""
    rate_per_second: float = DEFAULT_RATE_PER_SECOND
    """Sustained frames per second allowed on one user connection."""
    rate_burst: int = DEFAULT_RATE_BURST
    """Burst of frames allowed on one user connection."""
    backoff_initial_ms: int = 500
    """First reconnection delay; doubles on each failure."""
    backoff_max_ms: int = 30_000
    """Cap of the reconnection delay."""
    server_rate_per_second: float = DEFAULT_SERVER_RATE_PER_SECOND
    """Sustained frames per second allowed on one server link."""
    server_rate_burst: int = DEFAULT_SERVER_RATE_BURST
    """Burst of frames allowed on one server link."""
    replay_capacity: int = DEFAULT_REPLAY_CAPACITY
    """Most frames the replay cache holds; a full cache refuses new frames (RATE_LIMITED)."""
    legacy_interop: bool = False
    """Legacy-interop switch (WIRE §2): accept transport signatures over the payload alone, and USER_HELLO /
    link-opening SERVER_ANNOUNCE addressed to ``"*"`` instead of to this server's id. Weakens replay
    protection (a captured frame can be re-timestamped or sent to another server); the node logs a WARNING."""
    allow_unsigned_hello: bool = False
    """Interop switch: accept USER_HELLO without a proof-of-possession signature."""
    interop: bool = False
    """The interop profile (issue 14, docs/INTEROP.md): accept other implementations' field names and shapes
    (:mod:`socp.interop`), logging each variant once per peer. Implies :attr:`legacy_interop` and
    :attr:`allow_unsigned_hello` (set on construction); never on by default."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest file (FILE_START ``size``) this server routes; larger ones get TOO_LARGE."""
    login_max_failures: int = DEFAULT_LOGIN_ATTEMPTS
    """Failed password logins allowed per user id within ``login_window_ms``."""
    login_window_ms: int = LOGIN_WINDOW_MS
    """Window of the login rate limit."""
    join_timeout_ms: int = 0
    """How long a joiner waits for SERVER_WELCOME before trying the next introducer; 0: the default,
    :attr:`join_wait_ms`."""
    admit_keys: frozenset[str] = frozenset()
    """Admission control: server keys (canonical encoding) admitted to the federation without a token."""
    join_token: str = field(default="", repr=False)
    """Admission control: the federation's shared join secret (never sent; joins and announces carry an
    HMAC under it, PROTOCOL.md §4.1.1). Empty with no ``admit_keys``: open admission (the standard's)."""

    def __post_init__(self) -> None:
        if self.interop:  # the profile implies both switches: one flag for "talk to the others"
            object.__setattr__(self, "legacy_interop", True)
            object.__setattr__(self, "allow_unsigned_hello", True)

    @property
    def admission(self) -> str:
        """The admission mode, as logged: ``open``, ``keys``, ``token`` or ``keys+token``."""
        modes = [mode for mode, on in (("keys", bool(self.admit_keys)), ("token", bool(self.join_token))) if on]
        return "+".join(modes) or "open"

    @property
    def join_wait_ms(self) -> int:
        """The welcome wait in force: ``join_timeout_ms`` if set, else the longer of the peer timeout and
        :data:`socp.settings.JOIN_TIMEOUT_FLOOR_MS` (a join is real work for a busy introducer: never give up on
        it sooner than it can be done)."""
        return self.join_timeout_ms or max(self.peer_timeout_ms, JOIN_TIMEOUT_FLOOR_MS)
