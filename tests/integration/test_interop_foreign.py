"""Issue 14 end to end against a foreign server (tests/foreign_server.py) over real WebSockets: our client on a
server that sends no ACK, and our node (real processes) joining, and joined by, a server of each handshake
variant, with DMs across the mixed link both ways; without ``--interop`` the variants are refused clearly."""

from __future__ import annotations

import uuid

import pytest

from client.connection import ClientConnection
from client.errors import ConnectionFailed
from client.keystore import Identity
from socp.user import DirectMessage
from tests.foreign_server import ClientWelcome, ForeignServer
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
