"""Real node processes on 127.0.0.1: the testbed plugin's ``cluster`` fixture (local backend by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from testbed.backend import ClusterBackend
from tests.clients import FIRST_USER_KEY, UserFactory
from tests.keypool import KeyPool

__all__ = ["FIRST_USER_KEY", "pool_prepare"]

# Pool key indexes: nodes take 0..5, users FIRST_USER_KEY upwards (tests/clients.py).
NODE_KEYS = {"introducer": 0, "peer1": 1, "peer2": 2, "peer3": 3, "peer4": 4, "peer5": 5}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory is an integration test."""
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


def pool_prepare(key_pool: KeyPool) -> Callable[[str, Path], None]:
    """A LocalCluster ``prepare`` hook that drops pool keys into node data directories."""
    def prepare(name: str, data_dir: Path) -> None:
        key_file = data_dir / "server.key.pem"
        if not key_file.exists():
            key_pool.write_pem(NODE_KEYS[name], key_file)
    return prepare


@pytest.fixture(scope="module")
def socp_cluster_prepare(key_pool: KeyPool) -> Callable[[str, Path], None]:
    """Local nodes start with pool keys instead of generating their own."""
    return pool_prepare(key_pool)


@pytest_asyncio.fixture(loop_scope="module")
async def connect(cluster: ClusterBackend, key_pool: KeyPool, tmp_path: Path) -> AsyncIterator[UserFactory]:
    """``await connect("peer1", "alice")``: a scripted user with a pool key (files land in ``tmp_path/<name>``),
    closed after the test."""
    users = UserFactory(cluster.url, key_pool, downloads=tmp_path)
    yield users
    await users.close_all()
