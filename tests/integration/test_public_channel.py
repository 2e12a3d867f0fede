"""The public channel (/all) across a real federation: an introducer and three peers, scripted clients."""

from __future__ import annotations

import secrets
from collections import Counter

import pytest

from client.connection import ClientConnection
from socp.envelope import FrameType
from socp.user import PublicKeyReceived, PublicMessage, PublicMessageUnreadable, UserOffline
from testbed.local import LocalCluster
from tests import scaled
from tests.clients import UserFactory, converge
from tests.integration.conftest import FIRST_USER_KEY
from tests.integration.wire import RawUser
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_all_from_each_node_reaches_every_user_exactly_once(connect: UserFactory, cluster: LocalCluster) -> None:
    clients = [await connect(node, f"u{i}") for i, node in enumerate(cluster.peer_names * 2)]
    await converge(clients)
    run = secrets.token_hex(4)
    for client in clients:
        await client.send_public(f"all {run} from {client.user_id}")
    # Each sender's frames travel one path in order: a duplicate would arrive before the sender's marker.
    for client in clients:
        await client.send_public(f"marker {run} {client.user_id}")

    async def collect(client: ClientConnection) -> Counter[str]:
        seen: Counter[str] = Counter()
        markers = {f"marker {run} {other.user_id}" for other in clients if other is not client}
        while markers:
            event = await client.wait_for(lambda e: isinstance(e, PublicMessage | PublicMessageUnreadable),
                                          scaled(20), description="public messages and markers")
            assert isinstance(event, PublicMessage), event
            if event.text in markers:
                markers.discard(event.text)
            else:
                seen[event.text] += 1
        return seen

    for client in clients:
        seen = await collect(client)
        expected = {f"all {run} from {other.user_id}" for other in clients if other is not client}
        assert set(seen) == expected, f"{client.user_id[:8]} got {sorted(seen)}"
        assert all(count == 1 for count in seen.values()), seen


async def test_a_user_who_left_cannot_read_messages_sent_after(connect: UserFactory, cluster: LocalCluster,
                                                               key_pool: KeyPool) -> None:
    alice = await connect("peer1", "alice")
    bob = await connect("peer2", "bob")
    carol = await connect("peer3", "carol")
    # A bystander on carol's node records every frame that node hands out: what a stolen copy would hold.
    tap = await RawUser.open(cluster.url("peer3"), key_pool.key(FIRST_USER_KEY + 9))
    try:
        await tap.join("tap")
        await converge([alice, bob, carol], tap.user_id)
        await check_leaver_is_locked_out(alice, bob, carol, tap)
    finally:
        await tap.close()


async def check_leaver_is_locked_out(alice: ClientConnection, bob: ClientConnection, carol: ClientConnection,
                                     tap: RawUser) -> None:

    await alice.send_public("before carol leaves")
    for user in (bob, carol):
        message = await user.wait_for(lambda e: isinstance(e, PublicMessage), scaled(10))
        assert isinstance(message, PublicMessage) and message.text == "before carol leaves"
    old_key = alice.session.group_key_id

    await carol.close()
    await alice.wait_for(lambda e: isinstance(e, UserOffline) and e.record.user_id == carol.user_id, scaled(10),
                         description="carol's USER_REMOVE")
    await alice.send_public("after carol left")
    message = await bob.wait_for(lambda e: isinstance(e, PublicMessage), scaled(10))
    assert isinstance(message, PublicMessage) and message.text == "after carol left"
    assert message.key_id != old_key, "the key was not rotated after a member left"

    share = await tap.recv_type(FrameType.PUBLIC_CHANNEL_KEY_SHARE)
    while share.payload["key_id"] != message.key_id:
        share = await tap.recv_type(FrameType.PUBLIC_CHANNEL_KEY_SHARE)
    assert carol.user_id not in {s["member"] for s in share.payload["shares"]}
    late = await tap.recv_type(FrameType.MSG_PUBLIC_CHANNEL)
    while late.payload["key_id"] != message.key_id:
        late = await tap.recv_type(FrameType.MSG_PUBLIC_CHANNEL)
    # carol's own session, fed the frames her node would have delivered, cannot read the message.
    assert carol.session.receive_text(share.to_wire(), late.ts) == []
    [event] = carol.session.receive_text(late.to_wire(), late.ts)
    assert isinstance(event, PublicMessageUnreadable) and "never shared" in event.reason


async def test_a_newcomer_reads_messages_sent_after_joining(connect: UserFactory) -> None:
    alice = await connect("peer1", "alice")
    bob = await connect("peer2", "bob")
    await converge([alice, bob])
    await alice.send_public("before dave")
    await bob.wait_for(lambda e: isinstance(e, PublicMessage), scaled(10))
    dave = await connect("peer3", "dave")
    await converge([alice, bob, dave])
    await alice.send_public("welcome dave")
    key = await dave.wait_for(lambda e: isinstance(e, PublicKeyReceived), scaled(10), description="alice's key")
    assert isinstance(key, PublicKeyReceived) and key.sender_id == alice.user_id
    message = await dave.wait_for(lambda e: isinstance(e, PublicMessage | PublicMessageUnreadable), scaled(10))
    assert isinstance(message, PublicMessage)
    assert (message.sender_label, message.text) == ("alice", "welcome dave")
    reply = await bob.wait_for(lambda e: isinstance(e, PublicMessage), scaled(10))
    assert isinstance(reply, PublicMessage) and reply.text == "welcome dave"
