"""The facade: :class:`ServerState`, one SOCP server (introducer or peer) as a pure state machine.

The asyncio shell (``node/``) owns sockets and the clock and drives it like this::

    link = state.accept_link(now)            # an inbound connection was accepted
    state.receive_text(link, text, now)      # a text message arrived
    state.dial_succeeded(link, now)          # an outbound Dial connected (or dial_failed)
    state.link_closed(link, now)             # a connection went away
    state.handle_timer(now)                  # when now >= state.next_deadline()
    for action in state.data_to_send(): ...  # Send / CloseLink / Dial, in order
    for event in state.events_received(): ...

Time is ``now`` in integer milliseconds since the Unix epoch; fresh ids come from ``rng``.

The facade only composes: the components (mesh, presence, routing, public channel, files, registry) each own
their state and handle their frames; :mod:`socp.server.routes` says which component handles which frame on
which kind of link, after which checks; :class:`socp.server.hooks.Hooks` carries the moments several
components care about. The subscriptions below, in order, are the whole wiring.

Cost: see each component's docstring; receiving a frame costs one parse, one table look-up and what its
route names.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import Action, Event, LinkId
from socp.envelope import FrameType
from socp.errors import BadFrame, ProtocolError, UnknownType
from socp.interop import Variant, strict_detail, variants_of
from socp.presence import Directory
from socp.registry import Registration
from socp.replay import ReplayCache
from socp.server.config import ServerSettings
from socp.server.files import Files
from socp.server.hooks import Hooks
from socp.server.links import Link, LinkRole, LinkTable, SilentDrop
from socp.server.mesh import Mesh
from socp.server.outbox import Outbox, logger
from socp.server.peers import ServerBook
from socp.server.presence import Presence
from socp.server.public import PublicChannel
from socp.server.receipts import Receipts
from socp.server.registry import Registry
from socp.server.routes import Router, route_table
from socp.server.routing import Routing

MAX_VARIANTS_LOGGED = 10_000
"""Bound of the once-per-peer interop log memory (beyond it a variant is logged again each time)."""


class ServerState:
    """One SOCP server (introducer or peer) as a pure state machine; see the module docstring."""

    def __init__(self, settings: ServerSettings, key: crypto.PrivateKey, *, now: int,
                 rng: random.Random | None = None, pinned_servers: Mapping[str, str] | None = None,
                 registrations: Iterable[Registration] = (), public_version: int = 0,
                 public_wraps: Mapping[str, str] | None = None, delivered: Mapping[str, int] | None = None) -> None:
        rng = rng or random.Random()
        self.settings = settings
        self.directory = Directory()
        """Who is online where (WIRE §4.5)."""
        self.replay = ReplayCache(settings.replay_window_ms, settings.replay_capacity)
        """Frames seen within the replay window."""
        self.hooks = Hooks()
        self.out = Outbox(settings.server_id, key, legacy_interop=settings.legacy_interop)
        self._variants_seen: set[tuple[str, Variant]] = set()
        """(peer, variant) pairs already logged under the interop profile."""
        self.links = LinkTable(settings.rate_per_second, settings.rate_burst, settings.peer_timeout_ms,
                               heartbeat_interval_ms=settings.heartbeat_interval_ms,
                               join_wait_ms=settings.join_wait_ms, now=now,
                               server_rate_per_second=settings.server_rate_per_second,
                               server_rate_burst=settings.server_rate_burst)
        self.book = ServerBook(settings, self.out, rng, dict(pinned_servers or {}))
        self.registry = Registry(settings, self.out, self.links, self.directory, registrations, self.book)
        self.presence = Presence(settings, self.out, self.links, self.directory, self.replay, self.registry,
                                 self.hooks, now)
        self.public = PublicChannel(self.out, self.links, self.presence, version=public_version, wraps=public_wraps,
                                    interop=settings.interop)
        self.receipts = Receipts(settings, self.out, self.links, self.book, delivered=delivered, now=now)
        self.routing = Routing(settings, self.out, self.links, self.directory, self.presence, self.public,
                               self.hooks, self.replay, self.receipts)
        self.files = Files(settings, self.out, self.presence, self.routing, self.public)
        self.mesh = Mesh(settings, self.out, self.links, self.book, self.directory, self.replay, self.hooks, rng,
                         now, self.link_closed)
        self._router = Router(route_table(self.mesh, self.presence, self.routing, self.public, self.files,
                                          self.registry),
                              introducer=settings.introducer, out=self.out, book=self.book, replay=self.replay)
        hooks = self.hooks
        hooks.link_up.subscribe(self.presence.send_sync)
        hooks.link_up.subscribe(self.public.send_snapshot)
        hooks.link_up.subscribe(self.registry.send_all)
        hooks.link_up.subscribe(self.receipts.link_up)  # after the snapshots: the far end knows who is here
        hooks.link_down.subscribe(self.receipts.link_down)
        hooks.link_down.subscribe(self.presence.server_lost)
        hooks.link_down.subscribe(self.public.server_lost)
        hooks.user_joined.subscribe(self.registry.bind_user)
        hooks.user_joined.subscribe(self.presence.attach)
        hooks.user_joined.subscribe(self.public.member_joined)
        hooks.user_left.subscribe(self.presence.detach)
        hooks.user_left.subscribe(self.public.member_left)
        hooks.peer_lacks.subscribe(self.presence.peer_lacks)
        hooks.peer_lacks.subscribe(self.registry.peer_lacks)
        hooks.sweep.subscribe(self.replay.expire)
        hooks.sweep.subscribe(self.mesh.sweep)
        hooks.sweep.subscribe(self.routing.sweep)
        hooks.sweep.subscribe(self.receipts.sweep)
        hooks.sweep.subscribe(self.files.sweep)

    # --- shell API -------------------------------------------------------------------------------

    def start(self, now: int) -> None:
        """Begin joining the network through the bootstrap list (an introducer joins its fellow introducers)."""
        self.mesh.start(now)

    def accept_link(self, now: int, source: str = "") -> LinkId:
        """Register an inbound connection from ``source`` (its address, for per-source throttles); returns
        its link id."""
        link = self.links.new(outbound=False, role=LinkRole.PENDING, now=now)
        link.source = source
        return link.link_id

    def dial_succeeded(self, link_id: LinkId, now: int) -> None:
        """An outbound Dial connected: send the link's first frame."""
        link = self.links.get(link_id)
        if link is not None and link.role is LinkRole.DIALING:
            self.mesh.dial_succeeded(link, now)

    def dial_failed(self, link_id: LinkId, now: int) -> None:
        """An outbound Dial could not connect."""
        self.link_closed(link_id, now, reason="dial failed")

    def link_closed(self, link_id: LinkId, now: int, reason: str = "connection closed") -> None:
        """A connection went away (for any reason); forget it and repair what depended on it."""
        link = self.links.pop(link_id)
        if link is None:
            return
        if link.role is LinkRole.USER:
            self.presence.link_closed(link, now)
        else:
            self.mesh.link_closed(link, now, reason)

    def receive_text(self, link_id: LinkId, text: str | bytes, now: int) -> None:
        """Process one text message received on ``link_id``."""
        link = self.links.get(link_id)
        if link is None or link.closing:
            return
        if link.role is not LinkRole.SERVER:
            link.last_seen = now  # a server link lives on verified frames only (see ServerBook.verify)
        try:
            self.links.take_token(link, now)
            variants: list[Variant] | None = [] if self.settings.interop else None
            frame = env.parse(text, self.settings.max_frame_bytes, variants)
            if variants:
                self._note_variants(link, frame.sender, variants)
        except SilentDrop:
            return
        except ProtocolError as exc:
            if not self.settings.interop and isinstance(exc, BadFrame | UnknownType):
                # Say so when it is another implementation's form (docs/INTEROP.md): the fix is a switch.
                exc.detail = strict_detail(exc.detail, variants_of(text))
            self.out.fault(link, exc, now)
            return
        if logger.isEnabledFor(logging.DEBUG):
            self.out.log.debug("< %s %s from %s on link %d", frame.type, frame.msg_ref, frame.sender[:8], link_id)
        try:
            self._router.dispatch(link, frame, now)
        except ProtocolError as exc:
            if frame.type in (FrameType.ERROR, FrameType.ACK):
                # Never answer an ERROR or ACK with an ERROR: two peers that disagree would ping-pong forever.
                self.out.log.info("ignored %s from %s: %s", frame.type, link.peer[:8] or link.link_id, exc)
                return
            if exc.msg_ref is None:
                exc.msg_ref = frame.msg_ref  # errors raised deep inside (key parsing) still name the frame
            self.out.fault(link, exc, now)

    def _note_variants(self, link: Link, sender: str, variants: list[Variant]) -> None:
        """Log each interop variant once per peer (docs/INTEROP.md); the set is bounded."""
        peer = link.peer or sender
        for variant in variants:
            if (peer, variant) in self._variants_seen:
                continue
            if len(self._variants_seen) < MAX_VARIANTS_LOGGED:
                self._variants_seen.add((peer, variant))
            self.out.log.warning("interop: accepted variant '%s' from %s (link %d)", variant, peer[:8],
                                 link.link_id)

    def handle_timer(self, now: int, *, processed_until: int | None = None) -> None:
        """Run everything whose deadline has passed: joins, reconnects, liveness, heartbeats, sync.

        A run much later than the deadline :meth:`next_deadline` last gave is a stall of ours (see
        :mod:`socp.server.liveness`): noticed first, so that no peer is accused of it. A shell that runs the
        timer ahead of input still queued says when the oldest of it arrived (``processed_until``): silence
        is then judged only up to that moment, since a peer's frames may be waiting in our own queue.
        """
        self.links.detector.timer_fired(now, self.out.log, processed_until=processed_until)
        self.mesh.handle_timer(now)
        self.presence.handle_timer(now)
        self.routing.handle_timer(now, backlog=processed_until is not None)
        self.mesh.heartbeat(now)

    def next_deadline(self) -> int:
        """The earliest ``now`` at which :meth:`handle_timer` has work.

        The answer is also taken as the shell's promise to call :meth:`handle_timer` then: the failure
        detector measures how late the call comes (a stall of ours) against the last answer given.
        """
        deadlines = [self.mesh.next_deadline(), self.presence.next_deadline()]
        if (liveness := self.links.next_deadline()) is not None:
            deadlines.append(liveness)
        if (receipts := self.routing.next_deadline()) is not None:
            deadlines.append(receipts)
        due = min(deadlines)
        self.links.detector.promised(due)
        return due

    def data_to_send(self) -> list[Action]:
        """Actions queued since the last call, in order."""
        return self.out.take_actions()

    def events_received(self) -> list[Event]:
        """Events queued since the last call, in order."""
        return self.out.take_events()

    # --- read-only views -------------------------------------------------------------------------

    @property
    def server_id(self) -> str:
        """This server's id (the one an introducer assigned, once joined)."""
        return self.out.server_id

    @property
    def pubkey(self) -> str:
        """This server's public key, SOCP-encoded."""
        return self.out.pubkey

    @property
    def joined(self) -> bool:
        """True once this server is part of a network."""
        return self.mesh.joined

    @property
    def linked_servers(self) -> list[str]:
        """Ids of servers with an established link."""
        return self.links.linked_servers

    @property
    def known_servers(self) -> list[str]:
        """Ids of every server this node knows an address for."""
        return self.book.known_servers

    @property
    def local_users(self) -> list[str]:
        """Ids of users attached to this server."""
        return self.presence.local_ids

    @property
    def healthy(self) -> bool:
        """Joined, and linked at least once to every server learned of (the /healthz answer)."""
        return self.joined and self.book.all_linked_once()

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for health and metrics endpoints."""
        local_count = len(self.presence.local_ids)
        return {
            "server_id": self.server_id, "introducer": self.settings.introducer, "joined": self.joined,
            "healthy": self.healthy, "linked_servers": self.linked_servers,
            "known_servers": self.known_servers, "local_users": local_count,
            "known_users": len(self.directory), "registered_users": len(self.registry),
            "public_channel": {"version": self.public.version, "local_members": local_count,
                               "members": self.public.member_count()},
            "link_deaths": self.links.detector.link_deaths, "stalls": self.links.detector.stalls,
            "heartbeat_signatures": self.mesh.heartbeat_signatures,
            "signatures": self.out.signatures, "unsigned_errors": self.out.unsigned_errors,
            "replay_refused": self.replay.refused, "legacy_interop": self.settings.legacy_interop,
            "admission": self.settings.admission, "refused_admissions": self.mesh.refused_admissions,
            "refused_adverts": self.presence.refused_adverts, "refused_deliveries": self.routing.refused_deliveries,
            "receipts": {"in_flight": self.receipts.in_flight, "resent": self.receipts.resent,
                         "resend_rounds": self.receipts.resend_rounds, "timed_out": self.receipts.timed_out},
        }

    def registration(self, user_id: str) -> Registration | None:
        """What the registry holds for ``user_id`` (any server's user), or None."""
        return self.registry.registration(user_id)

    @property
    def public_version(self) -> int:
        """This server's public-channel membership version."""
        return self.public.version
