"""Scenario files are validated once, with errors that name the file and the step."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from testbed.runner import RunReport, StepResult, write_reports
from testbed.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = sorted((Path(__file__).parents[2] / "testbed" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.steps[0].kind == "up"


def test_shipped_scenarios_include_the_required_three() -> None:
    assert {"smoke", "churn", "node-crash"} <= {p.stem for p in SCENARIOS}


def test_steps_are_parsed_into_kinds_and_arguments() -> None:
    scenario = parse_scenario({"peers": 5, "seed": 9, "timings": {"peer_timeout": 3}, "steps": [
        "up", {"connect": {"users": 4}}, {"expect": "converged", "within": 5}, {"kill": "peer2"},
        {"repeat": {"times": 3, "steps": [{"disconnect": {"count": 1}}]}}]})
    assert (scenario.peers, scenario.seed, scenario.timings.peer_timeout) == (5, 9, 3.0)
    kinds = [step.kind for step in scenario.steps]
    assert kinds == ["up", "connect", "expect", "kill", "repeat"]
    assert scenario.steps[2].args == {"what": "converged", "within": 5}
    assert scenario.steps[2].describe() == "expect converged within 5s"
    assert scenario.steps[3].args == {"node": "peer2"}
    assert scenario.steps[4].times == 3 and scenario.steps[4].steps[0].args == {"count": 1}


@pytest.mark.parametrize(("document", "message"), [
    ([], "expected a mapping"),
    ({"steps": []}, "non-empty list"),
    ({"steps": ["teleport"]}, "unknown step 'teleport'"),
    ({"steps": [{"expect": "happiness"}]}, "expect one of"),
    ({"steps": [{"kill": {"node": "peer1"}}]}, "takes a node name"),
    ({"steps": [{"repeat": {"times": 0, "steps": ["up"]}}]}, "positive integer"),
    ({"steps": [{"expect": "converged", "within": "soon"}]}, "'within' must be seconds"),
    ({"peers": 0, "steps": ["up"]}, "positive integers"),
    ({"timings": {"warp": 1}, "steps": ["up"]}, "'timings' may set"),
])
def test_invalid_scenarios_are_refused_clearly(document: object, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(document, Path("broken.yaml"))


def test_unreadable_scenario_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("steps: [unclosed")
    with pytest.raises(ScenarioError, match=r"bad\.yaml is not valid YAML"):
        load_scenario(tmp_path / "bad.yaml")
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.yaml")


def test_reports_are_written_as_json_and_junit(tmp_path: Path) -> None:
    report = RunReport("smoke", "local", 3, 1, 1, "2026-01-01T00:00:00+00:00", str(tmp_path), passed=False,
                       duration_s=1.5, steps=[
                           StepResult("1", "expect converged within 5s", True, 0.25, "all agree"),
                           StepResult("2", "expect delivered within 5s", False, 5.0, "89/90 messages delivered",
                                      {"messages": 90, "delivered": 89}),
                       ])
    write_reports(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] is False and data["convergence_s"] == [0.25]
    assert data["delivery"] == [{"messages": 90, "delivered": 89}]
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failure = suite.findall("testcase")[1].find("failure")
    assert failure is not None and "89/90" in (failure.get("message") or "")
