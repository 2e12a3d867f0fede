"""Named moments several components care about, so that none reaches into another's fields.

A component that causes a moment fires its hook; the components that care subscribed when the facade
(:class:`socp.server.state.ServerState`) composed them, in the order it lists. Subscribers run in that
order, so the frames they send leave in the same order every time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec

from socp.actions import LinkId
from socp.presence import UserRecord
from socp.server.links import Link

P = ParamSpec("P")


class Hook(Generic[P]):
    """An ordered list of subscribers called with the same arguments."""

    __slots__ = ("_subscribers", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: list[Callable[P, None]] = []

    def subscribe(self, subscriber: Callable[P, None]) -> None:
        """Call ``subscriber`` whenever the hook fires (after those subscribed before it)."""
        self._subscribers.append(subscriber)

    def fire(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Call every subscriber in order."""
        for subscriber in self._subscribers:
            subscriber(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class Local:
    """A user attached to this server."""

    user_id: str
    link_id: LinkId
    pubkey: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Hooks:
    """Every cross-cutting moment of a server."""

    link_up: Hook[[Link, int]] = field(default_factory=lambda: Hook("link_up"))
    """A server link was identified ``(link, now)``: each component sends the peer its snapshot."""
    link_down: Hook[[str, list[UserRecord], int]] = field(default_factory=lambda: Hook("link_down"))
    """The link to a server died ``(server_id, users it made unreachable, now)``."""
    user_joined: Hook[[Link, Local, int]] = field(default_factory=lambda: Hook("user_joined"))
    """A user's USER_HELLO passed every check ``(link, local, now)``: bind, attach, advertise, admit."""
    user_left: Hook[[Local, int]] = field(default_factory=lambda: Hook("user_left"))
    """A local user's connection went away ``(local, now)``."""
    peer_lacks: Hook[[Link, str, int]] = field(default_factory=lambda: Hook("peer_lacks"))
    """A server answered UNKNOWN_TYPE to one of our frames ``(link, frame type name, now)``: another
    implementation without that extension."""
    sweep: Hook[[int]] = field(default_factory=lambda: Hook("sweep"))
    """Housekeeping ``(now)``: forget what expired (runs with each presence sync round)."""
