"""The client's side of SOCP as a pure, sans-I/O core: :class:`UserSession` and the events it reports.

Layout: :mod:`~socp.user.session` (the facade, its states and the one route table), :mod:`~socp.user.events`
(the :data:`ClientEvent` values), :mod:`~socp.user.keys` (directory and pinned user keys),
:mod:`~socp.user.direct` (direct messages), :mod:`~socp.user.public` (public-channel sender keys),
:mod:`~socp.user.files` (incoming and outgoing files) and :mod:`~socp.user.common` (this user's key pair,
:class:`OutboundFrame`, :class:`MsgRef`). Everything a shell needs is importable from here.
"""

from socp.settings import DEFAULT_MAX_FILE_BYTES
from socp.user.common import FileSigner, LocalUser, MsgRef, OutboundFrame
from socp.user.events import (
    Acked,
    ClientEvent,
    Delivered,
    DeliveryFailed,
    DirectMessage,
    DirectoryEntry,
    DuplicateDelivery,
    FileIncoming,
    FileProgress,
    FileReceived,
    FileRejected,
    FrameRejected,
    PublicKeyReceived,
    PublicMessage,
    PublicMessageUnreadable,
    ServerError,
    ServerKeyChanged,
    UserList,
    UserOffline,
    UserOnline,
    Welcomed,
)
from socp.user.files import (
    DM_CHUNK_BYTES,
    FILE_IDLE_MS,
    MAX_FILE_NAME,
    MAX_INCOMING_FILES,
    PROGRESS_MIN_BYTES,
    PUBLIC_CHUNK_BYTES,
    OutgoingFile,
)
from socp.user.keys import MIN_ID_PREFIX
from socp.user.public import MAX_SHARES_PER_FRAME
from socp.user.session import CLIENT_NAME, ROUTES, SessionState, UserSession

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_MAX_FILE_BYTES",
    "DM_CHUNK_BYTES",
    "FILE_IDLE_MS",
    "MAX_FILE_NAME",
    "MAX_INCOMING_FILES",
    "MAX_SHARES_PER_FRAME",
    "MIN_ID_PREFIX",
    "PROGRESS_MIN_BYTES",
    "PUBLIC_CHUNK_BYTES",
    "ROUTES",
    "Acked",
    "ClientEvent",
    "Delivered",
    "DeliveryFailed",
    "DirectMessage",
    "DirectoryEntry",
    "DuplicateDelivery",
    "FileIncoming",
    "FileProgress",
    "FileReceived",
    "FileRejected",
    "FileSigner",
    "FrameRejected",
    "LocalUser",
    "MsgRef",
    "OutboundFrame",
    "OutgoingFile",
    "PublicKeyReceived",
    "PublicMessage",
    "PublicMessageUnreadable",
    "ServerError",
    "ServerKeyChanged",
    "SessionState",
    "UserList",
    "UserOffline",
    "UserOnline",
    "UserSession",
    "Welcomed",
]
