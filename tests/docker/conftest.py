"""A federation in containers (the ``docker`` backend), shared per test module.

When Docker cannot be used (no daemon, no compose CLI, no ``socp-node`` image) the tests are skipped,
unless ``SOCP_REQUIRE_DOCKER=1`` (set by CI through ``.ci/run``): then they fail, naming the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from socp.settings import FAST_TIMINGS
from testbed.backend import ClusterBackend, ClusterSpec
from testbed.docker_backend import DockerCluster, docker_problem
from testbed.runner import RunReport, ScenarioRunner
from testbed.scenario import Scenario
from tests import scaled, timeout_factor
from tests.clients import FIRST_USER_KEY, UserFactory
from tests.keypool import KeyPool

REQUIRE_ENV = "SOCP_REQUIRE_DOCKER"


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
                            healthcheck_interval=2.0)
    try:
        await cluster.start(timeout=scaled(120))
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def connect(docker_cluster: DockerCluster, key_pool: KeyPool) -> AsyncIterator[UserFactory]:
    """``await connect("peer1", "alice")``: a scripted user with a pool key, closed after the test."""
    users = UserFactory(docker_cluster.url, key_pool)
    yield users
    await users.close_all()


@dataclass(frozen=True)
class ScenarioRun:
    """What a scenario run left: the runner's report, ``report.json`` as data, and the progress lines."""

    report: RunReport
    data: dict[str, Any]
    progress: str
    backend: ClusterBackend


async def run_scenario(scenario: Scenario, tmp_path: Path, key_pool: KeyPool, *, users: int = 12,
                       backend: ClusterBackend | None = None) -> ScenarioRun:
    """Run ``scenario`` on a fresh cluster (Docker unless ``backend`` is given) under ``tmp_path``, its users
    keyed from the pool (``users`` distinct keys, reused round-robin)."""
    key_pool.ensure(FIRST_USER_KEY + users)
    if backend is None:
        backend = DockerCluster(tmp_path / "cluster", ClusterSpec(scenario.peers, scenario.introducers,
                                                                   scenario.timings))
    lines: list[str] = []
    report = await ScenarioRunner(scenario, backend, tmp_path / "results", timeout_factor=timeout_factor(),
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % users),
                                  progress=lines.append).run()
    report_file = tmp_path / "results" / "report.json"
    data = json.loads(report_file.read_text()) if report_file.exists() else {}
    return ScenarioRun(report, data, "\n".join(lines), backend)
