"""Scenario files: a YAML list of steps a user can write, validated once into frozen dataclasses.

::

    name: smoke
    description: users on every node converge and reach each other
    peers: 3                 # default; ``--peers`` overrides
    introducers: 1
    seed: 7                  # random choices (churn) are reproducible
    timings: {heartbeat_interval: 0.5, peer_timeout: 2.0, presence_sync_interval: 2.0}
    steps:
      - up
      - connect: {users: 10}                      # user1..user10, spread over the peers
      - connect: {user: alice, node: peer1}
      - expect: converged
        within: 10
      - expect: delivered                         # every online user DMs every other, exactly once
        within: 30
      - send: {from: alice, to: user1, text: hi}
      - expect: received
        user: user1
        from: alice
        text: hi
        within: 5
      - disconnect: {user: alice}                 # or {count: 2} (random online users)
      - kill: peer2                               # also stop, start, restart, pause, unpause, partition, heal
      - wait_healthy: {within: 30}
      - reconnect: {node: peer2}                  # users that were on peer2 come back on peer2
      - broadcast: {from: alice, text: hello}     # public channel (/all)
      - expect: broadcast_delivered               # every member online at the time, exactly once
        within: 10
      - traffic: {rate: 20}                       # background DMs between users online throughout
      - expect: traffic_delivered
        within: 20
      - repeat:
          times: 5
          steps: [...]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.backend import NodeTimings

NODE_ACTIONS = ("kill", "stop", "start", "restart", "pause", "unpause", "partition", "heal")
EXPECTATIONS = ("converged", "delivered", "received", "traffic_delivered", "broadcast_delivered", "healthy")
STEP_KINDS = ("up", "connect", "disconnect", "reconnect", "send", "broadcast", "expect", "wait_healthy",
              "traffic", "repeat", *NODE_ACTIONS)


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the step."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step: its ``kind`` (see :data:`STEP_KINDS`), arguments, and nested steps for ``repeat``."""

    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    times: int = 1

    def describe(self) -> str:
        """One line for progress output and reports."""
        if self.kind == "repeat":
            return f"repeat {self.times}x ({len(self.steps)} steps)"
        if self.kind == "expect":
            extra = {k: v for k, v in self.args.items() if k not in ("what", "within")}
            return (f"expect {self.args['what']}" + (f" {extra}" if extra else "")
                    + (f" within {self.args['within']}s" if "within" in self.args else ""))
        shown = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.kind} {shown}".strip()


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario."""

    name: str
    description: str
    peers: int
    introducers: int
    seed: int
    timings: NodeTimings
    steps: tuple[Step, ...]
    source: Path | None = None


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file (raises :class:`ScenarioError`)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from None
    return parse_scenario(document, path)


def parse_scenario(document: object, path: Path | None = None) -> Scenario:
    """Validate a scenario document already loaded from YAML."""
    where = str(path) if path else "scenario"
    if not isinstance(document, dict):
        raise ScenarioError(f"{where}: expected a mapping with 'steps'")
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{where}: 'steps' must be a non-empty list")
    timings = document.get("timings", {})
    if not isinstance(timings, dict) or set(timings) - {"heartbeat_interval", "peer_timeout",
                                                        "presence_sync_interval"}:
        raise ScenarioError(f"{where}: 'timings' may set heartbeat_interval, peer_timeout, presence_sync_interval")
    try:
        node_timings = NodeTimings(**{k: float(v) for k, v in timings.items()})
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: timings must be numbers of seconds") from None
    peers, introducers, seed = document.get("peers", 3), document.get("introducers", 1), document.get("seed", 1)
    if not (isinstance(peers, int) and peers >= 1 and isinstance(introducers, int) and introducers >= 1
            and isinstance(seed, int)):
        raise ScenarioError(f"{where}: peers and introducers must be positive integers, seed an integer")
    name = document.get("name") or (path.stem if path else "scenario")
    steps = tuple(_parse_step(raw, f"{where}: step {i + 1}") for i, raw in enumerate(raw_steps))
    return Scenario(str(name), str(document.get("description", "")), peers, introducers, seed, node_timings,
                    steps, path)


def _parse_step(raw: object, where: str) -> Step:
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or not raw:
        raise ScenarioError(f"{where}: a step is a name or a mapping like {{kill: peer2}}")
    kind = next(iter(raw))
    if kind not in STEP_KINDS:
        raise ScenarioError(f"{where}: unknown step {kind!r}; known: {', '.join(STEP_KINDS)}")
    value = raw[kind]
    extra = {k: v for k, v in raw.items() if k != kind}
    if kind == "repeat":
        if not isinstance(value, dict) or not isinstance(value.get("steps"), list):
            raise ScenarioError(f"{where}: repeat needs {{times: N, steps: [...]}}")
        times = value.get("times", 1)
        if not isinstance(times, int) or times < 1:
            raise ScenarioError(f"{where}: repeat times must be a positive integer")
        nested = tuple(_parse_step(s, f"{where}.{i + 1}") for i, s in enumerate(value["steps"]))
        return Step(kind, {}, nested, times)
    if kind == "expect":
        if value not in EXPECTATIONS:
            raise ScenarioError(f"{where}: expect one of {', '.join(EXPECTATIONS)}, not {value!r}")
        args = {"what": value, **extra}
        if "within" in args and not isinstance(args["within"], int | float):
            raise ScenarioError(f"{where}: 'within' must be seconds")
        return Step(kind, args)
    if kind in NODE_ACTIONS:
        if not isinstance(value, str):
            raise ScenarioError(f"{where}: {kind} takes a node name, e.g. '{kind}: peer2'")
        return Step(kind, {"node": value, **extra})
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: {kind} takes a mapping of arguments")
    return Step(kind, {**value, **extra})
