"""Delivery receipts with real processes (issue 10): messages in flight to a paused, then killed node are
delivered exactly once or reported to their sender — never lost silently."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from client.connection import ClientConnection
from socp.user import Delivered, DeliveryFailed, DirectMessage
from testbed.backend import ClusterBackend
from tests import scaled
from tests.clients import UserFactory, converge

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def outcomes(sender: ClientConnection, refs: list[str]) -> dict[str, Delivered | DeliveryFailed]:
    """The outcome of every message (each bounded by the client's own receipt bound)."""
    results = await asyncio.gather(*(sender.delivery(ref, scaled(60)) for ref in refs))
    return dict(zip(refs, results, strict=True))


async def texts_received(receiver: ClientConnection, expected: int, within: float) -> list[str]:
    """Texts of the DMs ``receiver`` gets until ``expected`` arrived or ``within`` s passed (then a little
    longer for a duplicate), in order."""
    got: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < expected and (left := deadline - loop.time()) > 0:
        try:
            event = await receiver.wait_for(lambda e: isinstance(e, DirectMessage), left)
        except TimeoutError:
            break
        assert isinstance(event, DirectMessage)
        got.append(event.text)
    return got


async def test_a_short_pause_delays_but_delivers_everything_with_receipts(connect: UserFactory,
                                                                          cluster: ClusterBackend) -> None:
    alice = await connect("peer1", "alice")
    bob = await connect("peer2", "bob")
    await converge([alice, bob])
    assert alice.receipts_enabled
    await cluster.pause("peer2")
    try:
        refs = [await alice.send_direct("bob", f"paused {i}") for i in range(10)]
    finally:
        await cluster.unpause("peer2")
    results = await outcomes(alice, refs)
    assert all(isinstance(r, Delivered) for r in results.values()), results
    assert sorted(await texts_received(bob, 10, scaled(10))) == sorted(f"paused {i}" for i in range(10))


async def test_messages_in_flight_to_a_killed_node_are_delivered_once_or_reported(
        connect: UserFactory, cluster: ClusterBackend) -> None:
    alice = await connect("peer1", "alice2")
    bob = await connect("peer2", "bob2")
    await converge([alice, bob])
    await cluster.pause("peer2")
    refs = [await alice.send_direct("bob2", f"in flight {i}") for i in range(10)]
    await cluster.kill("peer2")
    await cluster.start_node("peer2")
    await cluster.wait_healthy(scaled(60))
    assert bob.identity is not None
    back = await ClientConnection.connect(cluster.url("peer2"), bob.identity, timeout=scaled(10))
    try:
        results = await outcomes(alice, refs)
        delivered = sorted(f"in flight {refs.index(ref)}" for ref, r in results.items() if isinstance(r, Delivered))
        failed = [r for r in results.values() if isinstance(r, DeliveryFailed)]
        # Every message has an outcome (none lost silently); what was reported delivered arrived exactly once.
        assert len(delivered) + len(failed) == 10
        got = await texts_received(back, len(delivered), scaled(15))
        assert sorted(got) == delivered, (got, [dataclasses.asdict(f) for f in failed])
        print(f"crash in flight: 10 sent, {len(delivered)} delivered, {len(failed)} reported "
              f"({sorted({f.code for f in failed})}), 0 lost")
    finally:
        await back.close()
