"""Runs a scenario against a cluster backend: scripted users, faults, checks, reports.

The runner drives nodes only through the :class:`~testbed.backend.ClusterBackend` and users only through
the client library, so the same scenario runs on processes and on containers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import random
import secrets
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from client.connection import ClientConnection
from client.keystore import Identity
from socp import crypto
from socp.errors import ProtocolError
from socp.user import ClientEvent, Delivered, DeliveryFailed, DirectMessage, DuplicateDelivery, PublicMessage
from testbed import checker, checks, confscan, nemesis, report_html
from testbed.backend import BackendUnsupported, ClusterBackend, ClusterSpec, create_backend
from testbed.history import HISTORY_FILE, History, RecordedConnection
from testbed.load import LoadTracker
from testbed.proxy import Effect
from testbed.scenario import (
    Attack,
    Broadcast,
    Connect,
    Degrade,
    Disconnect,
    Expect,
    HealNetwork,
    Nemesis,
    NodeAction,
    Partition,
    Reconnect,
    Repeat,
    Restore,
    Scenario,
    ScenarioError,
    Send,
    Step,
    Traffic,
    Up,
    Wait,
    WaitHealthy,
    load_scenario,
)
from testbed.waiting import Pending, WaitFailed, WaitTimeout, poll

DEFAULT_WITHIN = 30.0
CONNECT_CONCURRENCY = 8
"""Users connecting at once (each connection signs its hello on the runner's event loop)."""
CONVERGED_POLL_PER_CLIENT = 0.02
"""Seconds between two convergence checks per online client (0.48 s for 24 users) ..."""
CONVERGED_POLL_MAX = 1.0
"""... and at most this."""
MAILBOX_LIMIT = 200_000
CAPTURE_DIR = "capture"
"""Folder of the results where a backend that can records the inter-node traffic (pcap) for the scan."""


class StepFailed(Exception):
    """A step could not do what it says; the message is the report's detail, ``data`` its figures."""

    def __init__(self, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.data = data or {}


@dataclass(slots=True)
class StepResult:
    """What one step did: ``ok``, seconds taken, detail, and figures for the report."""

    index: str
    description: str
    ok: bool
    seconds: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] | None = None
    """The federation's load after the step (:meth:`testbed.load.LoadTracker.snapshot`), once it is up."""


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
    load: dict[str, Any] = field(default_factory=dict)
    """Per node and in total: CPU, memory, event-loop lag, link deaths (:meth:`LoadTracker.to_json`)."""
    load_summary: str = ""
    """The one line of :meth:`LoadTracker.summary` printed after the steps."""
    history: dict[str, Any] = field(default_factory=dict)
    """The checker's judgement of ``history.jsonl`` (:meth:`testbed.checker.CheckReport.to_json`)."""
    confidentiality: dict[str, Any] = field(default_factory=dict)
    """The confidentiality scan (:func:`testbed.confscan.report`); empty when it was turned off."""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data, with the headline figures gathered up front."""
        data = asdict(self)
        data["convergence_s"] = [s.seconds for s in self.steps if s.description.startswith("expect converged")]
        data["delivery"] = [s.data for s in self.steps if s.description.startswith("expect delivered")]
        data["traffic"] = [s.data for s in self.steps if s.description.startswith("expect traffic_delivered")]
        data["attacks"] = [attack for s in self.steps for attack in s.data.get("attacks", [])]
        data["accounted"] = [s.data for s in self.steps if s.description.startswith("expect traffic_accounted")]
        data["verdict_counts"] = self.history.get("verdict_counts", {})
        return data


class Mailbox:
    """Every event of one user's connection, kept so that several consumers can each read them all."""

    def __init__(self, observe: Callable[[ClientEvent], ClientEvent] | None = None) -> None:
        self.events: list[ClientEvent] = []
        self._changed = asyncio.Condition()
        self._observe = observe
        """Sees every event first (the run's history records it and strips the confidentiality marker)."""

    async def pump(self, client: ClientConnection) -> None:
        """Move the client's events into the mailbox until the connection ends."""
        with contextlib.suppress(Exception):
            while True:
                event = await client.next_event()
                if self._observe is not None:
                    event = self._observe(event)
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
    previous: ClientConnection | None = None
    """The last connection that ended (a reconnect carries on its de-duplication of deliveries)."""
    past: list[Mailbox] = field(default_factory=list)
    """Mailboxes of earlier connections (what arrived before a reconnect still counts)."""

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
    sender_of: dict[str, str] = field(default_factory=dict)   # body -> sender
    failures: list[str] = field(default_factory=list)
    recipient_of: dict[str, str] = field(default_factory=dict)   # body -> recipient
    refs: dict[str, tuple[ClientConnection, str]] = field(default_factory=dict)   # body -> (sender's client, msg_ref)
    unsent: set[str] = field(default_factory=set)   # bodies whose send raised (the sender was told at once)


KeySource = Callable[[int], crypto.PrivateKey]


class ScenarioRunner:
    """Executes one :class:`Scenario` on one backend and builds its :class:`RunReport`."""

    def __init__(self, scenario: Scenario, backend: ClusterBackend, results_dir: Path, *,
                 timeout_factor: float = 1.0, key_source: KeySource | None = None,
                 progress: Callable[[str], None] | None = None, confidentiality_scan: bool = True) -> None:
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
        self.load = LoadTracker(backend.node_names, backend.status)
        """Every node's load, sampled from ``/status`` after each step and before the teardown."""
        self.history = History(results_dir / HISTORY_FILE)
        """Every client action and observation and every fault of the run (:mod:`testbed.history`)."""
        self._names: dict[str, str] = {}
        """User id → scripted user name."""
        self._judged: checker.CheckReport | None = None
        self._partitioned: set[str] = set()
        """Nodes in a partition group now (their fault bands end at the heal)."""
        self._degraded: set[str] = set()
        self._groups: list[list[str]] = []
        """The partition now (empty when healed)."""
        """Nodes and links (``a-b``) with a link effect now."""
        self.confidentiality_scan = confidentiality_scan
        """Search what the nodes kept for the run's marker after the teardown (:mod:`testbed.confscan`)."""

    # --- running ---------------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Run every step (stopping at the first failure), collect logs, tear down, write the reports."""
        spec = ClusterSpec(self.scenario.peers, self.scenario.introducers, self.scenario.timings)
        report = RunReport(self.scenario.name, self.backend.name, spec.peers, spec.introducers, self.scenario.seed,
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), str(self.results_dir))
        start = time.monotonic()
        if self.confidentiality_scan and self.backend.capture_traffic(self.results_dir / CAPTURE_DIR):
            self.progress(f"recording the inter-node traffic in {self.results_dir / CAPTURE_DIR} for the "
                          f"confidentiality scan")
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
            if self._judged is not None:
                report_html.write(self.results_dir, report.to_json(), self.history.records, self._judged)
        return report

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._tasks is None:
            coro.close()
            raise StepFailed("background work needs a running scenario")
        return self._tasks.create_task(coro)

    async def _run_steps(self, steps: tuple[Step, ...], prefix: str, report: RunReport) -> bool:
        for number, step in enumerate(steps, 1):
            index = f"{prefix}{number}"
            if isinstance(step, Repeat):
                for round_number in range(1, step.times + 1):
                    if not await self._run_steps(step.steps, f"{index}.{round_number}.", report):
                        return False
                continue
            result = await self._run_step(index, step)
            if self._started:
                await self.load.sample()
                result.load = self.load.snapshot()
            report.steps.append(result)
            self._done += 1
            status = "ok  " if result.ok else "FAIL"
            self.progress(f"[{self._done:>3}/{self._count}] {status} {result.description:<46} "
                          f"{result.seconds:7.2f}s  {result.detail}")
            if not result.ok:
                return False
        return True

    async def _run_step(self, index: str, step: Step) -> StepResult:
        began = self.history.now()
        result = await self._attempt_step(index, step)
        self.history.record("step", at=began, index=index, description=result.description, ok=result.ok,
                            seconds=round(result.seconds, 6))
        return result

    async def _attempt_step(self, index: str, step: Step) -> StepResult:
        start = time.monotonic()
        description = step.describe()
        try:
            detail, data = await self._dispatch(step)
            return StepResult(index, description, True, time.monotonic() - start, detail, data)
        except (StepFailed, BackendUnsupported, TimeoutError, WaitFailed, ScenarioError) as exc:
            return StepResult(index, description, False, time.monotonic() - start, str(exc),
                              exc.data if isinstance(exc, StepFailed) else {})
        except Exception as exc:  # a broken step must still produce a report and a teardown
            return StepResult(index, description, False, time.monotonic() - start,
                              f"{type(exc).__name__}: {exc}")

    async def _dispatch(self, step: Step) -> Outcome:
        return await STEP_HANDLERS[type(step)](self, step)

    def _within(self, within: float | None, default: float = DEFAULT_WITHIN) -> float:
        return (default if within is None else within) * self.factor

    # --- steps -----------------------------------------------------------------------------------

    async def _step_up(self, step: Up) -> Outcome:
        await self.backend.start(self._within(step.within, 120))
        self._started = True
        return f"{len(self.backend.node_names)} nodes healthy and meshed", {"nodes": self.backend.node_names}

    async def _step_wait_healthy(self, step: WaitHealthy | Expect) -> Outcome:
        seconds = await self.backend.wait_healthy(self._within(step.within))
        return f"healthy full mesh after {seconds:.2f}s", {"seconds": seconds}

    async def _step_connect(self, step: Connect) -> Outcome:
        peers = self.backend.peer_names
        wanted: list[tuple[str, str]] = []
        if step.user is not None:
            wanted.append((step.user, step.node or peers[0]))
        else:
            count = step.users or 1
            nodes = [step.node] if step.node is not None else peers
            for i in range(count):
                wanted.append((f"user{self._next_user}", nodes[i % len(nodes)]))
                self._next_user += 1
        await self._connect_all(wanted)
        return f"{len(wanted)} users connected", {"users": {name: node for name, node in wanted}}

    async def _step_disconnect(self, step: Disconnect) -> Outcome:
        if step.user is not None:
            names = [step.user]
        else:
            candidates = sorted(u.name for u in self.users.values() if u.online and u.name not in self._pinned())
            count = step.count or 1
            if count > len(candidates):
                raise StepFailed(f"cannot disconnect {count} users: only {len(candidates)} online")
            names = self.rng.sample(candidates, count)
        for name in names:
            await self._close(self._user(name))
        return f"disconnected {', '.join(names)}", {"users": names}

    async def _step_reconnect(self, step: Reconnect) -> Outcome:
        if step.user is not None:
            users = [self._user(step.user)]
        else:
            users = [u for u in self.users.values() if not u.online and step.node in (None, u.node)]
        await self._connect_all([(u.name, step.to or u.node) for u in users])
        return f"reconnected {len(users)} users", {"users": [u.name for u in users]}

    async def _step_send(self, step: Send) -> Outcome:
        sender, recipient = self._online(step.sender), self._user(step.to)
        assert sender.client is not None
        try:
            await sender.client.send_direct(recipient.identity.user_id, step.text)
        except ProtocolError as exc:
            raise StepFailed(f"{sender.name} cannot send to {recipient.name}: {exc}") from None
        return "sent", {}

    async def _step_broadcast(self, step: Broadcast) -> Outcome:
        sender = self._online(step.sender)
        assert sender.client is not None
        recipients = {u.name: u.mailbox.cursor() for u in self.users.values() if u.online and u is not sender}
        text = step.text if step.text is not None else f"hello all {secrets.token_hex(4)}"
        await sender.client.send_public(text)
        self._broadcasts.append(_Broadcast(sender.name, text, recipients, time.monotonic()))
        return f"sent to {len(recipients)} members", {}

    async def _expect_broadcasts(self, step: Expect, within: float) -> Outcome:
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
            live = {name: cursor for name, cursor in broadcast.recipients.items() if self.users[name].online}
            try:
                async with asyncio.timeout(within):
                    tallies = await asyncio.gather(*(_count_public(cursor, within, sender.identity.user_id,
                                                                   broadcast.text, marker)
                                                     for cursor in live.values()))
            except TimeoutError:
                raise StepFailed(f"broadcast from {broadcast.sender} or its marker did not reach every member "
                                 f"within {within:g}s") from None
            total += len(live)
            latencies += [tally.first_seen[broadcast.text] - broadcast.sent_at for tally in tallies
                          if broadcast.text in tally.first_seen]
            counts = [tally.counts[broadcast.text] + tally.refused for tally in tallies]
            problems += [f"{name} got it {n} times" for name, n in zip(live, counts, strict=True) if n != 1]
        detail = f"{len(pending)} broadcasts, {total} deliveries"
        if problems:
            raise StepFailed(f"{detail}; {', '.join(problems)}")
        return detail + ", each exactly once", {"deliveries": total, "latency_s": checks.percentiles(latencies)}

    async def _step_expect(self, step: Expect) -> Outcome:
        return await EXPECTATION_HANDLERS[step.what](self, step, self._within(step.within))

    def _online_clients(self) -> tuple[list[User], list[ClientConnection]]:
        online = [u for u in self.users.values() if u.online]
        return online, [u.client for u in online if u.client is not None]

    async def _expect_healthy(self, step: Expect, within: float) -> Outcome:
        return await self._step_wait_healthy(step)

    async def _expect_converged(self, step: Expect, within: float) -> Outcome:
        online, clients = self._online_clients()
        # Each check is a signed LIST_REQUEST per client and a LIST_RESPONSE from its node: with many users,
        # check less often, so that the check does not load the federation it waits for.
        interval = min(CONVERGED_POLL_MAX, max(0.1, CONVERGED_POLL_PER_CLIENT * len(clients)))
        return _judged(await checks.converged(clients, {u.identity.user_id for u in online}, timeout=within,
                                              interval=interval, diagnose=self.backend.diagnose()))

    async def _expect_delivered(self, step: Expect, within: float) -> Outcome:
        online, clients = self._online_clients()
        if len(clients) < 2:
            raise StepFailed("expect delivered needs at least two online users")
        cursors = {u.identity.user_id: u.mailbox.cursor() for u in online}
        return _judged(await checks.delivery(clients, timeout=within,
                                             receive=lambda client, t: cursors[client.user_id].next(t)))

    async def _expect_received(self, step: Expect, within: float) -> Outcome:
        assert step.user is not None and step.sender is not None  # checked when the scenario was loaded
        user = self._online(step.user)
        sender = self._user(step.sender)
        text = step.text
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

    async def _step_traffic(self, step: Traffic) -> Outcome:
        if self._traffic is not None:
            raise StepFailed("traffic is already running")
        rate = step.rate
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
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            alive = sorted(name for name in traffic.participants if self.users[name].online)
            if len(alive) >= 2:
                sender_name, recipient_name = self.rng.sample(alive, 2)
                sender, recipient = self.users[sender_name], self.users[recipient_name]
                body = f"traffic {traffic.run} {sequence}"
                sequence += 1
                traffic.sent_at[body] = time.monotonic()
                traffic.sender_of[body] = sender_name
                traffic.recipient_of[body] = recipient_name
                # Counted before sending: a send that fails between steady users is a lost message, not one
                # that never existed (participants are spared by random disconnects).
                traffic.sent[(sender_name, recipient_name)] += 1
                try:
                    assert sender.client is not None
                    ref = await sender.client.send_direct(recipient.identity.user_id, body)
                    traffic.refs[body] = (sender.client, ref)
                except Exception as exc:  # recorded and judged by traffic_delivered
                    traffic.failures.append(f"{sender_name} -> {recipient_name}: {exc}")
                    traffic.unsent.add(body)
            # Paced by a schedule, so the rate holds whatever a send costs (RSA encryption and signing); a
            # send held up for more than a second is not made up for with a burst.
            due = max(due + interval, loop.time() - 1.0)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _expect_traffic(self, step: Expect, within: float) -> Outcome:
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
        steady_ids = {self.users[name].identity.user_id for name in steady}

        def steady_text(event: ClientEvent) -> str | None:
            return event.text if isinstance(event, DirectMessage) and event.sender_id in steady_ids else None

        def traffic_body(event: ClientEvent) -> str | None:
            text = steady_text(event)
            return text if text is not None and text.startswith(f"traffic {traffic.run} ") else None

        tallies = {name: checks.Tally() for name in steady}
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(checks.count_until_markers(
                    functools.partial(traffic.cursors[name].next, within),
                    {f"tmark {traffic.run} {other}" for other in steady if other != name},
                    steady_text, traffic_body, tallies[name]) for name in steady))
        except TimeoutError:
            raise StepFailed(f"traffic markers did not all arrive within {within:g}s") from None
        got: Counter[tuple[str, str]] = Counter()
        latencies: list[float] = []
        for name, tally in tallies.items():
            for body, copies in tally.counts.items():
                got[(traffic.sender_of[body], name)] += copies
                latencies.append(tally.first_seen[body] - traffic.sent_at[body])
        total = sum(expected.values())
        received = sum(min(got[pair], n) for pair, n in expected.items())
        duplicates = sum(t.refused for t in tallies.values()) + sum(max(0, got[pair] - n)
                                                                    for pair, n in expected.items())
        data = {"messages": total, "delivered": received, "duplicates": duplicates,
                "latency_s": checks.percentiles(latencies), "users": len(steady), "send_failures": traffic.failures}
        detail = f"{received}/{total} traffic messages between {len(steady)} steady users, {duplicates} duplicates"
        if traffic.failures:
            detail += f"; {len(traffic.failures)} sends failed, first: {traffic.failures[0]}"
        if received != total or duplicates:
            raise StepFailed(detail)
        return detail, data

    async def _expect_traffic_accounted(self, step: Expect, within: float) -> Outcome:
        """Every DM the traffic sent, to anyone, was delivered exactly once or reported to its sender (a send
        that raised, or a DeliveryFailed outcome): none lost silently, none shown twice (issue 10).

        Waits for each message's outcome (the client bounds it), then for each delivered one to show up in its
        recipient's mailboxes (all connections of that user).
        """
        traffic = self._traffic
        if traffic is None:
            raise StepFailed("no traffic was started")
        self._traffic = None
        await _cancel(traffic.task)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within

        async def outcome(client: ClientConnection, ref: str) -> Delivered | DeliveryFailed | None:
            try:
                return await client.delivery(ref, max(0.01, deadline - loop.time()))
            except (KeyError, TimeoutError):
                return None  # not tracked (no receipts), or no outcome in time: judged by arrival alone

        # A send cut short when the traffic stopped never happened as far as its sender knows: not judged.
        bodies = [b for b in traffic.sender_of if b in traffic.refs or b in traffic.unsent]
        results = await asyncio.gather(*(outcome(*traffic.refs[b]) for b in bodies if b in traffic.refs))
        outcomes = dict(zip([b for b in bodies if b in traffic.refs], results, strict=True))
        prefix = f"traffic {traffic.run} "

        def copies() -> Counter[str]:
            seen: Counter[str] = Counter()
            for name in {traffic.recipient_of[b] for b in bodies}:
                user = self.users[name]
                for box in (*user.past, user.mailbox):
                    for event in list(box.events):
                        if isinstance(event, DirectMessage) and event.text.startswith(prefix):
                            seen[event.text] += 1
            return seen

        def settled(seen: Counter[str]) -> bool:
            return all(seen[b] > 0 for b, result in outcomes.items() if isinstance(result, Delivered))

        seen = copies()
        while not settled(seen) and loop.time() < deadline:
            await asyncio.sleep(0.2)
            seen = copies()
        delivered = sum(1 for b in bodies if seen[b] > 0)
        reported = sum(1 for b in bodies if seen[b] == 0
                       and (b in traffic.unsent or isinstance(outcomes.get(b), DeliveryFailed)))
        lost = len(bodies) - delivered - reported
        duplicates = sum(n - 1 for b, n in seen.items() if b in traffic.sender_of and n > 1)
        false_receipts = sum(1 for b, r in outcomes.items() if isinstance(r, Delivered) and seen[b] == 0)
        codes = Counter(r.code for r in outcomes.values() if isinstance(r, DeliveryFailed))
        codes.update({"SEND_REFUSED": len(traffic.unsent)} if traffic.unsent else {})
        refs = {ref for _, ref in traffic.refs.values()}
        repeats_dropped = sum(1 for user in self.users.values() for box in (*user.past, user.mailbox)
                              for event in list(box.events)
                              if isinstance(event, DuplicateDelivery) and event.msg_ref in refs)
        data = {"sent": len(bodies), "delivered": delivered, "reported": reported, "lost": lost,
                "duplicates": duplicates, "false_receipts": false_receipts, "reported_codes": dict(codes),
                "receipts": sum(1 for r in outcomes.values() if isinstance(r, Delivered)),
                "repeats_dropped_by_clients": repeats_dropped}
        detail = (f"{len(bodies)} sent: {delivered} delivered, {reported} reported {dict(codes)}, {lost} lost "
                  f"silently, {duplicates} duplicates")
        if lost or duplicates:
            raise StepFailed(detail)
        return detail, data

    async def _step_wait(self, step: Wait) -> Outcome:
        await asyncio.sleep(step.seconds)  # the scenario's own pacing (see Wait), not a synchronisation
        return f"waited {step.seconds:g}s", {}

    async def _node_action(self, step: NodeAction) -> Outcome:
        action, node = step.action, step.node
        if node not in self.backend.node_names:
            raise StepFailed(f"no node {node!r}; nodes are {', '.join(self.backend.node_names)}")
        if action in ("kill", "stop", "restart"):
            self.load.went_down(node)
        self.history.record("fault", node=node, action=action, phase="begin")
        try:
            await NODE_ACTIONS[action](self.backend, node)
        finally:
            self.history.record("fault", node=node, action=action, phase="end")
        if action in ("kill", "stop", "restart"):
            # Users attached to a node that went down lost their connection.
            for user in self.users.values():
                if user.node == node and user.client is not None:
                    await self._close(user)
        return f"{action} {node}", {}

    async def _step_attack(self, step: Attack) -> Outcome:
        from testbed.adversary import Target, run_attacks  # the attack suite, loaded when a scenario uses it

        introducer = next(plan.name for plan in self.backend.plan if plan.introducer)
        target = Target({name: self.backend.url(name) for name in self.backend.node_names}, introducer,
                        self.backend.peer_names, self.backend.health, self.backend.status,
                        self.backend.wait_healthy, self.backend.collect_logs, self._new_key, self.factor,
                        getattr(self.backend, "join_token", None),
                        # Local nodes listen on loopback, where 127.0.0.2 is another source address; behind
                        # Docker's published ports every connection from the host arrives from one address.
                        "127.0.0.2" if self.backend.name == "local" else None)
        outcomes = await run_attacks(target, step.names, self.progress)
        failed = [o for o in outcomes if not o.passed]
        data = {"attacks": [o.to_json() for o in outcomes], "passed": len(outcomes) - len(failed),
                "failed": len(failed)}
        if failed:
            raise StepFailed(f"{len(failed)}/{len(outcomes)} attacks got through: "
                             + "; ".join(f"{o.attack}: {o.observed}" for o in failed), data)
        return f"{len(outcomes)} attacks, every defence held", data

    # --- the network (nemesis) -------------------------------------------------------------------

    async def _step_partition(self, step: Partition) -> Outcome:
        await self._partition([list(group) for group in step.groups])
        return step.describe(), {"groups": [list(group) for group in step.groups]}

    async def _partition(self, groups: list[list[str]]) -> None:
        unknown = [node for group in groups for node in group if node not in self.backend.node_names]
        if unknown:
            raise StepFailed(f"no node {unknown[0]!r}; nodes are {', '.join(self.backend.node_names)}")
        nodes = [node for group in groups for node in group]
        await self._fault("partition", nodes, self.backend.partition_groups(groups))
        self._partitioned.update(nodes)
        self._groups = groups

    async def _expect_partitioned(self, step: Expect, within: float) -> Outcome:
        """Every running node links to the nodes of its own partition group and to no other (the split took)."""
        groups = self._groups
        if not groups:
            raise StepFailed("no partition to expect: use 'partition: [[...], [...]]' first")
        group_of = {node: i for i, group in enumerate(groups) for node in group}

        async def split() -> bool | Pending:
            answers = {node: await self.backend.health(node) for node in self.backend.node_names}
            ids = {str(body.get("server_id")): node for node, (_, body) in answers.items() if body}
            wrong = []
            for node, (_, body) in answers.items():
                if not body or node not in group_of:
                    continue
                peers = body.get("linked_servers")
                linked = {ids.get(str(peer), str(peer)[:8]) for peer in peers} if isinstance(peers, list) else set()
                want = {other for other in group_of if group_of[other] == group_of[node] and other != node
                        and other in ids.values()}
                if linked != want:
                    wrong.append(f"{node} links {sorted(linked)}, wants {sorted(want)}")
            return True if not wrong else Pending("; ".join(wrong))

        start = time.monotonic()
        try:
            await poll(split, within, "every node to link only within its partition group", self.backend.diagnose())
        except WaitTimeout as exc:
            raise StepFailed(f"the partition did not take within {within:g}s: {exc.last}") from None
        seconds = time.monotonic() - start
        return f"split into {len(groups)} groups after {seconds:.2f}s", {"seconds": seconds}

    async def _step_heal_network(self, step: HealNetwork) -> Outcome:
        healed = await self._heal_network()
        return f"healed {', '.join(healed) or 'nothing'}", {"nodes": healed}

    async def _heal_network(self) -> list[str]:
        healed = sorted(self._partitioned)
        await self._fault("heal", healed, self.backend.heal_network())
        self._partitioned.clear()
        self._groups = []
        return healed

    async def _step_degrade(self, step: Degrade) -> Outcome:
        effect = Effect(step.delay, step.jitter, step.loss, step.bandwidth)
        link = tuple(step.link.split("-")) if step.link is not None else None
        await self._degrade(effect, step.node, (link[0], link[1]) if link else None)
        return step.describe(), {}

    async def _degrade(self, effect: Effect, node: str | None, link: tuple[str, str] | None) -> None:
        for name in (node, *(link or ())):
            if name is not None and name not in self.backend.node_names:
                raise StepFailed(f"no node {name!r}; nodes are {', '.join(self.backend.node_names)}")
        labels = ["-".join(link)] if link else [node] if node else list(self.backend.node_names)
        await self._fault("degrade", labels, self.backend.degrade(effect, node, link))
        self._degraded.update(labels)

    async def _step_restore(self, step: Restore) -> Outcome:
        restored = await self._restore()
        return f"restored {', '.join(restored) or 'nothing'}", {}

    async def _restore(self) -> list[str]:
        restored = sorted(self._degraded)
        await self._fault("restore", restored, self.backend.restore_network())
        self._degraded.clear()
        return restored

    async def _fault(self, action: str, nodes: list[str], work: Awaitable[None]) -> None:
        """Do ``work``, recorded in the history as fault ``action`` on each of ``nodes``."""
        for node in nodes:
            self.history.record("fault", node=node, action=action, phase="begin")
        try:
            await work
        finally:
            for node in nodes:
                self.history.record("fault", node=node, action=action, phase="end")

    async def _step_nemesis(self, step: Nemesis) -> Outcome:
        strikes = nemesis.schedule(step, self.backend.node_names, self.backend.peer_names)
        moments = sorted([(s.at, 0, i) for i, s in enumerate(strikes)]
                         + [(s.until, 1, i) for i, s in enumerate(strikes)])
        start = time.monotonic()
        undone: set[int] = set()
        try:
            for at, undo, i in moments:
                # A fault schedule, not a wait for readiness: each strike is due at its time.
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                if undo:
                    undone.add(i)
                    await self._undo(strikes[i])
                else:
                    await self._strike(strikes[i])
            await asyncio.sleep(max(0.0, start + step.duration - time.monotonic()))
        finally:
            for i, strike in enumerate(strikes):
                if i not in undone and time.monotonic() - start >= strike.at:
                    with contextlib.suppress(Exception):
                        await self._undo(strike)
        summary = Counter(s.fault for s in strikes)
        return (f"{len(strikes)} faults from seed {step.seed}: " + ", ".join(f"{n} {f}" for f, n in summary.items()),
                {"schedule": [s.describe() for s in strikes]})

    async def _strike(self, strike: nemesis.Strike) -> None:
        self.progress(f"      nemesis: {strike.describe()}")
        if strike.fault == "partition":
            await self._partition([list(group) for group in strike.groups])
        elif strike.fault in nemesis.EFFECTS:
            await self._degrade(nemesis.EFFECTS[strike.fault], strike.node, None)
        else:
            assert strike.node is not None
            await self._node_action(NodeAction(action=strike.fault, node=strike.node))

    async def _undo(self, strike: nemesis.Strike) -> None:
        if strike.fault == "partition":
            await self._heal_network()
        elif strike.fault in nemesis.EFFECTS:
            await self._restore()
        else:
            assert strike.node is not None
            await self._node_action(NodeAction(action={"pause": "unpause", "kill": "start"}[strike.fault],
                                               node=strike.node))

    # --- users -----------------------------------------------------------------------------------

    async def _connect_all(self, wanted: list[tuple[str, str]]) -> None:
        """Connect every ``(user, node)``: identities first (key loading or generation, off the event loop),
        then :data:`CONNECT_CONCURRENCY` connections at a time, so that each connection's timeout measures
        its node rather than the runner's own crypto for the others."""
        new = [name for name, _ in wanted if name not in self.users]
        identities = await asyncio.gather(*(self._identity(name) for name in new))
        nodes = dict(wanted)
        for name, identity in zip(new, identities, strict=True):
            self.users[name] = User(name, identity, nodes[name])
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(name: str, node: str) -> None:
            async with limit:
                await self._connect(name, node)

        await asyncio.gather(*(one(name, node) for name, node in wanted))

    async def _connect(self, name: str, node: str) -> None:
        user = self.users.get(name)
        if user is None:
            user = User(name, await self._identity(name), node)
            self.users[name] = user
        if user.online:
            raise StepFailed(f"{name} is already connected")
        user.node = node
        if user.mailbox.events:
            user.past.append(user.mailbox)
        user.mailbox = Mailbox(functools.partial(self.history.observe, name, node))
        # The node's id from /healthz addresses the hello to it at once (else the node names itself and the
        # client signs again: one more round trip and signature per user, dear when many connect at once).
        _, health = await self.backend.health(node)
        known_id = health.get("server_id")
        client = await RecordedConnection.connect(self.backend.url(node), user.identity, timeout=10 * self.factor,
                                                  previous=user.previous,
                                                  server_id=known_id if isinstance(known_id, str) else None)
        assert isinstance(client, RecordedConnection)  # connect() builds an instance of the class it is called on
        client.attach(self.history, name, node, self._names)
        user.client = client
        self.history.record("session", user=name, node=node, user_id=user.identity.user_id, state="up")
        user.pump = self._spawn(self._pump(user, client))

    async def _pump(self, user: User, client: ClientConnection) -> None:
        await user.mailbox.pump(client)
        if user.client is client:  # it ended by itself: the scenario's own closes are recorded by _close
            self.history.record("session", user=user.name, node=user.node, state="down", reason="connection lost")

    async def _identity(self, name: str) -> Identity:
        # The id and the key's index are drawn before anything is awaited: the same seed, the same users.
        user_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self._names[user_id] = name
        return Identity(user_id, name, await self._new_key())

    async def _new_key(self) -> crypto.PrivateKey:
        """The next key of the key source, or a new one (off the event loop either way)."""
        if self.key_source is not None:
            index = self._keys_used
            self._keys_used += 1
            return await asyncio.to_thread(self.key_source, index)  # loading an RSA key checks it: slow
        return await asyncio.to_thread(crypto.generate_private_key)

    async def _close(self, user: User, reason: str = "closed") -> None:
        client, user.client = user.client, None  # first: the pump then knows the end is ours (see _pump)
        if client is not None:
            if not client.closed:
                self.history.record("session", user=user.name, node=user.node, state="down", reason=reason)
            with contextlib.suppress(Exception):
                await client.close()
        await _cancel(user.pump)
        user.previous = client or user.previous
        user.pump = None

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
            await self._close(user, checker.TEARDOWN)
        await self.load.sample()  # what the nodes that still run say last; the others keep their last answer
        with contextlib.suppress(Exception):
            self.backend.collect_logs(self.results_dir / "logs")
        self.load.read_logs(self.results_dir / "logs")
        report.load = self.load.to_json()
        report.load_summary = self.load.summary()
        self.progress(report.load_summary)
        self._check_history(report)
        if self.confidentiality_scan and self.backend.name == "docker":
            # The nodes' databases live in volumes the teardown removes: copy them out first.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(confscan.copy_docker_data, self.backend, self.results_dir / "data")
        try:
            await self.backend.stop()
        except Exception as exc:  # e.g. a Docker engine that stopped answering: say so, never a traceback
            report.passed = False
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            self.progress(f"teardown failed: {type(exc).__name__}: {first_line}; what is left of this run "
                          f"carries its run label (`make down` removes every run's)")
        if self.confidentiality_scan:
            self._scan_confidentiality(report)

    def _scan_confidentiality(self, report: RunReport) -> None:
        """Search the nodes' logs and data (stopped, WAL included) for the run's marker; a hit fails the run."""
        capture = self.results_dir / CAPTURE_DIR
        places = [self.results_dir / "logs", self.results_dir / "data", capture, self.backend.workdir]
        hits, files = confscan.scan([p for p in places if p.exists()], self.history.marker)
        report.confidentiality = confscan.report(hits, files)
        pcaps = sorted(capture.glob("*.pcap")) if capture.exists() else []
        report.confidentiality["captured"] = {p.name: p.stat().st_size for p in pcaps}
        if not hits:
            # The copy of the containers' data (keys included) and the capture were for the scan only: a hit
            # keeps them as evidence.
            shutil.rmtree(self.results_dir / "data", ignore_errors=True)
            shutil.rmtree(capture, ignore_errors=True)
            what = f"logs, databases, {len(pcaps)} traffic captures" if pcaps else "logs, databases"
            self.progress(f"confidentiality scan: marker not found in {files} files of the nodes ({what})")
            return
        report.passed = False
        self.progress(f"confidentiality scan FAILED: the run's marker found {len(hits)} times in the nodes' files")
        for hit in hits[:10]:
            self.progress(f"  {hit.path} at byte {hit.offset}: {hit.encoding}")


    def _check_history(self, report: RunReport) -> None:
        """Judge the run's history; a violated invariant fails the run, and its first offenders are printed."""
        self.history.close()
        judged = checker.check_history(self.history.records, late_after=checker.LATE_AFTER * self.factor)
        self._judged = judged
        report.history = judged.to_json()
        if judged.ok and report.passed:
            self.progress(judged.summary())
            return
        report.passed = report.passed and judged.ok
        for line in checker.explain(judged, self.history.records, self.results_dir / "logs", undelivered=True):
            self.progress(line)


async def _count_public(cursor: Cursor, within: float, sender_id: str, text: str, marker: str) -> checks.Tally:
    """Copies of public message ``text`` from ``sender_id`` read by ``cursor`` until the sender's ``marker``."""
    def public_text(event: ClientEvent) -> str | None:
        return event.text if isinstance(event, PublicMessage) and event.sender_id == sender_id else None

    def copy_of_text(event: ClientEvent) -> str | None:
        return text if public_text(event) == text else None

    return await checks.count_until_markers(lambda: cursor.next(within), {marker}, public_text, copy_of_text)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _count(step: Step) -> int:
    return step.times * sum(_count(s) for s in step.steps) if isinstance(step, Repeat) else 1


def _judged(result: checks.CheckResult) -> Outcome:
    """A check's result as a step's outcome (:class:`StepFailed` when it failed)."""
    if not result.ok:
        raise StepFailed(result.detail)
    return result.detail, {"seconds": result.seconds, **result.data}


Outcome = tuple[str, dict[str, Any]]
"""What a step handler returns: the report's detail and figures."""
StepHandler = Callable[[ScenarioRunner, Any], Awaitable[Outcome]]

STEP_HANDLERS: dict[type[Step], StepHandler] = {
    Up: ScenarioRunner._step_up,
    WaitHealthy: ScenarioRunner._step_wait_healthy,
    Connect: ScenarioRunner._step_connect,
    Disconnect: ScenarioRunner._step_disconnect,
    Reconnect: ScenarioRunner._step_reconnect,
    Send: ScenarioRunner._step_send,
    Broadcast: ScenarioRunner._step_broadcast,
    Expect: ScenarioRunner._step_expect,
    Traffic: ScenarioRunner._step_traffic,
    Attack: ScenarioRunner._step_attack,
    Wait: ScenarioRunner._step_wait,
    NodeAction: ScenarioRunner._node_action,
    Partition: ScenarioRunner._step_partition,
    HealNetwork: ScenarioRunner._step_heal_network,
    Degrade: ScenarioRunner._step_degrade,
    Restore: ScenarioRunner._step_restore,
    Nemesis: ScenarioRunner._step_nemesis,
}
"""The one dispatch table: step class → handler (``repeat`` is unrolled by :meth:`ScenarioRunner._run_steps`)."""

EXPECTATION_HANDLERS: dict[str, Callable[[ScenarioRunner, Expect, float], Awaitable[Outcome]]] = {
    "healthy": ScenarioRunner._expect_healthy,
    "converged": ScenarioRunner._expect_converged,
    "delivered": ScenarioRunner._expect_delivered,
    "received": ScenarioRunner._expect_received,
    "traffic_delivered": ScenarioRunner._expect_traffic,
    "broadcast_delivered": ScenarioRunner._expect_broadcasts,
    "traffic_accounted": ScenarioRunner._expect_traffic_accounted,
    "partitioned": ScenarioRunner._expect_partitioned,
}
"""``expect: WHAT`` → handler, called with the scaled ``within``."""

NODE_ACTIONS: dict[str, Callable[[ClusterBackend, str], Awaitable[None]]] = {
    "kill": lambda backend, node: backend.kill(node),
    "stop": lambda backend, node: backend.stop_node(node),
    "start": lambda backend, node: backend.start_node(node),
    "restart": lambda backend, node: backend.restart(node),
    "pause": lambda backend, node: backend.pause(node),
    "unpause": lambda backend, node: backend.unpause(node),
    "partition": lambda backend, node: backend.partition(node),
    "heal": lambda backend, node: backend.heal(node),
}
"""A node action step → the backend call that performs it."""


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
    parser.add_argument("--interop", action="store_true",
                        help="every node runs the interop profile (--interop, docs/INTEROP.md)")
    parser.add_argument("--no-confidentiality-scan", dest="confidentiality_scan", action="store_false",
                        help="do not search the nodes' logs and databases for the messages' marker afterwards")
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
    spec = ClusterSpec(scenario.peers, scenario.introducers, scenario.timings,
                       faulty_network=scenario.faulty_network, interop=args.interop)
    try:
        backend = create_backend(args.backend, results_dir / "cluster", spec)
    except (ValueError, RuntimeError) as exc:
        print(f"socp-testbed: {exc}", file=sys.stderr)
        return 2
    print(f"scenario {scenario.name} on {args.backend}: {scenario.peers} peers, {scenario.introducers} "
          f"introducer(s) -> {results_dir}", flush=True)
    report = asyncio.run(ScenarioRunner(scenario, backend, results_dir, timeout_factor=args.timeout_factor,
                                        progress=lambda line: print(line, flush=True),
                                        confidentiality_scan=args.confidentiality_scan).run())
    failed = [step for step in report.steps if not step.ok]
    if report.passed:
        print(f"PASSED {scenario.name}: {len(report.steps)} steps in {report.duration_s:.1f}s; "
              f"report {results_dir / 'report.json'}")
        return 0
    step = failed[0] if failed else None
    print(f"FAILED {scenario.name}" + (f" at step {step.index} ({step.description}): {step.detail}" if step else "")
          + f"\n  report: {results_dir / 'report.json'}\n  logs:   {results_dir / 'logs'}", file=sys.stderr)
    return 1
