"""The shipped scenarios pass on the local backend (the docker suite runs them on containers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from testbed.runner import ScenarioRunner
from testbed.scenario import load_scenario, parse_scenario
from tests import timeout_factor
from tests.integration.conftest import FIRST_USER_KEY, pool_prepare
from tests.keypool import KeyPool

SCENARIOS = Path(__file__).parents[2] / "testbed" / "scenarios"


@pytest.mark.parametrize("name", ["smoke", "churn", "node-crash", "crash-in-flight"])
async def test_scenario_passes_on_local_backend(name: str, tmp_path: Path, key_pool: KeyPool) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    backend = LocalCluster(tmp_path / "cluster", ClusterSpec(scenario.peers, scenario.introducers, scenario.timings),
                           prepare=pool_prepare(key_pool))
    lines: list[str] = []
    report = await ScenarioRunner(scenario, backend, tmp_path / "results", timeout_factor=timeout_factor(),
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % 12),
                                  progress=lines.append).run()
    assert report.passed, "\n".join(lines)
    data = json.loads((tmp_path / "results" / "report.json").read_text())
    assert data["passed"] and data["steps"] and all(step["ok"] for step in data["steps"])
    assert all(d["duplicates"] == 0 and d["delivered"] == d["messages"] for d in data["delivery"])
    assert all(d["lost"] == 0 and d["duplicates"] == 0 and d["sent"] > 0 for d in data["accounted"])
    assert (tmp_path / "results" / "junit.xml").exists()
    # The history's checker and the confidentiality scan ran, and found nothing wrong.
    counts = data["verdict_counts"]
    assert data["history"]["ok"] and counts["delivered once"] > 0
    assert counts["lost silently"] == counts["duplicated"] == counts["forged or undecryptable"] == 0
    assert data["confidentiality"]["ok"] and data["confidentiality"]["files_scanned"] > len(backend.node_names)
    assert (tmp_path / "results" / "history.jsonl").exists() and (tmp_path / "results" / "report.html").exists()
    assert sorted(p.name for p in (tmp_path / "results" / "logs").iterdir()) == \
        sorted(f"{node}.log" for node in backend.node_names)
    assert not any(node.running for node in backend.nodes), "the runner must stop every node"


async def test_failed_step_is_reported_and_the_cluster_still_torn_down(tmp_path: Path, key_pool: KeyPool) -> None:
    scenario = parse_scenario({"name": "doomed", "peers": 2, "steps": [
        "up", {"connect": {"users": 2}}, {"stop": "peer2"},
        {"send": {"from": "user1", "to": "user2", "text": "into the void"}}]})
    backend = LocalCluster(tmp_path / "cluster", ClusterSpec(2), prepare=pool_prepare(key_pool))
    report = await ScenarioRunner(scenario, backend, tmp_path / "results",
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i)).run()
    assert not report.passed
    failed = report.steps[-1]
    assert not failed.ok and "user1 cannot send to user2" in failed.detail and "not online" in failed.detail
    assert not any(node.running for node in backend.nodes)


async def test_a_teardown_that_fails_fails_the_run_with_a_message_not_a_traceback(tmp_path: Path,
                                                                                   key_pool: KeyPool) -> None:
    scenario = parse_scenario({"name": "sticky", "peers": 1, "steps": ["up"]})

    class StickyCluster(LocalCluster):
        async def stop(self) -> None:
            await super().stop()
            raise TimeoutError("the engine did not answer\nsecond line")

    backend = StickyCluster(tmp_path / "cluster", ClusterSpec(1), prepare=pool_prepare(key_pool))
    lines: list[str] = []
    report = await ScenarioRunner(scenario, backend, tmp_path / "results", progress=lines.append).run()
    assert report.steps and all(step.ok for step in report.steps)
    assert not report.passed, "a run that could not clean up after itself did not pass"
    assert any(line.startswith("teardown failed: TimeoutError: the engine did not answer;") for line in lines), lines
    assert not json.loads((tmp_path / "results" / "report.json").read_text())["passed"]
