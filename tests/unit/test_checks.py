"""The testbed's checks must be able to fail: a lossy or duplicating network is caught."""

from __future__ import annotations

import asyncio

import pytest

from socp.user import ClientEvent, DirectMessage, DuplicateDelivery, FrameRejected
from testbed import checks


class FakeClient:
    """Just what checks.delivery uses of a ClientConnection, over an in-memory 'network'."""

    def __init__(self, user_id: str, network: FakeNetwork) -> None:
        self.user_id = user_id
        self.network = network
        self.inbox: asyncio.Queue[ClientEvent] = asyncio.Queue()

    async def send_direct(self, recipient: str, text: str) -> str:
        self.network.carry(self.user_id, recipient, text)
        return f"MSG_DIRECT:{self.user_id}:{recipient}:0"

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()


class FakeNetwork:
    def __init__(self, *, duplicate: bool = False, lose: str | None = None) -> None:
        self.clients: dict[str, FakeClient] = {}
        self.duplicate = duplicate
        self.lose = lose

    def client(self, user_id: str) -> FakeClient:
        self.clients[user_id] = FakeClient(user_id, self)
        return self.clients[user_id]

    def carry(self, sender: str, recipient: str, text: str) -> None:
        if self.lose is not None and self.lose in text and text.startswith("matrix"):
            return
        inbox = self.clients[recipient].inbox
        inbox.put_nowait(DirectMessage(sender, sender, text, 0, f"MSG_DIRECT:{sender}:{recipient}:0"))
        if self.duplicate and text.startswith("matrix"):
            # What the client library reports when the network delivers the same frame twice.
            inbox.put_nowait(DuplicateDelivery(sender, sender, f"MSG_DIRECT:{sender}:{recipient}:0"))


def clients(network: FakeNetwork) -> list[FakeClient]:
    return [network.client(name) for name in ("a", "b", "c")]


async def test_a_faithful_network_passes() -> None:
    result = await checks.delivery(clients(FakeNetwork()), timeout=2)  # type: ignore[arg-type]
    assert result.ok and result.data["delivered"] == 6 and result.data["duplicates"] == 0


async def test_duplicates_fail_the_check_even_when_the_client_hides_them() -> None:
    result = await checks.delivery(clients(FakeNetwork(duplicate=True)), timeout=2)  # type: ignore[arg-type]
    assert not result.ok and result.data["duplicates"] == 6
    assert "6 duplicates" in result.detail


async def test_a_repeat_of_an_earlier_steps_message_is_not_this_counts_duplicate() -> None:
    network = FakeNetwork()
    users = clients(network)
    # A message of an earlier step, resent by receipts to a restarted node and dropped by the client: the
    # history checker judges it against the faults; this count only owns the messages it sent.
    users[1].inbox.put_nowait(DuplicateDelivery("a", "a", "MSG_DIRECT:a:b:earlier"))
    result = await checks.delivery(users, timeout=2)  # type: ignore[arg-type]
    assert result.ok and result.data["duplicates"] == 0


async def test_a_lost_message_fails_the_check() -> None:
    result = await checks.delivery(clients(FakeNetwork(lose="a -> b")), timeout=0.5)  # type: ignore[arg-type]
    assert not result.ok and result.data["delivered"] == 5
    assert "5/6 messages delivered" in result.detail


@pytest.mark.parametrize("event,expected", [
    (DuplicateDelivery("a", "a", "MSG_DIRECT:a:b:1"), True),
    (FrameRejected("duplicate delivery of MSG_DIRECT:a:b:1"), False),
    (FrameRejected("bad signature"), False),
    (DirectMessage("a", "a", "duplicate delivery", 0, "x"), False),
])
def test_duplicate_delivery_is_recognised(event: ClientEvent, expected: bool) -> None:
    assert checks.is_duplicate_delivery(event) is expected
