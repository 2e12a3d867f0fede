"""What a node's database keeps across restarts and crashes, and how it refuses a file it cannot trust."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest

from client.connection import ClientConnection
from client.keystore import Identity
from node.storage import SCHEMA_VERSION
from socp.errors import BadKey
from testbed.local import LocalCluster
from tests import scaled
from tests.integration.conftest import FIRST_USER_KEY
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "persist me please"


def read_db(cluster: LocalCluster, node: str, query: str) -> list[tuple[object, ...]]:
    """Run ``query`` on a node's database, read-only (the node may be running)."""
    path = cluster.node(node).data_dir / "socp.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("how", ["restart", "crash"])
async def test_a_node_keeps_its_users_keys_and_membership(cluster: LocalCluster, key_pool: KeyPool,
                                                          how: str) -> None:
    index = 0 if how == "restart" else 1
    name = f"alice-{how}"
    identity = Identity(str(uuid.uuid4()), name, key_pool.key(FIRST_USER_KEY + index))
    async with await ClientConnection.connect(cluster.url("peer1"), identity, timeout=scaled(10)) as conn:
        await conn.register_password(PASSWORD, timeout=scaled(10))
    _, before = await cluster.health("peer1")
    version_before = before["public_channel"]["version"]  # type: ignore[index]

    if how == "restart":
        await cluster.restart("peer1")
    else:
        await cluster.kill("peer1")
        await cluster.start_node("peer1")
    await cluster.wait_healthy(scaled(30))

    assert read_db(cluster, "peer1", "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert read_db(cluster, "peer1", f"SELECT login FROM users WHERE user_id = '{identity.user_id}'") == [(name,)]
    members = {row[0] for row in read_db(cluster, "peer1", "SELECT member_id FROM group_members")}
    assert identity.user_id in members
    _, after = await cluster.health("peer1")
    assert after["public_channel"]["version"] >= version_before  # type: ignore[index]
    # The key binding survived: the same id under another key is refused ...
    impostor = Identity(identity.user_id, name, key_pool.key(FIRST_USER_KEY + 5))
    with pytest.raises(BadKey, match="registered under another key"):
        await ClientConnection.connect(cluster.url("peer1"), impostor, timeout=scaled(10))
    # ... the directory still knows the (offline) user ...
    observer = Identity(str(uuid.uuid4()), f"observer-{how}", key_pool.key(FIRST_USER_KEY + 6))
    async with await ClientConnection.connect(cluster.url("peer1"), observer, timeout=scaled(10)) as conn:
        entry = await conn.lookup_user(identity.user_id, timeout=scaled(10))
        assert (entry.pubkey, entry.online) == (key_pool.public_text(FIRST_USER_KEY + index), False)
    # ... and so does password login.
    async with await ClientConnection.login(cluster.url("peer1"), name, PASSWORD, timeout=scaled(15)) as conn:
        assert conn.user_id == identity.user_id


async def test_a_corrupt_database_stops_the_node_with_a_clear_error(key_pool: KeyPool, tmp_path: Path) -> None:
    data_dir = tmp_path / "broken"
    key_pool.write_pem(4, data_dir / "server.key.pem")
    database = data_dir / "socp.sqlite3"
    garbage = b"SQLite format 3\x00" + b"\x13" * 4000
    database.write_bytes(garbage)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "--name", "broken", "--data-dir", str(data_dir), "--port", "0",
        "--bootstrap", "ws://127.0.0.1:1", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(scaled(30)):
        out, err = await process.communicate()
    assert process.returncode == 2, (out, err)
    assert f"socp-node: database {database}" in err.decode()
    assert "restore a backup or move it away" in err.decode()
    assert database.read_bytes() == garbage
