"""The events a :class:`socp.user.UserSession` reports (:data:`ClientEvent`): frozen values, one per fact.

Plaintext never appears in a repr (``field(repr=False)``), so an event may be logged as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socp.presence import UserRecord, display_label
from socp.user.common import MsgRef


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The server acknowledged USER_HELLO; ``server_pub`` is now pinned for this session."""

    server_id: str
    server_pub: str


@dataclass(frozen=True, slots=True)
class HelloReaddressed:
    """The server refused our USER_HELLO addressed to ``"*"`` and named its id (PROTOCOL.md §3.6): send
    :meth:`socp.user.UserSession.hello` again, which is now addressed (and signed) to ``server_id``."""

    server_id: str


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
    """A user went offline (removed by the server it was attached to), or became unreachable: ``unreachable``
    when our server says the user's server stopped answering (``USER_REMOVE.reason``)."""

    record: UserRecord
    unreachable: bool = False


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

    @property
    def about(self) -> MsgRef | None:
        """:attr:`msg_ref` read into its parts (type, sender, recipient, ts), or None when there is none."""
        return MsgRef.parse(self.msg_ref)


@dataclass(frozen=True, slots=True)
class Acked:
    """The server acknowledged a frame (other than USER_HELLO's welcome ACK)."""

    msg_ref: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """A delivery receipt: the recipient's server handed our frame ``msg_ref`` to the recipient's connection.

    For file frames (FILE_START / FILE_CHUNK / FILE_END) ``file_id`` and ``index`` (chunks only) say which.
    Reported only when our server announced the ``delivery_receipts`` extension (WIRE §7).
    """

    msg_ref: str
    file_id: str | None = None
    index: int | None = None


@dataclass(frozen=True, slots=True)
class DeliveryFailed:
    """Our frame ``msg_ref`` will not be delivered, or its fate is unknown: the outcome of a tracked send.

    ``code`` is the server's ERROR code (``USER_NOT_FOUND``, ``TIMEOUT``, …), ``TIMEOUT`` when no receipt came
    within the client's own bound, or ``CONNECTION_LOST`` when our connection ended first (the message may or
    may not have arrived). ``file_id`` / ``index`` as in :class:`Delivered`.
    """

    msg_ref: str
    code: str
    reason: str
    file_id: str | None = None
    index: int | None = None


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame from the server was refused and ignored; ``reason`` says why."""

    reason: str
    frame_type: str | None = None


@dataclass(frozen=True, slots=True)
class DuplicateDelivery:
    """A genuine (verified) message arrived again within the replay window and was dropped.

    The user sees the message once; this event lets a test or a check notice a network that delivers twice.
    ``msg_ref`` names the sender's original frame (as :attr:`DirectMessage.msg_ref` or
    :attr:`PublicMessage.msg_ref` did for the first copy).
    """

    sender_id: str
    sender_label: str
    msg_ref: str


ClientEvent = (Welcomed | HelloReaddressed | ServerKeyChanged | UserOnline | UserOffline | UserList | DirectMessage
               | ServerError | Acked | FrameRejected | PublicMessage | PublicMessageUnreadable | PublicKeyReceived
               | FileIncoming | FileProgress | FileReceived | FileRejected | DirectoryEntry | DuplicateDelivery
               | Delivered | DeliveryFailed)
"""Everything :meth:`socp.user.UserSession.receive_text` reports."""
