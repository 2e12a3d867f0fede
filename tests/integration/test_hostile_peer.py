"""The hostile-peer scenario on the local backend: every attack of issue 11 is tried and every defence holds;
and a node built without one check (a mutant, tests/mutants/__main__.py) makes the scenario fail on that attack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from testbed.runner import RunReport, ScenarioRunner
from testbed.scenario import Scenario, load_scenario, parse_scenario
from tests import timeout_factor
from tests.integration.conftest import FIRST_USER_KEY, pool_prepare
from tests.keypool import KeyPool

SCENARIO = Path(__file__).parents[2] / "testbed" / "scenarios" / "hostile-peer.yaml"
ADVERSARY_KEYS = 24
"""Distinct pool keys the scenario's users, the rogue server and the attackers draw (they must differ)."""


async def run(scenario: Scenario, tmp_path: Path, key_pool: KeyPool, lines: list[str],
              command: list[str] | None = None) -> RunReport:
    backend = LocalCluster(tmp_path / "cluster", ClusterSpec(scenario.peers, scenario.introducers, scenario.timings),
                           prepare=pool_prepare(key_pool), command=command)
    return await ScenarioRunner(scenario, backend, tmp_path / "results", timeout_factor=timeout_factor(),
                                key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % ADVERSARY_KEYS),
                                progress=lines.append).run()


async def test_every_attack_is_refused_and_honest_users_keep_talking(tmp_path: Path, key_pool: KeyPool) -> None:
    lines: list[str] = []
    report = await run(load_scenario(SCENARIO), tmp_path, key_pool, lines)
    data = json.loads((tmp_path / "results" / "report.json").read_text())
    attacks = {attack["attack"]: attack for attack in data["attacks"]}
    assert len(attacks) >= 12, "\n".join(lines)
    failed = {name: attack["observed"] for name, attack in attacks.items() if not attack["passed"]}
    assert not failed, "\n".join(lines)
    assert report.passed, "\n".join(lines)
    assert attacks["join-registry"]["counts"]["frames_with_secrets"] == 0
    assert attacks["forged-dm"]["counts"]["delivered_foreign_key"] == 0
    assert attacks["swallow-dms"]["counts"]["arrived"] == attacks["swallow-dms"]["counts"]["sent"]


@pytest.mark.parametrize(("mutation", "attack", "evidence"), [
    ("sender-pub", "forged-dm", "delivered_foreign_key"),
    ("attestation", "swallow-dms", "routed_to_rogue"),
])
async def test_a_node_without_one_check_fails_the_attack_on_it(tmp_path: Path, key_pool: KeyPool, mutation: str,
                                                                attack: str, evidence: str) -> None:
    """A mutant node (tests/mutants/__main__.py: the check ``mutation`` removed) lets ``attack`` through, and the
    scenario says so: the attack fails with its evidence counted."""
    scenario = parse_scenario({"name": f"hostile-peer-without-{mutation}", "peers": 3, "seed": 11,
                               "timings": {"heartbeat_interval": 0.5, "peer_timeout": 2.0},
                               "steps": ["up", {"attack": {"only": attack}}]})
    lines: list[str] = []
    report = await run(scenario, tmp_path, key_pool, lines,
                       command=[sys.executable, "-m", "tests.mutants", mutation])
    assert not report.passed, "\n".join(lines)
    outcome = json.loads((tmp_path / "results" / "report.json").read_text())["attacks"][0]
    assert outcome["attack"] == attack and not outcome["passed"], outcome
    assert outcome["counts"][evidence] >= 1, outcome
