"""Issue 14 end to end against a foreign server (tests/foreign_server.py) over real WebSockets: our client on a
server that sends no ACK, and our node (real processes) joining, and joined by, a server of each handshake
variant, with DMs across the mixed link both ways; without ``--interop`` the variants are refused clearly."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from client.connection import ClientConnection
from client.errors import ConnectionFailed
from client.keystore import Identity
from socp.settings import FAST_TIMINGS
from socp.user import DirectMessage
from testbed.backend import probe_status
from testbed.local import LocalNode
from testbed.nodeplan import NodePlan, write_bootstrap
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
            await alice.send_direct(bob.user_id, "hello bob")
            got = await bob.wait_for(lambda e: isinstance(e, DirectMessage), 10.0, description="alice's message")
            assert isinstance(got, DirectMessage) and got.text == "hello bob" and got.sender_id == alice.user_id
            await bob.send_direct(alice.user_id, "hello alice")
            got = await alice.wait_for(lambda e: isinstance(e, DirectMessage), 10.0, description="bob's message")
            assert isinstance(got, DirectMessage) and got.text == "hello alice"
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
    servers = body.get("linked_servers", []) if status == 200 else []
    return True if server_id in servers else Pending(f"linked_servers={servers}")


async def dms_cross(our_url: str, foreign: ForeignServer, key_pool: KeyPool) -> None:
    """A user on our node and a user on ``foreign`` see each other and exchange a DM each way."""
    ours = await ClientConnection.connect(our_url, identity(key_pool, USER_KEYS[0], "ours"), timeout=10.0)
    theirs = await ClientConnection.connect(foreign.url, identity(key_pool, USER_KEYS[1], "theirs"), timeout=10.0)
    try:
        for conn, other in ((ours, theirs), (theirs, ours)):
            if other.user_id not in conn.directory:
                await conn.wait_for(lambda e, c=conn, o=other: o.user_id in c.directory, 15.0,
                                    description=f"{other.user_id[:8]} listed (foreign refused: {foreign.refused[:5]}, "
                                                f"errors: {foreign.errors[:3]})")
        await ours.send_direct(theirs.user_id, "from our node")
        got = await theirs.wait_for(lambda e: isinstance(e, DirectMessage), 10.0, description="our DM")
        assert isinstance(got, DirectMessage) and got.text == "from our node" and got.sender_id == ours.user_id
        await theirs.send_direct(ours.user_id, "from the foreign server")
        got = await ours.wait_for(lambda e: isinstance(e, DirectMessage), 10.0, description="their DM")
        assert isinstance(got, DirectMessage) and got.text == "from the foreign server"
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
