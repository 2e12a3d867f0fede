"""Password login across a real federation: register on one node, log in from an empty key dir on that node
(the login home: password records never leave it), and a clear refusal naming the home on every other node."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from client.connection import ClientConnection
from client.keystore import Identity
from socp.errors import AuthFailed, RateLimited, UserNotFound
from socp.user import DirectMessage
from testbed import checks
from testbed.local import LocalCluster
from tests import scaled
from tests.integration.conftest import FIRST_USER_KEY
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "tr0ub4dor&3 but longer"


@pytest_asyncio.fixture(loop_scope="module")
async def closing() -> AsyncIterator[list[ClientConnection]]:
    """Connections appended here are closed after the test."""
    opened: list[ClientConnection] = []
    yield opened
    for conn in opened:
        with contextlib.suppress(Exception):
            await conn.close()


async def register(cluster: LocalCluster, key_pool: KeyPool, node: str, name: str, index: int) -> Identity:
    identity = Identity(str(uuid.uuid4()), name, key_pool.key(FIRST_USER_KEY + index))
    async with await ClientConnection.connect(cluster.url(node), identity, timeout=scaled(10)) as conn:
        await conn.register_password(PASSWORD, timeout=scaled(10))
    return identity


async def test_login_from_nothing_on_the_home_node_and_a_refusal_elsewhere(
        cluster: LocalCluster, key_pool: KeyPool, closing: list[ClientConnection]) -> None:
    identity = await register(cluster, key_pool, "peer1", "alice", 0)
    home = cluster.node("peer1").server_id
    with pytest.raises(UserNotFound, match=f"registered on its home server {home}"):
        await ClientConnection.login(cluster.url("peer3"), "alice", PASSWORD, timeout=scaled(15))
    conn = await ClientConnection.login(cluster.url("peer1"), "alice", PASSWORD, timeout=scaled(15))
    closing.append(conn)
    assert conn.identity is not None and conn.user_id == identity.user_id
    assert conn.identity.key.private_numbers() == identity.key.private_numbers()
    # It is a full session: messages reach it.
    bob = await ClientConnection.connect(cluster.url("peer2"), Identity(str(uuid.uuid4()), "bob",
                                                                        key_pool.key(FIRST_USER_KEY + 1)))
    closing.append(bob)
    result = await checks.converged([conn, bob], {conn.user_id, bob.user_id}, timeout=scaled(15))
    assert result.ok, result.detail
    await bob.send_direct("alice", "welcome back")
    message = await conn.wait_for(lambda e: isinstance(e, DirectMessage), scaled(10))
    assert isinstance(message, DirectMessage) and message.text == "welcome back"


async def test_wrong_password_unknown_login_and_rate_limit(cluster: LocalCluster, key_pool: KeyPool) -> None:
    await register(cluster, key_pool, "peer2", "carol", 2)
    with pytest.raises(AuthFailed, match="wrong password for carol"):
        await ClientConnection.login(cluster.url("peer2"), "carol", "not it", timeout=scaled(15))
    # An unknown login is answered like a wrong password (a decoy challenge, PROTOCOL.md §9.1).
    with pytest.raises(AuthFailed, match="wrong password for nobody"):
        await ClientConnection.login(cluster.url("peer2"), "nobody", PASSWORD, timeout=scaled(15))
    for _ in range(3):  # five failures from this address (the decoy's counts too): the address is blocked
        with pytest.raises(AuthFailed):
            await ClientConnection.login(cluster.url("peer2"), "carol", "still not it", timeout=scaled(15))
    with pytest.raises(RateLimited, match="too many failed logins from your address: try again in"):
        await ClientConnection.login(cluster.url("peer2"), "carol", PASSWORD, timeout=scaled(15))


async def test_directory_lookup_of_an_offline_user(cluster: LocalCluster, key_pool: KeyPool,
                                                   closing: list[ClientConnection]) -> None:
    identity = await register(cluster, key_pool, "peer1", "dave", 3)
    erin = await ClientConnection.connect(cluster.url("peer3"), Identity(str(uuid.uuid4()), "erin",
                                                                         key_pool.key(FIRST_USER_KEY + 4)))
    closing.append(erin)
    for query in (identity.user_id, "dave"):
        entry = await erin.lookup_user(query, timeout=scaled(10))
        assert (entry.user_id, entry.online, entry.login, entry.label) == (identity.user_id, False, "dave", "dave")
        assert entry.pubkey == key_pool.public_text(FIRST_USER_KEY + 3)
    with pytest.raises(UserNotFound):
        await erin.lookup_user("nobody-at-all", timeout=scaled(10))


async def run_client(*args: str, stdin: bytes = b"/quit\n", cwd: Path = REPO) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", *args, cwd=cwd, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(scaled(60)):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_registers_then_logs_in_with_only_a_password(cluster: LocalCluster, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    first = tmp_path / "laptop-keys"
    code, out, err = await run_client("--user", "frank", "--server", cluster.url("peer1"), "--key-dir", str(first),
                                      "--password-file", str(password_file))
    assert code == 0, err
    assert "[login] password registered for frank" in out
    user_id = (first / "frank.json").read_text()
    assert "frank" in (first / "known_users.json").read_text()  # user key pins kept for the next run
    # A second machine: an empty key dir, the same (home) node, nothing but the password.
    second = tmp_path / "borrowed-keys"
    code, out, err = await run_client("--user", "frank", "--server", cluster.url("peer1"), "--key-dir", str(second),
                                      "--password-file", str(password_file))
    assert code == 0, err
    assert "[login] logged in as frank with a password (key recovered from the network)" in out
    assert not second.exists() or list(second.iterdir()) == []  # nothing left behind on a borrowed machine
    assert "frank" in user_id
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    code, out, err = await run_client("--user", "frank", "--server", cluster.url("peer1"), "--key-dir", str(second),
                                      "--password-file", str(wrong))
    assert code == 1 and "socp-client: login refused: wrong password for frank" in err
    assert "Connected" not in out
