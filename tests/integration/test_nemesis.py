"""The local backend's fault proxy: partitions into groups and heal, link effects, the control path untouched."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from socp.settings import FAST_TIMINGS
from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from testbed.proxy import Effect
from testbed.runner import ScenarioRunner
from testbed.scenario import Nemesis, load_scenario
from testbed.waiting import Pending, poll
from tests import timeout_factor
from tests.integration.conftest import FIRST_USER_KEY, pool_prepare
from tests.keypool import KeyPool


async def _links(cluster: LocalCluster) -> dict[str, set[str]]:
    names = {cluster.node(n).server_id: n for n in cluster.node_names}
    result = {}
    for name in cluster.node_names:
        _, body = await cluster.health(name)
        linked = body.get("linked_servers", [])
        result[name] = {names.get(str(s), str(s)) for s in linked} if isinstance(linked, list) else set()
    return result


async def test_partition_into_groups_cuts_only_the_links_across_and_heal_restores_the_mesh(
        tmp_path: Path, key_pool: KeyPool) -> None:
    factor = timeout_factor()
    spec = ClusterSpec(peers=3, timings=FAST_TIMINGS, faulty_network=True)
    async with LocalCluster(tmp_path / "cluster", spec, prepare=pool_prepare(key_pool)) as cluster:
        assert cluster.network is not None
        await cluster.partition_groups([["introducer", "peer1"], ["peer2", "peer3"]])

        async def split() -> bool | Pending:
            links = await _links(cluster)
            want = {"introducer": {"peer1"}, "peer1": {"introducer"}, "peer2": {"peer3"}, "peer3": {"peer2"}}
            return True if links == want else Pending(f"links {links}")

        await poll(split, 20 * factor, "the links across the partition to die")
        # Users and probes reach every node directly: the control path is not partitioned.
        statuses = [(await cluster.health(name))[0] for name in cluster.node_names]
        assert 0 not in statuses, statuses
        await cluster.heal_network()
        await cluster.wait_healthy(30 * factor)

        # A delayed link still carries the mesh (heartbeats arrive, only later).
        await cluster.degrade(Effect(delay=0.1, jitter=0.02, loss=0.05), node="peer2")
        await asyncio.sleep(0)  # the effect applies to the next chunk; nothing to wait for
        await cluster.wait_healthy(30 * factor)
        await cluster.restore_network()


SCENARIOS = Path(__file__).parents[2] / "testbed" / "scenarios"
FAST_NEMESIS_S = 12.0
"""CI variant: the chaos scenario's nemesis runs this long instead of a minute."""


@pytest.mark.parametrize("name", ["partition-heal", "lossy-network", "chaos"])
async def test_network_fault_scenarios_pass_on_the_local_backend(name: str, tmp_path: Path, key_pool: KeyPool) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    fast = tuple(dataclasses.replace(step, duration=FAST_NEMESIS_S) if isinstance(step, Nemesis) else step
                 for step in scenario.steps)
    scenario = dataclasses.replace(scenario, steps=fast)
    spec = ClusterSpec(scenario.peers, scenario.introducers, scenario.timings, faulty_network=scenario.faulty_network)
    backend = LocalCluster(tmp_path / "cluster", spec, prepare=pool_prepare(key_pool))
    lines: list[str] = []
    report = await ScenarioRunner(scenario, backend, tmp_path / "results", timeout_factor=timeout_factor(),
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % 12),
                                  progress=lines.append).run()
    assert report.passed, "\n".join(lines)
    data = json.loads((tmp_path / "results" / "report.json").read_text())
    assert data["history"]["ok"] and data["confidentiality"]["ok"]
    assert data["history"]["faults"], "the faults were recorded in the history"
    assert sum(data["verdict_counts"][v] for v in ("lost silently", "duplicated", "forged or undecryptable")) == 0
