"""The outcome of each message a client sends (the ``delivery_receipts`` extension, WIRE §7).

When the server announced the extension in its ACK of USER_HELLO, every direct message (and dm file frame)
the session sends is tracked by its ``msg_ref`` until one of:

- ``ACK {msg_ref}``: the recipient's server handed it to the recipient's connection → :class:`Delivered`
  (a coalesced ``ACK {msg_ref, receipts: [{msg_ref, ...}, ...]}`` settles each entry);
- ``ERROR {code, msg_ref}`` (``USER_NOT_FOUND``, ``TIMEOUT`` after the servers' bound, …) → :class:`DeliveryFailed`;
- no answer within the client's own bound (the servers' bound plus :data:`CLIENT_RECEIPT_GRACE_MS`) →
  :class:`DeliveryFailed` ``TIMEOUT``, reported by :meth:`Receipts.expire`;
- the connection ended → :meth:`Receipts.abandon` reports each as ``CONNECTION_LOST``.

So no tracked message is ever left unresolved. Without the extension nothing is tracked (the plain standard
says nothing about success). Pure: time is a parameter. Cost: a dictionary entry per message in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from socp.features import Feature, announced
from socp.settings import CLIENT_RECEIPT_GRACE_MS, DEFAULT_TIMINGS
from socp.user.events import Acked, ClientEvent, Delivered, DeliveryFailed, ServerError

CONNECTION_LOST: Final = "CONNECTION_LOST"
""":attr:`DeliveryFailed.code` of a message whose receipt the ended connection can no longer bring."""
CLIENT_TIMEOUT: Final = "TIMEOUT"
""":attr:`DeliveryFailed.code` of a message whose receipt did not come within the client's bound."""


@dataclass(frozen=True, slots=True)
class _Pending:
    deadline: int
    file_id: str | None
    index: int | None


class Receipts:
    """The messages sent and awaiting their outcome, keyed by ``msg_ref`` (in deadline order)."""

    def __init__(self) -> None:
        self.enabled = False
        """True once the server announced ``delivery_receipts`` in its welcome."""
        self.bound_ms = DEFAULT_TIMINGS.delivery_bound_ms + CLIENT_RECEIPT_GRACE_MS
        """How long a message waits for its outcome before the client reports it as failed itself."""
        self._pending: dict[str, _Pending] = {}

    def on_welcome(self, payload: Mapping[str, Any]) -> None:
        """The ACK of USER_HELLO: does the server give receipts, and within which bound."""
        self.enabled = Feature.DELIVERY_RECEIPTS in announced(payload)
        bound = payload.get("delivery_bound_ms")
        if isinstance(bound, int) and not isinstance(bound, bool) and 0 < bound <= 3_600_000:
            self.bound_ms = bound + CLIENT_RECEIPT_GRACE_MS

    @property
    def pending(self) -> list[str]:
        """``msg_ref`` of every message still awaiting its outcome, oldest first."""
        return list(self._pending)

    def track(self, msg_ref: str, now: int, *, file_id: str | None = None, index: int | None = None) -> bool:
        """Await the outcome of the frame ``msg_ref`` just sent; False (nothing tracked) without receipts."""
        if not self.enabled:
            return False
        self._pending.pop(msg_ref, None)  # re-tracked: its deadline starts again, at the end of the order
        self._pending[msg_ref] = _Pending(now + self.bound_ms, file_id, index)
        return True

    def on_ack(self, payload: Mapping[str, Any]) -> list[ClientEvent]:
        """An ACK from the server: :class:`Delivered` for each tracked message it settles (one, or every entry of
        a coalesced ``receipts`` list), a plain :class:`Acked` for one that is not tracked."""
        entries = payload.get("receipts")
        if not isinstance(entries, list):
            entries = [payload]  # the single form
        refs = [entry["msg_ref"] for entry in entries
                if isinstance(entry, Mapping) and isinstance(entry.get("msg_ref"), str)]
        events: list[ClientEvent] = []
        for msg_ref in refs or [payload["msg_ref"]]:
            pending = self._pending.pop(msg_ref, None)
            events.append(Acked(msg_ref) if pending is None else Delivered(msg_ref, pending.file_id, pending.index))
        return events

    def on_error(self, error: ServerError) -> ClientEvent:
        """An ERROR from the server: :class:`DeliveryFailed` for a tracked message, else the error itself."""
        pending = self._pending.pop(error.msg_ref, None) if error.msg_ref is not None else None
        if pending is None or error.msg_ref is None:
            return error
        return DeliveryFailed(error.msg_ref, error.code, error.detail, pending.file_id, pending.index)

    def next_deadline(self) -> int | None:
        """When :meth:`expire` has work next, or None."""
        first = next(iter(self._pending.values()), None)
        return first.deadline if first is not None else None

    def expire(self, now: int) -> list[ClientEvent]:
        """Report every message whose bound passed without an outcome (``TIMEOUT``)."""
        expired: list[ClientEvent] = []
        while self._pending:
            msg_ref, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            del self._pending[msg_ref]
            expired.append(DeliveryFailed(msg_ref, CLIENT_TIMEOUT, "no delivery receipt within "
                                          f"{self.bound_ms / 1000:g} s", pending.file_id, pending.index))
        return expired

    def abandon(self, reason: str) -> list[ClientEvent]:
        """The connection ended: every pending message becomes ``CONNECTION_LOST`` (delivery unknown)."""
        failed: list[ClientEvent] = [DeliveryFailed(msg_ref, CONNECTION_LOST, reason, pending.file_id, pending.index)
                                     for msg_ref, pending in self._pending.items()]
        self._pending.clear()
        return failed
