"""The nemesis schedule, the network steps of scenario files, and the fault proxy's model (no event loop)."""

from __future__ import annotations

import random

import pytest

from testbed import nemesis
from testbed.proxy import RETRANSMIT_S, Effect, NetworkModel
from testbed.scenario import (
    Degrade,
    HealNetwork,
    Nemesis,
    NodeAction,
    Partition,
    Restore,
    ScenarioError,
    parse_scenario,
)

NODES = ["introducer", "peer1", "peer2", "peer3"]


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    step = Nemesis(seed=4, faults=("partition", "pause", "kill", "delay", "loss"), every=5.0, duration=60.0)
    first = nemesis.schedule(step, NODES, NODES[1:])
    assert first == nemesis.schedule(step, NODES, NODES[1:])
    assert first != nemesis.schedule(Nemesis(seed=5, faults=step.faults, every=5.0, duration=60.0), NODES, NODES[1:])
    assert len(first) == 12 and [s.at for s in first] == [5.0 * i for i in range(12)]
    assert all(s.until == s.at + 2.5 for s in first)  # hold defaults to half the period
    for strike in first:
        if strike.fault == "partition":
            left, right = strike.groups
            assert left and right and sorted(left + right) == sorted(NODES)
        elif strike.fault == "kill":
            assert strike.node in NODES[1:]  # introducers are not killed by the nemesis
        else:
            assert strike.node in NODES


def test_network_steps_parse_and_bad_ones_are_refused() -> None:
    scenario = parse_scenario({"steps": [
        "up", {"partition": [["introducer", "peer1"], ["peer2"]]}, "heal", {"heal": "peer2"},
        {"partition": "peer3"}, {"degrade": {"link": "peer1-peer2", "delay": 0.1, "loss": 0.05}}, "restore",
        {"nemesis": {"seed": 3, "faults": ["pause", "delay"], "every": 4, "hold": 1.5, "duration": 20}}]})
    kinds = [type(step) for step in scenario.steps[1:]]
    assert kinds == [Partition, HealNetwork, NodeAction, NodeAction, Degrade, Restore, Nemesis]
    assert scenario.faulty_network
    assert scenario.steps[1].describe() == "partition introducer,peer1 | peer2"
    assert not parse_scenario({"steps": ["up", {"kill": "peer1"}]}).faulty_network
    for bad, message in [({"partition": [["peer1"]]}, "two or more"),
                         ({"partition": [["peer1"], ["peer1"]]}, "each node in one group"),
                         ({"degrade": {"node": "peer1", "link": "peer1-peer2"}}, "not both"),
                         ({"degrade": {"loss": 2}}, "loss between 0 and 1"),
                         ({"nemesis": {"faults": ["meteor"]}}, "nemesis faults are some of"),
                         ({"nemesis": {"every": 2, "hold": 3}}, "shorter than 'every'")]:
        with pytest.raises(ScenarioError, match=message):
            parse_scenario({"steps": ["up", bad]})


def test_the_model_partitions_groups_and_combines_effects() -> None:
    model = NetworkModel(groups=[frozenset({"a", "b"}), frozenset({"c"})], rng=random.Random(1))
    assert model.blocked("a", "c") and model.blocked("c", "b")
    assert not model.blocked("a", "b") and not model.blocked("a", "d") and not model.blocked(None, "c")
    model.nodes["a"] = Effect(delay=0.1)
    model.links[frozenset({"a", "b"})] = Effect(delay=0.05, loss=0.5, bandwidth=1000)
    effect = model.effect("b", "a")
    assert effect.delay == pytest.approx(0.15) and effect.loss == 0.5 and effect.bandwidth == 1000
    assert model.effect("c", "d").idle
    delays = [model.delay_of(Effect(loss=0.5), 0) for _ in range(200)]
    assert set(delays) == {0.0, RETRANSMIT_S}
    assert model.delay_of(Effect(bandwidth=1000), 500) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Effect(loss=1.5)
