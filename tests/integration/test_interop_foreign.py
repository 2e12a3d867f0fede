"""Issue 14 end to end against a foreign server (tests/foreign_server.py) over real WebSockets: our client on a
server that sends no ACK, and our node (real processes) joining, and joined by, a server of each handshake
variant, with DMs across the mixed link both ways; without ``--interop`` the variants are refused clearly."""

from __future__ import annotations

import contextlib
import functools
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from client.connection import ClientConnection
from client.errors import ConnectionFailed
from client.keystore import Identity
from socp.settings import FAST_TIMINGS
from socp.user import ClientEvent, DirectMessage
from testbed.backend import probe_status
from testbed.local import LocalCluster, LocalNode
from testbed.nodeplan import ClusterSpec, NodePlan, write_bootstrap
from testbed.waiting import Pending, poll
from tests.foreign_server import HANDSHAKES, ClientWelcome, ForeignServer, Handshake, SigForm
from tests.integration.conftest import pool_prepare
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

FOREIGN_KEY = 16
"""Pool keys: the foreign server 16, its users and ours 17.. (nodes use 0..5, other tests' users 10..15)."""


def identity(key_pool: KeyPool, index: int, name: str) -> Identity:
    return Identity(str(uuid.uuid4()), name, key_pool.key(index))


# --- item 1: our client on a server that sends no ACK at all ---------------------------------------------------

async def dm_both_ways(a: ClientConnection, b: ClientConnection, texts: tuple[str, str] = ("hello b", "hello a")
                       ) -> None:
    """``a`` sends ``b`` a DM and ``b`` answers: each arrives, decrypted, from the right sender."""
    for sender, recipient, text in ((a, b, texts[0]), (b, a, texts[1])):
        await sender.send_direct(recipient.user_id, text)
        got = await recipient.wait_for(lambda e: isinstance(e, DirectMessage), 10.0,
                                       description=f"{text!r} from {sender.user_id[:8]}")
        assert isinstance(got, DirectMessage) and got.text == text and got.sender_id == sender.user_id


@pytest.mark.parametrize("welcome", [ClientWelcome.NO_ACK, ClientWelcome.SILENT])
async def test_client_interop_on_a_server_that_sends_no_ack(key_pool: KeyPool, welcome: ClientWelcome) -> None:
    async with ForeignServer(key_pool.key(FOREIGN_KEY), welcome=welcome) as server:
        alice = await ClientConnection.connect(server.url, identity(key_pool, 17, "alice"), timeout=10.0,
                                               expected_server_pub=server.pubkey, interop=True)
        bob = await ClientConnection.connect(server.url, identity(key_pool, 18, "bob"), timeout=10.0,
                                             expected_server_pub=server.pubkey, interop=True)
        try:
            assert alice.server_pub == bob.server_pub == server.pubkey
            if bob.user_id not in alice.directory:
                await alice.wait_for(lambda e: bob.user_id in alice.directory, 10.0, description="bob's advert")
            assert alice.server_id == server.server_id  # named by its first signed frame
            await dm_both_ways(alice, bob)
        finally:
            await alice.close()
            await bob.close()


async def test_client_interop_on_a_slow_payload_only_server_with_no_key_pinned(key_pool: KeyPool) -> None:
    # aniketrattan/secure-programming-group-17: its key share and CLIENT_WELCOME first, ACK USER_HELLO_OK after
    # 3.5 s, payload-only signatures; on first contact (nothing pinned) the client waits for the ACK and pins
    async with ForeignServer(key_pool.key(FOREIGN_KEY), welcome=ClientWelcome.LATE_ACK) as server:
        with pytest.raises(ConnectionFailed):  # strict: the frames before the ACK are refused
            await ClientConnection.connect(server.url, identity(key_pool, 17, "alice"), timeout=10.0)
        alice = await ClientConnection.connect(server.url, identity(key_pool, 17, "alice"), timeout=10.0,
                                               interop=True)
        bob = await ClientConnection.connect(server.url, identity(key_pool, 18, "bob"), timeout=10.0, interop=True)
        try:
            assert alice.server_pub == bob.server_pub == server.pubkey
            assert alice.server_id == server.server_id  # from the ACK's 'from'
            if bob.user_id not in alice.directory:
                await alice.wait_for(lambda e: bob.user_id in alice.directory, 10.0, description="bob's advert")
            await dm_both_ways(alice, bob)
        finally:
            await alice.close()
            await bob.close()


@pytest.mark.parametrize("welcome", [ClientWelcome.NO_ACK, ClientWelcome.SILENT])
async def test_client_without_ack_is_refused_clearly(key_pool: KeyPool, welcome: ClientWelcome) -> None:
    async with ForeignServer(key_pool.key(FOREIGN_KEY), welcome=welcome) as server:
        # strict (the default): no ACK, no welcome
        with pytest.raises(ConnectionFailed) as strict:
            await ClientConnection.connect(server.url, identity(key_pool, 17, "alice"), timeout=4.0,
                                           expected_server_pub=server.pubkey)
        reason = str(strict.value)
        assert ("did not acknowledge USER_HELLO" in reason if welcome is ClientWelcome.SILENT
                else "refuses" in reason), reason
        # interop on first contact: nothing names the server's key (a user advert names the user's), so there is
        # nothing to trust, and the client says what to do
        with pytest.raises(ConnectionFailed) as unpinned:
            await ClientConnection.connect(server.url, identity(key_pool, 18, "bob"), timeout=10.0, interop=True)
        assert "pin the server's key" in str(unpinned.value)


# --- item 2: our node and a foreign server of each handshake variant -------------------------------------------

HANDSHAKE_IDS = [h.name for h in HANDSHAKES]
WEAKENING = [h for h in HANDSHAKES if h.weakens]


def foreign_key(handshake: Handshake) -> int:
    """One pool key per variant (16..20), so that foreign servers never share an id-key binding."""
    return FOREIGN_KEY + HANDSHAKES.index(handshake)


USER_KEYS = (21, 22)
"""Pool keys of the user on our node and the user on the foreign server."""


@contextlib.asynccontextmanager
async def our_node(workdir: Path, key_pool: KeyPool, foreign: ForeignServer, *, interop: bool,
                   pinned: bool = True) -> AsyncIterator[LocalNode]:
    """Our node (a real process) joining ``foreign`` as its introducer; the introducer's key pinned in the
    bootstrap file, or not (trust on first use)."""
    bootstrap = workdir / "bootstrap.yaml"
    if pinned:
        write_bootstrap(bootstrap, [("127.0.0.1", foreign.port, foreign.pubkey)])
    else:
        bootstrap.write_text(yaml.safe_dump({"bootstrap_servers": [{"host": "127.0.0.1", "port": foreign.port}]}))
    node = LocalNode(NodePlan("peer1", introducer=False, bootstrap=True), workdir, [sys.executable, "-m", "node"],
                     FAST_TIMINGS, bootstrap, ["--interop"] if interop else [])
    node.data_dir.mkdir(parents=True, exist_ok=True)
    pool_prepare(key_pool)("peer1", node.data_dir)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def linked(port: int, server_id: str) -> bool | Pending:
    """Whether our node on ``port`` reports a link with ``server_id``."""
    status, body = await probe_status(port)
    servers = body.get("linked_servers") if status == 200 else None
    return True if isinstance(servers, list) and server_id in servers else Pending(f"linked_servers={servers}")


async def dms_cross(our_url: str, foreign: ForeignServer, key_pool: KeyPool) -> None:
    """A user on our node and a user on ``foreign`` see each other and exchange a DM each way."""
    ours = await ClientConnection.connect(our_url, identity(key_pool, USER_KEYS[0], "ours"), timeout=10.0)
    theirs = await ClientConnection.connect(foreign.url, identity(key_pool, USER_KEYS[1], "theirs"), timeout=10.0)
    try:
        for conn, other in ((ours, theirs), (theirs, ours)):
            if other.user_id not in conn.directory:
                def listed(event: ClientEvent, conn: ClientConnection = conn, other: ClientConnection = other) -> bool:
                    return other.user_id in conn.directory

                await conn.wait_for(listed, 15.0, description=f"{other.user_id[:8]} listed (foreign refused: "
                                                              f"{foreign.refused[:5]}, errors: {foreign.errors[:3]})")
        await dm_both_ways(ours, theirs, ("from our node", "from the foreign server"))
    finally:
        await ours.close()
        await theirs.close()


@pytest.mark.parametrize("handshake", HANDSHAKES, ids=HANDSHAKE_IDS)
async def test_interop_node_joins_a_foreign_introducer(tmp_path: Path, key_pool: KeyPool,
                                                       handshake: Handshake) -> None:
    # keys-in-fields: the introducer names its key only in server_id + server_pub; trusted on first use
    pinned = not handshake.keys_in_fields
    async with (ForeignServer(key_pool.key(foreign_key(handshake)), handshake) as foreign,
                our_node(tmp_path, key_pool, foreign, interop=True, pinned=pinned) as node):
        await poll(lambda: linked(node.port, foreign.server_id), 15.0, "our node linked with the foreign introducer",
                   node.diagnose())
        assert foreign.assigned_ids == [None if handshake.welcome_null_id else node.server_id]
        await dms_cross(node.url, foreign, key_pool)
        assert foreign.refused == [], foreign.refused  # everything we signed toward it was in its own form
        assert linked_on_log(node, handshake)


def linked_on_log(node: LocalNode, handshake: Handshake) -> bool:
    """The node's log names the variants it accepted (once per peer)."""
    log = node.log_path.read_text(errors="replace")
    expected = ["INTEROP PROFILE is ON"]
    if handshake.welcome_null_id:
        expected.append("accepted variant 'SERVER_WELCOME assigned_id null'")
    if not handshake.announce_address:
        expected.append("accepted variant 'SERVER_ANNOUNCE without host/port'")
    if handshake.sig is not SigForm.ENVELOPE:
        expected.append("signs payload-only")
    missing = [line for line in expected if line not in log]
    assert not missing, missing
    return True


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def our_federation(tmp_path_factory: pytest.TempPathFactory, key_pool: KeyPool) -> AsyncIterator[LocalCluster]:
    """Our introducer and one peer under ``--interop``, open admission (other implementations know no join
    token)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("ours-interop"), ClusterSpec(peers=1, closed=False, interop=True),
                           prepare=pool_prepare(key_pool))
    async with cluster:
        yield cluster


@pytest.mark.parametrize("handshake", HANDSHAKES, ids=HANDSHAKE_IDS)
async def test_a_foreign_server_joins_our_interop_federation(our_federation: LocalCluster, key_pool: KeyPool,
                                                             handshake: Handshake) -> None:
    intro, peer = our_federation.introducer, our_federation.node("peer1")
    async with ForeignServer(key_pool.key(foreign_key(handshake)), handshake) as foreign:
        assert await foreign.join("127.0.0.1", intro.port) == intro.server_id  # then it links to peer1
        for node in (intro, peer):
            await poll(functools.partial(linked, node.port, foreign.server_id), 15.0,
                       f"{node.name} linked with the foreign server", node.diagnose())
        await dms_cross(peer.url, foreign, key_pool)
        assert foreign.refused == [] and foreign.errors == [], (foreign.refused, foreign.errors)


STRICT_REFUSALS = {
    "assigned-id-null": "'SERVER_WELCOME assigned_id null': another implementation's form, accepted only by a node "
                        "running the interop profile (--interop)",
    "announce-without-address": "'SERVER_ANNOUNCE without host/port': another implementation's form, accepted only "
                                "by a node running the interop profile (--interop)",
    "sort-keys-with-spaces": "SERVER_WELCOME is not signed by the pinned introducer key (if it is signed over the "
                             "payload alone",
    "payload-only": "SERVER_WELCOME is not signed by the pinned introducer key (if it is signed over the payload alone",
}
"""What our strict node logs (and answers) when a foreign introducer of each weakening variant welcomes it."""


@pytest.mark.parametrize("handshake", WEAKENING, ids=[h.name for h in WEAKENING])
async def test_strict_node_refuses_a_foreign_introducer_variant(tmp_path: Path, key_pool: KeyPool,
                                                               handshake: Handshake) -> None:
    async with (ForeignServer(key_pool.key(foreign_key(handshake)), handshake) as foreign,
                our_node(tmp_path, key_pool, foreign, interop=False) as node):
        async def refused() -> bool | Pending:
            log = node.log_path.read_text(errors="replace")
            return True if STRICT_REFUSALS[handshake.name] in log else Pending(log[-600:])

        await poll(refused, 15.0, "our strict node's refusal", node.diagnose())
        if handshake.announce_address:  # refused at the welcome: never linked
            assert await linked(node.port, foreign.server_id) is not True
        else:  # the welcome is fine; the address-less announce is answered with an ERROR naming the switch
            await poll(lambda: errors_naming(foreign, "--interop"), 10.0, "the ERROR at the foreign server")


async def errors_naming(foreign: ForeignServer, text: str) -> bool | Pending:
    """Whether an ERROR the foreign server received says ``text``."""
    details = [str(e.get("detail")) for e in foreign.errors]
    return True if any(text in d for d in details) else Pending(f"errors: {details}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def strict_federation(tmp_path_factory: pytest.TempPathFactory, key_pool: KeyPool
                            ) -> AsyncIterator[LocalCluster]:
    """Our introducer and one peer, default (strict) settings, open admission."""
    cluster = LocalCluster(tmp_path_factory.mktemp("ours-strict"), ClusterSpec(peers=1, closed=False),
                           prepare=pool_prepare(key_pool))
    async with cluster:
        yield cluster


JOIN_REFUSALS = {
    "announce-without-address": "'SERVER_ANNOUNCE without host/port': another implementation's form",
    "sort-keys-with-spaces": "SERVER_HELLO_JOIN signature does not verify with its pubkey (if it is signed over the "
                             "payload alone",
    "payload-only": "SERVER_HELLO_JOIN signature does not verify with its pubkey (if it is signed over the payload "
                    "alone",
}
"""The ERROR a foreign server of each variant that matters when it joins us gets from our strict introducer
(a welcome's ``assigned_id`` is ours to write: that variant plays no part in this direction)."""


@pytest.mark.parametrize("name", sorted(JOIN_REFUSALS))
async def test_strict_federation_refuses_a_foreign_joiner_variant(strict_federation: LocalCluster,
                                                                  key_pool: KeyPool, name: str) -> None:
    handshake = next(h for h in HANDSHAKES if h.name == name)
    intro = strict_federation.introducer
    async with ForeignServer(key_pool.key(foreign_key(handshake)), handshake) as foreign:
        with contextlib.suppress(AssertionError):  # a refused join raises, with the ERROR in foreign.errors
            await foreign.join("127.0.0.1", intro.port)
        await poll(lambda: errors_naming(foreign, JOIN_REFUSALS[name]), 10.0, "the ERROR at the foreign server")
