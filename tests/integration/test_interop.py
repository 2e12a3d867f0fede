"""Our node under ``--interop`` (real processes): the conformance kit scores it 100 %, and clients that use the
variants of issue 14 exchange DMs across servers with a standard client, in both directions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from client.conformance import Conformance
from socp import crypto
from socp import envelope as env
from socp.codec import canonical_json
from socp.envelope import Envelope, FrameType
from socp.presence import Attestation
from socp.settings import FAST_TIMINGS
from testbed.local import LocalCluster, LocalNode
from testbed.nodeplan import ClusterSpec
from testbed.waiting import Pending, poll
from tests.foreign_server import ForeignServer
from tests.integration.conftest import FIRST_USER_KEY, pool_prepare
from tests.integration.wire import RawUser, now_ms
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def interop_cluster(tmp_path_factory: pytest.TempPathFactory, key_pool: KeyPool
                          ) -> AsyncIterator[LocalCluster]:
    """An introducer and two peers, every node started with ``--interop``."""
    workdir = tmp_path_factory.mktemp("interop-cluster")
    cluster = LocalCluster(workdir, ClusterSpec(peers=2, timings=FAST_TIMINGS), prepare=pool_prepare(key_pool),
                           extra_args=["--interop"])
    async with cluster:
        yield cluster


async def test_conformance_kit_scores_an_interop_node_100_percent(interop_cluster: LocalCluster,
                                                                   key_pool: KeyPool) -> None:
    keys = [key_pool.key(FIRST_USER_KEY + i) for i in range(3)]
    kit = Conformance(interop_cluster.url("peer1"), keys, introducer=interop_cluster.url("introducer"),
                      heartbeat_wait=10.0, join_token=interop_cluster.join_token)
    report = await kit.run()
    assert report.score == 100.0, report.table()
    # The join probe cleaned up after itself: linked nowhere, and a server joining afterwards is not told of it.
    probe = kit.probe_id
    assert probe is not None
    for node in interop_cluster.nodes:
        async def unlinked(node: LocalNode = node) -> bool | Pending:
            status, body = await interop_cluster.status(node.name)
            servers = body.get("linked_servers") if status == 200 else None
            return True if isinstance(servers, list) and probe not in servers else Pending(f"linked: {servers}")

        await poll(unlinked, 10.0, f"{node.name} to drop the join probe", node.diagnose())
    intro = interop_cluster.introducer
    async with ForeignServer(key_pool.key(16), join_token=interop_cluster.join_token) as later:
        assert await later.join("127.0.0.1", intro.port) == intro.server_id
        listed = {str(e.get("server_id")) for e in later.welcomes[0].get("servers", [])}
        assert intro.server_id in listed and probe not in listed, listed


async def server_id(cluster: LocalCluster, node: str) -> str:
    status, body = await cluster.status(node)
    assert status == 200, body
    return str(body["server_id"])


async def variant_hello(user: RawUser, to: str) -> dict[str, Any]:
    """USER_HELLO with the key as ``pubkey_b64u`` only; the ACK payload."""
    ts = now_ms()
    payload = {"client": "other-impl", "pubkey_b64u": user.pubkey, "enc_pubkey": user.pubkey,
               "meta": {"display_name": "variant"},
               "attest": Attestation.make(user.key, user.user_id, to, ts).to_wire()}
    await user.send(env.make(FrameType.USER_HELLO, user.user_id, to, ts, payload, user.key))
    return dict((await user.recv_type(FrameType.ACK)).payload)


def dm(sender: RawUser, recipient: RawUser, text: str, form: str) -> Envelope:
    """A MSG_DIRECT with ``content_sig`` over the ``text`` (b64url) or ``json`` form."""
    ts = now_ms()
    ciphertext = crypto.rsa_encrypt(crypto.decode_public_key(recipient.pubkey), text.encode())
    covered = (ciphertext + sender.user_id + recipient.user_id + str(ts)).encode() if form == "text" else \
        canonical_json({"ciphertext": ciphertext, "from": sender.user_id, "to": recipient.user_id, "ts": ts})
    payload = {"ciphertext": ciphertext, "sender_pub": sender.pubkey, "content_sig": crypto.sign(sender.key, covered)}
    return env.make(FrameType.MSG_DIRECT, sender.user_id, recipient.user_id, ts, payload)


async def received_text(user: RawUser, server_pub: str) -> str:
    deliver = await user.recv_type(FrameType.USER_DELIVER, timeout=10.0)
    assert deliver.verify(crypto.decode_public_key(server_pub))
    return crypto.rsa_decrypt(user.key, deliver.payload["ciphertext"]).decode()


async def test_variant_client_exchanges_dms_across_servers(interop_cluster: LocalCluster, key_pool: KeyPool) -> None:
    other = await RawUser.open(interop_cluster.url("peer1"), key_pool.key(FIRST_USER_KEY + 3))
    ours = await RawUser.open(interop_cluster.url("peer2"), key_pool.key(FIRST_USER_KEY + 4))
    try:
        ack = await variant_hello(other, await server_id(interop_cluster, "peer1"))
        other_server_pub = ack["server_pub"]
        ours_server_pub = (await ours.join("ours"))["server_pub"]
        # the standard user's advert reaches the variant client, then CMD_LIST without a payload lists it
        for _ in range(20):  # adverts of the conformance run's users may come first
            if (await other.recv_type(FrameType.USER_ADVERTISE, timeout=10.0)).payload["user_id"] == ours.user_id:
                break
        await other.send(json.dumps({"type": "CMD_LIST", "from": other.user_id, "to": ack["server_id"],
                                     "ts": now_ms()}))
        listed = (await other.recv_type(FrameType.LIST_RESPONSE)).payload["users"]
        assert ours.user_id in {u["user_id"] for u in listed}
        await other.send(dm(other, ours, "json-form hello", "json"))
        assert await received_text(ours, ours_server_pub) == "json-form hello"
        await ours.send(ours.direct(other.user_id, other.pubkey, "raw-form reply"))
        assert await received_text(other, other_server_pub) == "raw-form reply"
        await other.send(dm(other, ours, "text-form hello", "text"))
        assert await received_text(ours, ours_server_pub) == "text-form hello"
        peer1_log = next(n for n in interop_cluster.nodes if n.name == "peer1").log_path.read_text(errors="replace")
        assert "INTEROP PROFILE is ON" in peer1_log
        for variant in ("USER_HELLO.pubkey_b64u", "CMD_LIST", "LIST_REQUEST without payload"):
            assert f"accepted variant '{variant}'" in peer1_log, variant
    finally:
        await other.close()
        await ours.close()
