"""Every kind of bad input gets the reaction the wire spec names, and the node keeps serving everyone."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from socp import envelope as env
from socp.envelope import FrameType
from testbed.backend import ClusterBackend
from tests.integration.conftest import FIRST_USER_KEY
from tests.integration.wire import RawUser, now_ms
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE, BOB, MALLORY = FIRST_USER_KEY, FIRST_USER_KEY + 1, FIRST_USER_KEY + 2


async def server_id(cluster: ClusterBackend, node: str) -> str:
    """``node``'s server id: a USER_HELLO must be addressed to it (PROTOCOL.md §3.6)."""
    status, body = await cluster.status(node)
    assert status == 200 and isinstance(body.get("server_id"), str), body
    return str(body["server_id"])


@pytest_asyncio.fixture(loop_scope="module")
async def alice(cluster: ClusterBackend, key_pool: KeyPool) -> AsyncIterator[RawUser]:
    """A fresh, joined user on peer1."""
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    await user.join("alice")
    yield user
    await user.close()


@pytest_asyncio.fixture(loop_scope="module")
async def bob(cluster: ClusterBackend, key_pool: KeyPool) -> AsyncIterator[RawUser]:
    """A fresh, joined user on peer2."""
    user = await RawUser.open(cluster.url("peer2"), key_pool.key(BOB))
    await user.join("bob")
    yield user
    await user.close()


async def test_malformed_json_gets_bad_frame_and_session_survives(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    await user.send("{this is not json")
    assert (await user.error())["code"] == "BAD_FRAME"
    await user.send("[1, 2, 3]")
    assert (await user.error())["code"] == "BAD_FRAME"
    ack = await user.join("alice")
    assert ack["msg_ref"] == "USER_HELLO"
    await user.close()


@pytest.mark.parametrize("mutation", [
    pytest.param(lambda f: f.pop("ts"), id="missing-ts"),
    pytest.param(lambda f: f.update(ts=str(f["ts"])), id="ts-as-string"),
    pytest.param(lambda f: f.update(ts=True), id="ts-as-bool"),
    pytest.param(lambda f: f.update(payload="x"), id="payload-not-object"),
    pytest.param(lambda f: f["payload"].pop("pubkey"), id="hello-without-pubkey"),
    pytest.param(lambda f: f["payload"].update(pubkey=12), id="pubkey-not-string"),
    pytest.param(lambda f: f.update(ts=1.5), id="float"),
])
async def test_missing_or_mistyped_fields_get_bad_frame(cluster: ClusterBackend, key_pool: KeyPool,
                                                        mutation: object) -> None:
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    frame = json.loads(user.hello().to_wire())
    mutation(frame)  # type: ignore[operator]
    await user.send(json.dumps(frame))
    error = await user.error()
    assert error["code"] == "BAD_FRAME", error
    await user.close()


async def test_unknown_type_gets_unknown_type_with_msg_ref(cluster: ClusterBackend, alice: RawUser) -> None:
    ts = now_ms()
    await alice.send(json.dumps({"type": "MSG_TELEPATHY", "from": alice.user_id, "to": "*", "ts": ts,
                                 "payload": {}, "sig": ""}))
    error = await alice.error()
    assert error["code"] == "UNKNOWN_TYPE"
    assert error["msg_ref"] == f"MSG_TELEPATHY:{alice.user_id}:*:{ts}"


async def test_oversized_frame_gets_too_large_and_is_closed(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    await user.send("x" * (2 * 1024 * 1024 + 1))
    assert (await user.error())["code"] == "TOO_LARGE"
    assert await user.closed()


async def test_unsigned_hello_is_refused(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    await user.send(user.hello(signed=False, to=await server_id(cluster, "peer1")))
    assert (await user.error())["code"] == "INVALID_SIG"
    assert await user.closed()


async def test_hello_signed_by_another_key_is_refused(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    forged = env.make(FrameType.USER_HELLO, user.user_id, await server_id(cluster, "peer1"), now_ms(),
                      dict(user.hello().payload), key_pool.key(MALLORY))
    await user.send(forged)
    assert (await user.error())["code"] == "INVALID_SIG"
    assert await user.closed()


@pytest.mark.parametrize(("bits", "exponent"), [(1024, 65537), (2048, 65537), (4096, 3)])
async def test_weak_user_keys_are_refused(cluster: ClusterBackend, key_pool: KeyPool, bits: int, exponent: int) -> None:
    weak = key_pool.weak_key(bits, exponent)
    user = await RawUser.open(cluster.url("peer1"), weak)
    await user.send(user.hello(to=await server_id(cluster, "peer1")))
    error = await user.error()
    assert error["code"] == "BAD_KEY", error
    assert await user.closed()


async def test_introducer_refuses_users(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    user = await RawUser.open(cluster.url(cluster.node_names[0]), key_pool.key(ALICE))
    await user.send(user.hello())
    error = await user.error()
    assert error["code"] == "BAD_FRAME" and "introducer" in error["detail"]
    assert await user.closed()


async def test_duplicate_local_user_gets_name_in_use(cluster: ClusterBackend, alice: RawUser,
                                                     key_pool: KeyPool) -> None:
    twin = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE), alice.user_id)
    await twin.send(twin.hello("alice", to=await server_id(cluster, "peer1")))
    assert (await twin.error())["code"] == "NAME_IN_USE"
    assert await twin.closed()


async def test_known_user_id_with_another_key_gets_bad_key(cluster: ClusterBackend, alice: RawUser,
                                                           key_pool: KeyPool) -> None:
    # Registered on peer1 by the fixture, and known network-wide: refused on peer1 and on peer3.
    for node in ("peer1", "peer3"):
        impostor = await RawUser.open(cluster.url(node), key_pool.key(MALLORY), alice.user_id)
        await impostor.send(impostor.hello("alice", to=await server_id(cluster, node)))
        assert (await impostor.error())["code"] == "BAD_KEY", node
        assert await impostor.closed()


async def test_frame_from_another_user_id_is_refused(alice: RawUser, bob: RawUser) -> None:
    forged = env.make(FrameType.LIST_REQUEST, bob.user_id, alice.user_id, now_ms(), {}, alice.key)
    await alice.send(forged)
    assert (await alice.error())["code"] == "BAD_FRAME"


async def test_stale_frame_gets_stale(alice: RawUser, bob: RawUser) -> None:
    stale = alice.direct(bob.user_id, bob.pubkey, "from the past", ts=now_ms() - 11 * 60 * 1000)
    await alice.send(stale)
    error = await alice.error()
    assert error["code"] == "STALE" and error["msg_ref"].startswith("MSG_DIRECT:")


async def test_unknown_recipient_gets_user_not_found(alice: RawUser, bob: RawUser) -> None:
    nobody = str(uuid.uuid4())
    frame = alice.direct(nobody, bob.pubkey, "anyone there?")
    await alice.send(frame)
    error = await alice.error()
    assert error["code"] == "USER_NOT_FOUND"
    assert error["msg_ref"] == frame.msg_ref


async def test_bad_content_sig_is_refused_and_not_forwarded(alice: RawUser, bob: RawUser) -> None:
    good = alice.direct(bob.user_id, bob.pubkey, "tampered")
    payload = dict(good.payload)
    payload["content_sig"] = alice.direct(bob.user_id, bob.pubkey, "other").payload["content_sig"]
    await alice.send(env.make(FrameType.MSG_DIRECT, alice.user_id, bob.user_id, good.ts, payload, alice.key))
    assert (await alice.error())["code"] == "INVALID_SIG"
    # The next good message is the first thing bob gets delivered: the tampered one never left peer1.
    follow_up = alice.direct(bob.user_id, bob.pubkey, "genuine")
    await alice.send(follow_up)
    delivered = await bob.recv_type(FrameType.USER_DELIVER)
    assert delivered.payload["content_sig"] == follow_up.payload["content_sig"]


async def test_replayed_message_is_delivered_once(alice: RawUser, bob: RawUser) -> None:
    frame = alice.direct(bob.user_id, bob.pubkey, "only once")
    for _ in range(3):
        await alice.send(frame)
    marker = alice.direct(bob.user_id, bob.pubkey, "marker")
    await alice.send(marker)
    first = await bob.recv_type(FrameType.USER_DELIVER)
    second = await bob.recv_type(FrameType.USER_DELIVER)
    assert first.payload["content_sig"] == frame.payload["content_sig"]
    assert second.payload["content_sig"] == marker.payload["content_sig"]


async def test_node_still_serves_after_all_bad_input(cluster: ClusterBackend, alice: RawUser, bob: RawUser) -> None:
    frame = alice.direct(bob.user_id, bob.pubkey, "still here")
    await alice.send(frame)
    delivered = await bob.recv_type(FrameType.USER_DELIVER)
    assert delivered.ts == frame.ts and delivered.payload["sender"] == alice.user_id
    for node in cluster.node_names:
        status, body = await cluster.health(node)
        assert status == 200, f"{node} is not healthy after the abuse ({body}); see {cluster.workdir}"


async def test_lone_surrogate_in_payload_gets_bad_frame(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    user = await RawUser.open(cluster.url("peer1"), key_pool.key(ALICE))
    frame = user.hello().to_wire().replace('"display_name":"raw"', '"display_name":"\\udcff"')
    await user.send(frame)
    assert (await user.error())["code"] == "BAD_FRAME"
    assert (await user.join("alice"))["msg_ref"] == "USER_HELLO"
    await user.close()
