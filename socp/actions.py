"""What the sans-I/O state machines ask their shells to do, and what they report.

Actions (``data_to_send()``) are carried out by the asyncio shell in order; events
(``events_received()``) are facts the shell may log or persist. Both are plain frozen data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socp.registry import Registration

LinkId = int


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``text`` as one WebSocket text message on ``link_id``."""

    link_id: LinkId
    text: str


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Close ``link_id`` (after everything queued on it before this action is sent)."""

    link_id: LinkId
    reason: str


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a WebSocket connection to ``ws://host:port`` and report back on ``link_id``."""

    link_id: LinkId
    host: str
    port: int


Action = Send | CloseLink | Dial


@dataclass(frozen=True, slots=True)
class IdentityAssigned:
    """The introducer assigned this server a different id; the shell persists it."""

    server_id: str


@dataclass(frozen=True, slots=True)
class UserRegistered:
    """A user id was bound to a key for the first time (the shell persists it)."""

    user_id: str
    pubkey: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerPinned:
    """A server id was bound to a key (the shell may persist the pin)."""

    server_id: str
    pubkey: str
    trusted: bool


@dataclass(frozen=True, slots=True)
class LinkUp:
    """A server link is established and identified."""

    server_id: str
    link_id: LinkId


@dataclass(frozen=True, slots=True)
class LinkDown:
    """A server link went away (``users_dropped`` users became unreachable)."""

    server_id: str
    link_id: LinkId
    reason: str
    users_dropped: int


@dataclass(frozen=True, slots=True)
class UserJoined:
    """A local user completed USER_HELLO."""

    user_id: str
    label: str


@dataclass(frozen=True, slots=True)
class UserLeft:
    """A local user disconnected."""

    user_id: str
    label: str


@dataclass(frozen=True, slots=True)
class PeerFault:
    """A peer's frame was refused; the session got an ERROR (and was closed when ``fatal``)."""

    link_id: LinkId
    peer: str
    code: str
    detail: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class RegistrationStored:
    """The registry learned or changed a user record (password records, gossip); the shell persists it."""

    registration: Registration


@dataclass(frozen=True, slots=True)
class PublicChannelVersion:
    """This server's public-channel membership version changed (a local member joined or left)."""

    version: int


@dataclass(frozen=True, slots=True)
class PublicWrapStored:
    """A local member was sent a wrapped public-channel key (the latest one is kept; never a clear key)."""

    member_id: str
    wrapped_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class FramesDelivered:
    """Forwarded frames this server handed to their recipients (delivery receipts, far side), as
    ``(digest, forget_at)`` pairs: the shell keeps them until ``forget_at``, so that a restarted node ACKs a resent
    copy instead of delivering it again (see :class:`socp.server.receipts.Receipts`)."""

    delivered: tuple[tuple[str, int], ...]


Event = (IdentityAssigned | UserRegistered | ServerPinned | LinkUp | LinkDown | UserJoined | UserLeft | PeerFault
         | RegistrationStored | PublicChannelVersion | PublicWrapStored | FramesDelivered)
