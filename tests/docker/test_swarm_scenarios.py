"""The ``swarm`` backend end to end: the smoke and node-crash scenarios on a Docker Swarm stack, and the faults.

Needs Docker and a swarm manager engine. An engine in no swarm is put in one (a one-node swarm on 127.0.0.1,
its node marked with :data:`~testbed.swarm_backend.SWARM_MARKER_LABEL`, and left in place for the next run) only
when CI requires Docker (``SOCP_REQUIRE_DOCKER=1``) or the user allowed it (``SOCP_INIT_SWARM=1``); otherwise
the tests skip, saying how to enable swarm mode. With ``SOCP_REQUIRE_DOCKER=1`` an unusable Docker or a
failed ``swarm init`` fails them. Each test deploys its own stack and checks that removing it leaves nothing.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from socp.settings import FAST_TIMINGS
from testbed.backend import ClusterSpec
from testbed.docker_backend import DockerUnavailable, docker_client, docker_problem
from testbed.scenario import load_scenario
from testbed.swarm_backend import SwarmCluster, init_allowed, require_swarm, stack_objects, swarm_info
from tests import scaled
from tests.docker.conftest import REQUIRE_ENV, docker_required, run_scenario
from tests.keypool import KeyPool

pytestmark = [pytest.mark.docker]

SCENARIOS = Path(__file__).parents[2] / "testbed" / "scenarios"
log = logging.getLogger("tests.swarm")


@pytest.fixture(scope="session")
def swarm_ready() -> None:
    """Skip (or fail, with SOCP_REQUIRE_DOCKER=1) unless Docker works and the engine is, or may be made, a
    swarm manager."""
    problem = docker_problem()
    if problem is None:
        try:
            client = docker_client()
            made = require_swarm(client, init=docker_required() or init_allowed())
            if made:
                log.warning("made a one-node swarm for the swarm tests (node %s, marked; left in place)",
                            swarm_info(client).get("NodeID"))
        except DockerUnavailable as exc:
            problem = str(exc)
    if problem is None:
        return
    if docker_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but the swarm backend cannot run: {problem}", pytrace=False)
    pytest.skip(f"the swarm backend cannot run ({problem}); with {REQUIRE_ENV}=1 this is a failure")


async def run_on_swarm(name: str, peers: int, tmp_path: Path, key_pool: KeyPool) -> None:
    """Run a scenario on a fresh swarm stack; it must pass and leave no stack object behind."""
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    backend = SwarmCluster(tmp_path / "cluster", ClusterSpec(peers, scenario.introducers, scenario.timings))
    run = await run_scenario(scenario, tmp_path, key_pool, users=10, backend=backend)
    assert run.report.passed, run.progress
    assert stack_objects(docker_client(), backend.stack) == {}, f"stack {backend.stack} left objects behind"


async def test_smoke_scenario_passes_on_a_swarm_stack(swarm_ready: None, tmp_path: Path, key_pool: KeyPool) -> None:
    await run_on_swarm("smoke", 3, tmp_path, key_pool)


async def test_node_crash_scenario_passes_on_a_swarm_stack(swarm_ready: None, tmp_path: Path,
                                                           key_pool: KeyPool) -> None:
    await run_on_swarm("node-crash", 3, tmp_path, key_pool)


async def test_partition_pause_and_restart_keep_identity_and_address(swarm_ready: None, tmp_path: Path) -> None:
    cluster = SwarmCluster(tmp_path, ClusterSpec(peers=2, timings=FAST_TIMINGS), restart_delay=1.0)
    try:
        await cluster.start(scaled(120))
        ids = dict(cluster.server_ids)
        assert all(cluster.url(node).startswith("ws://127.0.0.1:") for node in cluster.node_names)

        # Partitioned: its links die by timeout while its own /healthz stays reachable (users stay connected).
        await cluster.partition("peer2")
        others = {ids["introducer"], ids["peer1"]}
        loop_limit = int(scaled(60) / 0.25)
        for _ in range(loop_limit):
            status, body = await cluster.health("peer2")
            assert status == 200, body
            linked = body.get("linked_servers")
            if not (set(linked) if isinstance(linked, list) else set()) & others:
                break
            await asyncio.sleep(0.25)
        else:
            pytest.fail("peer2 kept its links while partitioned")
        await cluster.heal("peer2")
        await cluster.wait_healthy(scaled(60))

        # Paused: it answers nothing, then resumes on the same links.
        await cluster.pause("peer1")
        assert (await cluster.health("peer1"))[0] == 0
        await cluster.unpause("peer1")
        await cluster.wait_healthy(scaled(60))

        # Restarted: a new task with the same identity (volume) and name, on a new host port.
        await cluster.restart("peer1")
        await cluster.wait_healthy(scaled(60))
        status, body = await cluster.health("peer1")
        assert status == 200 and body["server_id"] == ids["peer1"]
    finally:
        await cluster.stop()
    assert stack_objects(docker_client(), cluster.stack) == {}
