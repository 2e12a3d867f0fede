"""The hostile-peer suite's pieces that need no federation: the ``attack`` step, and the helpers its attacks
judge with (a re-timestamped copy keeps its signature, secrets are found wherever they hide)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.adversary import ATTACKS, AttackOutcome
from testbed.adversary.attacks import outcome, plaintexts_in, retimestamped
from testbed.adversary.wire import secret_fields
from testbed.scenario import Attack, ScenarioError, load_scenario, parse_scenario

HOSTILE = Path(__file__).parents[2] / "testbed" / "scenarios" / "hostile-peer.yaml"


def test_the_attack_step_runs_all_attacks_or_the_ones_named() -> None:
    scenario = parse_scenario({"steps": ["up", "attack", {"attack": {"only": "forged-dm, replays"}}]})
    every, some = scenario.steps[1], scenario.steps[2]
    assert isinstance(every, Attack) and every.names == []
    assert isinstance(some, Attack) and some.names == ["forged-dm", "replays"]
    assert some.describe() == "attack only=forged-dm, replays"


def test_an_unknown_attack_is_refused_at_load() -> None:
    with pytest.raises(ScenarioError, match=r"unknown attack.*teleport"):
        parse_scenario({"steps": ["up", {"attack": {"only": "forged-dm,teleport"}}]}, Path("x.yaml"))


def test_the_hostile_peer_scenario_attacks_with_every_finding_covered() -> None:
    scenario = load_scenario(HOSTILE)
    assert any(isinstance(step, Attack) and not step.names for step in scenario.steps)
    assert scenario.peers >= 3
    assert len(ATTACKS) >= 12


def test_a_retimestamped_copy_keeps_everything_but_ts() -> None:
    original = json.dumps({"type": "USER_HELLO", "from": "a", "to": "b", "ts": 1, "payload": {"x": 1},
                           "sig": "SIG"})
    copy = json.loads(retimestamped(original, 99))
    assert copy["ts"] == 99 and copy["sig"] == "SIG" and copy["payload"] == {"x": 1}


def test_login_secrets_are_found_at_any_depth_and_public_data_is_not() -> None:
    leak = {"type": "SERVER_USER_RECORDS", "payload": {"records": [
        {"user_id": "u", "login": {"privkey_store": {}, "pake_password": {"salt": "s", "verifier_hash": "h"}}}]}}
    assert secret_fields(json.dumps(leak)) == {"privkey_store", "pake_password", "salt", "verifier_hash"}
    assert secret_fields(json.dumps({"payload": {"records": [{"user_id": "u", "pubkey": "k"}]}})) == set()
    assert secret_fields("not json") == set()


def test_an_outcome_passes_only_without_failures() -> None:
    held = outcome("x", "1", "refused", [], {"n": 1}, "0 acted")
    broken = outcome("x", "1", "refused", ["it acted"], {"n": 1}, "1 acted")
    assert isinstance(held, AttackOutcome) and held.passed and held.line().startswith("PASS x")
    assert not broken.passed and broken.observed == "1 acted; it acted"
    assert broken.to_json()["counts"] == {"n": 1}


def test_plaintexts_are_found_in_the_logs_that_hold_them(tmp_path: Path) -> None:
    clean, leaky = tmp_path / "peer1.log", tmp_path / "peer2.log"
    clean.write_text("INFO user 1234abcd connected\n")
    leaky.write_bytes(b"DEBUG frame {...} round trip 3 alice->bob 9f9f \xff\n")
    markers = {"round trip 3 alice->bob 9f9f", "s3cret-password"}
    assert plaintexts_in([clean, leaky], markers) == {"peer2.log": ["round trip 3 alice->bob 9f9f"]}
    assert plaintexts_in([clean], markers) == {}
