"""Scenario files are validated when loaded, with errors that name the file, the line and the reason."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from socp.settings import FAST_TIMINGS
from testbed import runner, scenario
from testbed.runner import RunReport, StepResult, write_reports
from testbed.scenario import Connect, Expect, NodeAction, Repeat, ScenarioError, Send, load_scenario, parse_scenario

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
    assert scenario.timings.heartbeat_interval == FAST_TIMINGS.heartbeat_interval  # the rest: FAST_TIMINGS
    kinds = [step.kind for step in scenario.steps]
    assert kinds == ["up", "connect", "expect", "kill", "repeat"]
    assert scenario.steps[2].args == {"what": "converged", "within": 5}
    assert scenario.steps[2].describe() == "expect converged within 5s"
    assert scenario.steps[3].args == {"node": "peer2"}
    repeat = scenario.steps[4]
    assert isinstance(repeat, Repeat) and repeat.times == 3 and repeat.steps[0].args == {"count": 1}
    assert scenario.steps[1] == Connect(users=4) and scenario.steps[3] == NodeAction(action="kill", node="peer2")
    assert scenario.steps[1].describe() == "connect users=4"


@pytest.mark.parametrize(("document", "message"), [
    ([], "expected a mapping"),
    ({"steps": []}, "non-empty list"),
    ({"steps": ["teleport"]}, "unknown step 'teleport'"),
    ({"steps": [{"expect": "happiness"}]}, "expect one of"),
    ({"steps": [{"kill": {"node": "peer1"}}]}, "takes a node name"),
    ({"steps": [{"repeat": {"times": 0, "steps": ["up"]}}]}, "positive integer"),
    ({"steps": [{"expect": "converged", "within": "soon"}]}, "'within' must be a number"),
    ({"peers": 0, "steps": ["up"]}, "positive integers"),
    ({"timings": {"warp": 1}, "steps": ["up"]}, "timings may set"),
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


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("steps", "line", "message"), [
    # today's classic: `send` without `to` used to fail as KeyError: 'to' after `up`
    ("  - up\n  - connect: {users: 2}\n  - send: {from: user1, text: hi}\n", 8, "step 3: send needs 'to'"),
    ("  - up\n  - teleport: peer1\n", 7, "step 2: unknown step 'teleport'"),
    ("  - up\n  - connect: {users: two}\n", 7, "step 2: connect 'users' must be an integer, not 'two'"),
    ("  - up\n  - connect: {users: 2, user: alice}\n", 7, "either 'user'"),
    ("  - up\n  - traffic: {rate: -1}\n", 7, "step 2: 'rate' must be positive"),
    ("  - up\n  - send: {from: a, to: b, colour: red}\n", 7, "send does not take 'colour'; it takes from, to, text"),
    ("  - up\n  - expect: received\n    user: alice\n", 7, "received needs 'user' and 'from'"),
    ("  - up\n  - expect: converged\n    user: alice\n", 7, "takes only 'within'"),
    ("  - up\n  - kill: {node: peer1}\n", 7, "kill takes a node name"),
    ("  - up\n  - repeat:\n      times: 2\n      steps:\n        - send: {to: b}\n", 10,
     "step 2.1: send needs 'from'"),
])
def test_a_bad_step_fails_at_load_naming_file_line_and_reason(tmp_path: Path, steps: str, line: int,
                                                                message: str) -> None:
    path = write(tmp_path, "name: broken\npeers: 2\ntimings: {peer_timeout: 3}\nseed: 1\nsteps:\n" + steps)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(("timings", "message"), [
    ("{heartbeat_interval: 3, peer_timeout: 2}", "peer timeout must be longer than the heartbeat interval"),
    ("{peer_timeout: -1}", "must be positive"),
    ("{replay_window: soon}", "replay_window must be a number of seconds"),
    ("{warp: 9}", "timings may set heartbeat_interval, peer_timeout, presence_sync_interval, replay_window"),
])
def test_bad_timings_fail_at_load_with_the_reason(tmp_path: Path, timings: str, message: str) -> None:
    path = write(tmp_path, f"steps: [up]\ntimings: {timings}\n")
    with pytest.raises(ScenarioError, match=message) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}:2: timings")


def test_every_timings_field_can_be_set(tmp_path: Path) -> None:
    path = write(tmp_path, "steps: [up]\ntimings: {heartbeat_interval: 1, peer_timeout: 4, presence_sync_interval: 5,"
                           " replay_window: 60}\n")
    timings = load_scenario(path).timings
    assert (timings.heartbeat_interval, timings.peer_timeout, timings.presence_sync_interval,
            timings.replay_window) == (1.0, 4.0, 5.0, 60.0)


def test_an_unknown_top_level_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nstpes: [up]\nsteps: [up]\n")
    with pytest.raises(ScenarioError, match=r":2: unknown key 'stpes'"):
        load_scenario(path)


def test_steps_are_typed_and_remember_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  - up\n  - send: {from: alice, to: bob}\n  - expect: received\n"
                           "    user: bob\n    from: alice\n    within: 5\n")
    _up, send, expect = load_scenario(path).steps
    assert send == Send(sender="alice", to="bob") and send.text == "hello" and send.line == 3
    assert isinstance(expect, Expect) and (expect.user, expect.sender, expect.within) == ("bob", "alice", 5.0)
    assert expect.describe() == "expect received {'user': 'bob', 'from': 'alice'} within 5s"


def test_the_runner_has_one_handler_for_every_step_expectation_and_node_action() -> None:
    handled = set(runner.STEP_HANDLERS)
    # partition [[...]] and bare heal share their names with node actions: parsed by their value, not the table
    assert handled == (set(scenario.STEP_TYPES.values()) - {Repeat}) | {NodeAction, scenario.Partition,
                                                                         scenario.HealNetwork}
    assert set(runner.EXPECTATION_HANDLERS) == set(scenario.EXPECTATIONS)
    assert set(runner.NODE_ACTIONS) == set(scenario.NODE_ACTIONS)
