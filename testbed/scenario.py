"""Scenario files: a YAML list of steps a user can write, validated when loaded into frozen dataclasses.

A bad file fails at load, before anything starts, naming the file, the line and the reason
(``smoke.yaml:12: step 5: send needs 'to'``): every step is a typed class below whose fields are its YAML
arguments, checked for presence, type and range.

::

    name: smoke
    description: users on every node converge and reach each other
    peers: 3                 # default; ``--peers`` overrides
    introducers: 1
    seed: 7                  # random choices (churn) are reproducible
    timings: {heartbeat_interval: 0.5, peer_timeout: 2.0}   # socp.settings.Timings fields; the rest FAST_TIMINGS
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
      - wait: {seconds: 2}                        # let it run
      - expect: traffic_delivered
        within: 20
      - expect: traffic_accounted                 # every DM sent delivered once or reported (receipts)
        within: 60
      - repeat:
          times: 5
          steps: [...]
      - attack                                    # every hostile-peer attack (testbed.adversary), or
      - attack: {only: "forged-dm,replays"}       # some of them
      # The network between the servers (local backend: the fault proxy, testbed.proxy):
      - partition: [[introducer, peer1], [peer2, peer3]]   # groups that cannot reach each other
      - heal                                      # (bare) end the partition; 'heal: peer2' is the node action
      - degrade: {delay: 0.1, jitter: 0.02, loss: 0.05}    # every link; or node: peer2, or link: peer1-peer2
      - restore                                   # remove every delay, jitter, loss, bandwidth limit
      - nemesis: {seed: 3, faults: [partition, pause, delay, loss, kill], every: 5, hold: 2, duration: 60}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeGuard, Union

import yaml

from socp.settings import FAST_TIMINGS, Timings

NODE_ACTIONS = ("kill", "stop", "start", "restart", "pause", "unpause", "partition", "heal")
NEMESIS_FAULTS = ("partition", "pause", "kill", "delay", "loss")
"""What a ``nemesis`` step may inject (:mod:`testbed.nemesis`)."""
EXPECTATIONS = ("converged", "delivered", "received", "traffic_delivered", "broadcast_delivered", "healthy",
                "traffic_accounted", "partitioned")
TOP_LEVEL = ("name", "description", "peers", "introducers", "seed", "timings", "steps")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file, the line and the reason."""


# --- steps ---------------------------------------------------------------------------------------

def _arg(yaml_name: str, default: Any = None) -> Any:
    """A step field whose YAML argument has another name (``from`` is a Python keyword)."""
    return field(default=default, metadata={"yaml": yaml_name})


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a scenario; each subclass's fields are its YAML arguments."""

    KIND: ClassVar[str] = ""
    line: int = field(default=0, compare=False, kw_only=True)
    """Line of the step in its file (0 when it was not read from a file)."""

    @property
    def kind(self) -> str:
        """The step's name in scenario files (``connect``, ``kill``, …)."""
        return self.KIND

    @property
    def args(self) -> dict[str, Any]:
        """The arguments that differ from their defaults, by their YAML names."""
        shown: dict[str, Any] = {}
        for spec in _arguments(type(self)).values():
            value = getattr(self, spec.name)
            if value != spec.default:
                shown[spec.metadata.get("yaml", spec.name)] = value
        return shown

    def describe(self) -> str:
        """One line for progress output and reports."""
        shown = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.kind} {shown}".strip()

    def check(self) -> None:
        """Raise ValueError when the arguments do not fit together (types are checked before)."""


@dataclass(frozen=True, slots=True)
class Up(Step):
    """``up``: start the federation and wait until it is healthy and meshed."""

    KIND: ClassVar[str] = "up"
    within: float | None = None
    """Seconds to wait (default 120)."""

    def check(self) -> None:
        """``within`` is positive."""
        _positive("within", self.within)


@dataclass(frozen=True, slots=True)
class WaitHealthy(Step):
    """``wait_healthy``: wait until every running node is healthy and linked to every other."""

    KIND: ClassVar[str] = "wait_healthy"
    within: float | None = None

    def check(self) -> None:
        """``within`` is positive."""
        _positive("within", self.within)


@dataclass(frozen=True, slots=True)
class Connect(Step):
    """``connect``: ``{user: alice, node: peer1}``, or ``{users: N}`` spread over the peers (or on ``node``)."""

    KIND: ClassVar[str] = "connect"
    user: str | None = None
    node: str | None = None
    users: int | None = None

    def check(self) -> None:
        """Either one named user or a count."""
        if self.user is not None and self.users is not None:
            raise ValueError("connect takes either 'user' (one named user) or 'users' (a count), not both")
        _positive("users", self.users)


@dataclass(frozen=True, slots=True)
class Disconnect(Step):
    """``disconnect``: ``{user: alice}``, or ``{count: N}`` random online users."""

    KIND: ClassVar[str] = "disconnect"
    user: str | None = None
    count: int | None = None

    def check(self) -> None:
        """Either one named user or a count."""
        if self.user is not None and self.count is not None:
            raise ValueError("disconnect takes either 'user' or 'count', not both")
        _positive("count", self.count)


@dataclass(frozen=True, slots=True)
class Reconnect(Step):
    """``reconnect``: ``{user: alice}`` or every offline user (of ``node``), back on their node or on ``to``."""

    KIND: ClassVar[str] = "reconnect"
    user: str | None = None
    node: str | None = None
    to: str | None = None


@dataclass(frozen=True, slots=True)
class Send(Step):
    """``send``: ``{from: alice, to: bob, text: hi}``, a direct message."""

    KIND: ClassVar[str] = "send"
    sender: str = _arg("from", "")
    to: str = ""
    text: str = "hello"

    def check(self) -> None:
        """Sender and recipient are named."""
        _required(self.KIND, sender=self.sender, to=self.to)


@dataclass(frozen=True, slots=True)
class Broadcast(Step):
    """``broadcast``: ``{from: alice, text: hello}`` on the public channel."""

    KIND: ClassVar[str] = "broadcast"
    sender: str = _arg("from", "")
    text: str | None = None

    def check(self) -> None:
        """The sender is named."""
        _required(self.KIND, sender=self.sender)


@dataclass(frozen=True, slots=True)
class Expect(Step):
    """``expect: WHAT`` with ``within`` (and ``user``, ``from``, ``text`` for ``received``)."""

    KIND: ClassVar[str] = "expect"
    what: str = ""
    within: float | None = None
    user: str | None = None
    sender: str | None = _arg("from")
    text: str | None = None

    def check(self) -> None:
        """A known expectation, with the arguments it takes."""
        if self.what not in EXPECTATIONS:
            raise ValueError(f"expect one of {', '.join(EXPECTATIONS)}, not {self.what!r}")
        _positive("within", self.within)
        if self.what == "received":
            if self.user is None or self.sender is None:
                raise ValueError("expect: received needs 'user' and 'from'")
        elif (self.user, self.sender, self.text) != (None, None, None):
            raise ValueError(f"expect: {self.what} takes only 'within' ('user', 'from', 'text' are for received)")

    def describe(self) -> str:
        """``expect converged within 15s``."""
        extra = {k: v for k, v in self.args.items() if k not in ("what", "within")}
        return (f"expect {self.what}" + (f" {extra}" if extra else "")
                + (f" within {self.within:g}s" if self.within is not None else ""))


@dataclass(frozen=True, slots=True)
class Traffic(Step):
    """``traffic: {rate: N}``: background DMs between the users online now, N per second."""

    KIND: ClassVar[str] = "traffic"
    rate: float = 10.0

    def check(self) -> None:
        """The rate is positive."""
        _positive("rate", self.rate)


@dataclass(frozen=True, slots=True)
class Attack(Step):
    """``attack``: run the hostile-peer attacks (:mod:`testbed.adversary`), all or ``only`` some (comma-separated);
    the step fails unless every defence held and the honest users kept talking."""

    KIND: ClassVar[str] = "attack"
    only: str | None = None

    @property
    def names(self) -> list[str]:
        """The attacks chosen (empty: all)."""
        return [name.strip() for name in (self.only or "").split(",") if name.strip()]

    def check(self) -> None:
        """Only known attacks."""
        from testbed.adversary import ATTACKS  # imported when a scenario uses the step
        unknown = [name for name in self.names if name not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")


@dataclass(frozen=True, slots=True)
class Wait(Step):
    """``wait: {seconds: N}``: let the federation (and running traffic) go on for N seconds.

    A step of the story ("traffic runs for a while, then a node dies"), not a way to wait for a condition:
    conditions are ``expect`` steps, which poll.
    """

    KIND: ClassVar[str] = "wait"
    seconds: float = 1.0

    def check(self) -> None:
        """The duration is positive."""
        _positive("seconds", self.seconds)


@dataclass(frozen=True, slots=True)
class NodeAction(Step):
    """``kill: peer2`` (and stop, start, restart, pause, unpause, partition, heal)."""

    KIND: ClassVar[str] = "node action"
    action: str = ""
    node: str = ""

    @property
    def kind(self) -> str:
        """The action (``kill``, …)."""
        return self.action

    @property
    def args(self) -> dict[str, Any]:
        """``{node: ...}``."""
        return {"node": self.node}


@dataclass(frozen=True, slots=True)
class Repeat(Step):
    """``repeat: {times: N, steps: [...]}``."""

    KIND: ClassVar[str] = "repeat"
    times: int = 1
    steps: tuple[Step, ...] = ()

    def describe(self) -> str:
        """``repeat 4x (5 steps)``."""
        return f"repeat {self.times}x ({len(self.steps)} steps)"


@dataclass(frozen=True, slots=True)
class Partition(Step):
    """``partition: [[a, b], [c, d]]``: groups of nodes that cannot reach each other (``partition: peer2`` is the
    node action)."""

    KIND: ClassVar[str] = "partition"
    groups: tuple[tuple[str, ...], ...] = ()

    def check(self) -> None:
        """At least two non-empty groups, no node in two."""
        names = [node for group in self.groups for node in group]
        if len(self.groups) < 2 or not all(self.groups) or len(names) != len(set(names)):
            raise ValueError("partition takes two or more non-empty groups of node names, each node in one group")

    def describe(self) -> str:
        """``partition introducer,peer1 | peer2,peer3``."""
        return "partition " + " | ".join(",".join(group) for group in self.groups)


@dataclass(frozen=True, slots=True)
class HealNetwork(Step):
    """``heal`` (bare): end the partition (``heal: peer2`` is the node action)."""

    KIND: ClassVar[str] = "heal"


@dataclass(frozen=True, slots=True)
class Degrade(Step):
    """``degrade: {delay, jitter, loss, bandwidth}`` on every link, or on ``node``'s, or on ``link: a-b``."""

    KIND: ClassVar[str] = "degrade"
    node: str | None = None
    link: str | None = None
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: float = 0.0
    """Bytes per second (0: unlimited)."""

    def check(self) -> None:
        """Values in range, one target at most, a link names two nodes."""
        if self.node is not None and self.link is not None:
            raise ValueError("degrade takes 'node' or 'link', not both")
        if self.link is not None and len(self.link.split("-")) != 2:
            raise ValueError("degrade 'link' names two nodes, e.g. peer1-peer2")
        if min(self.delay, self.jitter, self.loss, self.bandwidth) < 0 or self.loss > 1:
            raise ValueError("degrade: delay, jitter, bandwidth must be >= 0 and loss between 0 and 1")


@dataclass(frozen=True, slots=True)
class Restore(Step):
    """``restore``: remove every link effect ``degrade`` applied."""

    KIND: ClassVar[str] = "restore"


@dataclass(frozen=True, slots=True)
class Nemesis(Step):
    """``nemesis: {seed, faults, every, hold, duration}``: a random fault schedule, the same for the same seed.

    Every ``every`` seconds one of ``faults`` strikes, and is undone ``hold`` seconds later (default half of
    ``every``), for ``duration`` seconds; then the network is healed and restored, paused nodes resumed,
    killed nodes started again (their users stay offline: ``reconnect`` brings them back).
    """

    KIND: ClassVar[str] = "nemesis"
    seed: int = 1
    faults: tuple[str, ...] = ("partition", "pause", "delay", "loss")
    every: float = 5.0
    hold: float | None = None
    duration: float = 60.0

    def check(self) -> None:
        """Known faults; positive times; a hold shorter than the period."""
        unknown = [f for f in self.faults if f not in NEMESIS_FAULTS]
        if not self.faults or unknown:
            raise ValueError(f"nemesis faults are some of {', '.join(NEMESIS_FAULTS)}")
        _positive("every", self.every)
        _positive("duration", self.duration)
        _positive("hold", self.hold)
        if self.hold is not None and self.hold >= self.every:
            raise ValueError("nemesis 'hold' must be shorter than 'every'")


NETWORK_STEPS = (Partition, HealNetwork, Degrade, Restore, Nemesis)
"""Steps that need the faulty network (:attr:`testbed.nodeplan.ClusterSpec.faulty_network` on ``local``)."""

STEP_TYPES: dict[str, type[Step]] = {cls.KIND: cls for cls in (
    Up, WaitHealthy, Connect, Disconnect, Reconnect, Send, Broadcast, Expect, Traffic, Wait, Repeat, Attack, Degrade,
    Restore, Nemesis)}
"""Step name → class (node actions aside: :data:`NODE_ACTIONS`)."""
STEP_KINDS = (*STEP_TYPES, *NODE_ACTIONS)
"""Every step name a scenario file may use."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario."""

    name: str
    description: str
    peers: int
    introducers: int
    seed: int
    timings: Timings
    steps: tuple[Step, ...]
    source: Path | None = None

    @property
    def faulty_network(self) -> bool:
        """Whether a step partitions or degrades the network (the local backend then starts its fault proxy)."""
        def uses(steps: tuple[Step, ...]) -> bool:
            return any(isinstance(step, NETWORK_STEPS) or (isinstance(step, Repeat) and uses(step.steps))
                       for step in steps)

        return uses(self.steps)


# --- loading -------------------------------------------------------------------------------------

class _MarkedDict(dict[Any, Any]):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    line = 0
    key_lines: dict[Any, int]


class _MarkedList(list[Any]):
    """A YAML sequence that remembers each item's line (1-based)."""

    lines: list[int]


class _MarkingLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings and sequences remember where their entries were written."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _MarkedDict:
    value = _MarkedDict(loader.construct_mapping(node, deep=True))
    value.line = node.start_mark.line + 1
    value.key_lines = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, typing.Hashable):
            value.key_lines[key] = key_node.start_mark.line + 1
    return value


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _MarkedList:
    value = _MarkedList(loader.construct_sequence(node, deep=True))
    value.lines = [item.start_mark.line + 1 for item in node.value]
    return value


_MarkingLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_MarkingLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file (raises :class:`ScenarioError` naming the file and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        document = yaml.load(text, Loader=_MarkingLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from None
    return parse_scenario(document, path)


def parse_scenario(document: object, path: Path | None = None) -> Scenario:
    """Validate a scenario document loaded from YAML (lines are named when :func:`load_scenario` read it)."""
    where = str(path) if path else "scenario"
    if not isinstance(document, dict):
        raise ScenarioError(f"{where}: expected a mapping with 'steps'")

    def at(key: str) -> str:
        line = getattr(document, "key_lines", {}).get(key)
        return f"{where}:{line}" if line else where

    unknown = [key for key in document if key not in TOP_LEVEL]
    if unknown:
        raise ScenarioError(f"{at(unknown[0])}: unknown key {unknown[0]!r}; a scenario has {', '.join(TOP_LEVEL)}")
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{at('steps')}: 'steps' must be a non-empty list")
    timings = _timings(document.get("timings", {}), at("timings"))
    peers, introducers, seed = document.get("peers", 3), document.get("introducers", 1), document.get("seed", 1)
    if not (_is_int(peers) and peers >= 1 and _is_int(introducers) and introducers >= 1 and _is_int(seed)):
        raise ScenarioError(f"{where}: peers and introducers must be positive integers, seed an integer")
    name = document.get("name") or (path.stem if path else "scenario")
    steps = _parse_steps(raw_steps, where, "step ")
    return Scenario(str(name), str(document.get("description", "")), peers, introducers, seed, timings, steps, path)


def _timings(raw: object, where: str) -> Timings:
    """The scenario's timers: :data:`~socp.settings.FAST_TIMINGS` with the fields the file sets."""
    names = [spec.name for spec in dataclasses.fields(Timings)]
    if not isinstance(raw, dict) or set(raw) - set(names):
        raise ScenarioError(f"{where}: timings may set {', '.join(names)} (seconds)")
    for key, value in raw.items():
        if not _is_number(value):
            raise ScenarioError(f"{where}: timings: {key} must be a number of seconds, not {value!r}")
    try:
        return dataclasses.replace(FAST_TIMINGS, **{key: float(value) for key, value in raw.items()})
    except ValueError as exc:
        raise ScenarioError(f"{where}: timings: {exc}") from None


def _parse_steps(raw_steps: list[Any], where: str, label: str) -> tuple[Step, ...]:
    lines = getattr(raw_steps, "lines", None)
    steps = []
    for number, raw in enumerate(raw_steps, 1):
        line = lines[number - 1] if lines else 0
        place = f"{where}:{line}: {label}{number}" if line else f"{where}: {label}{number}"
        steps.append(_parse_step(raw, place, line, where, f"{label}{number}."))
    return tuple(steps)


def _parse_step(raw: object, place: str, line: int, where: str, label: str) -> Step:
    if isinstance(raw, str):
        raw = {raw: None}
    if not isinstance(raw, dict) or not raw:
        raise ScenarioError(f"{place}: a step is a name or a mapping like {{kill: peer2}}")
    kind = next(iter(raw))
    if kind not in STEP_KINDS:
        raise ScenarioError(f"{place}: unknown step {kind!r}; known: {', '.join(STEP_KINDS)}")
    value = raw[kind]
    siblings = {k: v for k, v in raw.items() if k != kind}
    try:
        if kind == "partition" and isinstance(value, list) and not siblings:
            if not all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in value):
                raise ValueError("partition takes a node name or a list of groups, e.g. [[peer1, peer2], [peer3]]")
            step = Partition(groups=tuple(tuple(group) for group in value), line=line)
            step.check()
            return step
        if kind == "heal" and value is None and not siblings:
            return HealNetwork(line=line)
        if kind in NODE_ACTIONS:
            if not isinstance(value, str) or siblings:
                raise ValueError(f"{kind} takes a node name, e.g. '{kind}: peer2'")
            return NodeAction(action=kind, node=value, line=line)
        if kind == "repeat":
            if not isinstance(value, dict) or not isinstance(value.get("steps"), list) or not value["steps"] \
                    or set(value) - {"times", "steps"} or siblings:
                raise ValueError("repeat needs {times: N, steps: [...]}")
            times = value.get("times", 1)
            if not _is_int(times) or times < 1:
                raise ValueError("repeat times must be a positive integer")
            return Repeat(times=times, steps=_parse_steps(value["steps"], where, label), line=line)
        if kind == "expect":
            arguments = {"what": value, **siblings}
        else:
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{kind} takes a mapping of arguments, e.g. {{{kind}: {{...}}}}")
            arguments = {**(value or {}), **siblings}
        return _build(STEP_TYPES[kind], arguments, line)
    except ScenarioError:
        raise  # a nested step's, already placed
    except ValueError as exc:
        raise ScenarioError(f"{place}: {exc}") from None


def _arguments(cls: type[Step]) -> dict[str, dataclasses.Field[Any]]:
    """The YAML arguments of a step class: YAML name → field."""
    return {spec.metadata.get("yaml", spec.name): spec for spec in dataclasses.fields(cls) if spec.name != "line"}


def _build(cls: type[Step], arguments: Mapping[Any, Any], line: int) -> Step:
    """An instance of ``cls`` from YAML ``arguments``, each checked against its field's type."""
    specs = _arguments(cls)
    hints = typing.get_type_hints(cls)
    unknown = [str(key) for key in arguments if key not in specs]
    if unknown:
        raise ValueError(f"{cls.KIND} does not take {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(specs) or 'no arguments'}")
    values = {specs[key].name: _typed(cls.KIND, key, value, hints[specs[key].name])
              for key, value in arguments.items()}
    step = cls(**values, line=line)
    step.check()
    return step


def _typed(kind: str, key: str, value: object, hint: Any) -> Any:
    """``value`` if it fits ``hint`` (str, int, float, or one of them or None); ints are accepted as floats."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if str in allowed and isinstance(value, str):
        return value
    if int in allowed and _is_int(value):
        return value
    if float in allowed and _is_number(value):
        return float(value)
    if tuple[str, ...] in allowed and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    wanted = " or ".join({str: "text", int: "an integer", float: "a number"}.get(t, "a list of names")
                         for t in allowed if t is not type(None))
    raise ValueError(f"{kind} '{key}' must be {wanted}, not {value!r}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"'{name}' must be positive, not {value!r}")


def _required(kind: str, **values: str) -> None:
    for name, value in values.items():
        if not value:
            raise ValueError(f"{kind} needs '{'from' if name == 'sender' else name}'")
