"""The server's protocol logic as a sans-I/O state machine (WIRE §4, §5).

The asyncio shell (``node/``) owns sockets and the clock and drives :class:`ServerState` like this::

    link = state.accept_link(now)            # an inbound connection was accepted
    state.receive_text(link, text, now)      # a text message arrived
    state.dial_succeeded(link, now)          # an outbound Dial connected (or dial_failed)
    state.link_closed(link, now)             # a connection went away
    state.handle_timer(now)                  # when now >= state.next_deadline()
    for action in state.data_to_send(): ...  # Send / CloseLink / Dial, in order
    for event in state.events_received(): ...

Time is ``now`` in integer milliseconds since the Unix epoch; fresh ids come from ``rng``.
"""

from __future__ import annotations

import enum
import logging
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import (
    Action,
    CloseLink,
    Dial,
    Event,
    IdentityAssigned,
    LinkDown,
    LinkId,
    LinkUp,
    PeerFault,
    PublicChannelVersion,
    PublicWrapStored,
    RegistrationStored,
    Send,
    ServerPinned,
    UserJoined,
    UserLeft,
    UserRegistered,
)
from socp.codec import b64url_decode, canonical_json
from socp.envelope import BROADCAST, PUBLIC_GROUP, Envelope, FrameType
from socp.errors import (
    AuthFailed,
    BadFrame,
    BadKey,
    ErrorCode,
    InvalidSignature,
    NameInUse,
    ProtocolError,
    RateLimited,
    TooLarge,
    UserNotFound,
)
from socp.presence import Directory, UserRecord, display_label, meta_of
from socp.registry import LoginRecord, LoginThrottle, Registration, normalize_login, registration_from_wire
from socp.replay import ReplayCache
from socp.settings import (
    DEFAULT_LOGIN_ATTEMPTS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_TIMINGS,
    LOGIN_WINDOW_MS,
)

logger = logging.getLogger("socp.server")

# User frames a server routes to one recipient without reading them: delivered under their own type locally,
# wrapped in SERVER_DELIVER with ``kind`` between servers (WIRE §4.6). File frames are routed only once their
# FILE_START passed the sender-binding and content_sig checks (see _on_file_frame).
ROUTED_USER_FRAMES = frozenset({FrameType.MSG_DIRECT, FrameType.FILE_START, FrameType.FILE_CHUNK,
                                FrameType.FILE_END})
FILE_FRAMES = frozenset({FrameType.FILE_START, FrameType.FILE_CHUNK, FrameType.FILE_END})
PUBLIC_FRAMES = frozenset({FrameType.MSG_PUBLIC_CHANNEL, FrameType.PUBLIC_CHANNEL_KEY_SHARE})
# What may travel in SERVER_DELIVER with ``user_id: "public"`` (WIRE §4.6): public-channel frames and
# public-mode files.
PUBLIC_KINDS = PUBLIC_FRAMES | FILE_FRAMES

LOGIN_GRACE_MS = 60_000
"""How long a connection may take from USER_LOGIN_CHALLENGE to USER_HELLO (the client runs a slow KDF)."""
RECORDS_PER_FRAME = 50
"""Registry records per SERVER_USER_RECORDS frame (about 5 kB each, far below the frame limit)."""
MAX_SHARES = 5_000
"""Most shares one PUBLIC_CHANNEL_KEY_SHARE may carry (a bound on the work one frame can cause)."""
_FILE_SLACK = 64 * 1024
MAX_FILES_PER_SENDER = 64
"""Transfers one user may have in flight through this server at once (bounded memory)."""


class _SilentDrop(Exception):
    """A frame dropped without an answer (a flood already told it is rate-limited)."""


SIGNATURE_CACHE_SIZE = 4096
"""Distinct payloads whose transport signature is kept for reuse."""


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
    allow_unsigned_hello: bool = False
    """Interop switch: accept USER_HELLO without a proof-of-possession signature."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest file (FILE_START ``size``) this server routes; larger ones get TOO_LARGE."""
    login_max_failures: int = DEFAULT_LOGIN_ATTEMPTS
    """Failed password logins allowed per user id within ``login_window_ms``."""
    login_window_ms: int = LOGIN_WINDOW_MS
    """Window of the login rate limit."""


class LinkRole(enum.Enum):
    """What a connection is, as far as the protocol knows."""

    PENDING = "pending"      # inbound, first frame not yet seen
    DIALING = "dialing"      # outbound, not yet connected
    JOINING = "joining"      # outbound to an introducer, SERVER_HELLO_JOIN sent, awaiting SERVER_WELCOME
    SERVER = "server"        # identified server link
    USER = "user"            # identified local user


@dataclass(slots=True)
class _Link:
    link_id: LinkId
    outbound: bool
    role: LinkRole
    opened_at: int
    last_seen: int
    peer: str = ""                       # server id or user id once identified
    target: str = ""                     # outbound: server id dialed ("" for a join)
    bootstrap_index: int = -1            # join links: which bootstrap entry
    joined_through: bool = False         # the peer joined the network through us on this link
    tokens: float = 0.0
    tokens_at: int = 0
    rate_limited_at: int = -1_000_000    # when the last RATE_LIMITED was sent (one per second at most)
    closing: bool = False
    pending_until: int = 0               # a login in progress may stay pending this long
    login_user: str = ""                 # user id a login challenge was issued for
    login_nonce: str = ""                # the challenge's nonce; USER_HELLO must echo it after a login
    login_granted: bool = False


@dataclass(slots=True)
class _ServerInfo:
    pubkey: str
    host: str = ""
    port: int = 0
    ever_linked: bool = False
    proven: bool = True                  # signed something with its key (an unsigned join has not, yet)
    reconnect_attempt: int = 0
    reconnect_due: int | None = None


@dataclass(frozen=True, slots=True)
class _Forward:
    sender: str          # local user who sent it
    user_msg_ref: str    # msg_ref of the user's original frame
    expires: int
    file_key: tuple[str, str] | None = None  # (sender, file_id) of a forwarded file frame
    recipient: str = ""


@dataclass(slots=True)
class _FileTransfer:
    """A file whose verified FILE_START this server routed; its chunks may follow."""

    to: str
    size: int
    budget: int          # ciphertext characters still allowed (bounds a sender that lies about the size)
    expires: int


@dataclass(slots=True)
class _Local:
    user_id: str
    link_id: LinkId
    pubkey: str
    meta: Mapping[str, Any] = field(default_factory=dict)


class ServerState:
    """One SOCP server (introducer or peer) as a pure state machine; see the module docstring."""

    def __init__(self, settings: ServerSettings, key: crypto.PrivateKey, *, now: int,
                 rng: random.Random | None = None, registered_users: Mapping[str, str] | None = None,
                 pinned_servers: Mapping[str, str] | None = None, registrations: Iterable[Registration] = (),
                 public_version: int = 0, public_wraps: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.server_id = settings.server_id
        self._key = key
        self.pubkey = crypto.encode_public_key(key.public_key())
        self._rng = rng or random.Random()
        self._links: dict[LinkId, _Link] = {}
        self._next_link_id = 1
        self._servers: dict[str, _ServerInfo] = {}
        self._server_links: dict[str, LinkId] = {}
        self._pubkey_cache: dict[str, crypto.PublicKey] = {}
        self._locals: dict[str, _Local] = {}
        # The user registry (user id -> key binding, password records), network-wide through replication.
        self._registry: dict[str, Registration] = {
            user_id: Registration(user_id, pubkey, settings.server_id)
            for user_id, pubkey in (registered_users or {}).items()}
        self._logins: dict[str, str] = {}
        for registration in registrations:
            self._registry[registration.user_id] = registration
        for registration in self._registry.values():
            if registration.login is not None:
                self._logins.setdefault(registration.login.login, registration.user_id)
        self._throttle = LoginThrottle(settings.login_max_failures, settings.login_window_ms)
        self._no_records_peers: set[str] = set()
        # Public channel (WIRE §5): membership version, the latest wrap each local member received, and what
        # other servers announced of their members.
        self._public_version = public_version
        self._latest_wraps: dict[str, str] = dict(public_wraps or {})
        self._remote_members: dict[str, tuple[int, set[str]]] = {}
        self._files: dict[tuple[str, str], _FileTransfer] = {}
        self._refused_files: dict[tuple[str, str], int] = {}
        self.directory = Directory()
        self.replay = ReplayCache(settings.replay_window_ms)
        self._forwards: dict[str, list[_Forward]] = {}
        self._introducers: set[str] = set()
        self._link_openers: dict[bytes, int] = {}
        self._signatures: dict[bytes, str] = {}
        self._legacy_peers: set[str] = set()
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._presence_version = 0
        own_address = (settings.advertise_host, settings.advertise_port)
        # A shared bootstrap file lists every introducer, this one too: joining ourselves makes no sense.
        self._bootstrap = tuple(entry for entry in settings.bootstrap if (entry.host, entry.port) != own_address)
        # Introducers that share a bootstrap list must not all found networks of their own: the first listed
        # founds at once, the k-th only after k rounds in which no fellow introducer welcomed it.
        listed = [(entry.host, entry.port) for entry in settings.bootstrap]
        self._founder_rank = listed.index(own_address) if own_address in listed else 1
        self.joined = settings.introducer and (not self._bootstrap or self._founder_rank == 0)
        self._join_index = 0
        self._join_attempt = 0
        self._join_due: int | None = None
        self._next_heartbeat = now + settings.heartbeat_interval_ms
        self._next_sync = now + settings.presence_sync_interval_ms
        for server_id, pubkey in (pinned_servers or {}).items():
            self._servers[server_id] = _ServerInfo(pubkey=pubkey)
        self._log = logging.LoggerAdapter(logger, {"node": self.server_id[:8]})

    # --- shell API -------------------------------------------------------------------------------

    def start(self, now: int) -> None:
        """Begin joining the network through the bootstrap list (an introducer joins its fellow introducers)."""
        if self._bootstrap and not self.joined:
            self._join_due = now

    def accept_link(self, now: int) -> LinkId:
        """Register an inbound connection; returns its link id."""
        link = self._new_link(outbound=False, role=LinkRole.PENDING, now=now)
        return link.link_id

    def dial_succeeded(self, link_id: LinkId, now: int) -> None:
        """An outbound Dial connected: send the link's first frame."""
        link = self._links.get(link_id)
        if link is None or link.role is not LinkRole.DIALING:
            return
        link.last_seen = now
        if link.target:
            info = self._servers.get(link.target)
            if info is None:
                self._close(link, "server forgotten while dialing")
                return
            self._send(link, self._make(FrameType.SERVER_ANNOUNCE, BROADCAST, now, self._announce_payload()))
            self._identify_server(link, link.target, now)
        else:
            entry = self._bootstrap[link.bootstrap_index]
            link.role = LinkRole.JOINING
            self._send(link, self._make(FrameType.SERVER_HELLO_JOIN, f"{entry.host}:{entry.port}", now,
                                        self._announce_payload()))

    def dial_failed(self, link_id: LinkId, now: int) -> None:
        """An outbound Dial could not connect."""
        self.link_closed(link_id, now, reason="dial failed")

    def link_closed(self, link_id: LinkId, now: int, reason: str = "connection closed") -> None:
        """A connection went away (for any reason); forget it and repair what depended on it."""
        link = self._links.pop(link_id, None)
        if link is None:
            return
        if link.role in (LinkRole.JOINING, LinkRole.DIALING) and not link.target:
            self._join_failed(now)
            return
        if link.role is LinkRole.USER:
            self._user_left(link, now)
            return
        server_id = link.peer or link.target
        if not server_id or self._server_links.get(server_id, link_id) != link_id:
            return
        if self._server_links.get(server_id) == link_id:
            del self._server_links[server_id]
            dropped = self.directory.drop_server(server_id)
            for record in dropped:
                self._push_to_users(FrameType.USER_REMOVE, now,
                                    {"user_id": record.user_id, "server_id": server_id})
            self._remote_members.pop(server_id, None)
            self._events.append(LinkDown(server_id, link_id, reason, len(dropped)))
            self._log.info("link to server %s down (%s); %d users unreachable", server_id[:8], reason,
                           len(dropped))
            if self.settings.introducer and not link.outbound:
                # The registry stops listing servers whose link died (the key pin stays); they come back by
                # joining again.
                self._servers[server_id].host = ""
                return
        info = self._servers.get(server_id)
        if info is not None and info.host:
            self._schedule_reconnect(server_id, info, now)

    def receive_text(self, link_id: LinkId, text: str | bytes, now: int) -> None:
        """Process one text message received on ``link_id``."""
        link = self._links.get(link_id)
        if link is None or link.closing:
            return
        if link.role is not LinkRole.SERVER:
            link.last_seen = now  # a server link lives on verified frames only (see _verified_from_server)
        try:
            if link.role is LinkRole.USER or link.role is LinkRole.PENDING:
                self._rate_limit(link, now)
            frame = env.parse(text, self.settings.max_frame_bytes)
        except _SilentDrop:
            return
        except ProtocolError as exc:
            self._fault(link, exc, now)
            return
        if logger.isEnabledFor(logging.DEBUG):
            self._log.debug("< %s %s from %s on link %d", frame.type, frame.msg_ref, frame.sender[:8], link_id)
        try:
            self._dispatch(link, frame, now)
        except ProtocolError as exc:
            if frame.type in (FrameType.ERROR, FrameType.ACK):
                # Never answer an ERROR or ACK with an ERROR: two peers that disagree would ping-pong forever.
                self._log.info("ignored %s from %s: %s", frame.type, link.peer[:8] or link.link_id, exc)
                return
            if exc.msg_ref is None:
                exc.msg_ref = frame.msg_ref  # errors raised deep inside (key parsing) still name the frame
            self._fault(link, exc, now)

    def handle_timer(self, now: int) -> None:
        """Run everything whose deadline has passed: joins, reconnects, heartbeats, liveness, sync."""
        if self._join_due is not None and now >= self._join_due:
            self._join_due = None
            self._dial_introducer(now)
        for server_id, info in list(self._servers.items()):
            if (info.reconnect_due is not None and now >= info.reconnect_due
                    and server_id not in self._server_links):
                info.reconnect_due = None
                self._dial_server(server_id, info, now)
        for link in list(self._links.values()):
            if link.closing:
                continue
            if link.role is LinkRole.SERVER and now - link.last_seen > self.settings.peer_timeout_ms:
                self._log.warning("server %s silent for %d ms: link declared dead", link.peer[:8],
                                  now - link.last_seen)
                self._close(link, "peer timeout")
                self.link_closed(link.link_id, now, reason="peer timeout")
            elif (link.role is LinkRole.PENDING and now - link.opened_at > self.settings.peer_timeout_ms
                  and now > link.pending_until):
                self._close(link, "no hello within the peer timeout")
            elif link.role is LinkRole.JOINING and now - link.opened_at > self.settings.peer_timeout_ms:
                # An introducer that accepted the connection but never welcomes us must not stall the join.
                self._log.warning("no SERVER_WELCOME within %d ms; trying the next introducer",
                                  self.settings.peer_timeout_ms)
                self._close(link, "no welcome within the peer timeout")
                self.link_closed(link.link_id, now, reason="no welcome")
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_interval_ms
            for link in self._server_link_list():
                if not link.closing:
                    self._send(link, self._make(FrameType.HEARTBEAT, link.peer, now, {}))
        if now >= self._next_sync:
            self._next_sync = now + self.settings.presence_sync_interval_ms
            for link in self._server_link_list():
                self._send_presence_sync(link, now)
            self.replay.expire(now)
            self._link_openers = {key: expiry for key, expiry in self._link_openers.items() if expiry >= now}
            self._forwards = {ref: live for ref, forwards in self._forwards.items()
                              if (live := [fwd for fwd in forwards if fwd.expires > now])}
            # A transfer whose chunks stopped coming is forgotten after one replay window.
            self._files = {key: transfer for key, transfer in self._files.items() if transfer.expires > now}
            self._refused_files = {key: expiry for key, expiry in self._refused_files.items() if expiry > now}

    def next_deadline(self) -> int:
        """The earliest ``now`` at which :meth:`handle_timer` has work."""
        deadlines = [self._next_heartbeat, self._next_sync]
        timeout = self.settings.peer_timeout_ms + 1
        deadlines.extend(link.last_seen + timeout if link.role is LinkRole.SERVER
                         else max(link.opened_at + timeout, link.pending_until + 1)
                         for link in self._links.values()
                         if link.role in (LinkRole.SERVER, LinkRole.PENDING, LinkRole.JOINING) and not link.closing)
        if self._join_due is not None:
            deadlines.append(self._join_due)
        deadlines.extend(info.reconnect_due for info in self._servers.values() if info.reconnect_due is not None)
        return min(deadlines)

    def data_to_send(self) -> list[Action]:
        """Actions queued since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    def events_received(self) -> list[Event]:
        """Events queued since the last call, in order."""
        events, self._events = self._events, []
        return events

    # --- read-only views -------------------------------------------------------------------------

    @property
    def linked_servers(self) -> list[str]:
        """Ids of servers with an established link."""
        return sorted(self._server_links)

    @property
    def known_servers(self) -> list[str]:
        """Ids of every server this node knows an address for."""
        return sorted(server_id for server_id, info in self._servers.items() if info.host)

    @property
    def local_users(self) -> list[str]:
        """Ids of users attached to this server."""
        return sorted(self._locals)

    @property
    def healthy(self) -> bool:
        """Joined, and linked at least once to every server learned of (the /healthz answer)."""
        return self.joined and all(info.ever_linked or not info.host for info in self._servers.values())

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for health and metrics endpoints."""
        return {
            "server_id": self.server_id, "introducer": self.settings.introducer, "joined": self.joined,
            "healthy": self.healthy, "linked_servers": self.linked_servers,
            "known_servers": self.known_servers, "local_users": len(self._locals),
            "known_users": len(self.directory), "registered_users": len(self._registry),
            "public_channel": {"version": self._public_version, "local_members": len(self._locals),
                               "members": len(self._locals) + sum(len(members) for _, members
                                                                  in self._remote_members.values())},
        }

    def registration(self, user_id: str) -> Registration | None:
        """What the registry holds for ``user_id`` (any server's user), or None."""
        return self._registry.get(user_id)

    @property
    def public_version(self) -> int:
        """This server's public-channel membership version."""
        return self._public_version

    # --- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, link: _Link, frame: Envelope, now: int) -> None:
        if link.role is LinkRole.PENDING:
            self._first_frame(link, frame, now)
        elif link.role is LinkRole.JOINING:
            self._on_join_reply(link, frame, now)
        elif link.role is LinkRole.SERVER:
            self._on_server_frame(link, frame, now)
        elif link.role is LinkRole.USER:
            self._on_user_frame(link, frame, now)

    def _first_frame(self, link: _Link, frame: Envelope, now: int) -> None:
        if frame.type is FrameType.USER_HELLO:
            self._on_user_hello(link, frame, now)
        elif frame.type is FrameType.USER_LOGIN_REQUEST:
            self._on_login_request(link, frame, now)
        elif frame.type is FrameType.USER_LOGIN_PROOF:
            self._on_login_proof(link, frame, now)
        elif frame.type is FrameType.SERVER_HELLO_JOIN:
            self._on_hello_join(link, frame, now)
        elif frame.type in (FrameType.SERVER_ANNOUNCE, FrameType.SERVER_HELLO_LINK):
            self._on_direct_announce(link, frame, now)
        else:
            raise BadFrame(f"a new connection must start with USER_HELLO, USER_LOGIN_REQUEST, SERVER_HELLO_JOIN "
                           f"or SERVER_ANNOUNCE, not {frame.type}", msg_ref=frame.msg_ref, fatal=True)

    # --- server links ----------------------------------------------------------------------------

    def _on_hello_join(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self.joined:
            # Welcoming servers before we are part of the network would found a separate island.
            raise BadFrame("this server has not joined the network yet; try another introducer or retry",
                           msg_ref=frame.msg_ref, fatal=True)
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        if frame.sig and not frame.verify(crypto.decode_public_key(key_text)):
            raise InvalidSignature("SERVER_HELLO_JOIN signature does not verify with its pubkey",
                                   msg_ref=frame.msg_ref, fatal=True)
        if not self.replay.admit(frame, now):
            raise BadFrame("replayed SERVER_HELLO_JOIN", msg_ref=frame.msg_ref, fatal=True)
        requested = frame.sender
        pinned = self._servers.get(requested)
        # A known id is granted again only to a join signed by its pinned key: an unsigned claim could
        # otherwise take over another server's id and registered address.
        proven = bool(frame.sig) and pinned is not None and pinned.pubkey == key_text
        if not env.is_uuid(requested) or requested == self.server_id or (pinned is not None and not proven):
            assigned = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            self._log.info("join request for id %s reassigned to %s (id taken or invalid)", requested[:8],
                           assigned[:8])
        else:
            assigned = requested
        self._pin(assigned, key_text, trusted=True)
        info = self._servers[assigned]
        info.host, info.port = frame.payload["host"], frame.payload["port"]
        info.proven = bool(frame.sig)
        servers = [self._server_entry(self.server_id, self.pubkey, self.settings.advertise_host,
                                      self.settings.advertise_port, self.settings.introducer)]
        servers += [self._server_entry(sid, s.pubkey, s.host, s.port, sid in self._introducers)
                    for sid, s in sorted(self._servers.items())
                    if sid != assigned and sid in self._server_links and s.host and s.proven]
        payload = {"assigned_id": assigned, "servers": servers,
                   "clients": [{"user_id": s["server_id"], "host": s["host"], "port": s["port"],
                                "pubkey": s["pubkey"]} for s in servers]}
        self._send(link, self._make(FrameType.SERVER_WELCOME, assigned, now, payload))
        link.joined_through = True
        self._identify_server(link, assigned, now)

    def _on_direct_announce(self, link: _Link, frame: Envelope, now: int) -> None:
        key_text = self._checked_self_signed(frame)
        self.replay.check_fresh(frame, now)
        # The same announce may also reach us relayed by the introducer, so the general replay cache cannot
        # judge it; but one announce opens at most one direct link, or a captured copy could hijack the link.
        if frame.replay_key in self._link_openers:
            raise BadFrame(f"replayed {frame.type}", msg_ref=frame.msg_ref, fatal=True)
        self._link_openers[frame.replay_key] = frame.ts + self.settings.replay_window_ms
        self.replay.admit(frame, now)
        if not env.is_uuid(frame.sender) or frame.sender == self.server_id:
            raise BadFrame("server id must be a UUID other than ours", msg_ref=frame.msg_ref, fatal=True)
        self._pin(frame.sender, key_text, trusted=False, msg_ref=frame.msg_ref)
        info = self._servers[frame.sender]
        info.host, info.port = frame.payload["host"], frame.payload["port"]
        self._identify_server(link, frame.sender, now)

    def _on_join_reply(self, link: _Link, frame: Envelope, now: int) -> None:
        if frame.type is FrameType.ERROR:
            self._log.warning("introducer refused our join: %s %s", frame.payload.get("code"),
                              frame.payload.get("detail"))
            self._close(link, "join refused")
            return
        if frame.type is not FrameType.SERVER_WELCOME:
            raise BadFrame(f"expected SERVER_WELCOME after SERVER_HELLO_JOIN, got {frame.type}",
                           msg_ref=frame.msg_ref, fatal=True)
        entry = self._bootstrap[link.bootstrap_index]
        entries = self._welcome_entries(frame)
        introducer_key = entry.pubkey
        if introducer_key is None:
            offered = [e["pubkey"] for e in entries if e["server_id"] == frame.sender]
            if not offered:
                raise BadKey("unpinned introducer did not list its own key in SERVER_WELCOME",
                             msg_ref=frame.msg_ref, fatal=True)
            introducer_key = offered[0]
            self._log.warning("TRUST ON FIRST USE: introducer %s at %s:%d pinned to key %s without a "
                              "configured pubkey; pin it in the bootstrap file", frame.sender[:8], entry.host,
                              entry.port, crypto.key_fingerprint(crypto.normalize_public_key(introducer_key)))
        introducer_key = crypto.normalize_public_key(introducer_key)
        if not frame.verify(crypto.decode_public_key(introducer_key)):
            raise InvalidSignature("SERVER_WELCOME is not signed by the pinned introducer key",
                                   msg_ref=frame.msg_ref, fatal=True)
        assigned = frame.payload["assigned_id"]
        if not env.is_uuid(assigned):
            raise BadFrame("assigned_id is not a UUID", msg_ref=frame.msg_ref, fatal=True)
        if assigned != self.server_id:
            self._log.warning("introducer assigned us id %s instead of %s", assigned, self.server_id)
            self.server_id = assigned
            self._log = logging.LoggerAdapter(logger, {"node": self.server_id[:8]})
            self._events.append(IdentityAssigned(assigned))
        self._pin(frame.sender, introducer_key, trusted=True)
        info = self._servers[frame.sender]
        info.host, info.port = entry.host, entry.port
        for item in entries:
            if item["server_id"] in (self.server_id, frame.sender):
                continue
            try:
                self._pin(item["server_id"], crypto.normalize_public_key(item["pubkey"]), trusted=True)
            except ProtocolError as exc:
                self._log.warning("welcome entry for %s refused: %s", item["server_id"][:8], exc)
                continue
            known = self._servers[item["server_id"]]
            known.host, known.port = item["host"], item["port"]
            if item["introducer"]:
                self._introducers.add(item["server_id"])
        self.joined = True
        self._join_attempt = 0
        self._introducers.add(frame.sender)
        self._log.info("joined the network through %s (%d other servers)", frame.sender[:8], len(entries) - 1)
        self._identify_server(link, frame.sender, now)
        # The introducer relays this announce to the servers it knows (WIRE §4.3).
        self._send(link, self._make(FrameType.SERVER_ANNOUNCE, BROADCAST, now, self._announce_payload()))
        for server_id, known in list(self._servers.items()):
            if server_id not in self._server_links and known.host and server_id != self.server_id:
                self._dial_server(server_id, known, now)

    def _on_server_frame(self, link: _Link, frame: Envelope, now: int) -> None:
        handler = {
            FrameType.HEARTBEAT: self._on_heartbeat,
            FrameType.SERVER_ANNOUNCE: self._on_mesh_announce,
            FrameType.SERVER_HELLO_LINK: self._on_mesh_announce,
            FrameType.USER_ADVERTISE: self._on_user_advertise,
            FrameType.USER_REMOVE: self._on_user_remove,
            FrameType.SERVER_PRESENCE_SYNC: self._on_presence_sync,
            FrameType.SERVER_DELIVER: self._on_server_deliver,
            FrameType.ERROR: self._on_server_error,
            FrameType.ACK: self._on_server_ack,
            FrameType.SERVER_USER_RECORDS: self._on_user_records,
            FrameType.PUBLIC_CHANNEL_ADD: self._on_public_add,
            FrameType.PUBLIC_CHANNEL_UPDATED: self._on_public_updated,
        }.get(frame.type)
        if handler is None:
            raise BadFrame(f"{frame.type} is not allowed on a server link", msg_ref=frame.msg_ref)
        handler(link, frame, now)

    def _verified_from_server(self, link: _Link, frame: Envelope, now: int, *, relayable: bool = False) -> bool:
        """Check origin, signature and freshness of a server frame; False for a silent duplicate."""
        if not relayable and frame.sender != link.peer:
            raise BadFrame(f"{frame.type} must come from the linked server {link.peer}", msg_ref=frame.msg_ref)
        info = self._servers.get(frame.sender)
        if info is None:
            raise BadKey(f"no pinned key for server {frame.sender}", msg_ref=frame.msg_ref)
        if not frame.verify(self._public_key(info.pubkey)):
            raise InvalidSignature(f"{frame.type} signature does not verify with the pinned key of "
                                   f"{frame.sender}", msg_ref=frame.msg_ref)
        info.proven = True
        # Garbage or forgeries must not keep a link alive, nor a link that never carries a verified frame
        # reset the reconnection backoff: only now does the peer count as alive.
        link.last_seen = now
        self._servers[link.peer].reconnect_attempt = 0
        return self.replay.admit(frame, now)

    def _on_heartbeat(self, link: _Link, frame: Envelope, now: int) -> None:
        self._verified_from_server(link, frame, now)

    def _on_mesh_announce(self, link: _Link, frame: Envelope, now: int) -> None:
        key_text = self._checked_self_signed(frame)
        if not self.replay.admit(frame, now):
            return
        if frame.sender == self.server_id:
            return
        if frame.sender != link.peer and link.peer not in self._introducers:
            raise BadFrame("only an introducer may relay another server's SERVER_ANNOUNCE",
                           msg_ref=frame.msg_ref)
        self._pin(frame.sender, key_text, trusted=frame.sender != link.peer, msg_ref=frame.msg_ref)
        info = self._servers[frame.sender]
        info.proven = True
        info.host, info.port = frame.payload["host"], frame.payload["port"]
        if frame.sender == link.peer and link.joined_through:
            for other in self._server_link_list():
                if other.link_id != link.link_id:
                    self._send_text(other, frame.to_wire())

    def _on_user_advertise(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now, relayable=True):
            return
        payload = frame.payload
        if payload["server_id"] != frame.sender:
            raise BadFrame("USER_ADVERTISE server_id must be its signer", msg_ref=frame.msg_ref)
        meta = meta_of(payload)
        pubkey = self._gossiped_user_key(payload, meta, frame)
        if pubkey is None:
            return
        record = UserRecord(payload["user_id"], frame.sender, pubkey, meta)
        if record.user_id in self._locals:
            self._log.info("user %s advertised by %s but attached here; keeping local", record.user_id[:8],
                           frame.sender[:8])
            return
        self.directory.advertise(record)
        self._relay_to_servers(link, frame)
        self._push_to_users(FrameType.USER_ADVERTISE, now, self._advert_payload(record))

    def _on_user_remove(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now, relayable=True):
            return
        if frame.payload["server_id"] != frame.sender:
            raise BadFrame("USER_REMOVE server_id must be its signer", msg_ref=frame.msg_ref)
        self._relay_to_servers(link, frame)
        if self.directory.remove(frame.payload["user_id"], frame.sender) is not None:
            self._push_to_users(FrameType.USER_REMOVE, now,
                                {"user_id": frame.payload["user_id"], "server_id": frame.sender})

    def _on_presence_sync(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now):
            return
        if frame.payload["server_id"] != link.peer:
            raise BadFrame("SERVER_PRESENCE_SYNC must describe its sender", msg_ref=frame.msg_ref)
        records = []
        for item in frame.payload["users"]:
            if not isinstance(item, dict) or not isinstance(item.get("user_id"), str):
                raise BadFrame("SERVER_PRESENCE_SYNC users entries need user_id", msg_ref=frame.msg_ref)
            meta = meta_of(item)
            pubkey = self._gossiped_user_key(item, meta, frame)
            if item["user_id"] in self._locals or pubkey is None:
                continue
            records.append(UserRecord(item["user_id"], link.peer, pubkey, meta))
        added, removed = self.directory.replace_server(link.peer, records)
        for record in added:
            self._push_to_users(FrameType.USER_ADVERTISE, now, self._advert_payload(record))
        for record in removed:
            self._push_to_users(FrameType.USER_REMOVE, now, {"user_id": record.user_id, "server_id": link.peer})

    def _on_server_deliver(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now):
            return
        if frame.to != self.server_id:
            raise BadFrame("SERVER_DELIVER addressed to another server", msg_ref=frame.msg_ref)
        payload = dict(frame.payload)
        recipient = payload.pop("user_id")
        kind_name = payload.pop("kind", FrameType.MSG_DIRECT.value)
        if recipient == PUBLIC_GROUP:
            self._on_public_deliver(frame, kind_name, payload, now)
            return
        local = self._locals.get(recipient)
        if local is None:
            # ``user_id`` and ``sender`` (our extension) tell the origin which of several forwards sharing this
            # msg_ref (same servers, same millisecond) bounced.
            self._send(link, self._make(FrameType.ERROR, link.peer, now, {
                "code": ErrorCode.USER_NOT_FOUND.value, "detail": f"user {recipient} is not attached to this server",
                "msg_ref": frame.msg_ref, "user_id": recipient, "sender": payload.get("sender", "")}))
            return
        sender = payload.get("sender", "")
        # A malformed forward is refused here, so that the ERROR reaches the origin (and its sender) instead of
        # our user silently dropping a frame it cannot read.
        if kind_name == FrameType.MSG_DIRECT.value:
            env.check_payload(FrameType.USER_DELIVER, payload, frame.msg_ref)
            out = self._make_at(FrameType.USER_DELIVER, self.server_id, recipient, frame.ts, payload)
        else:
            try:
                kind = FrameType(kind_name)
            except ValueError:
                raise BadFrame(f"unknown SERVER_DELIVER kind {kind_name!r}", msg_ref=frame.msg_ref) from None
            if not isinstance(sender, str) or not sender:
                raise BadFrame(f"SERVER_DELIVER of {kind} needs the sending user in 'sender'", msg_ref=frame.msg_ref)
            payload.pop("sender", None)
            env.check_payload(kind, payload, frame.msg_ref)
            out = self._make_at(kind, sender, recipient, frame.ts, payload)
        self._send(self._links[local.link_id], out)

    def _on_server_error(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now):
            return
        ref = frame.payload.get("msg_ref")
        forwards = self._forwards.get(ref, []) if isinstance(ref, str) else []
        about_user, about_sender = frame.payload.get("user_id"), frame.payload.get("sender")
        matching = [f for f in forwards if about_user in (None, f.recipient) and about_sender in (None, f.sender)]
        forward = matching[0] if matching else (forwards[0] if forwards else None)
        if forward is not None:
            forwards.remove(forward)
        if isinstance(ref, str) and not forwards:
            self._forwards.pop(ref, None)
        if frame.payload.get("code") == ErrorCode.UNKNOWN_TYPE and str(ref).startswith("SERVER_PRESENCE_SYNC:"):
            # A peer without snapshots gets our users one advert at a time (WIRE §4.5).
            self._legacy_peers.add(link.peer)
            self._send_presence_sync(link, now)
        if frame.payload.get("code") == ErrorCode.UNKNOWN_TYPE and str(ref).startswith("SERVER_USER_RECORDS:"):
            # Another implementation without our registry extension: stop sending it records.
            self._no_records_peers.add(link.peer)
        if forward is not None and forward.file_key is not None:
            if forward.file_key in self._refused_files:
                return  # the sender was already told about this file; one ERROR per transfer is enough
            self._files.pop(forward.file_key, None)
            self._refused_files[forward.file_key] = now + self.settings.replay_window_ms
        self._log.info("server %s reported %s: %s", link.peer[:8], frame.payload.get("code"),
                       frame.payload.get("detail"))
        if forward is not None and forward.sender in self._locals:
            self._send_error_to_user(forward.sender, now, str(frame.payload.get("code")),
                                     str(frame.payload.get("detail", "")), forward.user_msg_ref)

    def _on_server_ack(self, link: _Link, frame: Envelope, now: int) -> None:
        self._verified_from_server(link, frame, now)

    # --- users -----------------------------------------------------------------------------------

    def _on_user_hello(self, link: _Link, frame: Envelope, now: int) -> None:
        if self.settings.introducer:
            raise BadFrame("this server is an introducer and accepts no users; connect to a peer server",
                           msg_ref=frame.msg_ref, fatal=True)
        user_id = frame.sender
        if not env.is_uuid(user_id):
            raise BadFrame("user id must be a UUID", msg_ref=frame.msg_ref, fatal=True)
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        enc_key = frame.payload.get("enc_pubkey")
        if enc_key is not None:
            crypto.decode_public_key(enc_key)
        if frame.sig:
            if not frame.verify(self._public_key(key_text)):
                raise InvalidSignature("USER_HELLO signature does not verify with its pubkey",
                                       msg_ref=frame.msg_ref, fatal=True)
        elif not self.settings.allow_unsigned_hello:
            raise InvalidSignature("USER_HELLO must be signed with the user's key", msg_ref=frame.msg_ref,
                                   fatal=True)
        login_nonce = frame.payload.get("login_nonce")
        if login_nonce is not None and not (link.login_granted and login_nonce == link.login_nonce
                                            and user_id == link.login_user):
            raise BadFrame("USER_HELLO login_nonce does not match a granted login on this connection",
                           msg_ref=frame.msg_ref, fatal=True)
        if not self.replay.admit(frame, now):
            return  # a replayed hello is dropped silently like every duplicate; the link times out
        registration = self._registry.get(user_id)
        registered = registration.pubkey if registration is not None else None
        known = self.directory.get(user_id)
        if (registered and registered != key_text) or (known and known.pubkey != key_text):
            raise BadKey(f"user {user_id} is registered under another key", msg_ref=frame.msg_ref, fatal=True)
        if user_id in self._locals:
            raise NameInUse(f"user {user_id} is already connected to this server", msg_ref=frame.msg_ref)
        meta = {k: v for k, v in meta_of(frame.payload).items() if k != "pubkey"}
        if registration is None or registration.meta != meta:
            registration = (Registration(user_id, key_text, self.server_id, meta) if registration is None
                            else replace(registration, meta=meta))
            self._registry[user_id] = registration
            self._send_records([registration], now)
        self._events.append(UserRegistered(user_id, key_text, meta))
        link.role, link.peer = LinkRole.USER, user_id
        self._locals[user_id] = _Local(user_id, link.link_id, key_text, meta)
        record = UserRecord(user_id, self.server_id, key_text, meta)
        self.directory.advertise(record)
        self._presence_version += 1
        self._send(link, self._make(FrameType.ACK, user_id, now,
                                    {"msg_ref": "USER_HELLO", "server_id": self.server_id,
                                     "server_pub": self.pubkey}))
        for known_record in self.directory.listing():
            self._send(link, self._make(FrameType.USER_ADVERTISE, user_id, now,
                                        self._advert_payload(known_record)))
        advert = self._make(FrameType.USER_ADVERTISE, BROADCAST, now, self._advert_payload(record))
        self.replay.admit(advert, now)
        for server_link in self._server_link_list():
            self._send_text(server_link, advert.to_wire())
        self._push_to_users(FrameType.USER_ADVERTISE, now, self._advert_payload(record), exclude=user_id)
        self._public_member_joined(user_id, now)
        self._events.append(UserJoined(user_id, record.label))
        self._log.info("user %s (%s) connected", user_id[:8], record.label)

    def _user_left(self, link: _Link, now: int) -> None:
        local = self._locals.pop(link.peer, None)
        if local is None:
            return
        self._presence_version += 1
        self.directory.remove(local.user_id, self.server_id)
        payload = {"user_id": local.user_id, "server_id": self.server_id}
        removal = self._make(FrameType.USER_REMOVE, BROADCAST, now, payload)
        self.replay.admit(removal, now)
        for server_link in self._server_link_list():
            self._send_text(server_link, removal.to_wire())
        self._push_to_users(FrameType.USER_REMOVE, now, payload)
        self._public_member_left(local.user_id, now)
        label = display_label(local.user_id, local.meta)
        self._events.append(UserLeft(local.user_id, label))
        self._log.info("user %s (%s) disconnected", local.user_id[:8], label)

    def _on_user_frame(self, link: _Link, frame: Envelope, now: int) -> None:
        if frame.sender != link.peer:
            raise BadFrame(f"frame 'from' {frame.sender} is not this connection's user {link.peer}",
                           msg_ref=frame.msg_ref)
        if not self.replay.admit(frame, now):
            return
        if frame.type is FrameType.LIST_REQUEST:
            users = [record.to_wire() for record in self.directory.listing()]
            self._send(link, self._make(FrameType.LIST_RESPONSE, link.peer, now, {"users": users}))
        elif frame.type is FrameType.HEARTBEAT:
            return
        elif frame.type in FILE_FRAMES:
            self._on_file_frame(link, frame, now)
        elif frame.type in ROUTED_USER_FRAMES:
            self._route_user_frame(link, frame, now)
        elif frame.type in PUBLIC_FRAMES:
            self._on_public_frame(link, frame, now)
        elif frame.type is FrameType.USER_REGISTER:
            self._on_register(link, frame, now)
        elif frame.type is FrameType.DIRECTORY_QUERY:
            self._on_directory_query(link, frame, now)
        elif frame.type in (FrameType.ACK, FrameType.ERROR):
            self._log.debug("user %s sent %s %s", link.peer[:8], frame.type, dict(frame.payload))
        else:
            raise BadFrame(f"{frame.type} is not something a user may send (yet)", msg_ref=frame.msg_ref)

    def _route_user_frame(self, link: _Link, frame: Envelope, now: int,
                          file_key: tuple[str, str] | None = None) -> None:
        local_sender = self._locals[link.peer]
        payload = frame.payload
        if frame.type is FrameType.MSG_DIRECT:
            if crypto.normalize_public_key(payload["sender_pub"]) != local_sender.pubkey:
                raise BadFrame("sender_pub is not the key this user registered", msg_ref=frame.msg_ref)
            if crypto.rsa_block_count(payload["ciphertext"]) > crypto.MAX_DIRECT_BLOCKS:
                raise TooLarge(f"a direct message may carry at most {crypto.MAX_DIRECT_BLOCKS} RSA blocks "
                               f"({crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT} bytes); send a file",
                               msg_ref=frame.msg_ref, fatal=False)
            if not crypto.verify_direct(self._public_key(local_sender.pubkey), payload["content_sig"],
                                        payload["ciphertext"], frame.sender, frame.to, frame.ts):
                raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
        recipient = frame.to
        location = self.directory.location(recipient)
        if location is None:
            raise UserNotFound(f"user {recipient} is not online", msg_ref=frame.msg_ref)
        if location == self.server_id:
            target = self._links[self._locals[recipient].link_id]
            if frame.type is FrameType.MSG_DIRECT:
                out = self._make_at(FrameType.USER_DELIVER, self.server_id, recipient, frame.ts,
                                    {"ciphertext": payload["ciphertext"], "sender": frame.sender,
                                     "sender_pub": payload["sender_pub"], "content_sig": payload["content_sig"]})
            else:
                out = self._make_at(frame.type, frame.sender, recipient, frame.ts, payload)
            self._send(target, out)
            return
        server_link_id = self._server_links.get(location)
        if server_link_id is None:
            raise UserNotFound(f"user {recipient} is on server {location}, which is unreachable",
                               msg_ref=frame.msg_ref)
        body = {k: v for k, v in payload.items() if k not in ("user_id", "kind", "sender")}
        body.update({"user_id": recipient, "sender": frame.sender})
        if frame.type is not FrameType.MSG_DIRECT:
            body["kind"] = frame.type.value
        out = self._make_at(FrameType.SERVER_DELIVER, self.server_id, location, frame.ts, body)
        self._forwards.setdefault(out.msg_ref, []).append(
            _Forward(frame.sender, frame.msg_ref, now + self.settings.replay_window_ms, file_key, recipient))
        self._send(self._links[server_link_id], out)

    # --- public channel (WIRE §5) ----------------------------------------------------------------

    def _on_public_frame(self, link: _Link, frame: Envelope, now: int) -> None:
        """A local user's MSG_PUBLIC_CHANNEL or PUBLIC_CHANNEL_KEY_SHARE: check it, then fan it out."""
        sender = self._locals[link.peer]
        payload = frame.payload
        if frame.type is FrameType.MSG_PUBLIC_CHANNEL:
            if frame.to != PUBLIC_GROUP:
                raise BadFrame("MSG_PUBLIC_CHANNEL must be addressed to 'public'", msg_ref=frame.msg_ref)
            self._check_sender_pub(sender, payload["sender_pub"], frame)
            if not crypto.verify_public(self._public_key(sender.pubkey), payload["content_sig"],
                                        payload["ciphertext"], frame.sender, frame.ts):
                raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
        else:
            if frame.to not in (BROADCAST, PUBLIC_GROUP):
                raise BadFrame("PUBLIC_CHANNEL_KEY_SHARE must be addressed to '*'", msg_ref=frame.msg_ref)
            self._check_sender_pub(sender, payload["creator_pub"], frame)
            shares = self._checked_shares(frame)
            if not crypto.verify_key_share(self._public_key(sender.pubkey), payload["content_sig"], shares,
                                           payload["creator_pub"]):
                raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
            self._record_wraps(shares)
        self._fan_out_public(frame.type, frame.sender, frame.ts, payload, now)

    def _checked_shares(self, frame: Envelope) -> list[Any]:
        shares = frame.payload["shares"]
        if len(shares) > MAX_SHARES:
            raise BadFrame(f"a key share may carry at most {MAX_SHARES} shares", msg_ref=frame.msg_ref)
        for share in shares:
            if not (isinstance(share, dict) and isinstance(share.get("member"), str)
                    and isinstance(share.get("wrapped_public_channel_key"), str)):
                raise BadFrame("each share needs 'member' and 'wrapped_public_channel_key' strings",
                               msg_ref=frame.msg_ref)
        return list(shares)

    def _record_wraps(self, shares: list[Any]) -> None:
        for share in shares:
            member = share.get("member") if isinstance(share, dict) else None
            wrapped = share.get("wrapped_public_channel_key") if isinstance(share, dict) else None
            if member in self._locals and isinstance(member, str) and isinstance(wrapped, str):
                self._latest_wraps[member] = wrapped
                self._events.append(PublicWrapStored(member, wrapped))

    def _fan_out_public(self, kind: FrameType, sender: str, ts: int, payload: Mapping[str, Any], now: int) -> None:
        """Hand a verified public frame to every local member but its sender, and to every other server.

        The transport signature covers the payload only, so one signature serves every copy.
        """
        self._deliver_public_locally(kind, sender, ts, payload)
        body = {k: v for k, v in payload.items() if k not in ("user_id", "kind", "sender")}
        body.update({"user_id": PUBLIC_GROUP, "sender": sender, "kind": kind.value})
        signature = crypto.sign_payload(self._key, body)
        for server_link in self._server_link_list():
            out = Envelope(FrameType.SERVER_DELIVER, self.server_id, server_link.peer, ts, body, signature)
            if logger.isEnabledFor(logging.DEBUG):
                self._log.debug("> %s %s on link %d", out.type, out.msg_ref, server_link.link_id)
            self._send_text(server_link, out.to_wire())

    def _deliver_public_locally(self, kind: FrameType, sender: str, ts: int, payload: Mapping[str, Any]) -> None:
        members = [local for local in self._locals.values() if local.user_id != sender]
        if not members:
            return
        to = BROADCAST if kind is FrameType.PUBLIC_CHANNEL_KEY_SHARE else PUBLIC_GROUP
        text = self._make_at(kind, sender, to, ts, payload).to_wire()
        for local in members:
            self._send_text(self._links[local.link_id], text)

    def _on_public_deliver(self, frame: Envelope, kind_name: str, payload: dict[str, Any], now: int) -> None:
        """A SERVER_DELIVER with ``user_id: "public"``: hand it to every local member (WIRE §4.6)."""
        try:
            kind = FrameType(kind_name)
        except ValueError:
            kind = FrameType.MSG_DIRECT
        if kind not in PUBLIC_KINDS:
            raise BadFrame(f"SERVER_DELIVER to 'public' cannot carry kind {kind_name!r}", msg_ref=frame.msg_ref)
        sender = payload.pop("sender", None)
        if not isinstance(sender, str):
            raise BadFrame("SERVER_DELIVER to 'public' needs the sending user in 'sender'", msg_ref=frame.msg_ref)
        # Our users must only ever get well-formed frames, even from a faulty peer.
        env.check_payload(kind, payload, frame.msg_ref)
        if kind is FrameType.PUBLIC_CHANNEL_KEY_SHARE:
            shares = payload.get("shares")
            if isinstance(shares, list):
                self._record_wraps(shares)
        self._deliver_public_locally(kind, sender, frame.ts, payload)

    def _public_member_joined(self, user_id: str, now: int) -> None:
        self._public_version += 1
        self._events.append(PublicChannelVersion(self._public_version))
        add = self._make(FrameType.PUBLIC_CHANNEL_ADD, BROADCAST, now,
                         {"add": [user_id], "if_version": self._public_version - 1})
        for server_link in self._server_link_list():
            self._send_text(server_link, add.to_wire())

    def _public_member_left(self, user_id: str, now: int) -> None:
        self._public_version += 1
        self._events.append(PublicChannelVersion(self._public_version))
        for server_link in self._server_link_list():
            self._send_public_snapshot(server_link, now)

    def _send_public_snapshot(self, link: _Link, now: int) -> None:
        wraps = [{"member_id": user_id, "wrapped_key": self._latest_wraps.get(user_id, "")}
                 for user_id in sorted(self._locals)]
        self._send(link, self._make(FrameType.PUBLIC_CHANNEL_UPDATED, link.peer, now,
                                    {"version": self._public_version, "wraps": wraps}))

    def _on_public_add(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now):
            return
        added = [user_id for user_id in frame.payload["add"] if isinstance(user_id, str)]
        version, members = self._remote_members.get(link.peer, (0, set()))
        if_version = frame.payload.get("if_version")
        if isinstance(if_version, int) and if_version != version and link.peer in self._remote_members:
            # Out of step (a lost frame); the peer's next PUBLIC_CHANNEL_UPDATED snapshot repairs it.
            self._log.debug("PUBLIC_CHANNEL_ADD from %s for version %s, we hold %d", link.peer[:8], if_version,
                            version)
        new_version = if_version + 1 if isinstance(if_version, int) else version + 1
        self._remote_members[link.peer] = (new_version, members | set(added))

    def _on_public_updated(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now):
            return
        members = {item["member_id"] for item in frame.payload["wraps"]
                   if isinstance(item, dict) and isinstance(item.get("member_id"), str)}
        version = frame.payload.get("version")
        self._remote_members[link.peer] = (version if isinstance(version, int) else 0, members)

    # --- files (WIRE §5) -------------------------------------------------------------------------

    def _on_file_frame(self, link: _Link, frame: Envelope, now: int) -> None:
        """FILE_START is checked like a direct message and sets up the transfer; chunks follow only then."""
        payload = frame.payload
        file_key = (frame.sender, payload["file_id"])
        if frame.type is FrameType.FILE_START:
            if file_key in self._files or file_key in self._refused_files:
                raise BadFrame(f"file_id {payload['file_id']} was used already", msg_ref=frame.msg_ref)
            if sum(1 for sender, _ in self._files if sender == frame.sender) >= MAX_FILES_PER_SENDER:
                raise RateLimited(f"{MAX_FILES_PER_SENDER} files are already in flight; finish one first",
                                  msg_ref=frame.msg_ref)
            try:
                self._check_file_start(link, frame)
            except ProtocolError:
                # Told once, here; the chunks that follow are dropped quietly.
                self._refused_files[file_key] = now + self.settings.replay_window_ms
                raise
            transfer = _FileTransfer(frame.to, payload["size"], 2 * payload["size"] + _FILE_SLACK,
                                     now + self.settings.replay_window_ms)
        else:
            existing = self._files.get(file_key)
            if existing is None:
                if file_key in self._refused_files:
                    return  # the sender was told once when the transfer failed
                raise BadFrame(f"{frame.type} for file_id {payload['file_id']} without an accepted FILE_START",
                               msg_ref=frame.msg_ref)
            transfer = existing
            if frame.to != transfer.to:
                raise BadFrame(f"{frame.type} addressed to {frame.to}, but the file goes to {transfer.to}",
                               msg_ref=frame.msg_ref)
            if frame.type is FrameType.FILE_CHUNK:
                transfer.budget -= len(payload["ciphertext"])
                if transfer.budget < 0:
                    self._files.pop(file_key, None)
                    self._refused_files[file_key] = now + self.settings.replay_window_ms
                    raise TooLarge(f"file {payload['file_id']} carries more data than its announced "
                                   f"{transfer.size} bytes; transfer stopped", msg_ref=frame.msg_ref, fatal=False)
            transfer.expires = now + self.settings.replay_window_ms
        try:
            if transfer.to == PUBLIC_GROUP:
                self._fan_out_public(frame.type, frame.sender, frame.ts, payload, now)
            else:
                self._route_user_frame(link, frame, now, file_key)
        except ProtocolError:
            # Tell the sender once; later frames of the same file are dropped quietly.
            self._files.pop(file_key, None)
            self._refused_files[file_key] = now + self.settings.replay_window_ms
            raise
        if frame.type is FrameType.FILE_END:
            self._files.pop(file_key, None)
        else:
            self._files[file_key] = transfer

    def _check_file_start(self, link: _Link, frame: Envelope) -> None:
        sender = self._locals[link.peer]
        payload = frame.payload
        mode = payload.get("mode", "dm")
        if mode not in ("dm", "public"):
            raise BadFrame("FILE_START mode must be 'dm' or 'public'", msg_ref=frame.msg_ref)
        if (mode == "public") != (frame.to == PUBLIC_GROUP):
            raise BadFrame("FILE_START mode 'public' goes to 'public', mode 'dm' to a user", msg_ref=frame.msg_ref)
        size = payload["size"]
        if size < 0:
            raise BadFrame("FILE_START size must not be negative", msg_ref=frame.msg_ref)
        if size > self.settings.max_file_bytes:
            raise TooLarge(f"file of {size} bytes exceeds this server's limit of {self.settings.max_file_bytes} "
                           f"bytes ({self.settings.max_file_bytes / 1048576:.0f} MiB)", msg_ref=frame.msg_ref,
                           fatal=False)
        self._check_sender_pub(sender, payload["sender_pub"], frame)
        if not crypto.verify_file(self._public_key(sender.pubkey), payload["content_sig"], payload["file_id"],
                                  payload["name"], size, payload["sha256"], frame.sender, frame.to, frame.ts):
            raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)

    def _check_sender_pub(self, sender: _Local, sender_pub: str, frame: Envelope) -> None:
        if crypto.normalize_public_key(sender_pub) != sender.pubkey:
            raise BadFrame("sender_pub is not the key this user registered", msg_ref=frame.msg_ref)

    # --- registry, password login and directory (project extension, PROTOCOL.md §9) ---------------

    def _on_register(self, link: _Link, frame: Envelope, now: int) -> None:
        """USER_REGISTER: store the user's own password records (made and signed on the client)."""
        user_id = link.peer
        local = self._locals[user_id]
        record = LoginRecord.from_wire({**frame.payload, "login": normalize_login(frame.payload["login"])})
        if not record.verify(user_id, local.pubkey):
            raise InvalidSignature("USER_REGISTER content_sig does not verify with this user's key",
                                   msg_ref=frame.msg_ref)
        owner = self._logins.get(record.login)
        if owner is not None and owner != user_id:
            raise NameInUse(f"login {record.login!r} belongs to another user", msg_ref=frame.msg_ref, fatal=False)
        current = self._registry.get(user_id) or Registration(user_id, local.pubkey, self.server_id, local.meta)
        if current.login is not None and current.login.version > record.version:
            raise BadFrame("USER_REGISTER is older than the stored password record", msg_ref=frame.msg_ref)
        self._store_login(current, record)
        self._send(link, self._make(FrameType.ACK, user_id, now, {"msg_ref": frame.msg_ref}))
        self._log.info("user %s registered a password login", user_id[:8])
        self._send_records([self._registry[user_id]], now)

    def _store_login(self, current: Registration, record: LoginRecord) -> None:
        if current.login is not None and current.login.login != record.login:
            self._logins.pop(current.login.login, None)
        self._logins[record.login] = current.user_id
        updated = current.with_login(record)
        self._registry[current.user_id] = updated
        self._events.append(RegistrationStored(updated))

    def _on_login_request(self, link: _Link, frame: Envelope, now: int) -> None:
        if self.settings.introducer:
            raise BadFrame("this server is an introducer and accepts no users; connect to a peer server",
                           msg_ref=frame.msg_ref, fatal=True)
        self.replay.check_fresh(frame, now)
        login = normalize_login(frame.payload["login"])
        user_id = self._logins.get(login)
        registration = self._registry.get(user_id) if user_id else None
        if registration is None or registration.login is None or user_id is None:
            raise UserNotFound(f"nobody registered the login {login!r} with a password (as far as this server "
                               f"knows)", msg_ref=frame.msg_ref)
        self._throttle.check(user_id, now, login)
        link.login_user, link.login_nonce, link.login_granted = user_id, crypto.random_token(), False
        link.pending_until = now + LOGIN_GRACE_MS
        self._send(link, self._make(FrameType.USER_LOGIN_CHALLENGE, user_id, now, {
            "login": login, "user_id": user_id, "kdf": dict(registration.login.pake_password["kdf"]),
            "nonce": link.login_nonce, "server_id": self.server_id, "server_pub": self.pubkey}))

    def _on_login_proof(self, link: _Link, frame: Envelope, now: int) -> None:
        self.replay.check_fresh(frame, now)
        registration = self._registry.get(link.login_user)
        if (registration is None or registration.login is None or not link.login_nonce or link.login_granted
                or frame.payload["nonce"] != link.login_nonce):
            raise BadFrame("USER_LOGIN_PROOF without a matching USER_LOGIN_CHALLENGE on this connection",
                           msg_ref=frame.msg_ref)
        login = registration.login
        self._throttle.check(registration.user_id, now, login.login)
        try:
            verifier = b64url_decode(frame.payload["verifier"])
        except BadFrame:
            verifier = b""
        pake = login.pake_password
        if not crypto.verifier_matches(verifier, b64url_decode(pake["salt"]), b64url_decode(pake["verifier_hash"])):
            self._throttle.failed(registration.user_id, now)
            link.login_nonce = ""  # one proof per challenge
            self._log.info("failed password login for %s", registration.user_id[:8])
            raise AuthFailed(f"wrong password for {login.login}", msg_ref=frame.msg_ref)
        self._throttle.succeeded(registration.user_id)
        link.login_granted = True
        self._send(link, self._make(FrameType.USER_LOGIN_GRANTED, registration.user_id, now, {
            "user_id": registration.user_id, "pubkey": registration.pubkey,
            "privkey_store": dict(login.privkey_store), "meta": dict(registration.meta)}))

    def _on_directory_query(self, link: _Link, frame: Envelope, now: int) -> None:
        """DIRECTORY_QUERY {user_id} or {login}: the registry's record, online or not, signed by this server."""
        user_id, login = frame.payload.get("user_id"), frame.payload.get("login")
        if isinstance(login, str) and not isinstance(user_id, str):
            user_id = self._logins.get(normalize_login(login))
        elif not isinstance(user_id, str):
            raise BadFrame("DIRECTORY_QUERY needs a 'user_id' or 'login' string", msg_ref=frame.msg_ref)
        registration = self._registry.get(user_id) if user_id else None
        if registration is None:
            wanted = user_id or login
            raise UserNotFound(f"no user {wanted} is registered (as far as this server knows)",
                               msg_ref=frame.msg_ref)
        location = self.directory.location(registration.user_id)
        record = self.directory.get(registration.user_id)
        meta = dict(record.meta) if record is not None else dict(registration.meta)
        self._send(link, self._make(FrameType.DIRECTORY_RESPONSE, link.peer, now, {
            "user_id": registration.user_id, "pubkey": registration.pubkey, "meta": meta,
            "home_server": registration.home_server, "login": registration.login.login if registration.login else "",
            "online": location is not None, "server_id": location or "", "msg_ref": frame.msg_ref}))

    def _on_user_records(self, link: _Link, frame: Envelope, now: int) -> None:
        if not self._verified_from_server(link, frame, now):
            return
        records = frame.payload["records"]
        if len(records) > 10 * RECORDS_PER_FRAME:
            raise BadFrame(f"SERVER_USER_RECORDS carries more than {10 * RECORDS_PER_FRAME} records",
                           msg_ref=frame.msg_ref)
        for item in records:
            try:
                incoming = registration_from_wire(item)
            except ProtocolError as exc:
                # One bad record must not cost the link (it would be re-sent forever).
                self._log.warning("ignoring a user record from %s: %s", link.peer[:8], exc.detail)
                continue
            self._merge_registration(incoming, link.peer)

    def _merge_registration(self, incoming: Registration, source: str) -> None:
        current = self._registry.get(incoming.user_id)
        if current is None:
            login = incoming.login
            if login is not None and self._logins.get(login.login, incoming.user_id) != incoming.user_id:
                self._log.warning("user %s from %s claims login %r, which belongs to another user; dropping "
                                  "the login", incoming.user_id[:8], source[:8], login.login)
                incoming = replace(incoming, login=None)
            self._registry[incoming.user_id] = incoming
            if incoming.login is not None:
                self._logins[incoming.login.login] = incoming.user_id
            self._events.append(RegistrationStored(incoming))
            return
        if current.pubkey != incoming.pubkey:
            self._log.warning("server %s sent user %s with key %s, registered here under %s; ignored", source[:8],
                              incoming.user_id[:8], crypto.key_fingerprint(incoming.pubkey),
                              crypto.key_fingerprint(current.pubkey))
            return
        login = incoming.login
        if login is None or (current.login is not None and login.version <= current.login.version):
            return
        if self._logins.get(login.login, incoming.user_id) != incoming.user_id:
            self._log.warning("user %s claims login %r, which belongs to another user; ignored",
                              incoming.user_id[:8], login.login)
            return
        self._store_login(current, login)

    def _send_records(self, registrations: list[Registration], now: int, links: list[_Link] | None = None) -> None:
        """Replicate registry records to ``links`` (default: every server link), in bounded batches."""
        targets = [link for link in (self._server_link_list() if links is None else links)
                   if link.peer not in self._no_records_peers]
        for start in range(0, len(registrations), RECORDS_PER_FRAME):
            batch = [registration.to_wire() for registration in registrations[start:start + RECORDS_PER_FRAME]]
            frame = self._make(FrameType.SERVER_USER_RECORDS, BROADCAST, now, {"records": batch})
            for link in targets:
                self._send_text(link, frame.to_wire())

    # --- helpers ---------------------------------------------------------------------------------

    def _new_link(self, *, outbound: bool, role: LinkRole, now: int) -> _Link:
        link = _Link(self._next_link_id, outbound, role, opened_at=now, last_seen=now,
                     tokens=float(self.settings.rate_burst), tokens_at=now)
        self._next_link_id += 1
        self._links[link.link_id] = link
        return link

    def _dial_introducer(self, now: int) -> None:
        entry = self._bootstrap[self._join_index % len(self._bootstrap)]
        link = self._new_link(outbound=True, role=LinkRole.DIALING, now=now)
        link.bootstrap_index = self._join_index % len(self._bootstrap)
        self._log.info("joining through introducer %s:%d", entry.host, entry.port)
        self._actions.append(Dial(link.link_id, entry.host, entry.port))

    def _join_failed(self, now: int) -> None:
        if self.joined:
            return
        self._join_index += 1
        if self._join_index % len(self._bootstrap) == 0:
            # Every introducer failed once: back off before the next round.
            self._join_attempt += 1
            if self.settings.introducer and self._join_attempt >= self._founder_rank:
                self.joined = True
                self._log.warning("no fellow introducer welcomed us in %d rounds; founding the network",
                                  self._join_attempt)
                return
            self._join_due = now + self._backoff(self._join_attempt)
            self._log.warning("no introducer reachable; retrying in %d ms", self._join_due - now)
        else:
            self._join_due = now

    def _dial_server(self, server_id: str, info: _ServerInfo, now: int) -> None:
        if any(link.target == server_id and link.role is LinkRole.DIALING for link in self._links.values()):
            return
        link = self._new_link(outbound=True, role=LinkRole.DIALING, now=now)
        link.target = server_id
        self._actions.append(Dial(link.link_id, info.host, info.port))

    def _schedule_reconnect(self, server_id: str, info: _ServerInfo, now: int) -> None:
        info.reconnect_attempt += 1
        info.reconnect_due = now + self._backoff(info.reconnect_attempt)

    def _backoff(self, attempt: int) -> int:
        base = min(self.settings.backoff_max_ms, self.settings.backoff_initial_ms * 2 ** min(attempt - 1, 20))
        # Jitter spreads reconnect storms after a partition heals.
        return int(base * (0.75 + 0.5 * self._rng.random()))

    def _identify_server(self, link: _Link, server_id: str, now: int) -> None:
        existing_id = self._server_links.get(server_id)
        if existing_id is not None and existing_id != link.link_id:
            existing = self._links[existing_id]
            # Both ends keep the connection dialed by the lower server id, so they agree which survives.
            keep_new = link.outbound == (self.server_id < server_id)
            loser = existing if keep_new else link
            self._log.info("duplicate link with %s: closing link %d", server_id[:8], loser.link_id)
            loser.peer = server_id
            loser.role = LinkRole.SERVER
            loser.closing = True
            self._actions.append(CloseLink(loser.link_id, "duplicate server link"))
            if not keep_new:
                return
        link.role, link.peer = LinkRole.SERVER, server_id
        self._server_links[server_id] = link.link_id
        info = self._servers[server_id]
        info.ever_linked = True
        info.reconnect_due = None
        self._events.append(LinkUp(server_id, link.link_id))
        self._log.info("linked with server %s (link %d, %s)", server_id[:8], link.link_id,
                       "outbound" if link.outbound else "inbound")
        self._send_presence_sync(link, now)
        self._send_public_snapshot(link, now)
        self._send_records(list(self._registry.values()), now, [link])

    def _pin(self, server_id: str, key_text: str, *, trusted: bool, msg_ref: str | None = None) -> None:
        info = self._servers.get(server_id)
        if info is None:
            self._servers[server_id] = _ServerInfo(pubkey=key_text)
            self._events.append(ServerPinned(server_id, key_text, trusted))
            if not trusted:
                self._log.warning("server %s pinned on first direct announce (key %s)", server_id[:8],
                                  crypto.key_fingerprint(key_text))
        elif info.pubkey != key_text:
            self._log.error("IMPERSONATION ATTEMPT: server %s presented key %s, pinned key is %s",
                            server_id[:8], crypto.key_fingerprint(key_text), crypto.key_fingerprint(info.pubkey))
            raise BadKey(f"server {server_id} is pinned to another key", msg_ref=msg_ref, fatal=True)

    def _checked_self_signed(self, frame: Envelope) -> str:
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        if not frame.verify(self._public_key(key_text)):
            raise InvalidSignature(f"{frame.type} is not signed by the key it announces", msg_ref=frame.msg_ref,
                                   fatal=True)
        return key_text

    def _gossiped_user_key(self, item: Mapping[str, Any], meta: Mapping[str, Any], frame: Envelope) -> str | None:
        """The user key of a gossiped record, or None (logged) when it is weak or malformed.

        One bad record must not cost the whole server link, which would be re-sent the same snapshot forever.
        """
        user_id = str(item.get("user_id"))
        try:
            key_text = crypto.normalize_public_key(item.get("pubkey") or meta.get("pubkey"))
        except BadKey as exc:
            self._log.warning("ignoring user %s gossiped by %s: %s", user_id[:8], frame.sender[:8], exc.detail)
            return None
        # A user id stays bound to its first key (registry, else directory): a server that gossips another
        # key for a known user is attempting to take that user over, and its record is refused.
        registration = self._registry.get(user_id)
        known = registration.pubkey if registration is not None else None
        if known is None and (record := self.directory.get(user_id)) is not None:
            known = record.pubkey
        if known is not None and known != key_text:
            self._log.error("IMPERSONATION ATTEMPT: server %s gossiped user %s with key %s, bound to %s",
                            frame.sender[:8], user_id[:8], crypto.key_fingerprint(key_text),
                            crypto.key_fingerprint(known))
            return None
        return key_text

    def _public_key(self, key_text: str) -> crypto.PublicKey:
        key = self._pubkey_cache.get(key_text)
        if key is None:
            key = crypto.decode_public_key(key_text)
            if len(self._pubkey_cache) > 10_000:
                self._pubkey_cache.clear()
            self._pubkey_cache[key_text] = key
        return key

    def _welcome_entries(self, frame: Envelope) -> list[dict[str, Any]]:
        raw = frame.payload.get("servers")
        if not isinstance(raw, list):
            raw = frame.payload.get("clients")
        if not isinstance(raw, list):
            raise BadFrame("SERVER_WELCOME needs a 'servers' or 'clients' list", msg_ref=frame.msg_ref, fatal=True)
        entries = []
        for item in raw:
            if not isinstance(item, dict):
                raise BadFrame("SERVER_WELCOME entries must be objects", msg_ref=frame.msg_ref, fatal=True)
            server_id = item.get("server_id", item.get("user_id"))
            host, port, pubkey = item.get("host"), item.get("port"), item.get("pubkey")
            if not (isinstance(server_id, str) and isinstance(host, str) and isinstance(port, int)
                    and isinstance(pubkey, str)):
                raise BadFrame("SERVER_WELCOME entry needs server_id, host, port, pubkey", msg_ref=frame.msg_ref,
                               fatal=True)
            entries.append({"server_id": server_id, "host": host, "port": port, "pubkey": pubkey,
                            "introducer": item.get("introducer") is True})
        return entries

    @staticmethod
    def _server_entry(server_id: str, pubkey: str, host: str, port: int, introducer: bool) -> dict[str, Any]:
        # ``introducer`` is our extension (others ignore it): relays from any introducer are trusted.
        return {"server_id": server_id, "host": host, "port": port, "pubkey": pubkey, "introducer": introducer}

    def _announce_payload(self) -> dict[str, Any]:
        return {"host": self.settings.advertise_host, "port": self.settings.advertise_port, "pubkey": self.pubkey}

    @staticmethod
    def _advert_payload(record: UserRecord) -> dict[str, Any]:
        return {"user_id": record.user_id, "server_id": record.server_id, "pubkey": record.pubkey,
                "meta": dict(record.meta)}

    def _send_presence_sync(self, link: _Link, now: int) -> None:
        if link.peer in self._legacy_peers:
            for local in self._locals.values():
                record = UserRecord(local.user_id, self.server_id, local.pubkey, local.meta)
                self._send(link, self._make(FrameType.USER_ADVERTISE, BROADCAST, now, self._advert_payload(record)))
            return
        users = [{"user_id": local.user_id, "pubkey": local.pubkey, "meta": dict(local.meta)}
                 for local in self._locals.values()]
        self._send(link, self._make(FrameType.SERVER_PRESENCE_SYNC, link.peer, now,
                                    {"server_id": self.server_id, "users": users,
                                     "version": self._presence_version}))

    def _server_link_list(self) -> list[_Link]:
        return [self._links[link_id] for link_id in self._server_links.values()]

    def _relay_to_servers(self, received_on: _Link, frame: Envelope) -> None:
        text = frame.to_wire()
        for link in self._server_link_list():
            if link.link_id != received_on.link_id and link.peer != frame.sender:
                self._send_text(link, text)

    def _push_to_users(self, frame_type: FrameType, now: int, payload: Mapping[str, Any],
                       exclude: str | None = None) -> None:
        for local in list(self._locals.values()):
            if local.user_id != exclude:
                self._send(self._links[local.link_id], self._make(frame_type, local.user_id, now, payload))

    def _send_error_to_user(self, user_id: str, now: int, code: str, detail: str, msg_ref: str | None) -> None:
        local = self._locals[user_id]
        payload: dict[str, Any] = {"code": code, "detail": detail}
        if msg_ref:
            payload["msg_ref"] = msg_ref
        self._send(self._links[local.link_id], self._make(FrameType.ERROR, user_id, now, payload))

    def _make(self, frame_type: FrameType, to: str, now: int, payload: Mapping[str, Any]) -> Envelope:
        return self._make_at(frame_type, self.server_id, to, now, payload)

    def _make_at(self, frame_type: FrameType, sender: str, to: str, ts: int, payload: Mapping[str, Any]) -> Envelope:
        return Envelope(frame_type, sender, to, int(ts), dict(payload), self._signature(payload))

    def _signature(self, payload: Mapping[str, Any]) -> str:
        """Transport signature of ``payload``, computed once per distinct payload.

        The signature covers the payload only (WIRE §2), so the same advert pushed to a hundred users, or the
        empty HEARTBEAT payload, need one RSA-4096 signature each, not one per copy.
        """
        canonical = canonical_json(payload)
        signature = self._signatures.get(canonical)
        if signature is None:
            signature = crypto.sign(self._key, canonical)
            if len(self._signatures) >= SIGNATURE_CACHE_SIZE:
                self._signatures.clear()
            self._signatures[canonical] = signature
        return signature

    def _send(self, link: _Link, frame: Envelope) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            self._log.debug("> %s %s on link %d", frame.type, frame.msg_ref, link.link_id)
        self._send_text(link, frame.to_wire())

    def _send_text(self, link: _Link, text: str) -> None:
        if not link.closing:
            self._actions.append(Send(link.link_id, text))

    def _close(self, link: _Link, reason: str) -> None:
        if not link.closing:
            link.closing = True
            self._actions.append(CloseLink(link.link_id, reason))

    def _rate_limit(self, link: _Link, now: int) -> None:
        elapsed = max(0, now - link.tokens_at) / 1000
        link.tokens = min(float(self.settings.rate_burst), link.tokens + elapsed * self.settings.rate_per_second)
        link.tokens_at = now
        if link.tokens < 1:
            if now - link.rate_limited_at < 1000:
                raise _SilentDrop
            link.rate_limited_at = now
            raise RateLimited(f"more than {self.settings.rate_per_second:g} frames/s; frames dropped")
        link.tokens -= 1

    def _fault(self, link: _Link, exc: ProtocolError, now: int) -> None:
        peer = link.peer or f"link {link.link_id}"
        self._events.append(PeerFault(link.link_id, peer, exc.code.value, exc.detail, exc.fatal))
        self._log.info("refused frame from %s: %s%s", peer[:8] if link.peer else peer, exc,
                       " (closing)" if exc.fatal else "")
        to = link.peer or "*"
        self._send(link, env.error_from_exception(self.server_id, to, now, exc, self._key))
        if exc.fatal:
            self._close(link, f"{exc.code}: {exc.detail}")
