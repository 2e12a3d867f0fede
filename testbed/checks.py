"""The checks a testbed run is judged by: presence convergence and exactly-once delivery.

Each check polls under a deadline, measures how long it took, and returns a :class:`CheckResult`
that says what was expected and what was seen when it fails.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.connection import ClientConnection
from socp.user import ClientEvent, DirectMessage, DuplicateDelivery


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
                    interval: float = 0.1) -> CheckResult:
    """Every client's LIST_RESPONSE shows exactly the user ids in ``expected``, in the same order."""
    start = time.monotonic()
    last: dict[str, list[str]] = {}
    while True:
        listings = await asyncio.gather(*(client.list_users(timeout=max(1.0, timeout)) for client in clients))
        last = {client.user_id: [record.user_id for record in listing] for client, listing in zip(clients, listings,
                                                                                                   strict=True)}
        orders = {tuple(ids) for ids in last.values()}
        if all(set(ids) == expected for ids in last.values()) and len(orders) <= 1:
            return CheckResult("converged", True, time.monotonic() - start,
                               f"{len(clients)} clients list the same {len(expected)} users")
        if time.monotonic() - start >= timeout:
            problems = []
            for user_id, ids in last.items():
                missing, extra = expected - set(ids), set(ids) - expected
                if missing or extra:
                    problems.append(f"client {user_id[:8]}: missing {sorted(m[:8] for m in missing)}, "
                                    f"unexpected {sorted(x[:8] for x in extra)}")
            if not problems:
                problems.append(f"clients disagree on the order: {sorted(orders)}")
            return CheckResult("converged", False, time.monotonic() - start,
                               f"after {timeout:g}s: expected {len(expected)} users everywhere; " + "; ".join(problems))
        await asyncio.sleep(interval)


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

    received: dict[str, Counter[str]] = {client.user_id: Counter() for client in clients}
    latencies: list[float] = []

    refused_duplicates = [0]

    async def collect(client: ClientConnection) -> None:
        markers = {f"marker {run} {other.user_id}" for other in clients if other is not client}
        while markers:
            event = await receive(client, max(0.01, timeout - (time.monotonic() - start)))
            if is_duplicate_delivery(event):
                refused_duplicates[0] += 1
                continue
            if not isinstance(event, DirectMessage):
                continue
            if event.text in markers:
                markers.discard(event.text)
            elif event.text.startswith(f"matrix {run} "):
                if not received[client.user_id][event.text]:
                    latencies.append(time.monotonic() - sent_at.get(event.text, start))
                received[client.user_id][event.text] += 1

    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(collect(client) for client in clients))
    except TimeoutError:
        timed_out = True
    missing = sum(len(expected[uid] - set(got)) for uid, got in received.items())
    duplicates = refused_duplicates[0] + sum(count - 1 for got in received.values() for count in got.values()
                                             if count > 1)
    total = sum(len(bodies) for bodies in expected.values())
    ok = not timed_out and missing == 0 and duplicates == 0
    detail = (f"{total - missing}/{total} messages delivered, {duplicates} duplicates"
              + (f"; timed out after {timeout:g}s" if timed_out else ""))
    return CheckResult("delivery", ok, time.monotonic() - start, detail,
                       {"messages": total, "delivered": total - missing, "duplicates": duplicates,
                        "latency_s": percentiles(latencies)})
