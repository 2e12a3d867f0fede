"""A real federation: an introducer and three peer processes, scripted clients on every node."""

from __future__ import annotations

import uuid

import pytest

from socp import envelope as env
from socp.envelope import FrameType
from socp.errors import UserNotFound
from socp.user import DirectMessage, ServerError, UserOffline
from testbed import checks
from testbed.backend import ClusterBackend
from tests import scaled
from tests.clients import UserFactory
from tests.integration.wire import now_ms

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_cross_node_direct_message(connect: UserFactory) -> None:
    alice = await connect("peer1", "alice")
    bob = await connect("peer2", "bob")
    assert (await checks.converged([alice, bob], {alice.user_id, bob.user_id}, timeout=scaled(10))).ok
    await alice.send_direct("bob", "hey there!")
    message = await bob.wait_for(lambda e: isinstance(e, DirectMessage), scaled(10))
    assert isinstance(message, DirectMessage)
    assert (message.sender_id, message.sender_label, message.text) == (alice.user_id, "alice", "hey there!")


async def test_long_unicode_message_spans_several_rsa_blocks(connect: UserFactory) -> None:
    alice = await connect("peer1", "alice")
    carol = await connect("peer3", "carol")
    result = await checks.converged([alice, carol], {alice.user_id, carol.user_id}, timeout=scaled(10))
    assert result.ok, result.detail
    text = "Grüße aus dem Netz — " * 200  # about 4.6 kB of UTF-8: eleven OAEP blocks
    await alice.send_direct(carol.user_id, text)
    message = await carol.wait_for(lambda e: isinstance(e, DirectMessage), scaled(10))
    assert isinstance(message, DirectMessage) and message.text == text


async def test_list_is_identical_on_every_node_and_delivery_is_exactly_once(connect: UserFactory,
                                                                             cluster: ClusterBackend) -> None:
    clients = [await connect(node, f"user{i}") for i, node in enumerate(cluster.peer_names * 2)]
    expected = {client.user_id for client in clients}
    result = await checks.converged(clients, expected, timeout=scaled(10))
    assert result.ok, result.detail
    delivered = await checks.delivery(clients, timeout=scaled(30))
    assert delivered.ok, delivered.detail
    assert delivered.data["delivered"] == len(clients) * (len(clients) - 1)


async def test_disconnect_removes_user_everywhere(connect: UserFactory) -> None:
    stays = [await connect("peer1", "stays1"), await connect("peer3", "stays3")]
    leaver = await connect("peer2", "leaver")
    result = await checks.converged(stays, {c.user_id for c in [*stays, leaver]}, timeout=scaled(10))
    assert result.ok, result.detail
    await leaver.close()
    for client in stays:
        await client.wait_for(lambda e: isinstance(e, UserOffline) and e.record.user_id == leaver.user_id,
                              scaled(10), description="the leaver's USER_REMOVE")
    result = await checks.converged(stays, {c.user_id for c in stays}, timeout=scaled(10))
    assert result.ok, result.detail


async def test_message_to_user_who_left_reports_user_not_found(connect: UserFactory) -> None:
    alice = await connect("peer1", "alice")
    dave = await connect("peer2", "dave")
    assert (await checks.converged([alice, dave], {alice.user_id, dave.user_id}, timeout=scaled(10))).ok
    await dave.close()
    await alice.wait_for(lambda e: isinstance(e, UserOffline) and e.record.user_id == dave.user_id, scaled(10))
    with pytest.raises(UserNotFound, match="not online"):
        await alice.send_direct(dave.user_id, "are you there?")


async def test_killed_node_users_leave_every_directory_and_return_after_restart(
        connect: UserFactory, cluster: ClusterBackend) -> None:
    survivors = [await connect("peer1", "s1"), await connect("peer2", "s2")]
    doomed = await connect("peer3", "doomed")
    everyone = {c.user_id for c in [*survivors, doomed]}
    assert (await checks.converged(survivors, everyone, timeout=scaled(10))).ok

    await cluster.kill("peer3")
    result = await checks.converged(survivors, {c.user_id for c in survivors}, timeout=scaled(15))
    assert result.ok, result.detail

    await cluster.start_node("peer3")
    await cluster.wait_healthy(scaled(30))
    back = await connect("peer3", "back")
    result = await checks.converged([*survivors, back], {c.user_id for c in [*survivors, back]},
                                    timeout=scaled(15))
    assert result.ok, result.detail
    delivered = await checks.delivery([*survivors, back], timeout=scaled(20))
    assert delivered.ok, delivered.detail


async def test_server_reports_errors_as_events(connect: UserFactory) -> None:
    alice = await connect("peer1", "alice")
    # A frame the server must refuse: a list request claiming another sender.
    forged = env.make(FrameType.LIST_REQUEST, str(uuid.uuid4()), "*", now_ms(), {}, None)
    await alice._send(forged.to_wire())
    error = await alice.wait_for(lambda e: isinstance(e, ServerError), scaled(5))
    assert isinstance(error, ServerError) and error.code == "BAD_FRAME"
