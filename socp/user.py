"""The client's protocol logic as a sans-I/O state machine (WIRE §5).

The asyncio shell (``client/``) owns the socket and the clock and drives :class:`UserSession` like this::

    session = UserSession(user_id, key, {"display_name": "alice"})
    send(session.hello(now))                          # USER_HELLO, the first frame
    for text in incoming:
        for event in session.receive_text(text, now): # ClientEvent values, in order
            ...
    send(session.direct_message(recipient_id, "hi", now))
    for text in session.public_message("hello all", now): send(text)   # key share first when needed
    outgoing = session.send_file(recipient_id_or_public, "a.txt", data, now)
    while (text := outgoing.next_frame(now)) is not None: send(text)
    send(session.list_request(now))

Trust model: the first ``ACK`` of ``USER_HELLO`` names the server and its key; the session pins that key
(or refuses it when it contradicts ``expected_server_pub``) and verifies every later frame with it. Direct
messages are verified end to end: the ``content_sig`` must verify with the sender's key, which must match the
key the directory holds for that sender when it holds one.

Public channel (WIRE §5): the session owns one random 256-bit sender key, shares it (RSA-OAEP per member,
signed) with every member that has not got it before its next message, and replaces it as soon as a member it
was shared with has left; received keys are kept per (sender, key_id). Files: outgoing transfers are produced
one frame at a time (:class:`OutgoingFile`); incoming ones are assembled in memory, bounded by
``max_file_bytes``, and handed over only after size and SHA-256 match (:class:`FileReceived`).

States (one table, :data:`_ACCEPTED`)::

    AWAITING_ACK --ACK(USER_HELLO), key accepted--> WELCOMED
    AWAITING_ACK --ACK(USER_HELLO), key contradicts the pin--> REFUSED   (terminal)

Time is ``now`` in integer milliseconds since the Unix epoch; this module reads no clock.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.envelope import BROADCAST, PUBLIC_GROUP, Envelope, FrameType
from socp.errors import BadFrame, BadKey, CryptoError, ProtocolError, SocpError, TooLarge, UnknownType, UserNotFound
from socp.presence import Directory, UserRecord, display_label, meta_of
from socp.replay import DEFAULT_WINDOW_MS, ReplayCache
from socp.settings import DEFAULT_MAX_FILE_BYTES

logger = logging.getLogger("socp.user")

CLIENT_NAME = "socp-testbed/0.1"
"""The ``client`` field of our USER_HELLO."""

MIN_ID_PREFIX = 4
"""Shortest user id prefix :meth:`UserSession.resolve` accepts (``/list`` shows 8 characters)."""

_MAX_KEY_CACHE = 1024

DM_CHUNK_BYTES = 8 * crypto.OAEP_MAX_PLAINTEXT
"""Plaintext per FILE_CHUNK in dm mode: 8 RSA-OAEP blocks of 446 bytes (WIRE §5: up to 8 blocks a chunk)."""
PUBLIC_CHUNK_BYTES = 48 * 1024
"""Plaintext per FILE_CHUNK in public mode (AES-GCM; about 64 KiB of base64url on the wire)."""
PROGRESS_MIN_BYTES = 256 * 1024
"""Files at least this large report :class:`FileProgress` every 10 %."""
FILE_IDLE_MS = 120_000
"""An incoming transfer with no frame for this long is discarded (:meth:`UserSession.expire_transfers`)."""
MAX_INCOMING_FILES = 8
"""Incoming transfers assembled at once; more are refused (bounded memory)."""
MAX_FILE_NAME = 1024
"""Longest file name accepted in FILE_START (the shell shortens names further before writing)."""
MAX_SHARES_PER_FRAME = 1000
"""Shares per PUBLIC_CHANNEL_KEY_SHARE we send (about 760 bytes each: far below the frame limit)."""
_MAX_GROUP_KEYS = 4096
_MAX_DISCARDED = 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
class PublicMessage:
    """A public-channel message, verified (``content_sig``) and decrypted with the sender's key ``key_id``."""

    sender_id: str
    sender_label: str
    text: str = field(repr=False)
    ts: int
    msg_ref: str
    key_id: str


@dataclass(frozen=True, slots=True)
class PublicMessageUnreadable:
    """A genuine (signature-verified) public-channel message that this user cannot read, and why.

    Typically the sender's key was never shared with us (we joined after its last key share and it has not
    spoken since); reported rather than dropped so that the user knows something was missed.
    """

    sender_id: str
    sender_label: str
    ts: int
    msg_ref: str
    key_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PublicKeyReceived:
    """A member shared its public-channel key with us (verified, unwrapped)."""

    sender_id: str
    sender_label: str
    key_id: str


@dataclass(frozen=True, slots=True)
class FileIncoming:
    """A verified FILE_START: a file is on its way (``mode`` is ``dm`` or ``public``)."""

    sender_id: str
    sender_label: str
    file_id: str
    name: str
    size: int
    mode: str


@dataclass(frozen=True, slots=True)
class FileProgress:
    """An incoming large file crossed another 10 % (``received`` of ``size`` bytes)."""

    sender_id: str
    sender_label: str
    file_id: str
    name: str
    received: int
    size: int


@dataclass(frozen=True, slots=True)
class FileReceived:
    """A file arrived whole: its size and SHA-256 match what the sender signed.

    ``name`` is the name as sent, which may be hostile: the shell must sanitize it before writing.
    ``data`` holds the content until a shell saves it; :class:`client.connection.ClientConnection` (with
    a downloads folder) empties it and sets ``path`` to where the file was written.
    """

    sender_id: str
    sender_label: str
    file_id: str
    name: str
    size: int
    sha256: str
    mode: str
    data: bytes = field(repr=False, compare=False)
    path: str | None = None


@dataclass(frozen=True, slots=True)
class FileRejected:
    """An incoming file was refused or discarded; nothing of it is kept. ``reason`` says why."""

    sender_id: str
    sender_label: str
    file_id: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """The answer to a directory query: a registered user's key, whether or not it is online.

    Signed by our server (its transport signature was verified with the pinned key).
    """

    user_id: str
    pubkey: str
    meta: Mapping[str, Any]
    home_server: str
    login: str
    online: bool
    server_id: str
    msg_ref: str

    @property
    def label(self) -> str:
        """Display label (``meta.display_name`` or the user id)."""
        return display_label(self.user_id, self.meta)


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
               | Acked | FrameRejected | PublicMessage | PublicMessageUnreadable | PublicKeyReceived | FileIncoming
               | FileProgress | FileReceived | FileRejected | DirectoryEntry)

# Frame types the session accepts and ignores: membership announcements are for servers (a client's member
# set is its directory), and HEARTBEAT carries nothing for a user.
_IGNORED = frozenset({FrameType.PUBLIC_CHANNEL_ADD, FrameType.PUBLIC_CHANNEL_UPDATED, FrameType.HEARTBEAT})
_CONTENT = frozenset({FrameType.MSG_PUBLIC_CHANNEL, FrameType.PUBLIC_CHANNEL_KEY_SHARE, FrameType.FILE_START,
                      FrameType.FILE_CHUNK, FrameType.FILE_END, FrameType.DIRECTORY_RESPONSE})

# Which frames each state accepts before the signature check (the state table).
_ACCEPTED: dict[SessionState, frozenset[FrameType]] = {
    SessionState.AWAITING_ACK: frozenset({FrameType.ACK, FrameType.ERROR}),
    SessionState.WELCOMED: frozenset({FrameType.ACK, FrameType.ERROR, FrameType.USER_ADVERTISE,
                                      FrameType.USER_REMOVE, FrameType.LIST_RESPONSE,
                                      FrameType.USER_DELIVER}) | _IGNORED | _CONTENT,
    SessionState.REFUSED: frozenset(),
}


class OutgoingFile:
    """One file being sent: its frames, produced (and encrypted) one at a time by :meth:`next_frame`.

    The first frames are any key shares the public channel needs, then FILE_START, the chunks and FILE_END.
    Each frame gets the ``now`` it is produced at, so that a long transfer stays inside the replay window.
    """

    def __init__(self, session: UserSession, to: str, name: str, data: bytes, file_id: str,
                 prelude: list[str], group_key: tuple[bytes, str] | None, recipient_key: crypto.PublicKey | None
                 ) -> None:
        self.file_id = file_id
        """The transfer's id (random)."""
        self.to = to
        """Recipient user id, or ``"public"``."""
        self.name = name
        self.size = len(data)
        self.sha256 = crypto.sha256_hex(data)
        self.mode = "public" if to == PUBLIC_GROUP else "dm"
        chunk_bytes = PUBLIC_CHUNK_BYTES if group_key is not None else DM_CHUNK_BYTES
        self.chunk_count = (len(data) + chunk_bytes - 1) // chunk_bytes
        """Number of FILE_CHUNK frames (0 for an empty file)."""
        self._session = session
        self._data = data
        self._chunk_bytes = chunk_bytes
        self._prelude = list(prelude)
        self._group_key = group_key
        self._recipient_key = recipient_key
        self._next = -1  # -1: FILE_START next; chunk_count: FILE_END next

    @property
    def sent_bytes(self) -> int:
        """Plaintext bytes already produced as chunks."""
        return min(self.size, max(0, self._next) * self._chunk_bytes)

    @property
    def done(self) -> bool:
        """True once FILE_END has been produced."""
        return self._next > self.chunk_count

    def next_frame(self, now: int) -> str | None:
        """The next frame to send, or None when the transfer is complete."""
        session = self._session
        if self._prelude:
            return self._prelude.pop(0)
        if self._next > self.chunk_count:
            return None
        if self._next == -1:
            payload: dict[str, Any] = {
                "file_id": self.file_id, "name": self.name, "size": self.size, "sha256": self.sha256,
                "mode": self.mode, "sender_pub": session.pubkey,
                "content_sig": crypto.sign_file(session._key, self.file_id, self.name, self.size, self.sha256,
                                                session.user_id, self.to, now)}
            if self._group_key is not None:
                payload["key_id"] = self._group_key[1]  # extension: which sender key the chunks use
            frame = env.make(FrameType.FILE_START, session.user_id, self.to, now, payload)
        elif self._next < self.chunk_count:
            piece = self._data[self._next * self._chunk_bytes:(self._next + 1) * self._chunk_bytes]
            if self._group_key is not None:
                ciphertext = crypto.aes_encrypt(self._group_key[0], piece)
            else:
                assert self._recipient_key is not None
                ciphertext = crypto.rsa_encrypt(self._recipient_key, piece)
            frame = env.make(FrameType.FILE_CHUNK, session.user_id, self.to, now,
                             {"file_id": self.file_id, "index": self._next, "ciphertext": ciphertext})
        else:
            frame = env.make(FrameType.FILE_END, session.user_id, self.to, now, {"file_id": self.file_id})
        self._next += 1
        return session._out(frame)


@dataclass(slots=True)
class _IncomingFile:
    sender_id: str
    sender_label: str
    file_id: str
    name: str
    size: int
    sha256: str
    mode: str
    group_key: bytes | None
    last_seen: int
    data: bytearray = field(default_factory=bytearray)
    next_index: int = 0
    next_progress: int = 1  # in tenths


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
                 expected_server_pub: str | None = None, *, replay_window_ms: int = DEFAULT_WINDOW_MS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, login_nonce: str | None = None) -> None:
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
        # Every user id this session has seen, bound to the first key seen for it: servers refuse a second key
        # for a known id, so a change can only come from a lying or compromised server.
        self._user_keys: dict[str, str] = {}
        # Only direct messages are deduplicated here: a replayed delivery would show a message twice, while a
        # replayed advert or list merely restates what the (trusted) server already said.
        self._replay = ReplayCache(replay_window_ms)
        self._keys: dict[str, crypto.PublicKey] = {}
        self.max_file_bytes = max_file_bytes
        """Largest file this session sends or accepts."""
        self._login_nonce = login_nonce
        # Public channel: our sender key, who has it, whether a member left since we shared it, and the
        # keys others shared with us.
        self._group_key: tuple[bytes, str] | None = None
        self._shared_with: set[str] = set()
        self._rotate = False
        self._group_keys: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._latest_key_id: dict[str, str] = {}
        self._incoming: dict[tuple[str, str], _IncomingFile] = {}
        self._discarded: OrderedDict[tuple[str, str], None] = OrderedDict()

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

    @property
    def group_key_id(self) -> str | None:
        """The id of our current public-channel sender key (None before the first public message)."""
        return self._group_key[1] if self._group_key is not None else None

    def has_group_key(self, sender_id: str, key_id: str | None = None) -> bool:
        """True when ``sender_id`` shared a public-channel key with us (``key_id``, or any)."""
        if key_id is None:
            return sender_id in self._latest_key_id
        return (sender_id, key_id) in self._group_keys

    def hello(self, now: int) -> str:
        """The USER_HELLO frame, signed with the user's key (proof of possession).

        After a password login it carries the server's ``login_nonce``, so the signature also proves
        possession of the key to that very challenge.
        """
        payload: dict[str, Any] = {"client": CLIENT_NAME, "pubkey": self.pubkey, "enc_pubkey": self.pubkey,
                                   "meta": dict(self.meta)}
        if self._login_nonce is not None:
            payload["login_nonce"] = self._login_nonce
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
        size = len(text.encode("utf-8"))
        if size > crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT:
            raise TooLarge(f"message of {size} bytes exceeds {crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT} "
                           "bytes; send it as a file", fatal=False)
        ciphertext = crypto.rsa_encrypt(self._public_key(record.pubkey), text.encode("utf-8"))
        payload = {"ciphertext": ciphertext, "sender_pub": self.pubkey,
                   "content_sig": crypto.sign_direct(self._key, ciphertext, self.user_id, recipient, now)}
        return self._out(env.make(FrameType.MSG_DIRECT, self.user_id, recipient, now, payload, self._key))

    def public_message(self, text: str, now: int) -> list[str]:
        """Frames that send ``text`` to the public channel: key shares when needed, then MSG_PUBLIC_CHANNEL.

        The text is encrypted with AES-256-GCM under our sender key, which every current member receives
        (wrapped with its RSA key) before this message; the key is replaced first when a member it was
        shared with has left since.
        """
        self._require_welcomed("MSG_PUBLIC_CHANNEL")
        frames = self._share_group_key(now)
        assert self._group_key is not None
        key, key_id = self._group_key
        ciphertext = crypto.aes_encrypt(key, text.encode("utf-8"))
        payload = {"ciphertext": ciphertext, "sender_pub": self.pubkey, "key_id": key_id,
                   "content_sig": crypto.sign_public(self._key, ciphertext, self.user_id, now)}
        frames.append(self._out(env.make(FrameType.MSG_PUBLIC_CHANNEL, self.user_id, PUBLIC_GROUP, now, payload)))
        return frames

    def send_file(self, recipient: str, name: str, data: bytes, now: int, *, file_id: str | None = None
                  ) -> OutgoingFile:
        """An :class:`OutgoingFile` carrying ``data`` as ``name`` to ``recipient`` (a user id, or ``"public"``).

        dm mode encrypts each chunk with RSA-OAEP under the recipient's key; public mode with AES-GCM under our
        public-channel key (shared first with members who lack it). Raises :class:`UserNotFound` for an
        unknown recipient, :class:`TooLarge` above :attr:`max_file_bytes` and :class:`BadFrame` for an
        unusable name.
        """
        self._require_welcomed("FILE_START")
        if not name or len(name) > MAX_FILE_NAME:
            raise BadFrame(f"file name must be 1..{MAX_FILE_NAME} characters")
        if len(data) > self.max_file_bytes:
            raise TooLarge(f"file {name} is {len(data)} bytes, above the limit of {self.max_file_bytes} bytes",
                           fatal=False)
        file_id = file_id or crypto.random_token(12)
        if recipient == PUBLIC_GROUP:
            prelude = self._share_group_key(now)
            return OutgoingFile(self, recipient, name, data, file_id, prelude, self._group_key, None)
        record = self._directory.get(recipient)
        if record is None:
            raise UserNotFound(f"user {recipient} is not online (not in this client's directory)")
        return OutgoingFile(self, recipient, name, data, file_id, [], None, self._public_key(record.pubkey))

    def directory_query(self, now: int, *, user_id: str | None = None, login: str | None = None) -> str:
        """A DIRECTORY_QUERY for a registered user's key (online or not); answered as :class:`DirectoryEntry`."""
        self._require_welcomed("DIRECTORY_QUERY")
        payload = {"user_id": user_id} if user_id is not None else {"login": login or ""}
        return self._out(env.make(FrameType.DIRECTORY_QUERY, self.user_id, self._to_server(), now, payload))

    def expire_transfers(self, now: int) -> list[ClientEvent]:
        """Discard incoming files that stalled for :data:`FILE_IDLE_MS`; one :class:`FileRejected` each."""
        stalled = [transfer for transfer in self._incoming.values() if now - transfer.last_seen > FILE_IDLE_MS]
        return [self._discard(transfer, f"no data for {FILE_IDLE_MS // 1000} s; transfer abandoned")
                for transfer in stalled]

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
        # Any frame is a tick of the clock for incoming files: stalled ones are abandoned (and said so).
        stalled = self.expire_transfers(now) if self._incoming else []
        try:
            if self._state is SessionState.AWAITING_ACK:
                return self._before_welcome(frame)
            if self._server_key is None or not frame.verify(self._server_key):
                raise _Rejected(f"{frame.type} signature does not verify with the pinned key of server "
                                f"{self._server_id}")
            return [*stalled, *self._after_welcome(frame, now)]
        except _Rejected as exc:
            logger.debug("rejected %s: %s", frame.msg_ref, exc.reason)
            return [*stalled, FrameRejected(exc.reason, frame.type.value)]

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
            if removed is not None:
                self._member_left(removed.user_id)
            return [UserOffline(removed)] if removed is not None else []
        if frame.type is FrameType.LIST_RESPONSE:
            return self._on_list(frame)
        if frame.type is FrameType.USER_DELIVER:
            return [self._on_deliver(frame, now)]
        if frame.type is FrameType.PUBLIC_CHANNEL_KEY_SHARE:
            return self._on_key_share(frame, now)
        if frame.type is FrameType.MSG_PUBLIC_CHANNEL:
            return self._on_public_message(frame, now)
        if frame.type in (FrameType.FILE_START, FrameType.FILE_CHUNK, FrameType.FILE_END):
            return self._on_file_frame(frame, now)
        if frame.type is FrameType.DIRECTORY_RESPONSE:
            return [self._on_directory_response(frame)]
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
        self._check_user_key(record)
        previous = self._directory.get(record.user_id)
        is_new = previous is None
        if not self._directory.advertise(record):
            return []
        return [UserOnline(record, is_new)]

    def _on_list(self, frame: Envelope) -> list[ClientEvent]:
        records: list[UserRecord] = []
        rejected: list[ClientEvent] = []
        for item in frame.payload["users"]:
            server_id = item.get("server_id") if isinstance(item, dict) else None
            record = self._record(item, server_id) if isinstance(server_id, str) else None
            if record is None:
                # One unusable entry (another implementation's key format, say) must not hide the others.
                logger.debug("LIST_RESPONSE entry skipped: needs user_id, server_id and an RSA-4096 pubkey")
                continue
            try:
                self._check_user_key(record)
            except _Rejected as exc:
                rejected.append(FrameRejected(exc.reason, frame.type.value))
                continue
            records.append(record)
        listed = {record.user_id: record.pubkey for record in records}
        for stale in self._directory.listing():
            if listed.get(stale.user_id) != stale.pubkey:
                self._member_left(stale.user_id)
            self._directory.remove(stale.user_id, stale.server_id)
        for record in records:
            self._directory.advertise(record)
        return [*rejected, UserList(tuple(self._directory.listing()))]

    def _check_user_key(self, record: UserRecord) -> None:
        """Pin ``record``'s key to its user id on first sight; refuse (``_Rejected``) a different one later."""
        pinned = self._user_keys.setdefault(record.user_id, record.pubkey)
        if pinned != record.pubkey:
            raise _Rejected(f"the key of {record.label} ({record.user_id}) changed from "
                            f"{crypto.key_fingerprint(pinned)} to {crypto.key_fingerprint(record.pubkey)}: refused, "
                            "the server may be impersonating this user")

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
            text = crypto.rsa_decrypt(self._key, payload["ciphertext"], crypto.MAX_DIRECT_BLOCKS).decode("utf-8")
        except SocpError:
            # The crypto error's own text may describe the key; the reason stays generic on purpose.
            raise _Rejected(f"message from {sender}: ciphertext does not decrypt with this user's key") from None
        except UnicodeDecodeError:
            raise _Rejected(f"message from {sender}: plaintext is not UTF-8") from None
        label = known.label if known is not None else sender
        return DirectMessage(sender, label, text, frame.ts, original_ref)

    # --- public channel --------------------------------------------------------------------------

    def _member_left(self, user_id: str) -> None:
        """A member left (or changed key): the next public message must use a key it never had."""
        if user_id in self._shared_with:
            self._shared_with.discard(user_id)
            self._rotate = True

    def _share_group_key(self, now: int) -> list[str]:
        """Key shares that bring every current member up to date with our sender key (rotating it first
        when someone it was shared with has left)."""
        if self._group_key is None or self._rotate:
            key = crypto.generate_symmetric_key()
            self._group_key = (key, crypto.group_key_id(key))
            self._shared_with = set()
            self._rotate = False
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("new public-channel key %s", self._group_key[1])
        key, key_id = self._group_key
        newcomers = [record for record in self._directory.listing()
                     if record.user_id != self.user_id and record.user_id not in self._shared_with]
        frames = []
        for start in range(0, len(newcomers), MAX_SHARES_PER_FRAME):
            batch = newcomers[start:start + MAX_SHARES_PER_FRAME]
            shares: list[Any] = [{"member": record.user_id,
                                  "wrapped_public_channel_key": crypto.rsa_encrypt(self._public_key(record.pubkey),
                                                                                   key)} for record in batch]
            payload = {"shares": shares, "creator_pub": self.pubkey, "key_id": key_id,
                       "content_sig": crypto.sign_key_share(self._key, shares, self.pubkey)}
            frames.append(self._out(env.make(FrameType.PUBLIC_CHANNEL_KEY_SHARE, self.user_id, BROADCAST, now,
                                             payload)))
            self._shared_with.update(record.user_id for record in batch)
        return frames

    def _sender_key_text(self, sender: str, sender_pub: object, what: str) -> tuple[str, str]:
        """The sender's key (checked against the directory) and its display label."""
        try:
            key_text = crypto.normalize_public_key(sender_pub)
        except BadKey as exc:
            raise _Rejected(f"{what} from {sender}: unusable sender key ({exc.detail})") from None
        known = self._directory.get(sender)
        if known is not None and known.pubkey != key_text:
            raise _Rejected(f"{what} from {sender}: sender key is not the key advertised for that user")
        return key_text, known.label if known is not None else sender

    def _admit(self, frame: Envelope, now: int, what: str) -> bool:
        try:
            return self._replay.admit(frame, now)
        except ProtocolError as exc:
            raise _Rejected(f"{what} {frame.msg_ref} refused: {exc.detail}") from None

    def _on_key_share(self, frame: Envelope, now: int) -> list[ClientEvent]:
        payload = frame.payload
        sender = frame.sender
        if sender == self.user_id:
            return []
        key_text, label = self._sender_key_text(sender, payload["creator_pub"], "key share")
        shares = payload["shares"]
        if not crypto.verify_key_share(self._public_key(key_text), payload["content_sig"], shares,
                                       payload["creator_pub"]):
            raise _Rejected(f"key share from {label}: content_sig does not verify")
        if not self._admit(frame, now, "key share"):
            return []
        mine = [share for share in shares if isinstance(share, dict) and share.get("member") == self.user_id]
        if not mine or not isinstance(mine[0].get("wrapped_public_channel_key"), str):
            return []  # a share for other members only
        try:
            key = crypto.rsa_decrypt(self._key, mine[0]["wrapped_public_channel_key"], crypto.MAX_KEY_WRAP_BLOCKS)
        except CryptoError:
            raise _Rejected(f"key share from {label}: our share does not decrypt with this user's key") from None
        if len(key) != 32:
            raise _Rejected(f"key share from {label}: the shared key is not 256 bits")
        raw_id = payload.get("key_id")
        key_id = raw_id if isinstance(raw_id, str) else ""
        self._group_keys[(sender, key_id)] = key
        self._group_keys.move_to_end((sender, key_id))
        while len(self._group_keys) > _MAX_GROUP_KEYS:
            self._group_keys.popitem(last=False)
        self._latest_key_id[sender] = key_id
        return [PublicKeyReceived(sender, label, key_id)]

    def _on_public_message(self, frame: Envelope, now: int) -> list[ClientEvent]:
        payload = frame.payload
        sender = frame.sender
        if sender == self.user_id:
            return []
        key_text, label = self._sender_key_text(sender, payload["sender_pub"], "public message")
        if not crypto.verify_public(self._public_key(key_text), payload["content_sig"], payload["ciphertext"],
                                    sender, frame.ts):
            raise _Rejected(f"public message from {label}: content_sig does not verify")
        if not self._admit(frame, now, "public message"):
            raise _Rejected(f"duplicate delivery of {frame.msg_ref}")
        raw_id = payload.get("key_id")
        key_id = raw_id if isinstance(raw_id, str) else self._latest_key_id.get(sender, "")
        key = self._group_keys.get((sender, key_id))
        if key is None:
            return [PublicMessageUnreadable(sender, label, frame.ts, frame.msg_ref, key_id,
                                            f"it is encrypted under key {key_id or '(none)'}, which {label} never "
                                            "shared with us (sent before we joined, or a key share was lost)")]
        try:
            text = crypto.aes_decrypt(key, payload["ciphertext"]).decode("utf-8")
        except CryptoError:
            return [PublicMessageUnreadable(sender, label, frame.ts, frame.msg_ref, key_id,
                                            f"it does not decrypt under key {key_id} (altered in transit?)")]
        except UnicodeDecodeError:
            raise _Rejected(f"public message from {label}: plaintext is not UTF-8") from None
        return [PublicMessage(sender, label, text, frame.ts, frame.msg_ref, key_id)]

    # --- files -----------------------------------------------------------------------------------

    def _on_file_frame(self, frame: Envelope, now: int) -> list[ClientEvent]:
        sender = frame.sender
        if sender == self.user_id:
            return []
        file_key = (sender, frame.payload["file_id"])
        if frame.type is FrameType.FILE_START:
            return self._on_file_start(frame, file_key, now)
        transfer = self._incoming.get(file_key)
        if transfer is None:
            if file_key in self._discarded:
                return []  # the user was told once already
            self._remember_discarded(file_key)
            raise _Rejected(f"{frame.type} from {sender} for a file this client was not offered")
        if not self._admit(frame, now, str(frame.type)):
            return []
        transfer.last_seen = now
        if frame.type is FrameType.FILE_END:
            del self._incoming[file_key]
            if len(transfer.data) != transfer.size:
                return [self._discard(transfer, f"received {len(transfer.data)} bytes, but {transfer.size} "
                                                "were announced")]
            if crypto.sha256_hex(bytes(transfer.data)) != transfer.sha256:
                return [self._discard(transfer, "SHA-256 mismatch: the file was altered in transit")]
            return [FileReceived(sender, transfer.sender_label, transfer.file_id, transfer.name, transfer.size,
                                 transfer.sha256, transfer.mode, bytes(transfer.data))]
        index = frame.payload["index"]
        if index != transfer.next_index:
            return [self._discard(transfer, f"chunk {index} arrived where chunk {transfer.next_index} was expected")]
        try:
            if transfer.group_key is not None:
                piece = crypto.aes_decrypt(transfer.group_key, frame.payload["ciphertext"])
            else:
                piece = crypto.rsa_decrypt(self._key, frame.payload["ciphertext"], crypto.MAX_FILE_CHUNK_BLOCKS)
        except CryptoError:
            return [self._discard(transfer, f"chunk {index} does not decrypt (altered in transit?)")]
        transfer.data += piece
        transfer.next_index += 1
        if len(transfer.data) > transfer.size:
            return [self._discard(transfer, f"more data than the {transfer.size} bytes announced")]
        if transfer.size >= PROGRESS_MIN_BYTES:
            tenths = len(transfer.data) * 10 // transfer.size  # 10 % steps; 100 % is FileReceived itself
            if transfer.next_progress <= tenths < 10:
                transfer.next_progress = tenths + 1
                return [FileProgress(sender, transfer.sender_label, transfer.file_id, transfer.name,
                                     len(transfer.data), transfer.size)]
        return []

    def _on_file_start(self, frame: Envelope, file_key: tuple[str, str], now: int) -> list[ClientEvent]:
        payload = frame.payload
        sender = frame.sender
        key_text, label = self._sender_key_text(sender, payload["sender_pub"], "file")
        mode = payload.get("mode", "dm")
        expected_to = PUBLIC_GROUP if mode == "public" else self.user_id
        if mode not in ("dm", "public") or frame.to != expected_to:
            raise _Rejected(f"file from {label}: mode {mode!r} does not match the recipient {frame.to}")
        name, size, digest = payload["name"], payload["size"], payload["sha256"]
        if not crypto.verify_file(self._public_key(key_text), payload["content_sig"], payload["file_id"], name, size,
                                  digest, sender, frame.to, frame.ts):
            raise _Rejected(f"file from {label}: content_sig does not verify")
        if not self._admit(frame, now, "file"):
            return []
        shown_name = name if len(name) <= MAX_FILE_NAME else name[:MAX_FILE_NAME] + "…"
        pending = _IncomingFile(sender, label, payload["file_id"], shown_name, size, digest, mode, None, now)
        if file_key in self._incoming:
            return [self._reject(pending, "a transfer with this file id is already under way")]
        if size < 0 or len(name) > MAX_FILE_NAME or not _SHA256_HEX.fullmatch(digest):
            return [self._reject(pending, "the announcement is malformed (size, name or SHA-256)")]
        if size > self.max_file_bytes:
            return [self._reject(pending, f"it is {size} bytes, above this client's limit of "
                                          f"{self.max_file_bytes} bytes")]
        if len(self._incoming) >= MAX_INCOMING_FILES:
            return [self._reject(pending, f"{MAX_INCOMING_FILES} other files are already arriving")]
        if mode == "public":
            raw_id = payload.get("key_id")
            key_id = raw_id if isinstance(raw_id, str) else self._latest_key_id.get(sender, "")
            group_key = self._group_keys.get((sender, key_id))
            if group_key is None:
                return [self._reject(pending, f"it is encrypted under key {key_id or '(none)'}, which {label} never "
                                              "shared with us")]
            pending.group_key = group_key
        self._incoming[file_key] = pending
        return [FileIncoming(sender, label, pending.file_id, pending.name, size, mode)]

    def _reject(self, transfer: _IncomingFile, reason: str) -> FileRejected:
        self._remember_discarded((transfer.sender_id, transfer.file_id))
        return FileRejected(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name, reason)

    def _discard(self, transfer: _IncomingFile, reason: str) -> FileRejected:
        """Drop an incoming transfer (its data is freed) and say why."""
        self._incoming.pop((transfer.sender_id, transfer.file_id), None)
        transfer.data = bytearray()
        return self._reject(transfer, reason)

    def _remember_discarded(self, file_key: tuple[str, str]) -> None:
        self._discarded[file_key] = None
        while len(self._discarded) > _MAX_DISCARDED:
            self._discarded.popitem(last=False)

    def _on_directory_response(self, frame: Envelope) -> ClientEvent:
        payload = frame.payload
        try:
            key_text = crypto.normalize_public_key(payload["pubkey"])
        except BadKey as exc:
            raise _Rejected(f"DIRECTORY_RESPONSE carries an unusable key ({exc.detail})") from None

        def text(name: str) -> str:
            value = payload.get(name)
            return value if isinstance(value, str) else ""

        return DirectoryEntry(payload["user_id"], key_text, meta_of(payload), text("home_server"), text("login"),
                              payload.get("online") is True, text("server_id"), text("msg_ref"))

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
