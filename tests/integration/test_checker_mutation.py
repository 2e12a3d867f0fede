"""Mutation check: the history checker names exactly the messages a deliberately faulty node mishandled.

The federation runs ``tests/mutants/faulty_node.py`` instead of ``socp-node``: the same node with a fault
that drops (or doubles) every Nth direct message forwarded to it, logging each one's ``msg_ref``. The run
must fail, and the checker's verdicts must name those messages, their path, and the node log line.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from testbed import checker
from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from testbed.runner import ScenarioRunner
from testbed.scenario import parse_scenario
from tests import timeout_factor
from tests.integration.conftest import FIRST_USER_KEY, pool_prepare
from tests.keypool import KeyPool

MUTANT = Path(__file__).parents[1] / "mutants" / "faulty_node.py"
SCENARIO = {"name": "mutation", "peers": 2, "seed": 5,
            "timings": {"heartbeat_interval": 0.5, "peer_timeout": 2.0, "presence_sync_interval": 2.0},
            "steps": ["up", {"connect": {"users": 6}}, {"expect": "converged", "within": 15},
                      {"expect": "delivered", "within": 8}]}
MUTANT_LINE = re.compile(r"mutant (dropped|doubled) (MSG_DIRECT:\S+)")


@pytest.mark.parametrize(("mode", "verdict"), [("drop", checker.LOST), ("twice", checker.DUPLICATED)])
async def test_the_checker_names_the_messages_a_faulty_node_mishandled(
        mode: str, verdict: str, tmp_path: Path, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCP_MUTANT", f"{mode}:4")  # inherited by the node processes
    scenario = parse_scenario(SCENARIO)
    backend = LocalCluster(tmp_path / "cluster", ClusterSpec(scenario.peers, scenario.introducers, scenario.timings),
                           prepare=pool_prepare(key_pool), command=[sys.executable, str(MUTANT)])
    lines: list[str] = []
    results = tmp_path / "results"
    report = await ScenarioRunner(scenario, backend, results, timeout_factor=timeout_factor(),
                                  key_source=lambda i: key_pool.key(FIRST_USER_KEY + i % 12),
                                  progress=lines.append).run()
    output = "\n".join(lines)
    assert not report.passed, output

    mishandled = {m.group(2) for log in (results / "logs").glob("*.log") for m in MUTANT_LINE.finditer(log.read_text())}
    assert mishandled, "the mutant never struck: the scenario forwards too few messages"
    data = json.loads((results / "report.json").read_text())
    named = {o["msg_ref"] for o in data["history"]["offenders"] if o["verdict"] == verdict}
    assert named == mishandled, output
    assert data["verdict_counts"][verdict] == len(mishandled)
    assert sum(data["verdict_counts"][v] for v in checker.VIOLATIONS) == len(mishandled)
    # The console names the first offenders with their path, and the node log line that mishandled them.
    first = sorted(named)[0]
    assert any(verdict in line and "->" in line for line in lines), output
    assert any(f"mutant {'dropped' if mode == 'drop' else 'doubled'} " in line and line.lstrip().startswith("peer")
               for line in lines), output
    assert first in output
    assert verdict in (results / "report.html").read_text()
