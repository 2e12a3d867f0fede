"""The client's protocol logic as a sans-I/O state machine (WIRE §5).

The asyncio shell (``client/``) owns the socket and the clock and drives :class:`UserSession` like this::

    session = UserSession(user_id, key, {"display_name": "alice"})
    send(session.hello(now))                          # USER_HELLO, the first frame
    for text in incoming:
        for event in session.receive_text(text, now): # ClientEvent values, in order
            ...
    send(session.direct_message(recipient_id, "hi", now))
    send(session.list_request(now))

Trust model: the first ``ACK`` of ``USER_HELLO`` names the server and its key; the session pins that key
(or refuses it when it contradicts ``expected_server_pub``) and verifies every later frame with it. Direct
messages are verified end to end: the ``content_sig`` must verify with the sender's key, which must match the
key the directory holds for that sender when it holds one.

States (one table, :data:`_ACCEPTED`)::

    AWAITING_ACK --ACK(USER_HELLO), key accepted--> WELCOMED
    AWAITING_ACK --ACK(USER_HELLO), key contradicts the pin--> REFUSED   (terminal)

Time is ``now`` in integer milliseconds since the Unix epoch; this module reads no clock.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.errors import BadKey, ProtocolError, SocpError, UnknownType, UserNotFound
from socp.presence import Directory, UserRecord, meta_of
from socp.replay import DEFAULT_WINDOW_MS, ReplayCache

logger = logging.getLogger("socp.user")

CLIENT_NAME = "socp-testbed/0.1"
"""The ``client`` field of our USER_HELLO."""

MIN_ID_PREFIX = 4
"""Shortest user id prefix :meth:`UserSession.resolve` accepts (``/list`` shows 8 characters)."""

_MAX_KEY_CACHE = 1024


class SessionState(enum.Enum):
    """Where the session stands with its server."""

    AWAITING_ACK = "awaiting the server's ACK of USER_HELLO"
    WELCOMED = "welcomed"
    REFUSED = "refused (server key contradicts the pinned key)"


# --- events ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Welcomed:
    """The server acknowledged USER_HELLO; ``server_pub`` is now pinned for this session."""

    server_id: str
    server_pub: str


@dataclass(frozen=True, slots=True)
class ServerKeyChanged:
    """The server presented a key other than the expected one; the session refuses it for good."""

    server_id: str
    expected_pub: str
    received_pub: str


@dataclass(frozen=True, slots=True)
class UserOnline:
    """A user came online (``is_new``) or its record changed (server, key or meta)."""

    record: UserRecord
    is_new: bool


@dataclass(frozen=True, slots=True)
class UserOffline:
    """A user went offline (removed by the server it was attached to)."""

    record: UserRecord


@dataclass(frozen=True, slots=True)
class UserList:
    """A LIST_RESPONSE arrived; the directory now holds exactly ``records``."""

    records: tuple[UserRecord, ...]


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """A direct message, verified (``content_sig``) and decrypted.

    ``msg_ref`` names the sender's original frame (``MSG_DIRECT:<from>:<to>:<ts>``), the reference an
    ERROR about it would carry.
    """

    sender_id: str
    sender_label: str
    text: str = field(repr=False)  # plaintext: kept out of reprs so that it never lands in a log line
    ts: int
    msg_ref: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """The server sent ``ERROR``; ``msg_ref`` names the frame it is about, when it says."""

    code: str
    detail: str
    msg_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Acked:
    """The server acknowledged a frame (other than USER_HELLO's welcome ACK)."""

    msg_ref: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame from the server was refused and ignored; ``reason`` says why."""

    reason: str
    frame_type: str | None = None


ClientEvent = (Welcomed | ServerKeyChanged | UserOnline | UserOffline | UserList | DirectMessage | ServerError
               | Acked | FrameRejected)

# Frame types the session ignores quietly for now: public channel and files come in a later issue;
# HEARTBEAT carries nothing for a user.
_IGNORED = frozenset({FrameType.MSG_PUBLIC_CHANNEL, FrameType.PUBLIC_CHANNEL_KEY_SHARE,
                      FrameType.PUBLIC_CHANNEL_ADD, FrameType.PUBLIC_CHANNEL_UPDATED, FrameType.FILE_START,
                      FrameType.FILE_CHUNK, FrameType.FILE_END, FrameType.HEARTBEAT})

# Which frames each state accepts before the signature check (the state table).
_ACCEPTED: dict[SessionState, frozenset[FrameType]] = {
    SessionState.AWAITING_ACK: frozenset({FrameType.ACK, FrameType.ERROR}),
    SessionState.WELCOMED: frozenset({FrameType.ACK, FrameType.ERROR, FrameType.USER_ADVERTISE,
                                      FrameType.USER_REMOVE, FrameType.LIST_RESPONSE,
                                      FrameType.USER_DELIVER}) | _IGNORED,
    SessionState.REFUSED: frozenset(),
}


class _Rejected(Exception):
    """Internal: abort processing of one frame with a reason for :class:`FrameRejected`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UserSession:
    """One user's side of a SOCP connection as a pure state machine; see the module docstring.

    ``meta`` is sent in USER_HELLO (``display_name``, …); ``expected_server_pub``, when given, pins the
    server's key in advance (any accepted encoding) and the session refuses a server presenting another.
    Raises :class:`BadKey` when ``expected_server_pub`` is not a valid RSA-4096 key.
    """

    def __init__(self, user_id: str, key: crypto.PrivateKey, meta: Mapping[str, Any],
                 expected_server_pub: str | None = None, *, replay_window_ms: int = DEFAULT_WINDOW_MS) -> None:
        self.user_id = user_id
        self._key = key
        self.pubkey = crypto.encode_public_key(key.public_key())
        self.meta: dict[str, Any] = dict(meta)
        self._expected_pub = (crypto.normalize_public_key(expected_server_pub)
                              if expected_server_pub is not None else None)
        self._state = SessionState.AWAITING_ACK
        self._server_id: str | None = None
        self._server_pub: str | None = None
        self._server_key: crypto.PublicKey | None = None
        self._directory = Directory()
        # Only direct messages are deduplicated here: a replayed delivery would show a message twice, while a
        # replayed advert or list merely restates what the (trusted) server already said.
        self._replay = ReplayCache(replay_window_ms)
        self._keys: dict[str, crypto.PublicKey] = {}

    # --- read-only views -------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current :class:`SessionState`."""
        return self._state

    @property
    def welcomed(self) -> bool:
        """True once the server acknowledged USER_HELLO with an acceptable key."""
        return self._state is SessionState.WELCOMED

    @property
    def server_id(self) -> str | None:
        """The server's id from its ACK, or None before it."""
        return self._server_id

    @property
    def server_pub(self) -> str | None:
        """The pinned server key (canonical encoding), or None before the ACK."""
        return self._server_pub

    @property
    def directory(self) -> Directory:
        """Users known online, as the server reported them."""
        return self._directory

    # --- frames to send --------------------------------------------------------------------------

    def hello(self, now: int) -> str:
        """The USER_HELLO frame, signed with the user's key (proof of possession)."""
        payload = {"client": CLIENT_NAME, "pubkey": self.pubkey, "enc_pubkey": self.pubkey, "meta": dict(self.meta)}
        return self._out(env.make(FrameType.USER_HELLO, self.user_id, BROADCAST, now, payload, self._key))

    def list_request(self, now: int) -> str:
        """A LIST_REQUEST frame; the answer arrives as a :class:`UserList` event."""
        self._require_welcomed("LIST_REQUEST")
        return self._out(env.make(FrameType.LIST_REQUEST, self.user_id, self._to_server(), now, {}, self._key))

    def direct_message(self, recipient: str, text: str, now: int) -> str:
        """A MSG_DIRECT frame carrying ``text`` end-to-end encrypted to ``recipient`` (a user id).

        Raises :class:`UserNotFound` when ``recipient`` is not in the directory (its key is unknown).
        """
        self._require_welcomed("MSG_DIRECT")
        record = self._directory.get(recipient)
        if record is None:
            raise UserNotFound(f"user {recipient} is not online (not in this client's directory)")
        ciphertext = crypto.rsa_encrypt(self._public_key(record.pubkey), text.encode("utf-8"))
        payload = {"ciphertext": ciphertext, "sender_pub": self.pubkey,
                   "content_sig": crypto.sign_direct(self._key, ciphertext, self.user_id, recipient, now)}
        return self._out(env.make(FrameType.MSG_DIRECT, self.user_id, recipient, now, payload, self._key))

    def resolve(self, name_or_id: str) -> UserRecord:
        """The online user called ``name_or_id``: a user id, a display label, or a unique id prefix.

        Raises :class:`UserNotFound` when nobody matches, and when a label is ambiguous (the detail lists
        the candidates' ids so that the caller can pick one).
        """
        wanted = name_or_id.strip()
        matches = self._directory.find(wanted)
        if not matches and len(wanted) >= MIN_ID_PREFIX:
            # /list shows short ids; accept one when it is unambiguous.
            prefix = wanted.lower()
            matches = [record for record in self._directory.listing() if record.user_id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserNotFound(f"user {wanted} is not online")
        ids = ", ".join(record.user_id for record in matches)
        raise UserNotFound(f"{len(matches)} online users match {wanted!r} ({ids}); use the user id")

    # --- frames received -------------------------------------------------------------------------

    def receive_text(self, text: str | bytes, now: int) -> list[ClientEvent]:
        """Process one text message from the server; the events it produced, in order.

        Never raises for anything the server sends: a frame that is malformed, unsigned, badly signed,
        or carries a message that does not verify or decrypt becomes a :class:`FrameRejected` event.
        """
        try:
            frame = env.parse(text)
        except UnknownType as exc:
            # A type from a newer protocol revision: nothing to do with it, and nothing wrong either.
            logger.debug("< ignoring frame of unknown type: %s", exc.detail)
            return []
        except ProtocolError as exc:
            return [FrameRejected(f"malformed frame from the server: {exc.detail}")]
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("< %s %s (user %s, %s)", frame.type, frame.msg_ref, self.user_id[:8], self._state.name)
        if frame.type not in _ACCEPTED[self._state]:
            if self._state is SessionState.WELCOMED:
                logger.debug("ignoring %s: not something a server sends a user", frame.type)
                return []
            return [FrameRejected(f"{frame.type} refused: session is {self._state.value}", frame.type.value)]
        try:
            if self._state is SessionState.AWAITING_ACK:
                return self._before_welcome(frame)
            if self._server_key is None or not frame.verify(self._server_key):
                raise _Rejected(f"{frame.type} signature does not verify with the pinned key of server "
                                f"{self._server_id}")
            return self._after_welcome(frame, now)
        except _Rejected as exc:
            logger.debug("rejected %s: %s", frame.msg_ref, exc.reason)
            return [FrameRejected(exc.reason, frame.type.value)]

    # --- state handlers --------------------------------------------------------------------------

    def _before_welcome(self, frame: Envelope) -> list[ClientEvent]:
        if frame.type is FrameType.ERROR:
            # Nothing is pinned yet, so an early ERROR cannot be authenticated; surface it all the same,
            # it usually explains why we are not welcome (NAME_IN_USE, BAD_KEY, …).
            return [self._server_error(frame)]
        payload = frame.payload
        if payload["msg_ref"] != FrameType.USER_HELLO.value:
            raise _Rejected(f"expected the ACK of USER_HELLO, got an ACK of {payload['msg_ref']!r}")
        server_id, server_pub = payload.get("server_id"), payload.get("server_pub")
        if not isinstance(server_id, str) or not server_id:
            raise _Rejected("ACK of USER_HELLO lacks a 'server_id' string")
        try:
            key_text = crypto.normalize_public_key(server_pub)
        except BadKey as exc:
            raise _Rejected(f"ACK of USER_HELLO carries an unusable server_pub: {exc.detail}") from None
        key = self._public_key(key_text)
        if not frame.verify(key):
            raise _Rejected("ACK of USER_HELLO is not signed by the server_pub it carries")
        if self._expected_pub is not None and key_text != self._expected_pub:
            self._state = SessionState.REFUSED
            logger.warning("server %s presented key %s, expected %s: refusing it", server_id[:8],
                           crypto.key_fingerprint(key_text), crypto.key_fingerprint(self._expected_pub))
            return [ServerKeyChanged(server_id, self._expected_pub, key_text)]
        self._state = SessionState.WELCOMED
        self._server_id, self._server_pub, self._server_key = server_id, key_text, key
        logger.info("welcomed by server %s (key %s)", server_id[:8], crypto.key_fingerprint(key_text))
        return [Welcomed(server_id, key_text)]

    def _after_welcome(self, frame: Envelope, now: int) -> list[ClientEvent]:
        if frame.type is FrameType.USER_ADVERTISE:
            return self._on_advertise(frame)
        if frame.type is FrameType.USER_REMOVE:
            removed = self._directory.remove(frame.payload["user_id"], frame.payload["server_id"])
            return [UserOffline(removed)] if removed is not None else []
        if frame.type is FrameType.LIST_RESPONSE:
            return self._on_list(frame)
        if frame.type is FrameType.USER_DELIVER:
            return [self._on_deliver(frame, now)]
        if frame.type is FrameType.ERROR:
            return [self._server_error(frame)]
        if frame.type is FrameType.ACK:
            return [Acked(frame.payload["msg_ref"])]
        logger.debug("ignoring %s (not handled by this client yet)", frame.type)
        return []

    def _on_advertise(self, frame: Envelope) -> list[ClientEvent]:
        record = self._record(frame.payload, frame.payload["server_id"])
        if record is None:
            raise _Rejected(f"USER_ADVERTISE for {frame.payload['user_id']} carries no usable RSA-4096 pubkey")
        is_new = record.user_id not in self._directory
        if not self._directory.advertise(record):
            return []
        return [UserOnline(record, is_new)]

    def _on_list(self, frame: Envelope) -> list[ClientEvent]:
        records: list[UserRecord] = []
        for item in frame.payload["users"]:
            server_id = item.get("server_id") if isinstance(item, dict) else None
            record = self._record(item, server_id) if isinstance(server_id, str) else None
            if record is None:
                # One unusable entry (another implementation's key format, say) must not hide the others.
                logger.debug("LIST_RESPONSE entry skipped: needs user_id, server_id and an RSA-4096 pubkey")
                continue
            records.append(record)
        for stale in self._directory.listing():
            self._directory.remove(stale.user_id, stale.server_id)
        for record in records:
            self._directory.advertise(record)
        return [UserList(tuple(self._directory.listing()))]

    def _on_deliver(self, frame: Envelope, now: int) -> ClientEvent:
        payload = frame.payload
        sender = payload["sender"]
        original_ref = f"{FrameType.MSG_DIRECT}:{sender}:{frame.to}:{frame.ts}"
        if frame.to != self.user_id:
            raise _Rejected(f"USER_DELIVER addressed to {frame.to}, not to this user")
        try:
            key_text = crypto.normalize_public_key(payload["sender_pub"])
        except BadKey as exc:
            raise _Rejected(f"message from {sender}: unusable sender_pub ({exc.detail})") from None
        known = self._directory.get(sender)
        if known is not None and known.pubkey != key_text:
            raise _Rejected(f"message from {sender}: sender_pub is not the key advertised for that user")
        if not crypto.verify_direct(self._public_key(key_text), payload["content_sig"], payload["ciphertext"],
                                    sender, self.user_id, frame.ts):
            raise _Rejected(f"message from {sender}: content_sig does not verify")
        # Only verified deliveries enter the replay cache, so that a mangled copy cannot shadow the real one.
        try:
            if not self._replay.admit(frame, now):
                raise _Rejected(f"duplicate delivery of {original_ref}")
        except ProtocolError as exc:
            raise _Rejected(f"message {original_ref} refused: {exc.detail}") from None
        try:
            text = crypto.rsa_decrypt(self._key, payload["ciphertext"]).decode("utf-8")
        except SocpError:
            # The crypto error's own text may describe the key; the reason stays generic on purpose.
            raise _Rejected(f"message from {sender}: ciphertext does not decrypt with this user's key") from None
        except UnicodeDecodeError:
            raise _Rejected(f"message from {sender}: plaintext is not UTF-8") from None
        label = known.label if known is not None else sender
        return DirectMessage(sender, label, text, frame.ts, original_ref)

    # --- helpers ---------------------------------------------------------------------------------

    def _record(self, item: Mapping[str, Any], server_id: str) -> UserRecord | None:
        """A directory record from an advert or list entry, or None when it lacks a usable key."""
        user_id = item.get("user_id")
        meta = meta_of(item)
        raw_key = item.get("pubkey") or meta.get("pubkey")
        if not isinstance(user_id, str) or not user_id:
            return None
        try:
            key_text = crypto.normalize_public_key(raw_key)
        except BadKey:
            return None
        # The key variant in meta is not decoration; keep it out of what gets displayed.
        meta.pop("pubkey", None)
        return UserRecord(user_id, server_id, key_text, meta)

    @staticmethod
    def _server_error(frame: Envelope) -> ServerError:
        detail = frame.payload.get("detail")
        msg_ref = frame.payload.get("msg_ref")
        return ServerError(frame.payload["code"], detail if isinstance(detail, str) else "",
                           msg_ref if isinstance(msg_ref, str) else None)

    def _public_key(self, key_text: str) -> crypto.PublicKey:
        key = self._keys.get(key_text)
        if key is None:
            key = crypto.decode_public_key(key_text)
            if len(self._keys) >= _MAX_KEY_CACHE:
                self._keys.clear()
            self._keys[key_text] = key
        return key

    def _require_welcomed(self, what: str) -> None:
        if self._state is not SessionState.WELCOMED:
            raise SocpError(f"cannot send {what}: session is {self._state.value}, expected welcomed")

    def _to_server(self) -> str:
        return self._server_id or BROADCAST

    @staticmethod
    def _out(frame: Envelope) -> str:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("> %s %s", frame.type, frame.msg_ref)
        return frame.to_wire()
