"""The checks a testbed run is judged by: presence convergence and exactly-once delivery.

Each check polls under a deadline (:func:`testbed.waiting.poll`), measures how long it took, and returns a
:class:`CheckResult` that says what was expected and what was seen when it fails. Exactly-once delivery is
judged by one algorithm, :func:`count_until_markers`, shared by the DM matrix, traffic and broadcasts.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.connection import ClientConnection
from socp.user import ClientEvent, DirectMessage, DuplicateDelivery
from testbed.waiting import Diagnose, Pending, WaitFailed, WaitTimeout, poll


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of one check: ``ok``, how long it took, and a human ``detail`` (expected vs seen)."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max of ``samples`` (seconds), for reports."""
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": statistics.median(ordered), "p90": pick(0.90), "p99": pick(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


def is_duplicate_delivery(event: ClientEvent) -> bool:
    """True for a second copy of a message, which the client dropped (:class:`DuplicateDelivery`): a network that
    delivers twice must fail checks even though the client library never shows the copy as a message."""
    return isinstance(event, DuplicateDelivery)


async def converged(clients: Sequence[ClientConnection], expected: set[str], *, timeout: float,
                    interval: float = 0.1, diagnose: Diagnose | None = None) -> CheckResult:
    """Every client's LIST_RESPONSE shows exactly the user ids in ``expected``, in the same order.

    ``diagnose`` (e.g. ``backend.diagnose()``) ends the check at once when a node that should run has exited.
    """
    start = time.monotonic()

    async def agreed() -> bool | Pending:
        listings = await asyncio.gather(*(client.list_users(timeout=max(1.0, timeout)) for client in clients))
        last = {client.user_id: [record.user_id for record in listing]
                for client, listing in zip(clients, listings, strict=True)}
        orders = {tuple(ids) for ids in last.values()}
        if all(set(ids) == expected for ids in last.values()) and len(orders) <= 1:
            return True
        problems = []
        for user_id, ids in last.items():
            missing, extra = expected - set(ids), set(ids) - expected
            if missing or extra:
                problems.append(f"client {user_id[:8]}: missing {sorted(m[:8] for m in missing)}, "
                                f"unexpected {sorted(x[:8] for x in extra)}")
        return Pending("; ".join(problems or [f"clients disagree on the order: {sorted(orders)}"]))

    try:
        await poll(agreed, timeout, f"{len(clients)} clients to list the same {len(expected)} users", diagnose,
                   interval=interval)
    except WaitTimeout as exc:
        return CheckResult("converged", False, time.monotonic() - start,
                           f"after {timeout:g}s: expected {len(expected)} users everywhere; {exc.last}")
    except WaitFailed as exc:
        return CheckResult("converged", False, time.monotonic() - start, str(exc))
    return CheckResult("converged", True, time.monotonic() - start,
                       f"{len(clients)} clients list the same {len(expected)} users")


@dataclass(slots=True)
class Tally:
    """What one receiver got until its markers arrived (see :func:`count_until_markers`)."""

    counts: Counter[str] = field(default_factory=Counter)
    """Copies received of each counted message (by the key ``key_of`` gave it)."""
    refused: int = 0
    """Copies the client dropped as duplicates (:func:`is_duplicate_delivery`): each is one copy too many."""
    first_seen: dict[str, float] = field(default_factory=dict)
    """``time.monotonic()`` of each counted message's first copy."""
    refs: set[str] = field(default_factory=set)
    """``msg_ref`` of every message (and marker) this count saw: only copies of those are this count's
    duplicates (a message of an earlier step resent to a restarted node is the checker's to judge)."""

    @property
    def duplicates(self) -> int:
        """Copies beyond the first, dropped ones included."""
        return self.refused + sum(count - 1 for count in self.counts.values() if count > 1)


async def count_until_markers(next_event: Callable[[], Awaitable[ClientEvent]], markers: Iterable[str],
                              marker_of: Callable[[ClientEvent], str | None],
                              key_of: Callable[[ClientEvent], str | None], tally: Tally | None = None) -> Tally:
    """The one exactly-once algorithm: count messages until every marker has arrived.

    Each sender sends its messages, then a marker on the same path; ordering per path means every copy of
    a message (a duplicate too) arrives before the marker, so once a receiver has every marker it has all it
    will ever get, and nothing needs to be waited out. ``marker_of(event)`` is the marker an event carries (or
    None), ``key_of(event)`` the key of a message being counted (or None for anything else). Counts go into
    ``tally`` as they arrive (pass one to keep them when a timeout cancels the count). Raises TimeoutError
    when ``next_event`` does.
    """
    pending = set(markers)
    tally = Tally() if tally is None else tally
    while pending:
        event = await next_event()
        ref = getattr(event, "msg_ref", None)
        if is_duplicate_delivery(event):
            if ref in tally.refs:
                tally.refused += 1  # a second copy the client dropped still means the network duplicated it
            continue
        marker = marker_of(event)
        if marker is not None and marker in pending:
            pending.discard(marker)
            if isinstance(ref, str):
                tally.refs.add(ref)
            continue
        key = key_of(event)
        if key is not None:
            tally.counts[key] += 1
            tally.first_seen.setdefault(key, time.monotonic())
            if isinstance(ref, str):
                tally.refs.add(ref)
    return tally


Receive = Callable[[ClientConnection, float], Awaitable[ClientEvent]]


async def next_event(client: ClientConnection, timeout: float) -> ClientEvent:
    """The default :data:`Receive`: the client's own event queue."""
    return await client.next_event(timeout=timeout)


async def delivery(clients: Sequence[ClientConnection], *, timeout: float, receive: Receive = next_event
                   ) -> CheckResult:
    """Every client sends a DM to every other; each must arrive exactly once, decrypted and verified.

    Duplicates are detected without waiting: after its matrix messages each sender sends a marker on
    the same path, and per-link ordering means a duplicate would arrive before the marker. ``receive``
    says where a client's events are read from (the runner shares them between several consumers).
    """
    run = secrets.token_hex(4)
    sent_at: dict[str, float] = {}
    expected: dict[str, set[str]] = {client.user_id: set() for client in clients}
    start = time.monotonic()
    for sender in clients:
        for recipient in clients:
            if recipient is sender:
                continue
            body = f"matrix {run} {sender.user_id} -> {recipient.user_id}"
            sent_at[body] = time.monotonic()
            await sender.send_direct(recipient.user_id, body)
            expected[recipient.user_id].add(body)
    for sender in clients:
        for recipient in clients:
            if recipient is not sender:
                await sender.send_direct(recipient.user_id, f"marker {run} {sender.user_id}")

    tallies = {client.user_id: Tally() for client in clients}

    def direct_text(event: ClientEvent) -> str | None:
        return event.text if isinstance(event, DirectMessage) else None

    def matrix_body(event: ClientEvent) -> str | None:
        text = direct_text(event)
        return text if text is not None and text.startswith(f"matrix {run} ") else None

    async def collect(client: ClientConnection) -> None:
        await count_until_markers(
            lambda: receive(client, max(0.01, timeout - (time.monotonic() - start))),
            {f"marker {run} {other.user_id}" for other in clients if other is not client}, direct_text, matrix_body,
            tallies[client.user_id])

    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(collect(client) for client in clients))
    except TimeoutError:
        timed_out = True
    missing = sum(len(expected[uid] - set(tally.counts)) for uid, tally in tallies.items())
    duplicates = sum(tally.duplicates for tally in tallies.values())
    latencies = [seen - sent_at.get(body, start)
                 for tally in tallies.values() for body, seen in tally.first_seen.items()]
    total = sum(len(bodies) for bodies in expected.values())
    ok = not timed_out and missing == 0 and duplicates == 0
    detail = (f"{total - missing}/{total} messages delivered, {duplicates} duplicates"
              + (f"; timed out after {timeout:g}s" if timed_out else ""))
    return CheckResult("delivery", ok, time.monotonic() - start, detail,
                       {"messages": total, "delivered": total - missing, "duplicates": duplicates,
                        "latency_s": percentiles(latencies)})
