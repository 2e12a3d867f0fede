"""The ``crash-in-flight`` scenario (issue 10) on containers: five peers under a steady stream of DMs, one
paused, killed and restarted with messages in flight; every DM ends delivered exactly once or reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.scenario import load_scenario
from tests.docker.conftest import run_scenario
from tests.keypool import KeyPool

pytestmark = [pytest.mark.docker]

SCENARIO = Path(__file__).parents[2] / "testbed" / "scenarios" / "crash-in-flight.yaml"


async def test_crash_in_flight_loses_nothing_silently(docker_ready: None, tmp_path: Path, key_pool: KeyPool) -> None:
    run = await run_scenario(load_scenario(SCENARIO), tmp_path, key_pool, users=10)
    progress = run.progress
    assert run.report.passed, progress
    [accounted] = run.data["accounted"]
    assert accounted["sent"] > 0 and accounted["lost"] == 0 and accounted["duplicates"] == 0, progress
    assert accounted["delivered"] + accounted["reported"] == accounted["sent"], progress
