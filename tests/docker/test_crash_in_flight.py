"""The ``crash-in-flight`` scenario (issue 10) on containers: five peers under a steady stream of DMs, one
paused, killed and restarted with messages in flight; every DM ends delivered exactly once or reported."""

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

SCENARIO = Path(__file__).parents[2] / "testbed" / "scenarios" / "crash-in-flight.yaml"


async def test_crash_in_flight_loses_nothing_silently(docker_ready: None, tmp_path: Path, key_pool: KeyPool) -> None:
    scenario = load_scenario(SCENARIO)
    users = 10
    key_pool.ensure(FIRST_USER_KEY + users)
    backend = DockerCluster(tmp_path / "cluster", ClusterSpec(scenario.peers, scenario.introducers, scenario.timings))
    lines: list[str] = []
    report = await ScenarioRunner(scenario, backend, tmp_path / "results", timeout_factor=timeout_factor(),
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % users),
                                  progress=lines.append).run()
    progress = "\n".join(lines)
    assert report.passed, progress
    [accounted] = json.loads((tmp_path / "results" / "report.json").read_text())["accounted"]
    assert accounted["sent"] > 0 and accounted["lost"] == 0 and accounted["duplicates"] == 0, progress
    assert accounted["delivered"] + accounted["reported"] == accounted["sent"], progress
