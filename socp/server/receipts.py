"""Delivery receipts between servers (the ``delivery_receipts`` extension, WIRE §7; PROTOCOL.md §7.1).

**Origin side.** A user frame this server forwards (SERVER_DELIVER to a user: direct messages and file frames) to
a server that announced the extension is kept *in flight*, keyed by its digest (the SHA-256 replay key of the
SERVER_DELIVER, which both ends compute alike), with a deadline ``now + delivery bound`` (peer timeout +
:data:`socp.settings.DELIVERY_GRACE_MS`). The far server's ``ACK {msg_ref, digest}`` settles it (the sender gets
``ACK {msg_ref}`` of its own frame); a link that dies keeps it; a link that comes back (also to a restarted far
node) gets every frame in flight for it again, byte for byte (no new signature); a deadline that passes sends the
sender ``ERROR TIMEOUT`` with its ``msg_ref`` (unless the frame was last sent on a live link less than
:data:`~socp.settings.SENT_LATE_GRACE_MS` before: it then waits out that grace). While a capable server's link is
down, the users it had stay *held* at their last location for the bound: frames to them are kept in flight (not
refused), and go out when the link is back. A frame sent again after a link loss that the far server answers
``USER_NOT_FOUND`` (it restarted, and its users have not reconnected yet) is *parked* rather than bounced: it goes
out again as soon as the directory places its recipient on a linked capable server, within the same bound (every
:data:`PARKED_POLL_MS`).

**Far side.** Once a forwarded frame was handed to the recipient's connection, its receipt goes back to the
origin; a repeat (by digest, remembered within the replay window, bounded in count) is not delivered again but
ACKed again. The digests delivered are also handed to the shell (:class:`~socp.actions.FramesDelivered`, one
event per flush, not per frame) to be kept on disk for the replay window: a node restarted after a crash is given
them back (``delivered=``), so a copy the origin resends because the crash ate its receipt is ACKed, not
delivered twice. Only a crash within the flush interval (20 ms, up to 250 ms when busy) after a delivery can
still repeat it; the recipient's client drops such a repeat by its replay cache.

**Coalescing.** Receipts are not sent at once: they are queued per link (far server → origin: the origin's
server link; origin → sender: the sender's user link) and flushed as one signed ACK when the first queued one
is :data:`~socp.settings.RECEIPT_BATCH_MS` old (driven by the core's timer: :meth:`Receipts.next_deadline`,
:meth:`Receipts.flush`; while the core has input waiting, up to :data:`~socp.settings.RECEIPT_BATCH_BUSY_MS`)
or the queue holds :data:`~socp.settings.RECEIPT_BATCH_MAX`. One receipt goes out in the
single form (``ACK {msg_ref, digest}``, ``ACK {msg_ref, file_id?, index?}``); several in the coalesced form
(``ACK {msg_ref, digest, digests: [...]}``, ``ACK {msg_ref, receipts: [{msg_ref, file_id?, index?}, ...]}``),
``msg_ref``/``digest`` naming the first. A queue whose link closed (or changed hands) is dropped: the origin
sends its frames in flight again when the link is back, and the far server ACKs the repeats again.

**File frames are urgent.** A file sender keeps only a small window of chunks in flight and waits for their
receipts over two hops, so a receipt held for a batch (up to :data:`~socp.settings.RECEIPT_BATCH_BUSY_MS` while a
transfer keeps the core busy) stalls the transfer: the receipt of a file frame flushes its link's batch at
once, carrying any receipts queued with it. That costs one signature per file frame per hop, and a chunk is
up to 512 KiB of AES-GCM ciphertext, whose relaying costs far more than the signature.

Cost: at most one signed ACK per link per :data:`~socp.settings.RECEIPT_BATCH_MS` at the far server and one per
sender per batch at the origin: a burst of k messages between two servers costs O(k / batch) signatures instead
of 2k, and never more than one per message (O(1), independent of n); resends cost no signature. Added latency:
at most :data:`~socp.settings.RECEIPT_BATCH_MS` per hop (plus timer lateness), at most
:data:`~socp.settings.RECEIPT_BATCH_BUSY_MS` while the core is behind. Memory: one entry per frame in
flight, one queued receipt per frame until the flush, and one digest per delivered frame for the replay window
(at most :data:`MAX_DELIVERED`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from socp import codec
from socp.actions import FramesDelivered, LinkId
from socp.envelope import Envelope, FrameType
from socp.features import Feature, announced
from socp.presence import UserRecord
from socp.server.config import ServerSettings
from socp.server.hooks import Local
from socp.server.links import Link, LinkTable
from socp.server.outbox import Outbox
from socp.server.peers import ServerBook
from socp.settings import (
    RECEIPT_BATCH_BUSY_MS,
    RECEIPT_BATCH_MAX,
    RECEIPT_BATCH_MS,
    SENT_LATE_GRACE_MS,
    delivery_bound_ms,
)

PARKED_POLL_MS: Final = 250
"""How often parked frames look whether their recipient is back."""
FILE_KINDS: Final = frozenset({FrameType.FILE_START.value, FrameType.FILE_CHUNK.value, FrameType.FILE_END.value})
"""``SERVER_DELIVER.kind`` values of file frames, whose receipts are urgent (see the module docstring)."""
MAX_DELIVERED: Final = 200_000
"""Digests of delivered frames a far server remembers at most (the oldest are forgotten first)."""


def digest_of(frame: Envelope) -> str:
    """The receipt key of a SERVER_DELIVER: its replay key (WIRE §2), base64url."""
    return codec.b64url_encode(frame.replay_key)


@dataclass(slots=True)
class InFlight:
    """A forwarded frame awaiting its receipt."""

    digest: str
    server_id: str
    frame: Envelope      # the signed SERVER_DELIVER, resent unchanged
    deadline: int
    recipient: str
    resent: bool = False  # sent again after a link loss
    sent_at: int | None = None  # when last written to a live link (None: waiting for the link)

    @property
    def msg_ref(self) -> str:
        """The SERVER_DELIVER's msg_ref (routing's key for the forward)."""
        return self.frame.msg_ref


@dataclass(slots=True)
class _Batch:
    """Receipts queued for one link, to go out as one signed ACK."""

    to: str                         # the link's peer when queued (a link that changed hands drops the batch)
    first: int                      # when the first receipt was queued
    due: int                        # first + RECEIPT_BATCH_MS, later while the core has a backlog
    items: list[dict[str, Any]]     # far side: {msg_ref, digest}; to a sender: {msg_ref, file_id?, index?}


def _server_ack(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The far server's receipt: single ``{msg_ref, digest}``, or coalesced with every ``digests``."""
    payload = dict(items[0])
    if len(items) > 1:
        payload["digests"] = [item["digest"] for item in items]
    return payload


def _user_ack(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The sender's receipt: single ``{msg_ref, file_id?, index?}``, or coalesced ``{msg_ref, receipts}``."""
    if len(items) == 1:
        return items[0]
    return {"msg_ref": items[0]["msg_ref"], "receipts": items}


class Receipts:
    """Frames in flight (origin side), frames delivered (far side), and users held while their server is away."""

    def __init__(self, settings: ServerSettings, out: Outbox, links: LinkTable, book: ServerBook, *,
                 delivered: Mapping[str, int] | None = None, now: int = 0) -> None:
        self._out = out
        self._links = links
        self._book = book
        self._window = settings.replay_window_ms
        self.bound_ms = delivery_bound_ms(settings.peer_timeout_ms)
        """How long a forwarded frame waits for its receipt."""
        self._in_flight: dict[str, InFlight] = {}   # insertion order is deadline order
        self._delivered: dict[str, int] = {}        # digest -> forget at; insertion order is that order
        for digest, until in sorted((delivered or {}).items(), key=lambda item: item[1])[-MAX_DELIVERED:]:
            if until > now:
                self._delivered[digest] = until
        self._unsaved: list[tuple[str, int]] = []   # delivered since the last flush, for the shell to keep
        self._held: dict[str, tuple[str, int]] = {}  # user id -> (server id, hold until)
        self._parked: dict[str, InFlight] = {}      # digest -> frame awaiting its recipient's return
        self._next_poll: int | None = None
        self._to_origins: dict[LinkId, _Batch] = {}  # far side, per server link
        self._to_senders: dict[LinkId, _Batch] = {}  # origin side, per user link
        self.acks_sent = 0
        """Signed receipt ACKs sent (to origins and to senders); each carries one or more receipts."""
        self.resent = 0
        """Frames sent again on a link that came back."""
        self.resend_rounds = 0
        """Links that came back with frames in flight (each sends at most those frames again)."""
        self.timed_out = 0
        """Frames reported to their sender as TIMEOUT."""

    # --- who takes part -----------------------------------------------------------------------------

    def capable(self, server_id: str) -> bool:
        """True when ``server_id`` announced the extension."""
        info = self._book.get(server_id)
        return info is not None and Feature.DELIVERY_RECEIPTS in info.features

    @staticmethod
    def wants_receipts(local: Local) -> bool:
        """True when a local user's client announced the extension (``USER_HELLO.meta.features``)."""
        return Feature.DELIVERY_RECEIPTS in announced(local.meta)

    # --- origin side ------------------------------------------------------------------------------

    def held_location(self, user_id: str, now: int) -> str | None:
        """The server a user was on when its link died, while the hold lasts; else None."""
        held = self._held.get(user_id)
        if held is None or held[1] <= now:
            return None
        return held[0]

    def forward(self, server_id: str, made: Envelope, now: int, *, deadline: int | None = None,
                resent: bool = False) -> str:
        """Keep ``made`` (a SERVER_DELIVER to a capable server) in flight, and send it if the link is up;
        returns its digest. ``deadline``: the bound of a frame forwarded before (a parked one)."""
        digest = digest_of(made)
        link = self._links.server_link(server_id)
        self._in_flight[digest] = InFlight(digest, server_id, made, now + self.bound_ms if deadline is None
                                           else deadline, made.payload["user_id"], resent,
                                           now if link is not None else None)
        if link is not None:
            self._out.send(link, made)
        return digest

    def park(self, entry: InFlight, now: int) -> None:
        """A resent frame's recipient is not (yet) back at its restarted server: wait for it, within the bound."""
        self._parked[entry.digest] = entry
        if self._next_poll is None:
            self._next_poll = now + PARKED_POLL_MS

    def unpark(self, now: int, location_of: Callable[[str], str | None]) -> tuple[list[tuple[InFlight, str]],
                                                                                    list[InFlight]]:
        """Parked frames whose recipient is on a linked capable server again (with that server), and those
        whose bound passed; both leave the parking."""
        if self._next_poll is None or now < self._next_poll:
            return [], []
        ready: list[tuple[InFlight, str]] = []
        expired: list[InFlight] = []
        for digest, entry in list(self._parked.items()):
            location = location_of(entry.recipient)
            if entry.deadline <= now:
                expired.append(entry)
            elif location is not None and self.capable(location) and self._links.is_linked(location):
                ready.append((entry, location))
            else:
                continue
            del self._parked[digest]
        self._next_poll = now + PARKED_POLL_MS if self._parked else None
        self.timed_out += len(expired)
        return ready, expired

    def settle(self, digest: str | None, server_id: str | None = None) -> InFlight | None:
        """Forget a frame in flight (its receipt or a bounce came); the entry, or None if unknown.
        ``server_id``: only a frame forwarded to that server (a receipt settles only what its sender got)."""
        if digest is None:
            return None
        entry = self._in_flight.get(digest)
        if entry is None or (server_id is not None and entry.server_id != server_id):
            return None
        return self._in_flight.pop(digest)

    def link_up(self, link: Link, now: int) -> None:
        """``link_up`` subscriber: send every frame in flight for this server again; its users are no longer
        held (its presence snapshot says who is there now)."""
        server_id = link.peer
        self._held = {user: held for user, held in self._held.items() if held[0] != server_id}
        again = [entry for entry in self._in_flight.values() if entry.server_id == server_id]
        for entry in again:
            entry.resent, entry.sent_at = True, now
            self._out.send(link, entry.frame)
        if again:
            self.resent += len(again)
            self.resend_rounds += 1
            self._out.log.info("sent %d frames in flight again to server %s", len(again), server_id[:8])

    def link_down(self, server_id: str, dropped: list[UserRecord], now: int) -> None:
        """``link_down`` subscriber: a capable server's users stay held at it for the bound."""
        if not self.capable(server_id):
            return
        until = now + self.bound_ms
        for record in dropped:
            self._held[record.user_id] = (server_id, until)

    def next_deadline(self) -> int | None:
        """The earliest deadline of a frame in flight, or the next look at parked frames; None: neither.

        A scan: frames in flight are few (those of the last round trip, or of one dead link's bound).
        """
        deadlines = [entry.deadline for entry in self._in_flight.values()]
        if self._next_poll is not None:
            deadlines.append(self._next_poll)
        # Batches: one per link with receipts queued (few; a scan).
        deadlines += [batch.due for batches in (self._to_origins, self._to_senders) for batch in batches.values()]
        if self._unsaved:  # an urgent receipt left no batch behind: keep its digest within one batch interval
            deadlines.append(self._unsaved[0][1] - self._window + RECEIPT_BATCH_MS)
        return min(deadlines, default=None)

    def expire(self, now: int) -> list[InFlight]:
        """Frames whose bound passed without a receipt (their senders are to be told TIMEOUT).

        A frame last sent on a link that is still up less than :data:`~socp.settings.SENT_LATE_GRACE_MS` ago
        (resent as its server or its recipient came back, just before the bound) is given until that grace
        has passed since the send: its receipt may be on the way, and a TIMEOUT then would be false."""
        expired = []
        for entry in list(self._in_flight.values()):
            if entry.deadline > now:
                continue
            if (entry.sent_at is not None and now < entry.sent_at + SENT_LATE_GRACE_MS
                    and self._links.is_linked(entry.server_id)):
                entry.deadline = entry.sent_at + SENT_LATE_GRACE_MS
                continue
            expired.append(entry)
            del self._in_flight[entry.digest]
        self.timed_out += len(expired)
        return expired

    @property
    def in_flight(self) -> int:
        """Frames awaiting their receipt (parked ones included)."""
        return len(self._in_flight) + len(self._parked)

    # --- far side ---------------------------------------------------------------------------------

    def delivered_before(self, digest: str) -> bool:
        """True when the frame with this digest was delivered here already (within the replay window)."""
        return digest in self._delivered

    def acknowledge(self, link: Link, frame: Envelope, digest: str, now: int) -> None:
        """The forwarded ``frame`` reached its recipient's connection: remember it, queue its receipt to the
        origin (sent with the link's batch)."""
        self._delivered.pop(digest, None)
        self._delivered[digest] = now + self._window
        self._unsaved.append((digest, now + self._window))
        if len(self._delivered) > MAX_DELIVERED:
            del self._delivered[next(iter(self._delivered))]
        self._queue(self._to_origins, link, {"msg_ref": frame.msg_ref, "digest": digest}, _server_ack, now,
                    urgent=frame.payload.get("kind") in FILE_KINDS)

    def sweep(self, now: int) -> None:
        """``sweep`` subscriber: forget delivered digests past the replay window and holds that ended."""
        while self._delivered:
            digest, until = next(iter(self._delivered.items()))
            if until > now:
                break
            del self._delivered[digest]
        self._held = {user: held for user, held in self._held.items() if held[1] > now}

    # --- to the sender ------------------------------------------------------------------------------

    def receipt_to(self, link: Link, user_frame_ref: str, payload: Mapping[str, Any], now: int) -> None:
        """Queue the receipt of a user's own frame to that user (``link``: its connection), sent with the
        user's batch: ``{msg_ref}``, file frames add ``file_id`` and ``index``."""
        receipt: dict[str, Any] = {"msg_ref": user_frame_ref}
        for name in ("file_id", "index"):
            if name in payload:
                receipt[name] = payload[name]
        self._queue(self._to_senders, link, receipt, _user_ack, now, urgent="file_id" in payload)

    # --- coalescing ---------------------------------------------------------------------------------

    def _queue(self, batches: dict[LinkId, _Batch], link: Link, item: dict[str, Any],
               shape: Callable[[list[dict[str, Any]]], dict[str, Any]], now: int, *, urgent: bool) -> None:
        """Add a receipt to ``link``'s batch; a full batch, or one given an ``urgent`` receipt (a file
        frame's), goes out at once."""
        batch = batches.get(link.link_id)
        if batch is None or batch.to != link.peer:
            batch = batches[link.link_id] = _Batch(link.peer, now, now + RECEIPT_BATCH_MS, [])
        batch.items.append(item)
        if urgent or len(batch.items) >= RECEIPT_BATCH_MAX:
            del batches[link.link_id]
            self._send(link.link_id, batch, shape, now)

    def flush(self, now: int, *, backlog: bool = False) -> None:
        """Send every batch whose first receipt waited :data:`~socp.settings.RECEIPT_BATCH_MS` (timer work).
        ``backlog``: the core has input waiting; a due batch then keeps growing, up to
        :data:`~socp.settings.RECEIPT_BATCH_BUSY_MS` after its first receipt. The digests delivered since the
        last flush go to the shell as one :class:`~socp.actions.FramesDelivered`."""
        if self._unsaved:
            self._out.emit(FramesDelivered(tuple(self._unsaved)))
            self._unsaved = []
        for batches, shape in ((self._to_origins, _server_ack), (self._to_senders, _user_ack)):
            for link_id, batch in list(batches.items()):
                if batch.due > now:
                    continue
                if backlog and now < batch.first + RECEIPT_BATCH_BUSY_MS:
                    batch.due = min(now + RECEIPT_BATCH_MS, batch.first + RECEIPT_BATCH_BUSY_MS)
                    continue
                del batches[link_id]
                self._send(link_id, batch, shape, now)

    def _send(self, link_id: LinkId, batch: _Batch, shape: Callable[[list[dict[str, Any]]], dict[str, Any]],
              now: int) -> None:
        """One signed ACK for a batch, if its link is still there (else dropped: see the module docstring)."""
        link = self._links.get(link_id)
        if link is None or link.closing or link.peer != batch.to:
            self._out.log.debug("dropped %d receipts for %s: link %d gone", len(batch.items), batch.to[:8], link_id)
            return
        self.acks_sent += 1
        self._out.send(link, self._out.make(FrameType.ACK, batch.to, now, shape(batch.items)))
