"""The ``scale`` scenario (a dozen peers, 24 users, a peer killed and restarted) on containers, in CI.

It passes, and the federation held up while it ran: the report's load section shows no link declared dead
but the killed peer's (each other node may declare its link to that peer dead once; nobody else's link dies).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.scenario import NodeAction, load_scenario
from tests.docker.conftest import run_scenario
from tests.keypool import KeyPool

pytestmark = [pytest.mark.docker]

SCALE = Path(__file__).parents[2] / "testbed" / "scenarios" / "scale.yaml"


async def test_scale_scenario_passes_and_only_the_killed_peer_links_die(
        docker_ready: None, tmp_path: Path, key_pool: KeyPool) -> None:
    scenario = load_scenario(SCALE)
    run = await run_scenario(scenario, tmp_path, key_pool, users=24)
    backend, data, progress = run.backend, run.data, run.progress
    assert run.report.passed, progress
    assert all(d["duplicates"] == 0 and d["delivered"] == d["messages"] for d in data["delivery"]), progress

    killed = {step.node for step in scenario.steps if isinstance(step, NodeAction) and step.action == "kill"}
    assert killed == {"peer7"}
    nodes = data["load"]["nodes"]
    assert sorted(nodes) == sorted(backend.node_names)
    stray: dict[str, object] = {}
    for name, load in nodes.items():
        assert load["incarnations"] >= 1, f"{name} never answered GET /status\n{progress}"
        assert load["link_deaths_in_log"] is not None, f"{name}: no log collected"
        # Each other node may declare its link to the killed peer dead (once); the killed peer declares none.
        allowed = 0 if name in killed else len(killed)
        if load["declared_deaths"] > allowed or set(load["link_deaths_by_peer"]) - killed:
            stray[name] = {"declared": load["declared_deaths"], "by_peer": load["link_deaths_by_peer"]}
    assert not stray, (f"links declared dead that the kill did not cause: {stray}\n{data['load_summary']}\n"
                       f"{progress}")
    assert data["load"]["totals"]["link_deaths"] <= len(backend.node_names) - 1
