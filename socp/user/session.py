"""The client's protocol logic as a sans-I/O state machine (WIRE §5): :class:`UserSession`.

The asyncio shell (``client/``) owns the socket and the clock and drives :class:`UserSession` like this::

    session = UserSession(user_id, key, {"display_name": "alice"})
    send(session.hello(now))                          # USER_HELLO, the first frame
    for text in incoming:
        for event in session.receive_text(text, now): # ClientEvent values, in order
            ...
    frame = session.direct_message(recipient_id, "hi", now)
    send(frame)                                       # frame.msg_ref names it in the server's ACK or ERROR
    for text in session.public_message("hello all", now): send(text)   # key share first when needed
    outgoing = session.send_file(recipient_id_or_public, "a.txt", data, now)
    while (text := outgoing.next_frame(now)) is not None: send(text)
    send(session.list_request(now))

Trust model: the first ``ACK`` of ``USER_HELLO`` names the server and its key; the session pins that key
(or refuses it when it contradicts ``expected_server_pub``) and verifies every later frame with it. Under the
interop profile (``interop=True``, docs/INTEROP.md) a server that sends no ACK at all is welcomed by its first
frame that verifies with the key pinned in advance or, on first contact, with a key the frame names as its
sender's own (the same trust on first use as an ACK); a server that sends nothing is waited for
:data:`NO_ACK_WAIT_MS` (the shell asks :meth:`UserSession.welcome_overdue` at
:meth:`UserSession.welcome_deadline`), then welcomed with the key pinned in advance; with none pinned the
session keeps waiting for an ACK (a slow server's comes late), bounded by the shell's timeout.

The session is a facade over components of one shape (frames in, events out), each owning one concern:
:class:`ServerLink` (the welcome and the pinned server key), :class:`socp.user.keys.PeerDirectory` (who is
online, pinned user keys), :class:`socp.user.direct.DirectMessages`, :class:`socp.user.public.PublicChannel`
and :class:`socp.user.files.FileTransfers`. The directory tells the public channel when a member left
through a hook. One table, :data:`ROUTES`, says for each state which frames are accepted, whether the
server's transport signature is checked first (in :meth:`UserSession.receive_text`, the one place) and which
component handles them. Replay admission stays in the handlers: only frames whose end-to-end signature
verified may enter the replay cache.

States::

    AWAITING_ACK --ACK(USER_HELLO), key accepted--> WELCOMED
    AWAITING_ACK --ACK(USER_HELLO), key contradicts the pin--> REFUSED   (terminal)
    AWAITING_ACK --interop: first server-signed frame, or no frame by the deadline with a pinned key--> WELCOMED

Time is ``now`` in integer milliseconds since the Unix epoch; this module reads no clock.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from socp import crypto
from socp import envelope as env
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.errors import BadKey, ProtocolError, SocpError, UnknownType
from socp.features import CLIENT_FEATURES, Feature, wire_list
from socp.interop import Variant
from socp.presence import Directory, UserRecord, meta_of
from socp.replay import DEFAULT_WINDOW_MS, ReplayCache
from socp.settings import DEFAULT_MAX_FILE_BYTES
from socp.user.common import LocalUser, OutboundFrame, Rejected, logger
from socp.user.direct import DirectMessages
from socp.user.events import (
    ClientEvent,
    DirectoryEntry,
    FrameRejected,
    HelloReaddressed,
    ServerError,
    ServerKeyChanged,
    Welcomed,
)
from socp.user.files import FileSource, FileTransfers, OutgoingFile, SinkFactory
from socp.user.keys import PeerDirectory
from socp.user.public import PublicChannel
from socp.user.receipts import Receipts

MAX_HELD_FRAMES = 256
"""Frames held before the welcome under the interop profile; more are refused as before."""

NO_ACK_WAIT_MS = 3_000
"""Under the interop profile, how long after USER_HELLO a server that sends no ACK at all is waited for before
the key pinned in advance is taken as its welcome (:meth:`UserSession.welcome_overdue`)."""

SERVER_ORIGIN: Final = frozenset({FrameType.ACK, FrameType.USER_ADVERTISE, FrameType.USER_REMOVE,
                                  FrameType.LIST_RESPONSE, FrameType.USER_DELIVER, FrameType.DIRECTORY_RESPONSE,
                                  FrameType.PUBKEY_RESPONSE, FrameType.SERVER_ANNOUNCE})
"""Frames whose ``from`` is the server itself (public-channel and file frames carry the sending user's id, under
the server's signature): only these can name the server to a session welcomed without an ACK."""

CLIENT_NAME = "socp-testbed/0.1"
"""The ``client`` field of our USER_HELLO."""


class SessionState(enum.Enum):
    """Where the session stands with its server."""

    AWAITING_ACK = "awaiting the server's ACK of USER_HELLO"
    WELCOMED = "welcomed"
    REFUSED = "refused (server key contradicts the pinned key)"


class ServerLink:
    """The session's standing with its server: the state, and the server key pinned at the welcome."""

    def __init__(self, peers: PeerDirectory, expected_pub: str | None, expected_id: str | None = None,
                 interop: bool = False, *, id_is_hint: bool = False) -> None:
        self._peers = peers
        self.interop = interop
        """The client side of the interop profile (docs/INTEROP.md): a lenient welcome."""
        self.held: list[Envelope] = []
        """Frames that arrived before the welcome, under the interop profile: handled once welcomed."""
        self.expected_pub = expected_pub
        self.expected_id = expected_id
        """The server id our USER_HELLO is addressed to (None: ``"*"``, until the server names itself)."""
        self.id_is_hint = id_is_hint
        """``expected_id`` is a hint (the node's /healthz), not a grant: the server may still name another id,
        once, as it may answer a ``"*"`` hello (the same trust)."""
        self.hello_ref: str | None = None
        """``msg_ref`` of the last USER_HELLO sent."""
        self.hello_at: int | None = None
        """When the last USER_HELLO was made (ms): the start of the no-ACK wait under the interop profile."""
        self.readdressed = False
        self.implicit = False
        """Welcomed without an ACK (interop profile); an ACK of USER_HELLO arriving later still counts."""
        self.state = SessionState.AWAITING_ACK
        self.server_id: str | None = None
        self.server_pub: str | None = None
        self._server_key: crypto.PublicKey | None = None
        self.payload_only = False
        """The server was seen signing payload-only (interop profile; logged once)."""

    def signed_by(self, frame: Envelope, key: crypto.PublicKey) -> bool:
        """True when ``frame`` carries ``key``'s transport signature over the envelope (WIRE §2) or, under the
        interop profile only, over the payload alone (the standard's form, which leaves ``type``, ``from``,
        ``to`` and ``ts`` uncovered: docs/INTEROP.md; e.g. aniketrattan/secure-programming-group-17 signs so)."""
        if frame.verify(key):
            return True
        if not self.interop or not frame.verify(key, legacy=True):
            return False
        if not self.payload_only:
            self.payload_only = True
            logger.warning("interop: accepted variant 'payload-only transport sig' from the server (%s)",
                           frame.type)
        return True

    def verify(self, frame: Envelope) -> None:
        """Raise :class:`Rejected` unless ``frame`` carries the pinned server's transport signature."""
        if self._server_key is None or not self.signed_by(frame, self._server_key):
            raise Rejected(f"{frame.type} signature does not verify with the pinned key of server {self.server_id}")
        if self.server_id is None and frame.type in SERVER_ORIGIN and env.is_uuid(frame.sender):
            self.server_id = frame.sender  # welcomed without a name (no ACK): the pinned key's signer names itself

    def require_welcomed(self, what: str) -> None:
        """Raise :class:`SocpError` unless the session may send ``what`` now."""
        if self.state is not SessionState.WELCOMED:
            raise SocpError(f"cannot send {what}: session is {self.state.value}, expected welcomed")

    def to_server(self) -> str:
        """The ``to`` of a request for the server."""
        return self.server_id or BROADCAST

    def on_welcome(self, frame: Envelope) -> list[ClientEvent]:
        """The ACK of USER_HELLO: pin the server's key, or refuse one that contradicts the expected key."""
        payload = frame.payload
        if payload["msg_ref"] != FrameType.USER_HELLO.value:
            raise Rejected(f"expected the ACK of USER_HELLO, got an ACK of {payload['msg_ref']!r}")
        server_id, server_pub = payload.get("server_id"), payload.get("server_pub")
        if self.interop and server_id is None and env.is_uuid(frame.sender):
            server_id = frame.sender  # some servers name themselves only in 'from' (docs/INTEROP.md)
            logger.info("interop: server id taken from the ACK's 'from' (%s)", frame.sender[:8])
        if self.interop and server_pub is None and self.expected_pub is not None:
            server_pub = self.expected_pub  # the key pinned in advance; the ACK must still verify with it
        if not isinstance(server_id, str) or not server_id:
            raise Rejected("ACK of USER_HELLO lacks a 'server_id' string")
        if self.expected_id is not None and server_id != self.expected_id:
            raise Rejected(f"ACK of USER_HELLO names server {server_id}, our hello was for {self.expected_id}")
        try:
            key_text = crypto.normalize_public_key(server_pub)
        except BadKey as exc:
            raise Rejected(f"ACK of USER_HELLO carries an unusable server_pub: {exc.detail}") from None
        key = self._peers.public_key(key_text)
        if not self.signed_by(frame, key):
            raise Rejected("ACK of USER_HELLO is not signed by the server_pub it carries")
        if self.expected_pub is not None and key_text != self.expected_pub:
            self.state = SessionState.REFUSED
            logger.warning("server %s presented key %s, expected %s: refusing it", server_id[:8],
                           crypto.key_fingerprint(key_text), crypto.key_fingerprint(self.expected_pub))
            return [ServerKeyChanged(server_id, self.expected_pub, key_text)]
        self.state = SessionState.WELCOMED
        self.server_id, self.server_pub, self._server_key = server_id, key_text, key
        logger.info("welcomed by server %s (key %s)", server_id[:8], crypto.key_fingerprint(key_text))
        return [Welcomed(server_id, key_text)]

    def _offered_key(self, frame: Envelope) -> str | None:
        """The key a server's frame names as its sender's own, if any: ``server_pub`` (beside no other
        ``server_id``), or ``pubkey`` beside ``server_id`` equal to ``from`` in a frame about no user (a user
        advert's ``pubkey`` is the user's key)."""
        payload = frame.payload
        if payload.get("server_id", frame.sender) != frame.sender:
            return None
        offered = payload.get("server_pub")
        if offered is None and payload.get("server_id") == frame.sender and "user_id" not in payload:
            offered = payload.get("pubkey")
        if not isinstance(offered, str):
            return None
        try:
            return crypto.normalize_public_key(offered)
        except BadKey:
            return None

    def adopt(self, frame: Envelope) -> list[ClientEvent]:
        """Interop profile, before any ACK: take the first server-signed frame as the welcome.

        The key is the one pinned in advance (``expected_pub``) or, on first contact, one the frame itself
        names as its sender's (:meth:`_offered_key`) — the same trust on first use as an ACK's ``server_pub``;
        the frame must verify with it either way. Returns the :class:`Welcomed` event, or nothing (the caller
        then holds the frame until a welcome).
        """
        if (not self.interop or self.state is not SessionState.AWAITING_ACK or frame.type not in SERVER_ORIGIN
                or not env.is_uuid(frame.sender)):
            return []
        if self.expected_id is not None and frame.sender != self.expected_id:
            return []
        key_text = self.expected_pub if self.expected_pub is not None else self._offered_key(frame)
        if key_text is None:
            return []
        key = self._peers.public_key(key_text)
        if not self.signed_by(frame, key):
            return []
        logger.warning("interop: no ACK of USER_HELLO; %s from server %s (key %s, %s) taken as the welcome",
                       frame.type, frame.sender[:8], crypto.key_fingerprint(key_text),
                       "pinned in advance" if self.expected_pub is not None else "first contact")
        return self._implicit_welcome(frame.sender, key_text, key)

    def overdue(self, now: int) -> list[ClientEvent]:
        """Interop profile: :data:`NO_ACK_WAIT_MS` after USER_HELLO, with no ACK and no server-signed frame,
        welcome with the key pinned in advance. Without one there is nothing to welcome with: nothing is due
        (:meth:`deadline` is None) and the session keeps waiting for an ACK, bounded by the caller's timeout."""
        if (not self.interop or self.state is not SessionState.AWAITING_ACK or self.hello_at is None
                or self.expected_pub is None or now - self.hello_at < NO_ACK_WAIT_MS):
            return []
        logger.warning("interop: no ACK of USER_HELLO within %d ms; using the server key pinned in advance (%s)",
                       NO_ACK_WAIT_MS, crypto.key_fingerprint(self.expected_pub))
        return self._implicit_welcome(self.expected_id, self.expected_pub, self._peers.public_key(self.expected_pub))

    def deadline(self) -> int | None:
        """When :meth:`overdue` has work (ms), or None (also with no key pinned in advance: a slow server's ACK
        may still come, e.g. one that signs each frame in half a second and sends two frames before its ACK)."""
        if (not self.interop or self.state is not SessionState.AWAITING_ACK or self.hello_at is None
                or self.expected_pub is None):
            return None
        return self.hello_at + NO_ACK_WAIT_MS

    def _implicit_welcome(self, server_id: str | None, key_text: str, key: crypto.PublicKey) -> list[ClientEvent]:
        self.state = SessionState.WELCOMED
        self.implicit = True
        self.server_id, self.server_pub, self._server_key = server_id, key_text, key
        # Without a server id yet, the first frame that verifies with the pinned key names it (see verify).
        return [Welcomed(server_id or BROADCAST, key_text)]


def early_error(parts: Parts, frame: Envelope) -> list[ClientEvent]:
    """An ERROR before the welcome (unsigned: nothing is pinned yet). One that refuses our hello addressed to
    ``"*"`` and names the server's id readdresses the hello, once (PROTOCOL.md §3.6); any other is reported."""
    link = parts.link
    server_id = frame.payload.get("server_id")
    if (not link.readdressed and (link.expected_id is None or link.id_is_hint) and env.is_uuid(server_id)
            and server_id != link.expected_id and frame.payload.get("msg_ref") == link.hello_ref
            and isinstance(server_id, str)):
        link.readdressed = True
        link.expected_id = server_id
        return [HelloReaddressed(server_id)]
    return [server_error(frame)]


def server_error(frame: Envelope) -> ServerError:
    """The :class:`ServerError` an ERROR frame reports."""
    detail = frame.payload.get("detail")
    msg_ref = frame.payload.get("msg_ref")
    return ServerError(frame.payload["code"], detail if isinstance(detail, str) else "",
                       msg_ref if isinstance(msg_ref, str) else None)


def directory_entry(frame: Envelope) -> DirectoryEntry:
    """The :class:`DirectoryEntry` a DIRECTORY_RESPONSE reports."""
    payload = frame.payload
    try:
        key_text = crypto.normalize_public_key(payload["pubkey"])
    except BadKey as exc:
        raise Rejected(f"DIRECTORY_RESPONSE carries an unusable key ({exc.detail})") from None

    def text(name: str) -> str:
        value = payload.get(name)
        return value if isinstance(value, str) else ""

    return DirectoryEntry(payload["user_id"], key_text, meta_of(payload), text("home_server"), text("login"),
                          payload.get("online") is True, text("server_id"), text("msg_ref"))


# --- the route table --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Parts:
    """The session's components, as the route handlers see them."""

    link: ServerLink
    peers: PeerDirectory
    direct: DirectMessages
    public: PublicChannel
    files: FileTransfers
    receipts: Receipts


Handler = Callable[[Parts, Envelope, int], list[ClientEvent]]


@dataclass(frozen=True, slots=True)
class Route:
    """How one frame type is handled in one state."""

    handler: Handler
    """The component method that turns the frame into events (raising :class:`Rejected` to refuse it)."""
    verified: bool = True
    """Whether the pinned server key must have signed the frame; only frames before the pin cannot be."""


def _welcome(parts: Parts, frame: Envelope) -> list[ClientEvent]:
    events = parts.link.on_welcome(frame)
    if parts.link.state is SessionState.WELCOMED:
        parts.receipts.on_welcome(frame.payload)
    return events


def _ack(parts: Parts, frame: Envelope) -> list[ClientEvent]:
    """An ACK once welcomed. After a welcome without one (interop profile), a late ACK of USER_HELLO (verified
    with the pinned key, like every frame now) still says what the server offers (delivery receipts)."""
    link = parts.link
    if link.implicit and frame.payload["msg_ref"] == FrameType.USER_HELLO.value:
        link.implicit = False
        parts.receipts.on_welcome(frame.payload)
        return []
    return parts.receipts.on_ack(frame.payload)


def _ignore(parts: Parts, frame: Envelope, now: int) -> list[ClientEvent]:
    logger.debug("ignoring %s (not handled by this client yet)", frame.type)
    return []


_FILES: Final = Route(lambda p, frame, now: p.files.on_frame(frame, now))
_IGNORED: Final = Route(_ignore)

def _same_key(offered: object, pinned: str) -> bool:
    """``offered`` is ``pinned`` (canonical encoding) in any accepted encoding."""
    try:
        return crypto.normalize_public_key(offered) == pinned
    except BadKey:
        return False


def _key_share(parts: Parts, frame: Envelope, now: int) -> list[ClientEvent]:
    """PUBLIC_CHANNEL_KEY_SHARE: a member's sender key; under the interop profile a share made by the server
    itself (another public-channel design, a server-made group key: docs/INTEROP.md, not bridged) is ignored,
    not refused: some servers send one to every member at each join."""
    link = parts.link
    # The server's own: made with its key (verified as the transport signer already), whatever 'from' says
    # (the session may have been welcomed without learning the server's id yet).
    if link.interop and link.server_pub is not None and _same_key(frame.payload["creator_pub"], link.server_pub):
        logger.debug("interop: ignoring the server's own PUBLIC_CHANNEL_KEY_SHARE (a server-made group key)")
        return []
    return parts.public.on_key_share(frame, now)


ROUTES: Final[Mapping[SessionState, Mapping[FrameType, Route]]] = {
    SessionState.AWAITING_ACK: {
        FrameType.ACK: Route(lambda p, frame, now: _welcome(p, frame), verified=False),
        # Nothing is pinned yet, so an early ERROR cannot be authenticated; surface it all the same,
        # it usually explains why we are not welcome (NAME_IN_USE, BAD_KEY, …).
        FrameType.ERROR: Route(lambda p, frame, now: early_error(p, frame), verified=False),
    },
    SessionState.WELCOMED: {
        FrameType.ACK: Route(lambda p, frame, now: _ack(p, frame)),
        FrameType.ERROR: Route(lambda p, frame, now: [p.receipts.on_error(server_error(frame))]),
        FrameType.USER_ADVERTISE: Route(lambda p, frame, now: p.peers.on_advertise(frame)),
        FrameType.USER_REMOVE: Route(lambda p, frame, now: p.peers.on_remove(frame)),
        FrameType.LIST_RESPONSE: Route(lambda p, frame, now: p.peers.on_list(frame)),
        FrameType.DIRECTORY_RESPONSE: Route(lambda p, frame, now: [directory_entry(frame)]),
        FrameType.PUBKEY_RESPONSE: Route(lambda p, frame, now: p.peers.on_pubkey_response(frame, p.link.server_id)),
        FrameType.USER_DELIVER: Route(lambda p, frame, now: p.direct.on_deliver(frame, now)),
        FrameType.PUBLIC_CHANNEL_KEY_SHARE: Route(lambda p, frame, now: _key_share(p, frame, now)),
        FrameType.MSG_PUBLIC_CHANNEL: Route(lambda p, frame, now: p.public.on_message(frame, now)),
        FrameType.FILE_START: _FILES,
        FrameType.FILE_CHUNK: _FILES,
        FrameType.FILE_END: _FILES,
        # Membership announcements are for servers (a client's member set is its directory), and HEARTBEAT
        # carries nothing for a user: accepted (and verified) but ignored.
        FrameType.PUBLIC_CHANNEL_ADD: _IGNORED,
        FrameType.PUBLIC_CHANNEL_UPDATED: _IGNORED,
        FrameType.HEARTBEAT: _IGNORED,
    },
    SessionState.REFUSED: {},
}
"""For each state, the frames it accepts: any other is ignored once welcomed and refused before."""


class UserSession:
    """One user's side of a SOCP connection as a pure state machine; see the module docstring.

    ``meta`` is sent in USER_HELLO (``display_name``, …); ``expected_server_pub``, when given, pins the
    server's key in advance (any accepted encoding) and the session refuses a server presenting another.
    ``server_id`` (a login grant's) addresses the hello to that server for good; ``server_id_hint`` addresses it
    too, but the server may still name another id once, as it may answer a ``"*"`` hello (PROTOCOL.md §3.6).
    Raises :class:`BadKey` when ``expected_server_pub`` is not a valid RSA-4096 key.
    """

    def __init__(self, user_id: str, key: crypto.PrivateKey, meta: Mapping[str, Any],
                 expected_server_pub: str | None = None, *, replay_window_ms: int = DEFAULT_WINDOW_MS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, login_nonce: str | None = None,
                 server_id: str | None = None, known_users: Mapping[str, tuple[str, str]] | None = None,
                 hybrid_files: bool = True, replay: ReplayCache | None = None, interop: bool = False,
                 server_id_hint: str | None = None) -> None:
        self._user = LocalUser(user_id, key)
        self.user_id = user_id
        self.pubkey = self._user.pubkey
        self.meta: dict[str, Any] = dict(meta)
        expected_pub = (crypto.normalize_public_key(expected_server_pub)
                        if expected_server_pub is not None else None)
        self._login_nonce = login_nonce
        # Only verified messages are deduplicated: a replayed delivery would show a message twice, while a
        # replayed advert or list merely restates what the (trusted) server already said.
        # A new connection of the same user may share its predecessor's cache (``replay``): a server that
        # restarted forgot what it delivered before, and may deliver it again (delivery receipts resend).
        replay = replay if replay is not None else ReplayCache(replay_window_ms)
        self.replay = replay
        """The deliveries seen (verified), for a later session of the same user to carry on."""
        peers = PeerDirectory()
        public = PublicChannel(self._user, peers, replay)
        peers.on_member_left(public.member_left)
        self._parts = Parts(ServerLink(peers, expected_pub, server_id or server_id_hint, interop,
                                       id_is_hint=server_id is None and server_id_hint is not None), peers,
                            DirectMessages(self._user, peers, replay), public,
                            FileTransfers(self._user, peers, public, replay, max_file_bytes, hybrid=hybrid_files),
                            Receipts())
        peers.preload(known_users or {})

    # --- read-only views -------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current :class:`SessionState`."""
        return self._parts.link.state

    @property
    def welcomed(self) -> bool:
        """True once the server acknowledged USER_HELLO with an acceptable key."""
        return self._parts.link.state is SessionState.WELCOMED

    @property
    def server_id(self) -> str | None:
        """The server's id from its ACK, or None before it."""
        return self._parts.link.server_id

    @property
    def server_pub(self) -> str | None:
        """The pinned server key (canonical encoding), or None before the ACK."""
        return self._parts.link.server_pub

    @property
    def welcome_needs_ack(self) -> bool:
        """True while awaiting the welcome under the interop profile with no server key pinned in advance: only
        an ACK (or a frame naming the server's own key) can welcome this session, however long the server takes."""
        link = self._parts.link
        return link.interop and link.expected_pub is None and link.state is SessionState.AWAITING_ACK

    @property
    def directory(self) -> Directory:
        """Users known online, as the server reported them."""
        return self._parts.peers.directory

    @property
    def max_file_bytes(self) -> int:
        """Largest file this session sends or accepts."""
        return self._parts.files.max_file_bytes

    @max_file_bytes.setter
    def max_file_bytes(self, value: int) -> None:
        self._parts.files.max_file_bytes = value

    @property
    def file_sinks(self) -> SinkFactory:
        """Opens where an accepted incoming file streams to (default: memory; a shell writes to disk)."""
        return self._parts.files.sinks

    @file_sinks.setter
    def file_sinks(self, value: SinkFactory) -> None:
        self._parts.files.sinks = value

    def takes_hybrid_files(self, user_id: str) -> bool:
        """Whether a dm file to ``user_id`` goes as hybrid chunks (both of us announced the extension)."""
        return self._parts.files.peer_takes_hybrid(user_id)

    @property
    def group_key_id(self) -> str | None:
        """The id of our current public-channel sender key (None before the first public message)."""
        group_key = self._parts.public.group_key
        return group_key[1] if group_key is not None else None

    def has_group_key(self, sender_id: str, key_id: str | None = None) -> bool:
        """True when ``sender_id`` shared a public-channel key with us (``key_id``, or any)."""
        return self._parts.public.has_group_key(sender_id, key_id)

    def resolve(self, name_or_id: str) -> UserRecord:
        """The online user called ``name_or_id``: a user id, a display label, or a unique id prefix.

        Raises :class:`UserNotFound` when nobody matches, and when a label is ambiguous (the detail lists
        the candidates' ids so that the caller can pick one).
        """
        return self._parts.peers.resolve(name_or_id)

    def known_users(self) -> dict[str, tuple[str, str]]:
        """Every user id this session pinned → (key, label): what a client keeps for its next session (pass it
        back as ``known_users``), so that the first key of a user id stays pinned across sessions."""
        return self._parts.peers.pins()

    def display(self, user_id: str) -> str:
        """How to show ``user_id``: its display label, with a short key fingerprint when the label is not
        unique among the users this session has seen (issue 11, finding 6)."""
        return self._parts.peers.display(user_id)

    # --- frames to send (each an OutboundFrame: the wire text, with its msg_ref) ----------------------

    def hello(self, now: int) -> OutboundFrame:
        """The USER_HELLO frame, signed with the user's key (proof of possession).

        After a password login it carries the server's ``login_nonce``, so the signature also proves
        possession of the key to that very challenge. It is addressed to the server's id when the session
        knows it (``server_id``, or after :class:`HelloReaddressed`), else to ``"*"``; a server answers a
        ``"*"`` hello by naming its id (PROTOCOL.md §3.6), and a hello signed for one server is refused by any
        other.
        """
        features = wire_list(CLIENT_FEATURES)
        if not self._parts.files.hybrid:  # files: the plain standard only (benchmarks, tests of the fallback)
            features.remove(Feature.HYBRID_FILE_CHUNKS.value)
        meta = {**self.meta, "features": features}
        payload: dict[str, Any] = {"client": CLIENT_NAME, "pubkey": self.pubkey, "enc_pubkey": self.pubkey,
                                   "meta": meta}
        if self._login_nonce is not None:
            payload["login_nonce"] = self._login_nonce
        link = self._parts.link
        if link.expected_id is not None:
            # Our own proof of where we are attached: the only thing that lets a server place us on itself in
            # the eyes of the other servers (PROTOCOL.md §4.5.1). One more signature per hello.
            payload["attest"] = self._user.attestation(link.expected_id, now)
        hello = self._user.frame(FrameType.USER_HELLO, link.expected_id or BROADCAST, now, payload, signed=True)
        link.hello_ref = hello.msg_ref
        link.hello_at = now
        return hello

    def list_request(self, now: int) -> OutboundFrame:
        """A LIST_REQUEST frame; the answer arrives as a :class:`UserList` event."""
        self._parts.link.require_welcomed("LIST_REQUEST")
        return self._user.frame(FrameType.LIST_REQUEST, self._parts.link.to_server(), now, {}, signed=True)

    def keys_wanted(self) -> list[str]:
        """Interop profile: the users the last LIST_RESPONSE named by id only (``online_users``) whose key we do
        not hold, each returned once; ask for them with :meth:`pubkey_request`. Empty outside the profile."""
        if not self._parts.link.interop:
            return []
        return [user_id for user_id in self._parts.peers.take_unkeyed() if user_id != self.user_id]

    def pubkey_request(self, user_id: str, now: int) -> OutboundFrame:
        """A PUBKEY_REQUEST for ``user_id``'s key; a server-signed PUBKEY_RESPONSE then adds the user to the
        directory (a :class:`UserOnline` event), as an advert would."""
        self._parts.link.require_welcomed("PUBKEY_REQUEST")
        self._parts.peers.asked(user_id)
        return self._user.frame(FrameType.PUBKEY_REQUEST, self._parts.link.to_server(), now, {"user_id": user_id},
                                signed=True)

    def direct_message(self, recipient: str, text: str, now: int) -> OutboundFrame:
        """A MSG_DIRECT frame carrying ``text`` end-to-end encrypted to ``recipient`` (a user id).

        Raises :class:`UserNotFound` when ``recipient`` is not in the directory (its key is unknown).
        """
        self._parts.link.require_welcomed("MSG_DIRECT")
        frame = self._parts.direct.message(recipient, text, now)
        self._parts.receipts.track(frame.msg_ref, now)
        return frame

    def public_message(self, text: str, now: int) -> list[OutboundFrame]:
        """Frames that send ``text`` to the public channel: key shares when needed, then MSG_PUBLIC_CHANNEL.

        The text is encrypted with AES-256-GCM under our sender key, which every current member receives
        (wrapped with its RSA key) before this message; the key is replaced first when a member it was
        shared with has left since. The last frame is the message (its ``msg_ref`` names it).
        """
        self._parts.link.require_welcomed("MSG_PUBLIC_CHANNEL")
        return self._parts.public.message(text, now)

    def send_file(self, recipient: str, name: str, data: bytes | FileSource, now: int, *,
                  file_id: str | None = None) -> OutgoingFile:
        """An :class:`OutgoingFile` carrying ``data`` as ``name`` to ``recipient`` (a user id, or ``"public"``).

        dm mode encrypts each chunk with RSA-OAEP under the recipient's key, or, when the recipient announced
        the hybrid file chunks extension, with AES-256-GCM under a file key wrapped for it; public mode with
        AES-GCM under our public-channel key (shared first with members who lack it). ``data`` may be a
        :class:`socp.user.files.FileSource`, read one chunk at a time. Raises :class:`UserNotFound` for an
        unknown recipient, :class:`TooLarge` above :attr:`max_file_bytes` and :class:`BadFrame` for an
        unusable name.
        """
        self._parts.link.require_welcomed("FILE_START")
        return self._parts.files.send(recipient, name, data, now, file_id)

    def directory_query(self, now: int, *, user_id: str | None = None, login: str | None = None) -> OutboundFrame:
        """A DIRECTORY_QUERY for a registered user's key (online or not); answered as :class:`DirectoryEntry`."""
        self._parts.link.require_welcomed("DIRECTORY_QUERY")
        payload = {"user_id": user_id} if user_id is not None else {"login": login or ""}
        return self._user.frame(FrameType.DIRECTORY_QUERY, self._parts.link.to_server(), now, payload)

    # --- delivery outcomes (the delivery_receipts extension) ----------------------------------------

    @property
    def receipts_enabled(self) -> bool:
        """True when the server announced delivery receipts: each direct message then ends as
        :class:`Delivered` or :class:`DeliveryFailed`."""
        return self._parts.receipts.enabled

    @property
    def pending_deliveries(self) -> list[str]:
        """``msg_ref`` of the messages sent and still awaiting their outcome, oldest first."""
        return self._parts.receipts.pending

    def track_delivery(self, msg_ref: str, now: int, *, file_id: str | None = None, index: int | None = None
                       ) -> bool:
        """Await the outcome of a frame sent outside :meth:`direct_message` (dm file frames); False when the
        server gives no receipts. Its ACK becomes :class:`Delivered`, its ERROR :class:`DeliveryFailed`."""
        return self._parts.receipts.track(msg_ref, now, file_id=file_id, index=index)

    def next_delivery_deadline(self) -> int | None:
        """When :meth:`expire_deliveries` has work next (None: nothing in flight)."""
        return self._parts.receipts.next_deadline()

    def expire_deliveries(self, now: int) -> list[ClientEvent]:
        """:class:`DeliveryFailed` (``TIMEOUT``) for every message whose outcome is overdue."""
        return self._parts.receipts.expire(now)

    def abandon_deliveries(self, reason: str) -> list[ClientEvent]:
        """The connection ended: :class:`DeliveryFailed` (``CONNECTION_LOST``) for every message in flight."""
        return self._parts.receipts.abandon(reason)

    def expire_transfers(self, now: int) -> list[ClientEvent]:
        """Discard incoming files that stalled for :data:`socp.user.files.FILE_IDLE_MS`; one
        :class:`FileRejected` each."""
        return self._parts.files.expire(now)

    # --- frames received -------------------------------------------------------------------------

    def receive_text(self, text: str | bytes, now: int) -> list[ClientEvent]:
        """Process one text message from the server; the events it produced, in order.

        Never raises for anything the server sends: a frame that is malformed, unsigned, badly signed,
        or carries a message that does not verify or decrypt becomes a :class:`FrameRejected` event.
        """
        link = self._parts.link
        variants: list[Variant] | None = [] if link.interop else None
        try:
            frame = env.parse(text, interop=variants)
        except UnknownType as exc:
            # A type from a newer protocol revision: nothing to do with it, and nothing wrong either.
            logger.debug("< ignoring frame of unknown type: %s", exc.detail)
            return []
        except ProtocolError as exc:
            return [FrameRejected(f"malformed frame from the server: {exc.detail}")]
        for variant in variants or ():
            logger.info("interop: accepted variant '%s' from the server", variant)
        events: list[ClientEvent] = []
        if link.interop and link.state is SessionState.AWAITING_ACK and frame.type not in ROUTES[link.state]:
            events = link.adopt(frame)  # a server that sends no ACK: its first signed frame welcomes us
            if not events:
                if len(link.held) < MAX_HELD_FRAMES:
                    link.held.append(frame)  # a server that talks before its ACK: handled once welcomed
                    return []
                return [FrameRejected(f"{frame.type} refused: session is {link.state.value}", frame.type.value)]
        events += self._handle(frame, now)
        return events + self._release_held(now)

    def _release_held(self, now: int) -> list[ClientEvent]:
        """Once welcomed, the frames held before the welcome, handled in order (each verified as usual)."""
        link = self._parts.link
        events: list[ClientEvent] = []
        if link.held and link.state is SessionState.WELCOMED:
            held, link.held = link.held, []
            for early in held:
                events += self._handle(early, now)
        return events

    def welcome_deadline(self) -> int | None:
        """Interop profile, awaiting the welcome: when :meth:`welcome_overdue` has work (ms); else None."""
        return self._parts.link.deadline()

    def welcome_overdue(self, now: int) -> list[ClientEvent]:
        """Interop profile: a server that sent no ACK (nor any frame signed with a key we can trust) by
        :meth:`welcome_deadline` is taken as welcoming us with the key pinned in advance (:class:`Welcomed`,
        then the frames held so far). Nothing before the deadline, outside the profile, or with no key pinned
        (the session waits for an ACK; the shell's timeout bounds the wait and says what to do)."""
        events = self._parts.link.overdue(now)
        return events + self._release_held(now) if events else []

    def _handle(self, frame: Envelope, now: int) -> list[ClientEvent]:
        """Route one parsed frame (see :data:`ROUTES`); the events."""
        state = self._parts.link.state
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("< %s %s (user %s, %s)", frame.type, frame.msg_ref, self.user_id[:8], state.name)
        route = ROUTES[state].get(frame.type)
        if route is None:
            if state is SessionState.WELCOMED:
                logger.debug("ignoring %s: not something a server sends a user", frame.type)
                return []
            return [FrameRejected(f"{frame.type} refused: session is {state.value}", frame.type.value)]
        # Any frame is a tick of the clock for incoming files: stalled ones are abandoned (and said so).
        stalled = self._parts.files.expire(now) if self._parts.files.arriving else []
        try:
            if route.verified:
                self._parts.link.verify(frame)
            return [*stalled, *route.handler(self._parts, frame, now)]
        except Rejected as exc:
            logger.debug("rejected %s: %s", frame.msg_ref, exc.reason)
            return [*stalled, FrameRejected(exc.reason, frame.type.value)]
