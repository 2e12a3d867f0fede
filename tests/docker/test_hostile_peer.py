"""The hostile-peer scenario on containers: every attack of issue 11 is tried from the host against a
containerised federation, and every defence holds (the local twin is tests/integration/test_hostile_peer.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.backend import ClusterSpec
from testbed.docker_backend import DockerCluster
from testbed.runner import ScenarioRunner
from testbed.scenario import load_scenario
from tests import timeout_factor
from tests.clients import FIRST_USER_KEY
from tests.keypool import KeyPool

pytestmark = [pytest.mark.docker]

SCENARIO = Path(__file__).parents[2] / "testbed" / "scenarios" / "hostile-peer.yaml"
KEYS = 24
"""Distinct pool keys for the scenario's users, the rogue servers and the attackers."""


async def test_hostile_peer_scenario_passes_on_containers(docker_ready: None, tmp_path: Path,
                                                          key_pool: KeyPool) -> None:
    scenario = load_scenario(SCENARIO)
    key_pool.ensure(FIRST_USER_KEY + KEYS)
    backend = DockerCluster(tmp_path / "cluster", ClusterSpec(scenario.peers, scenario.introducers, scenario.timings))
    lines: list[str] = []
    report = await ScenarioRunner(scenario, backend, tmp_path / "results", timeout_factor=timeout_factor(),
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % KEYS),
                                  progress=lines.append).run()
    progress = "\n".join(lines)
    attacks = json.loads((tmp_path / "results" / "report.json").read_text())["attacks"]
    assert len(attacks) >= 12, progress
    assert not [a["attack"] for a in attacks if not a["passed"]], progress
    assert report.passed, progress
