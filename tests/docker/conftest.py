"""A federation in containers (the ``docker`` backend), shared per test module.

When Docker cannot be used (no daemon, no compose CLI, no ``socp-node`` image) the tests are skipped,
unless ``SOCP_REQUIRE_DOCKER=1`` (set by CI through ``.ci/run``): then they fail, naming the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from client.connection import ClientConnection
from client.keystore import Identity
from testbed.backend import ClusterSpec, NodeTimings
from testbed.docker_backend import DockerCluster, docker_problem
from tests import scaled
from tests.keypool import KeyPool

REQUIRE_ENV = "SOCP_REQUIRE_DOCKER"
FAST_TIMINGS = NodeTimings(heartbeat_interval=0.5, peer_timeout=2.0, presence_sync_interval=2.0)
FIRST_USER_KEY = 10
"""Pool keys of scripted users: 10..23 (nodes make their own keys inside their volumes)."""
USER_KEYS = 14

Connect = Callable[[str, str], Awaitable[ClientConnection]]


def docker_required() -> bool:
    """True when ``$SOCP_REQUIRE_DOCKER`` is 1: an unusable Docker is then a failure, not a skip."""
    return os.environ.get(REQUIRE_ENV, "").strip() == "1"


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """Skip (or, with SOCP_REQUIRE_DOCKER=1, fail) when the daemon, compose or the node image is missing."""
    problem = docker_problem()
    if problem is None:
        return
    if docker_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but Docker is unusable: {problem}", pytrace=False)
    pytest.skip(f"Docker is unusable ({problem}); with {REQUIRE_ENV}=1 this is a failure")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def docker_cluster(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DockerCluster]:
    """An introducer and three peers in containers, healthy and fully meshed, with fast timers."""
    cluster = DockerCluster(tmp_path_factory.mktemp("docker-cluster"), ClusterSpec(peers=3, timings=FAST_TIMINGS),
                            healthcheck_interval=1.0)
    try:
        await cluster.start(timeout=scaled(120))
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def connect(docker_cluster: DockerCluster, key_pool: KeyPool) -> AsyncIterator[Connect]:
    """``await connect("peer1", "alice")``: a scripted user with a pool key, closed after the test."""
    opened: list[ClientConnection] = []

    async def open_user(node: str, name: str) -> ClientConnection:
        identity = Identity(str(uuid.uuid4()), name, key_pool.key(FIRST_USER_KEY + len(opened) % USER_KEYS))
        client = await ClientConnection.connect(docker_cluster.url(node), identity, timeout=scaled(10))
        opened.append(client)
        return client

    yield open_user
    for client in opened:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()
