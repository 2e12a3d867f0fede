"""The link table: every connection of one server, its role, its liveness and its rate limit.

A link is what the shell calls a connection; its :class:`LinkRole` says what the protocol knows of it and
decides which frames the route table (:mod:`socp.server.routes`) lets through.

Liveness of server links is judged by the :class:`~socp.server.liveness.FailureDetector` the table owns
(silence, suspicion, death, and our own stalls; see its module). Handshakes time out too: a connection that
says nothing within the peer timeout, a join that gets no SERVER_WELCOME within the join wait
(:attr:`ServerSettings.join_wait_ms`); both waits are measured from the end of our last stall.

Cost: O(1) per frame (table look-up, one token taken); liveness and :meth:`LinkTable.next_deadline` scan the
links, O(n + u) for n server links and u user connections, once per timer run.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from socp.actions import LinkId
from socp.errors import RateLimited
from socp.ratelimit import TokenBucket
from socp.server.liveness import FailureDetector, Verdict
from socp.settings import DEFAULT_SERVER_RATE_BURST, DEFAULT_SERVER_RATE_PER_SECOND

logger = logging.getLogger("socp.server")


class LinkRole(enum.Enum):
    """What a connection is, as far as the protocol knows."""

    PENDING = "pending"      # inbound, first frame not yet seen
    DIALING = "dialing"      # outbound, not yet connected
    JOINING = "joining"      # outbound to an introducer, SERVER_HELLO_JOIN sent, awaiting SERVER_WELCOME
    SERVER = "server"        # identified server link
    USER = "user"            # identified local user


class SilentDrop(Exception):
    """A frame dropped without an answer (a flood already told it is rate-limited)."""


@dataclass(slots=True)
class Link:
    """One connection and what the protocol knows about it."""

    link_id: LinkId
    outbound: bool
    role: LinkRole
    opened_at: int
    last_seen: int
    bucket: TokenBucket
    peer: str = ""                       # server id or user id once identified
    target: str = ""                     # outbound: server id dialed ("" for a join)
    bootstrap_index: int = -1            # join links: which bootstrap entry
    joined_through: bool = False         # the peer joined the network through us on this link
    rate_limited_at: int = -1_000_000    # when the last RATE_LIMITED was sent (one per second at most)
    closing: bool = False
    pending_until: int = 0               # a login in progress may stay pending this long
    login_user: str = ""                 # user id a login challenge was issued for
    login_nonce: str = ""                # the challenge's nonce; USER_HELLO must echo it after a login
    login_name: str = ""                 # the login name challenged (a decoy's too)
    login_granted: bool = False
    suspected_at: int | None = None      # server link: when the failure detector began to suspect it
    server_bucket: TokenBucket | None = None  # server link: its own, more generous rate limit
    source: str = ""                     # inbound: the peer's address as the shell saw it (login throttle)
    carried: bool = False                # server link: a frame the peer verifies was queued since our last
    #                                      heartbeat round (the next round sends it no HEARTBEAT)
    legacy_form: int | None = None       # legacy switch: the payload-only signature form the peer was seen
    #                                      using (socp.codec.accepted_payload_forms index); we sign in it too


class LinkTable:
    """Links by id, and the identified server links by server id (at most one per server)."""

    def __init__(self, rate_per_second: float, rate_burst: int, peer_timeout_ms: int, *,
                 heartbeat_interval_ms: int, join_wait_ms: int, now: int,
                 server_rate_per_second: float = DEFAULT_SERVER_RATE_PER_SECOND,
                 server_rate_burst: int = DEFAULT_SERVER_RATE_BURST) -> None:
        self._rate_per_second = rate_per_second
        self._rate_burst = rate_burst
        self._server_rate_per_second = server_rate_per_second
        self._server_rate_burst = server_rate_burst
        self._peer_timeout_ms = peer_timeout_ms
        self._join_wait_ms = join_wait_ms
        self.detector = FailureDetector(heartbeat_interval_ms, peer_timeout_ms, now)
        """Judges server links' silence; counts stalls and link deaths."""
        self._links: dict[LinkId, Link] = {}
        self._by_server: dict[str, LinkId] = {}
        self._next_link_id = 1

    def new(self, *, outbound: bool, role: LinkRole, now: int) -> Link:
        """Register a new connection and return it."""
        link = Link(self._next_link_id, outbound, role, opened_at=now, last_seen=now,
                    bucket=TokenBucket(self._rate_per_second, self._rate_burst))
        self._next_link_id += 1
        self._links[link.link_id] = link
        return link

    def get(self, link_id: LinkId) -> Link | None:
        """The link ``link_id``, or None once it is gone."""
        return self._links.get(link_id)

    def __getitem__(self, link_id: LinkId) -> Link:
        return self._links[link_id]

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._links.values()))

    def pop(self, link_id: LinkId) -> Link | None:
        """Forget ``link_id`` (the connection went away); the link, or None."""
        return self._links.pop(link_id, None)

    # --- server links ------------------------------------------------------------------------------

    def server_link(self, server_id: str) -> Link | None:
        """The established link to ``server_id``, or None."""
        link_id = self._by_server.get(server_id)
        return self._links[link_id] if link_id is not None else None

    def server_link_id(self, server_id: str) -> LinkId | None:
        """Id of the established link to ``server_id``, or None."""
        return self._by_server.get(server_id)

    def bind_server(self, server_id: str, link: Link) -> None:
        """``link`` is now the one link to ``server_id``."""
        self._by_server[server_id] = link.link_id

    def unbind_server(self, server_id: str) -> None:
        """``server_id`` has no established link any more."""
        del self._by_server[server_id]

    def server_links(self) -> list[Link]:
        """Every established server link."""
        return [self._links[link_id] for link_id in self._by_server.values()]

    @property
    def linked_servers(self) -> list[str]:
        """Ids of servers with an established link, sorted."""
        return sorted(self._by_server)

    def is_linked(self, server_id: str) -> bool:
        """True when ``server_id`` has an established link."""
        return server_id in self._by_server

    # --- rate limit and liveness -------------------------------------------------------------------

    def take_token(self, link: Link, now: int) -> None:
        """Spend one frame of ``link``'s rate; raises RateLimited at most once a second, else SilentDrop.

        Server links have a bucket of their own, far more generous (:attr:`ServerSettings.server_rate_per_second`):
        honest mesh traffic never trips it, a flood of re-timestamped frames does.
        """
        if link.role is LinkRole.SERVER:
            if link.server_bucket is None:
                link.server_bucket = TokenBucket(self._server_rate_per_second, self._server_rate_burst)
            bucket, rate = link.server_bucket, self._server_rate_per_second
        else:
            bucket, rate = link.bucket, self._rate_per_second
        if bucket.take(now):
            return
        if now - link.rate_limited_at < 1000:
            raise SilentDrop
        link.rate_limited_at = now
        raise RateLimited(f"more than {rate:g} frames/s; frames dropped")

    def check_liveness(self, now: int, close: Callable[[Link, str], None],
                       lost: Callable[[LinkId, int, str], None], log: logging.LoggerAdapter[logging.Logger]) -> None:
        """Judge every link: close server links the detector declares dead and handshakes past their wait;
        ``lost`` repairs what depended on them. Call once per timer run, after the detector saw ``now``."""
        timeout = self._peer_timeout_ms
        detector = self.detector
        for link in list(self._links.values()):
            if link.closing:
                continue
            if link.role is LinkRole.SERVER:
                verdict = detector.judge(link.last_seen, link.suspected_at, now)
                if verdict is Verdict.ALIVE:
                    link.suspected_at = None
                elif verdict is Verdict.SUSPECT:
                    if link.suspected_at is None or link.suspected_at < detector.awake_since:
                        link.suspected_at = now
                        log.info("server %s silent for %d ms: suspected (dead if still silent in %d ms)",
                                 link.peer[:8], detector.silence(link.last_seen, now),
                                 detector.heartbeat_interval_ms)
                else:
                    log.warning("server %s silent for %d ms while we were awake: link declared dead",
                                link.peer[:8], detector.silence(link.last_seen, now))
                    close(link, "peer timeout")
                    lost(link.link_id, now, "peer timeout")
            elif link.role is LinkRole.PENDING and now - detector.since(link.opened_at) > timeout \
                    and now > link.pending_until:
                close(link, "no hello within the peer timeout")
            elif link.role is LinkRole.JOINING and now - detector.since(link.opened_at) > self._join_wait_ms:
                # An introducer that accepted the connection but never welcomes us must not stall the join.
                log.warning("no SERVER_WELCOME within %d ms; trying the next introducer", self._join_wait_ms)
                close(link, "no welcome within the join wait")
                lost(link.link_id, now, "no welcome")

    def next_deadline(self) -> int | None:
        """When the next liveness check is due (None without links that can time out)."""
        detector = self.detector
        deadlines = []
        for link in self._links.values():
            if link.closing:
                continue
            if link.role is LinkRole.SERVER:
                deadlines.append(detector.deadline(link.last_seen, link.suspected_at))
            elif link.role is LinkRole.PENDING:
                deadlines.append(max(detector.since(link.opened_at) + self._peer_timeout_ms + 1,
                                     link.pending_until + 1))
            elif link.role is LinkRole.JOINING:
                deadlines.append(detector.since(link.opened_at) + self._join_wait_ms + 1)
        return min(deadlines) if deadlines else None
