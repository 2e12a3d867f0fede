"""Real node processes on 127.0.0.1 (the ``local`` testbed backend), shared per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from tests import scaled
from tests.keypool import KeyPool

# Pool key indexes: nodes take 0..4, users 10 upwards (see user_key()).
NODE_KEYS = {"introducer": 0, "peer1": 1, "peer2": 2, "peer3": 3, "peer4": 4}
FIRST_USER_KEY = 10


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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, key_pool: KeyPool) -> AsyncIterator[LocalCluster]:
    """An introducer and three peers, healthy and fully meshed, with fast heartbeats."""
    federation = LocalCluster(tmp_path_factory.mktemp("cluster"), ClusterSpec(peers=3),
                              prepare=pool_prepare(key_pool))
    try:
        await federation.start(timeout=scaled(40))
        yield federation
    finally:
        await federation.stop()
