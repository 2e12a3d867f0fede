"""The hostile-peer scenario on containers: every attack of issue 11 is tried from the host against a
containerised federation, and every defence holds (the local twin is tests/integration/test_hostile_peer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.scenario import load_scenario
from tests.docker.conftest import run_scenario
from tests.keypool import KeyPool

pytestmark = [pytest.mark.docker]

SCENARIO = Path(__file__).parents[2] / "testbed" / "scenarios" / "hostile-peer.yaml"
KEYS = 24
"""Distinct pool keys for the scenario's users, the rogue servers and the attackers."""


async def test_hostile_peer_scenario_passes_on_containers(docker_ready: None, tmp_path: Path,
                                                          key_pool: KeyPool) -> None:
    run = await run_scenario(load_scenario(SCENARIO), tmp_path, key_pool, users=KEYS)
    report, progress = run.report, run.progress
    attacks = run.data["attacks"]
    assert len(attacks) >= 12, progress
    assert not [a["attack"] for a in attacks if not a["passed"]], progress
    assert report.passed, progress
