"""Runs a scenario against a cluster backend: scripted users, faults, checks, reports.

The runner drives nodes only through the :class:`~testbed.backend.ClusterBackend` and users only through
the client library, so the same scenario runs on processes and on containers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from client.connection import ClientConnection
from client.keystore import Identity
from socp import crypto
from socp.errors import ProtocolError
from socp.user import ClientEvent, DirectMessage, PublicMessage
from testbed import checks
from testbed.backend import BackendUnsupported, ClusterBackend, ClusterSpec, create_backend
from testbed.scenario import NODE_ACTIONS, Scenario, ScenarioError, Step, load_scenario

DEFAULT_WITHIN = 30.0
MAILBOX_LIMIT = 200_000


class StepFailed(Exception):
    """A step could not do what it says; the message is the report's detail."""


@dataclass(slots=True)
class StepResult:
    """What one step did: ``ok``, seconds taken, detail, and figures for the report."""

    index: str
    description: str
    ok: bool
    seconds: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RunReport:
    """Everything a run produced; written as report.json and junit.xml."""

    scenario: str
    backend: str
    peers: int
    introducers: int
    seed: int
    started_at: str
    results_dir: str
    passed: bool = False
    duration_s: float = 0.0
    steps: list[StepResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data, with the headline figures gathered up front."""
        data = asdict(self)
        data["convergence_s"] = [s.seconds for s in self.steps if s.description.startswith("expect converged")]
        data["delivery"] = [s.data for s in self.steps if s.description.startswith("expect delivered")]
        data["traffic"] = [s.data for s in self.steps if s.description.startswith("expect traffic_delivered")]
        return data


class Mailbox:
    """Every event of one user's connection, kept so that several consumers can each read them all."""

    def __init__(self) -> None:
        self.events: list[ClientEvent] = []
        self._changed = asyncio.Condition()

    async def pump(self, client: ClientConnection) -> None:
        """Move the client's events into the mailbox until the connection ends."""
        with contextlib.suppress(Exception):
            while True:
                event = await client.next_event()
                async with self._changed:
                    self.events.append(event)
                    if len(self.events) > MAILBOX_LIMIT:
                        del self.events[: MAILBOX_LIMIT // 2]
                    self._changed.notify_all()

    def cursor(self) -> Cursor:
        """A reader that starts at the next event to arrive."""
        return Cursor(self, len(self.events))


class Cursor:
    """One consumer's position in a :class:`Mailbox`."""

    def __init__(self, mailbox: Mailbox, position: int) -> None:
        self.mailbox = mailbox
        self.position = position

    async def next(self, timeout: float) -> ClientEvent:
        """The next event after this cursor; raises TimeoutError."""
        box = self.mailbox
        async with asyncio.timeout(timeout):
            async with box._changed:
                await box._changed.wait_for(lambda: self.position < len(box.events))
        event = box.events[self.position]
        self.position += 1
        return event


@dataclass(slots=True)
class User:
    """A scripted user: name, identity, the node it is (or was last) on, and its live connection."""

    name: str
    identity: Identity
    node: str
    client: ClientConnection | None = None
    mailbox: Mailbox = field(default_factory=Mailbox)
    pump: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool:
        """Connected and not closed."""
        return self.client is not None and not self.client.closed


@dataclass(slots=True)
class _Broadcast:
    sender: str
    text: str
    recipients: dict[str, Cursor]
    sent_at: float


@dataclass(slots=True)
class _Traffic:
    run: str
    cursors: dict[str, Cursor]
    task: asyncio.Task[None] | None = None
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)   # (sender, recipient) -> count
    participants: set[str] = field(default_factory=set)
    sent_at: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


KeySource = Callable[[int], crypto.PrivateKey]


class ScenarioRunner:
    """Executes one :class:`Scenario` on one backend and builds its :class:`RunReport`."""

    def __init__(self, scenario: Scenario, backend: ClusterBackend, results_dir: Path, *,
                 timeout_factor: float = 1.0, key_source: KeySource | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.scenario = scenario
        self.backend = backend
        self.results_dir = results_dir
        self.factor = timeout_factor
        self.key_source = key_source
        self.progress = progress or (lambda line: None)
        self.rng = random.Random(scenario.seed)
        self.users: dict[str, User] = {}
        self._next_user = 1
        self._keys_used = 0
        self._traffic: _Traffic | None = None
        self._broadcasts: list[_Broadcast] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._started = False
        self._count = sum(_count(step) for step in scenario.steps)
        self._done = 0

    # --- running ---------------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Run every step (stopping at the first failure), collect logs, tear down, write the reports."""
        spec = ClusterSpec(self.scenario.peers, self.scenario.introducers, self.scenario.timings)
        report = RunReport(self.scenario.name, self.backend.name, spec.peers, spec.introducers, self.scenario.seed,
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), str(self.results_dir))
        start = time.monotonic()
        try:
            # Every background task (event pumps, traffic) lives in this group; the teardown inside it
            # cancels them, so none outlives the run.
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                try:
                    report.passed = await self._run_steps(self.scenario.steps, "", report)
                finally:
                    await self._teardown(report)
        finally:
            self._tasks = None
            report.duration_s = round(time.monotonic() - start, 3)
            write_reports(report, self.results_dir)
        return report

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._tasks is None:
            coro.close()
            raise StepFailed("background work needs a running scenario")
        return self._tasks.create_task(coro)

    async def _run_steps(self, steps: tuple[Step, ...], prefix: str, report: RunReport) -> bool:
        for number, step in enumerate(steps, 1):
            index = f"{prefix}{number}"
            if step.kind == "repeat":
                for round_number in range(1, step.times + 1):
                    if not await self._run_steps(step.steps, f"{index}.{round_number}.", report):
                        return False
                continue
            result = await self._run_step(index, step)
            report.steps.append(result)
            self._done += 1
            status = "ok  " if result.ok else "FAIL"
            self.progress(f"[{self._done:>3}/{self._count}] {status} {result.description:<46} "
                          f"{result.seconds:7.2f}s  {result.detail}")
            if not result.ok:
                return False
        return True

    async def _run_step(self, index: str, step: Step) -> StepResult:
        start = time.monotonic()
        description = step.describe()
        try:
            detail, data = await self._dispatch(step)
            return StepResult(index, description, True, time.monotonic() - start, detail, data)
        except (StepFailed, BackendUnsupported, TimeoutError, ScenarioError) as exc:
            return StepResult(index, description, False, time.monotonic() - start, str(exc))
        except Exception as exc:  # a broken step must still produce a report and a teardown
            return StepResult(index, description, False, time.monotonic() - start,
                              f"{type(exc).__name__}: {exc}")

    async def _dispatch(self, step: Step) -> tuple[str, dict[str, Any]]:
        if step.kind in NODE_ACTIONS:
            return await self._node_action(step.kind, step.args["node"])
        handler = getattr(self, f"_step_{step.kind}")
        result: tuple[str, dict[str, Any]] = await handler(step.args)
        return result

    def _within(self, args: dict[str, Any] | Any, default: float = DEFAULT_WITHIN) -> float:
        return float(args.get("within", default)) * self.factor

    # --- steps -----------------------------------------------------------------------------------

    async def _step_up(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        await self.backend.start(self._within(args, 120))
        self._started = True
        return f"{len(self.backend.node_names)} nodes healthy and meshed", {"nodes": self.backend.node_names}

    async def _step_wait_healthy(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        seconds = await self.backend.wait_healthy(self._within(args))
        return f"healthy full mesh after {seconds:.2f}s", {"seconds": seconds}

    async def _step_connect(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        peers = self.backend.peer_names
        wanted: list[tuple[str, str]] = []
        if "user" in args:
            wanted.append((str(args["user"]), str(args.get("node", peers[0]))))
        else:
            count = int(args.get("users", 1))
            nodes = [str(args["node"])] if "node" in args else peers
            for i in range(count):
                wanted.append((f"user{self._next_user}", nodes[i % len(nodes)]))
                self._next_user += 1
        await asyncio.gather(*(self._connect(name, node) for name, node in wanted))
        return f"{len(wanted)} users connected", {"users": {name: node for name, node in wanted}}

    async def _step_disconnect(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "user" in args:
            names = [str(args["user"])]
        else:
            candidates = sorted(u.name for u in self.users.values() if u.online and u.name not in self._pinned())
            count = int(args.get("count", 1))
            if count > len(candidates):
                raise StepFailed(f"cannot disconnect {count} users: only {len(candidates)} online")
            names = self.rng.sample(candidates, count)
        for name in names:
            await self._close(self._user(name))
        return f"disconnected {', '.join(names)}", {"users": names}

    async def _step_reconnect(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "user" in args:
            users = [self._user(str(args["user"]))]
        else:
            node = args.get("node")
            users = [u for u in self.users.values() if not u.online and (node is None or u.node == node)]
        await asyncio.gather(*(self._connect(u.name, str(args.get("to", u.node))) for u in users))
        return f"reconnected {len(users)} users", {"users": [u.name for u in users]}

    async def _step_send(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sender, recipient = self._online(str(args["from"])), self._user(str(args["to"]))
        assert sender.client is not None
        try:
            await sender.client.send_direct(recipient.identity.user_id, str(args.get("text", "hello")))
        except ProtocolError as exc:
            raise StepFailed(f"{sender.name} cannot send to {recipient.name}: {exc}") from None
        return "sent", {}

    async def _step_broadcast(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sender = self._online(str(args["from"]))
        assert sender.client is not None
        recipients = {u.name: u.mailbox.cursor() for u in self.users.values() if u.online and u is not sender}
        text = str(args.get("text", f"hello all {secrets.token_hex(4)}"))
        await sender.client.send_public(text)
        self._broadcasts.append(_Broadcast(sender.name, text, recipients, time.monotonic()))
        return f"sent to {len(recipients)} members", {}

    async def _expect_broadcasts(self, within: float) -> tuple[str, dict[str, Any]]:
        """Every broadcast since the last check reached every member online at the time, exactly once."""
        pending, self._broadcasts = self._broadcasts, []
        if not pending:
            raise StepFailed("no broadcast to check")
        problems: list[str] = []
        latencies: list[float] = []
        total = 0
        for broadcast in pending:
            sender = self._online(broadcast.sender)
            assert sender.client is not None
            marker = f"bmark {secrets.token_hex(4)}"
            # Per-path ordering: a duplicate of the broadcast would arrive before this marker.
            await sender.client.send_public(marker)
            sender_id = sender.identity.user_id

            async def count(name: str, cursor: Cursor, text: str = broadcast.text, sent: float = broadcast.sent_at,
                            marker: str = marker, sender_id: str = sender_id) -> int:
                seen = 0
                while True:
                    event = await cursor.next(within)
                    if checks.is_duplicate_delivery(event):
                        seen += 1  # a second copy the client refused still means the network duplicated it
                    if isinstance(event, PublicMessage) and event.sender_id == sender_id:
                        if event.text == marker:
                            return seen
                        if event.text == text:
                            if not seen:
                                latencies.append(time.monotonic() - sent)
                            seen += 1

            live = {name: cursor for name, cursor in broadcast.recipients.items() if self.users[name].online}
            try:
                async with asyncio.timeout(within):
                    counts = await asyncio.gather(*(count(name, cursor) for name, cursor in live.items()))
            except TimeoutError:
                raise StepFailed(f"broadcast from {broadcast.sender} or its marker did not reach every member "
                                 f"within {within:g}s") from None
            total += len(live)
            problems += [f"{name} got it {n} times" for name, n in zip(live, counts, strict=True) if n != 1]
        detail = f"{len(pending)} broadcasts, {total} deliveries"
        if problems:
            raise StepFailed(f"{detail}; {', '.join(problems)}")
        return detail + ", each exactly once", {"deliveries": total, "latency_s": checks.percentiles(latencies)}

    async def _step_expect(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        what = args["what"]
        within = self._within(args)
        if what == "healthy":
            return await self._step_wait_healthy(args)
        online = [u for u in self.users.values() if u.online]
        clients = [u.client for u in online if u.client is not None]
        if what == "converged":
            result = await checks.converged(clients, {u.identity.user_id for u in online}, timeout=within)
        elif what == "delivered":
            if len(clients) < 2:
                raise StepFailed("expect delivered needs at least two online users")
            cursors = {u.identity.user_id: u.mailbox.cursor() for u in online}
            result = await checks.delivery(clients, timeout=within,
                                           receive=lambda client, t: cursors[client.user_id].next(t))
        elif what == "received":
            return await self._expect_received(args, within)
        elif what == "traffic_delivered":
            return await self._expect_traffic(within)
        elif what == "broadcast_delivered":
            return await self._expect_broadcasts(within)
        else:  # validated by the scenario parser
            raise StepFailed(f"unknown expectation {what}")
        if not result.ok:
            raise StepFailed(result.detail)
        return result.detail, {"seconds": result.seconds, **result.data}

    async def _expect_received(self, args: dict[str, Any], within: float) -> tuple[str, dict[str, Any]]:
        user = self._online(str(args["user"]))
        sender = self._user(str(args["from"]))
        text = args.get("text")
        cursor = Cursor(user.mailbox, 0)
        deadline = time.monotonic() + within
        while True:
            try:
                event = await cursor.next(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                reading = f" reading {text!r}" if text is not None else ""
                raise StepFailed(f"{user.name} got no message from {sender.name}{reading} within {within:g}s") from None
            if (isinstance(event, DirectMessage) and event.sender_id == sender.identity.user_id
                    and (text is None or event.text == text)):
                return f"{user.name} received it", {}

    async def _step_traffic(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if self._traffic is not None:
            raise StepFailed("traffic is already running")
        rate = float(args.get("rate", 10))
        participants = {u.name for u in self.users.values() if u.online}
        if len(participants) < 2:
            raise StepFailed("traffic needs at least two online users")
        run = secrets.token_hex(4)
        cursors = {name: self.users[name].mailbox.cursor() for name in participants}
        traffic = _Traffic(run, cursors, participants=participants)
        traffic.task = self._spawn(self._generate_traffic(traffic, rate))
        self._traffic = traffic
        return f"{rate:g} msg/s between {len(participants)} users", {"rate": rate}

    async def _generate_traffic(self, traffic: _Traffic, rate: float) -> None:
        sequence = 0
        interval = 1.0 / rate
        while True:
            alive = sorted(name for name in traffic.participants if self.users[name].online)
            if len(alive) >= 2:
                sender_name, recipient_name = self.rng.sample(alive, 2)
                sender, recipient = self.users[sender_name], self.users[recipient_name]
                body = f"traffic {traffic.run} {sequence}"
                sequence += 1
                traffic.sent_at[body] = time.monotonic()
                # Counted before sending: a send that fails between steady users is a lost message, not one
                # that never existed (participants are spared by random disconnects).
                traffic.sent[(sender_name, recipient_name)] += 1
                try:
                    assert sender.client is not None
                    await sender.client.send_direct(recipient.identity.user_id, body)
                except Exception as exc:  # recorded and judged by traffic_delivered
                    traffic.failures.append(f"{sender_name} -> {recipient_name}: {exc}")
            await asyncio.sleep(interval)

    async def _expect_traffic(self, within: float) -> tuple[str, dict[str, Any]]:
        traffic = self._traffic
        if traffic is None:
            raise StepFailed("no traffic was started")
        self._traffic = None
        await _cancel(traffic.task)
        # Only users online throughout are judged: a message to someone who left may rightly be refused.
        steady = {name for name in traffic.participants if self.users[name].online}
        expected = {(s, r): n for (s, r), n in traffic.sent.items() if s in steady and r in steady}
        markers = {(s, r) for s in steady for r in steady if s != r}
        for sender, recipient in markers:
            client = self.users[sender].client
            assert client is not None
            await client.send_direct(self.users[recipient].identity.user_id, f"tmark {traffic.run} {sender}")
        got: Counter[tuple[str, str]] = Counter()
        latencies: list[float] = []
        ids = {self.users[name].identity.user_id: name for name in steady}

        refused = [0]

        async def collect(name: str) -> None:
            pending = {f"tmark {traffic.run} {other}" for other in steady if other != name}
            cursor = traffic.cursors[name]
            while pending:
                event = await cursor.next(within)
                if checks.is_duplicate_delivery(event):
                    refused[0] += 1
                    continue
                if not isinstance(event, DirectMessage) or event.sender_id not in ids:
                    continue
                if event.text in pending:
                    pending.discard(event.text)
                elif event.text.startswith(f"traffic {traffic.run} "):
                    got[(ids[event.sender_id], name)] += 1
                    latencies.append(time.monotonic() - traffic.sent_at.get(event.text, time.monotonic()))

        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(collect(name) for name in steady))
        except TimeoutError:
            raise StepFailed(f"traffic markers did not all arrive within {within:g}s") from None
        total = sum(expected.values())
        received = sum(min(got[pair], n) for pair, n in expected.items())
        duplicates = refused[0] + sum(max(0, got[pair] - n) for pair, n in expected.items())
        data = {"messages": total, "delivered": received, "duplicates": duplicates,
                "latency_s": checks.percentiles(latencies), "users": len(steady), "send_failures": traffic.failures}
        detail = f"{received}/{total} traffic messages between {len(steady)} steady users, {duplicates} duplicates"
        if traffic.failures:
            detail += f"; {len(traffic.failures)} sends failed, first: {traffic.failures[0]}"
        if received != total or duplicates:
            raise StepFailed(detail)
        return detail, data

    async def _node_action(self, action: str, node: str) -> tuple[str, dict[str, Any]]:
        if node not in self.backend.node_names:
            raise StepFailed(f"no node {node!r}; nodes are {', '.join(self.backend.node_names)}")
        await getattr(self.backend, "stop_node" if action == "stop" else
                      "start_node" if action == "start" else action)(node)
        if action in ("kill", "stop", "restart"):
            # Users attached to a node that went down lost their connection.
            for user in self.users.values():
                if user.node == node and user.client is not None:
                    await self._close(user)
        return f"{action} {node}", {}

    # --- users -----------------------------------------------------------------------------------

    async def _connect(self, name: str, node: str) -> None:
        user = self.users.get(name)
        if user is None:
            user = User(name, await self._identity(name), node)
            self.users[name] = user
        if user.online:
            raise StepFailed(f"{name} is already connected")
        user.node = node
        user.mailbox = Mailbox()
        user.client = await ClientConnection.connect(self.backend.url(node), user.identity,
                                                     timeout=10 * self.factor)
        user.pump = self._spawn(user.mailbox.pump(user.client))

    async def _identity(self, name: str) -> Identity:
        if self.key_source is not None:
            key = self.key_source(self._keys_used)
            self._keys_used += 1
        else:
            key = await asyncio.to_thread(crypto.generate_private_key)
        return Identity(str(uuid.UUID(int=self.rng.getrandbits(128), version=4)), name, key)

    async def _close(self, user: User) -> None:
        if user.client is not None:
            with contextlib.suppress(Exception):
                await user.client.close()
        await _cancel(user.pump)
        user.client, user.pump = None, None

    def _user(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise StepFailed(f"no user {name!r}; users are {', '.join(sorted(self.users)) or 'none'}") from None

    def _online(self, name: str) -> User:
        user = self._user(name)
        if not user.online:
            raise StepFailed(f"{name} is not connected")
        return user

    def _pinned(self) -> set[str]:
        # Random disconnects spare the users that running traffic is judged on.
        return self._traffic.participants if self._traffic else set()

    async def _teardown(self, report: RunReport) -> None:
        if self._traffic is not None:
            await _cancel(self._traffic.task)
        for user in self.users.values():
            await self._close(user)
        with contextlib.suppress(Exception):
            self.backend.collect_logs(self.results_dir / "logs")
        await self.backend.stop()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _count(step: Step) -> int:
    return step.times * sum(_count(s) for s in step.steps) if step.kind == "repeat" else 1


def write_reports(report: RunReport, directory: Path) -> None:
    """Write ``report.json`` and ``junit.xml`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    failures = sum(1 for step in report.steps if not step.ok)
    suite = ElementTree.Element("testsuite", name=f"socp-testbed.{report.scenario}", tests=str(len(report.steps)),
                                failures=str(failures), time=f"{report.duration_s:.3f}",
                                timestamp=report.started_at)
    for step in report.steps:
        case = ElementTree.SubElement(suite, "testcase", classname=f"{report.scenario}.{report.backend}",
                                      name=f"{step.index} {step.description}", time=f"{step.seconds:.3f}")
        if not step.ok:
            failure = ElementTree.SubElement(case, "failure", message=step.detail[:500])
            failure.text = f"{step.detail}\nlogs: {directory / 'logs'}"
    ElementTree.ElementTree(suite).write(directory / "junit.xml", encoding="utf-8", xml_declaration=True)


# --- command line --------------------------------------------------------------------------------

def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` command to ``socp-testbed``."""
    parser = commands.add_parser("run", help="run a scenario file against a fresh federation")
    parser.add_argument("scenario", type=Path, help="scenario YAML (e.g. testbed/scenarios/smoke.yaml)")
    parser.add_argument("--backend", default="local", help="cluster backend: local or docker (default local)")
    parser.add_argument("--peers", type=int, default=None, help="number of peers (default: the scenario's)")
    parser.add_argument("--introducers", type=int, default=None, help="number of introducers (1 or 3)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--timeout-factor", type=float, default=1.0, help="multiply every 'within' by this")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """``socp-testbed run``: exit 0 when every step passed, 1 when one failed, 2 for a bad scenario."""
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"socp-testbed: {exc}", file=sys.stderr)
        return 2
    if args.peers is not None or args.introducers is not None:
        scenario = Scenario(scenario.name, scenario.description, args.peers or scenario.peers,
                            args.introducers or scenario.introducers, scenario.seed, scenario.timings,
                            scenario.steps, scenario.source)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = args.results / f"{scenario.name}-{stamp}"
    spec = ClusterSpec(scenario.peers, scenario.introducers, scenario.timings)
    try:
        backend = create_backend(args.backend, results_dir / "cluster", spec)
    except (ValueError, RuntimeError) as exc:
        print(f"socp-testbed: {exc}", file=sys.stderr)
        return 2
    print(f"scenario {scenario.name} on {args.backend}: {scenario.peers} peers, {scenario.introducers} "
          f"introducer(s) -> {results_dir}", flush=True)
    report = asyncio.run(ScenarioRunner(scenario, backend, results_dir, timeout_factor=args.timeout_factor,
                                        progress=lambda line: print(line, flush=True)).run())
    failed = [step for step in report.steps if not step.ok]
    if report.passed:
        print(f"PASSED {scenario.name}: {len(report.steps)} steps in {report.duration_s:.1f}s; "
              f"report {results_dir / 'report.json'}")
        return 0
    step = failed[0] if failed else None
    print(f"FAILED {scenario.name}" + (f" at step {step.index} ({step.description}): {step.detail}" if step else "")
          + f"\n  report: {results_dir / 'report.json'}\n  logs:   {results_dir / 'logs'}", file=sys.stderr)
    return 1
