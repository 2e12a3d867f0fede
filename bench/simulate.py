"""Simulate a SOCP federation of hundreds of servers: the pure core on an in-memory network with a fake clock.

    python -m bench.simulate --servers 1000 --users 10000
    python -m bench.simulate --sizes 100,300,1000 [--users-per-server 10]

Every server is a real :class:`socp.server.ServerState` (one introducer, the rest peers joining through it),
driven through its shell API exactly as ``node/runtime.py`` drives it (``accept_link``, ``receive_text``,
``dial_succeeded`` / ``dial_failed``, ``link_closed``, ``handle_timer``, ``next_deadline``, ``data_to_send``,
``events_received``). Nothing under ``socp/`` is changed; only crypto is replaced in-process
(:mod:`bench.simcrypto`: fake keys and keyed-hash signatures that are *counted*).

The network and the clock
    A discrete-event loop over one heap of events, times in integer microseconds; the core sees integer
    milliseconds. Each connection has a base latency (``--latency-ms`` times uniform 0.5..1.5) plus per-frame jitter
    (uniform 0..``--jitter-ms``), delivered in order per direction (TCP), and frames between servers are lost
    with probability ``--loss`` (the link stays up; a link's first frame each way is spared, since a lost opener
    only makes the peer refuse the link, which real TCP never causes). A Dial takes one latency to reach the
    target and one to come back; a close arrives after what was sent before it.

The CPU model (what makes collapse visible)
    Each server has one core and one FIFO of work: frames received, timer runs, accepts, dial results and
    closes. A work item costs ``--frame-ms`` plus ``--sign-ms`` per signature made and ``--verify-ms`` per
    signature checked *while it ran* (counted by the fake crypto). The node is busy until then: its next
    frames wait, what it sent leaves only when the work is done, and its timers (heartbeats, liveness) run
    late. An overloaded node's heartbeats therefore arrive late and its peers may declare its links dead:
    those declarations are counted as false link deaths.

Users
    Bulk users are hand-made frames: a signed USER_HELLO on a new connection to a peer, later a close. Frames a
    server sends to users are counted by type, never parsed. Probe users (one at a time) measure how long a new
    user's presence takes to reach every server and how long its removal takes, and what each costs.

What it reports (stdout table, ``results/simulate.json``)
    frames, signatures and verifications per user advert and per removal (server-to-server, every frame type
    a join or leave causes, the USER_ADVERTISE / USER_REMOVE share apart); heartbeat signatures per second
    (network and per node) and heartbeat frames per second in a quiet window; convergence time of a probe
    user's presence on every server, and removal time of a crashed server's users everywhere; link deaths
    declared (false ones: neither end crashed); memory per node (a referent walk of a few ServerStates) and
    the process's peak RSS per node; wall time.

Limits (measured on this shared 2-core machine, Python 3.11)
    - The mesh is a full mesh: n servers hold n(n-1)/2 connections, and forming it costs O(n^2) frames
      (announces, per-link snapshots), every heartbeat round O(n^2) deliveries. Wall time, O(n) core: 100 servers
      and 1000 users 75 s; 300 servers and 300 users 4 min (the mesh alone 1 min). 1000 servers (a million link
      ends, several million frames before the mesh is whole) take tens of minutes and GiBs: run them with few
      users, a short quiet window (``--quiet 15``) and ``--probes 1``.
    - A core that relays gossip (every receiver to every link: (n-1)^2 frames per advert) makes users expensive
      to simulate: 300 servers and 30 users took 8 min, 100 servers and 200 users 6 min. Give it few users.
    - Users cost O(u^2) user-facing frames in the core (each new user is sent the whole directory, every user
      is told of every other), so ``--users 10000`` is ~10^8 frames made by the core: it runs, slowly. The
      default user count is ``--users-per-server`` (10) times the servers, capped by ``--max-users`` (3000).
    - ``next_deadline()`` scans every link (O(n)), so the simulator asks it after timer runs and at most once
      per ``--deadline-poll-ms`` per busy node: a deadline set by a frame is noticed within that poll (as the
      unit harness notices within its 50 ms tick).
    - Only USER_HELLO users are simulated (no direct messages, files or public-channel traffic), and no
      ``socp.user.UserSession``: bulk and probe users are hand-made frames.
    Every loop is bounded: the event loop by simulated deadlines and ``--max-events``.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import logging
import random
import resource
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.simcrypto import FakePrivateKey, Meter, fake_crypto
from socp import envelope as env
from socp.actions import CloseLink, Dial, LinkDown, PeerFault, Send
from socp.envelope import FrameType
from socp.presence import Attestation
from socp.server import BootstrapEntry, ServerSettings, ServerState
from socp.settings import DEFAULT_TIMINGS

T0_MS = 1_760_000_000_000
"""Simulated epoch (ms) the core sees at time zero."""
US = 1000
LINK_BITS = 28
"""An endpoint is ``owner << LINK_BITS | link_id`` (an int: a million link ends fit in little memory)."""

# Event kinds (the first element after time and sequence in a heap entry).
ARRIVE, CLOSE, CONNECT, DIAL_RESULT, TIMER, RUN, RECHECK, CALL = range(8)
# Work kinds (what a node's CPU queue holds).
W_FRAME, W_TIMER, W_ACCEPT, W_DIAL_OK, W_DIAL_FAILED, W_CLOSED = range(6)
WORK_NAMES = {W_TIMER: "timer", W_ACCEPT: "accept", W_DIAL_OK: "dial", W_DIAL_FAILED: "dial", W_CLOSED: "close"}


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation run; every field has a command-line flag."""

    servers: int = 100
    """Servers including the one introducer."""
    users: int = 1000
    """Bulk users attached to peers before the measurements."""
    seed: int = 1
    heartbeat_s: float = DEFAULT_TIMINGS.heartbeat_interval
    peer_timeout_s: float = DEFAULT_TIMINGS.peer_timeout
    presence_sync_s: float = DEFAULT_TIMINGS.presence_sync_interval
    replay_window_s: float = 120.0
    """Shorter than the default 600 s: replay caches hold every frame seen within it (memory)."""
    latency_ms: float = 5.0
    jitter_ms: float = 2.0
    loss: float = 0.0
    sign_ms: float = 3.0
    verify_ms: float = 0.1
    frame_ms: float = 0.02
    """CPU of one work item beyond its crypto (parse, dispatch)."""
    join_spread_s: float = 10.0
    """Peers start at uniformly random times within this window."""
    user_spread_s: float = 5.0
    """Bulk users connect at uniformly random times within this window, once the mesh is formed."""
    quiet_s: float | None = None
    """Length of the quiet window measuring heartbeats (default: two heartbeat intervals)."""
    probes: int = 3
    """Probe users, each advertised then removed, one at a time."""
    crash: str = "close"
    """How the crashed server dies: ``close`` (the kernel closes its sockets) or ``silent`` (it goes dark)."""
    mesh_timeout_s: float = 600.0
    settle_timeout_s: float = 120.0
    deadline_poll_ms: int = 100
    memory_sample: int = 3
    max_events: int = 500_000_000

    @property
    def quiet_window_s(self) -> float:
        return self.quiet_s if self.quiet_s is not None else 2 * self.heartbeat_s


DEFAULTS = SimConfig()


class SimError(RuntimeError):
    """The simulated federation did not reach a state it was waited for."""


@dataclass(slots=True)
class WireEnd:
    """One end of a connection: where its frames go and when the last one arrives (FIFO)."""

    peer: int
    base_us: int
    last_arrival: int = 0


@dataclass(slots=True)
class SimNode:
    """One server on the simulated network."""

    index: int
    state: ServerState
    host: str
    port: int
    alive: bool = True
    busy_until: int = 0
    inbox: deque[tuple[Any, ...]] = field(default_factory=deque)
    scheduled: bool = False
    timer_at: int = -1
    timer_queued: bool = False
    recheck_pending: bool = False
    work_items: int = 0
    cpu_us: int = 0
    max_queue_wait_us: int = 0


@dataclass(slots=True)
class SimUser:
    """A bulk or probe user: one connection to one server."""

    index: int
    user_id: str
    key: FakePrivateKey
    server: int
    endpoint: int = -1
    connected: bool = False


@dataclass(slots=True)
class Watch:
    """Waits for a condition on every live server; records when each first met it."""

    name: str
    started_us: int
    check: Callable[[SimNode], bool]
    pending: set[int]
    done_us: dict[int, int] = field(default_factory=dict)


class Tally:
    """Counts the simulator keeps, diffed between moments to attribute them to one operation."""

    def __init__(self) -> None:
        self.server_frames: Counter[str] = Counter()
        """Frames sent server → server, by type."""
        self.user_frames: Counter[str] = Counter()
        """Frames sent server → user, by type."""
        self.signs: Counter[str] = Counter()
        """Signatures made, by the type of the first frame that carried them."""
        self.verifies: Counter[str] = Counter()
        """Signature checks, by what the node was doing (frame type received, or timer/accept/...)."""
        self.lost = 0
        self.link_down: Counter[str] = Counter()
        self.false_link_down: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        return {"server_frames": Counter(self.server_frames), "user_frames": Counter(self.user_frames),
                "signs": Counter(self.signs), "verifies": Counter(self.verifies), "lost": self.lost,
                "false_link_down": sum(self.false_link_down.values())}

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        now = self.snapshot()
        return {key: (now[key] - before[key]) for key in now}


def frame_type(text: str) -> str:
    """The ``type`` of a frame text made by ``Envelope.to_wire`` (``{"type":"X",...``), without parsing."""
    if text.startswith('{"type":"'):
        end = text.find('"', 9)
        if end > 0:
            return text[9:end]
    try:
        value = json.loads(text).get("type")
    except (ValueError, AttributeError):
        return "?"
    return value if isinstance(value, str) else "?"


def frame_sig(text: str) -> str:
    """The ``sig`` of a frame text made by ``Envelope.to_wire`` (its last field)."""
    start = text.rfind('"sig":"')
    return text[start + 7:-2] if start >= 0 and text.endswith('"}') else ""


class Simulation:
    """The federation, the network, the clock and the counters of one run."""

    def __init__(self, config: SimConfig, meter: Meter) -> None:
        if config.servers < 2:
            raise ValueError("need at least 2 servers (an introducer and a peer)")
        if config.crash not in ("close", "silent"):
            raise ValueError("crash must be 'close' or 'silent'")
        self.config = config
        self.meter = meter
        self.rng = random.Random(config.seed)
        self.now = 0
        self._seq = 0
        self._heap: list[tuple[Any, ...]] = []
        self.events_run = 0
        self.nodes: list[SimNode] = []
        self.users: list[SimUser] = []
        self.wires: dict[int, WireEnd] = {}
        self.addresses: dict[tuple[str, int], int] = {}
        self.tally = Tally()
        self.watches: list[Watch] = []
        self.dead_servers: set[str] = set()
        self._sign_us = round(config.sign_ms * US)
        self._verify_us = round(config.verify_ms * US)
        self._frame_us = round(config.frame_ms * US)
        self._latency_us = config.latency_ms * US
        self._jitter_us = config.jitter_ms * US
        self._poll_us = config.deadline_poll_ms * US
        self._user_base = 1 << 20
        """Owner numbers of users start here (servers are 0..n-1)."""
        self._build()

    # --- building ----------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _settings(self, index: int, introducer: bool, bootstrap: tuple[BootstrapEntry, ...]) -> ServerSettings:
        c = self.config
        return ServerSettings(
            server_id=self._new_id(), advertise_host=f"s{index}.sim", advertise_port=443, introducer=introducer,
            bootstrap=bootstrap, heartbeat_interval_ms=round(c.heartbeat_s * 1000),
            peer_timeout_ms=round(c.peer_timeout_s * 1000),
            presence_sync_interval_ms=round(c.presence_sync_s * 1000),
            replay_window_ms=round(c.replay_window_s * 1000))

    def _build(self) -> None:
        intro_key = self.meter.new_key()
        intro_settings = self._settings(0, True, ())
        intro = self._add_node(intro_settings, intro_key)
        entry = (BootstrapEntry(intro.host, intro.port, intro.state.pubkey),)
        for index in range(1, self.config.servers):
            self._add_node(self._settings(index, False, entry), self.meter.new_key())
        self._start(intro)
        spread = round(self.config.join_spread_s * 1000 * US)
        for node in self.nodes[1:]:
            self._at(self.rng.randint(0, spread), CALL, self._start, node)

    def _add_node(self, settings: ServerSettings, key: FakePrivateKey) -> SimNode:
        index = len(self.nodes)
        self.meter.current = index
        state = ServerState(settings, key, now=T0_MS, rng=random.Random(self.rng.getrandbits(64)))  # type: ignore[arg-type]
        self.meter.current = -1
        node = SimNode(index, state, settings.advertise_host, settings.advertise_port)
        self.nodes.append(node)
        self.addresses[(node.host, node.port)] = index
        return node

    def _start(self, node: SimNode) -> None:
        self._work(node, (W_TIMER, "start"))

    # --- the event loop ----------------------------------------------------------------------------

    def _at(self, when: int, kind: int, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, *args))

    def run_until(self, end_us: int, stop: Callable[[], bool] | None = None, check_every_us: int = 50 * US) -> bool:
        """Run events up to ``end_us``; True as soon as ``stop()`` holds (checked every ``check_every_us``)."""
        heap = self._heap
        next_check = self.now
        while True:
            if stop is not None and self.now >= next_check:
                if stop():
                    return True
                next_check = self.now + check_every_us
            if not heap or heap[0][0] > end_us:
                self.now = max(self.now, end_us)
                return stop() if stop is not None else False
            if stop is not None and heap[0][0] > next_check:
                self.now = next_check
                continue
            item = heapq.heappop(heap)
            self.now = item[0]
            self.events_run += 1
            if self.events_run > self.config.max_events:
                raise SimError(f"more than {self.config.max_events} events: raise --max-events or shrink the run")
            self._dispatch(item)

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        kind = item[2]
        if kind == ARRIVE:
            _, _, _, dst, text = item
            self._arrive(dst, text)
        elif kind == RUN:
            node = item[3]
            node.scheduled = False
            self._run_one(node)
        elif kind == TIMER:
            node, when = item[3], item[4]
            if node.alive and node.timer_at == when:
                node.timer_at = -1
                if not node.timer_queued:
                    node.timer_queued = True
                    self._work(node, (W_TIMER, ""))
        elif kind == RECHECK:
            node = item[3]
            node.recheck_pending = False
            if node.alive:
                self._schedule_timer(node)
        elif kind == CLOSE:
            _, _, _, dst, reason = item
            end = self.wires.pop(dst, None)
            if end is not None:
                owner = dst >> LINK_BITS
                if owner < self._user_base:
                    self._work(self.nodes[owner], (W_CLOSED, dst & ((1 << LINK_BITS) - 1), reason))
                else:
                    self.users[owner - self._user_base].connected = False
        elif kind == CONNECT:
            _, _, _, dialer, address = item
            target = self.addresses.get(address)
            if target is None or not self.nodes[target].alive:
                self._at(self.now + self._one_way(None), DIAL_RESULT, dialer, -1)
            else:
                self._work(self.nodes[target], (W_ACCEPT, dialer))
        elif kind == DIAL_RESULT:
            _, _, _, dialer, accepted = item
            node = self.nodes[dialer >> LINK_BITS]
            link = dialer & ((1 << LINK_BITS) - 1)
            if accepted < 0 or accepted not in self.wires:
                self._work(node, (W_DIAL_FAILED, link))
            else:
                self._work(node, (W_DIAL_OK, link))
        elif kind == CALL:
            item[3](*item[4:])

    def _one_way(self, end: WireEnd | None) -> int:
        base = end.base_us if end is not None else round(self._latency_us)
        return base + (round(self.rng.random() * self._jitter_us) if self._jitter_us else 0)

    # --- a node's CPU ------------------------------------------------------------------------------

    def _work(self, node: SimNode, item: tuple[Any, ...]) -> None:
        if not node.alive:
            return
        node.inbox.append((self.now, *item))
        if not node.scheduled:
            node.scheduled = True
            self._at(max(self.now, node.busy_until), RUN, node)

    def _arrive(self, dst: int, text: str) -> None:
        if dst not in self.wires:
            return  # the connection closed meanwhile
        owner = dst >> LINK_BITS
        if owner >= self._user_base:
            return
        self._work(self.nodes[owner], (W_FRAME, dst & ((1 << LINK_BITS) - 1), text))

    def _run_one(self, node: SimNode) -> None:
        if not node.alive or not node.inbox:
            return
        queued_at, kind, *args = node.inbox.popleft()
        now = self.now
        node.max_queue_wait_us = max(node.max_queue_wait_us, now - queued_at)
        meter = self.meter
        index = node.index
        signs0, verifies0 = meter.signs.get(index, 0), meter.verifies.get(index, 0)
        meter.current = index
        meter.made.clear()
        state = node.state
        now_ms = T0_MS + now // US
        label: str
        if kind == W_FRAME:
            link, text = args
            label = frame_type(text)
            state.receive_text(link, text, now_ms)
        elif kind == W_TIMER:
            node.timer_queued = False
            label = "timer"
            if args and args[0] == "start":
                state.start(now_ms)
                if now_ms >= state.next_deadline():
                    state.handle_timer(now_ms)
            elif now_ms >= state.next_deadline():
                state.handle_timer(now_ms)
        elif kind == W_ACCEPT:
            label = "accept"
            dialer = args[0]
            link = state.accept_link(now_ms)
            mine = index << LINK_BITS | link
            base = round(self._latency_us * (0.5 + self.rng.random()))
            self.wires[mine] = WireEnd(dialer, base)
            self.wires[dialer] = WireEnd(mine, base)
            self._at(now + self._one_way(self.wires[mine]), DIAL_RESULT, dialer, mine)
        elif kind == W_DIAL_OK:
            label = "dial"
            state.dial_succeeded(args[0], now_ms)
        elif kind == W_DIAL_FAILED:
            label = "dial"
            state.dial_failed(args[0], now_ms)
        else:
            label = "close"
            link, reason = args
            state.link_closed(link, now_ms, reason=reason)
        meter.current = -1
        signs = meter.signs.get(index, 0) - signs0
        verifies = meter.verifies.get(index, 0) - verifies0
        if verifies:
            self.tally.verifies[label] += verifies
        cost = self._frame_us + signs * self._sign_us + verifies * self._verify_us
        node.busy_until = now + cost
        node.cpu_us += cost
        node.work_items += 1
        self._carry_out(node, node.busy_until, set(meter.made) if signs else None)
        for event in state.events_received():
            if isinstance(event, LinkDown):
                self.tally.link_down[event.reason] += 1
                if event.server_id not in self.dead_servers and state.server_id not in self.dead_servers:
                    self.tally.false_link_down[event.reason] += 1
            elif isinstance(event, PeerFault):
                self.tally.faults[event.code] += 1
        if kind == W_TIMER:
            self._schedule_timer(node)
        elif not node.recheck_pending:
            node.recheck_pending = True
            self._at(now + self._poll_us, RECHECK, node)
        for watch in self.watches:
            if index in watch.pending and watch.check(node):
                watch.pending.discard(index)
                watch.done_us[index] = now
        if node.inbox:
            node.scheduled = True
            self._at(node.busy_until, RUN, node)

    def _schedule_timer(self, node: SimNode) -> None:
        deadline = (node.state.next_deadline() - T0_MS) * US
        deadline = max(deadline, self.now)
        if deadline != node.timer_at:
            node.timer_at = deadline
            self._at(deadline, TIMER, node, deadline)

    def _carry_out(self, node: SimNode, depart: int, made: set[str] | None) -> None:
        tally = self.tally
        base = node.index << LINK_BITS
        loss = self.config.loss
        for action in node.state.data_to_send():
            if isinstance(action, Send):
                src = base | action.link_id
                end = self.wires.get(src)
                text = action.text
                ftype = frame_type(text)
                if made:
                    sig = frame_sig(text)
                    if sig in made:
                        made.discard(sig)
                        tally.signs[ftype] += 1
                if end is None:
                    continue
                if end.peer >> LINK_BITS >= self._user_base:
                    tally.user_frames[ftype] += 1
                    continue
                tally.server_frames[ftype] += 1
                if loss and end.last_arrival and self.rng.random() < loss:   # a link's first frame is never lost
                    tally.lost += 1
                    continue
                arrival = max(depart + self._one_way(end), end.last_arrival)
                end.last_arrival = arrival
                self._at(arrival, ARRIVE, end.peer, text)
            elif isinstance(action, CloseLink):
                src = base | action.link_id
                end = self.wires.pop(src, None)
                if end is not None:
                    arrival = max(depart + self._one_way(end), end.last_arrival)
                    self._at(arrival, CLOSE, end.peer, action.reason)
                self._work(node, (W_CLOSED, action.link_id, action.reason))
            elif isinstance(action, Dial):
                self._at(depart + self._one_way(None), CONNECT, base | action.link_id, (action.host, action.port))
        if made:
            tally.signs["(unsent)"] += len(made)

    # --- users -------------------------------------------------------------------------------------

    def add_user(self, server: int) -> SimUser:
        """A new user (not yet connected) of peer ``server``."""
        user = SimUser(len(self.users), self._new_id(), self.meter.new_key(), server)
        self.users.append(user)
        return user

    def connect(self, user: SimUser) -> None:
        """Open the user's connection and send a signed USER_HELLO (at ``now``)."""
        node = self.nodes[user.server]
        if not node.alive:
            return
        user.endpoint = (self._user_base + user.index) << LINK_BITS
        self._at(self.now + self._one_way(None), CALL, self._user_accepted, user)

    def _user_accepted(self, user: SimUser) -> None:
        node = self.nodes[user.server]
        if not node.alive:
            return
        node_ep = node.index << LINK_BITS | node.state.accept_link(T0_MS + self.now // US)
        base = round(self._latency_us * (0.5 + self.rng.random()))
        self.wires[user.endpoint] = WireEnd(node_ep, base)
        self.wires[node_ep] = WireEnd(user.endpoint, base)
        user.connected = True
        public = user.key.public_key().text
        ts = T0_MS + self.now // US
        # The user's own proof of its location (PROTOCOL.md §4.5.1): without it no other server lists the user.
        attest = Attestation.make(user.key, user.user_id, node.state.server_id, ts)  # type: ignore[arg-type]
        payload = {"client": "sim-user/1", "pubkey": public, "enc_pubkey": public,
                   "meta": {"display_name": f"user{user.index}"}, "attest": attest.to_wire()}
        hello = env.make(FrameType.USER_HELLO, user.user_id, node.state.server_id, ts,
                         payload, user.key)  # type: ignore[arg-type]
        self._send_from_user(user, hello.to_wire())

    def _send_from_user(self, user: SimUser, text: str) -> None:
        end = self.wires.get(user.endpoint)
        if end is None:
            return
        arrival = max(self.now + self._one_way(end), end.last_arrival)
        end.last_arrival = arrival
        self._at(arrival, ARRIVE, end.peer, text)

    def disconnect(self, user: SimUser) -> None:
        """The user closes its connection."""
        end = self.wires.pop(user.endpoint, None)
        user.connected = False
        if end is not None:
            self._at(max(self.now + self._one_way(end), end.last_arrival), CLOSE, end.peer, "user left")

    # --- failures ----------------------------------------------------------------------------------

    def crash(self, node: SimNode) -> None:
        """The server dies: ``close`` mode closes every connection of it, ``silent`` just stops it."""
        node.alive = False
        node.inbox.clear()
        self.dead_servers.add(node.state.server_id)
        del self.addresses[(node.host, node.port)]
        base = node.index
        for endpoint in [ep for ep in self.wires if ep >> LINK_BITS == base]:
            end = self.wires.pop(endpoint)
            if self.config.crash == "close":
                self._at(max(self.now + self._one_way(end), end.last_arrival), CLOSE, end.peer, "crashed")
        for watch in self.watches:
            watch.pending.discard(node.index)

    # --- views -------------------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [node for node in self.nodes if node.alive]

    def full_mesh(self) -> bool:
        """Every live server linked to every other live one."""
        live = self.live()
        return all(len(node.state.linked_servers) >= len(live) - 1 for node in live)

    def watch(self, name: str, check: Callable[[SimNode], bool], nodes: Iterable[SimNode] | None = None) -> Watch:
        """Start recording when each live server (or each of ``nodes``) meets ``check``."""
        group = list(nodes) if nodes is not None else self.live()
        watch = Watch(name, self.now, check, {node.index for node in group})
        for node in group:
            if check(node):
                watch.pending.discard(node.index)
                watch.done_us[node.index] = self.now
        self.watches.append(watch)
        return watch

    def wait(self, watch: Watch, timeout_s: float) -> float:
        """Run until ``watch`` is met everywhere; its duration in simulated ms (SimError after the timeout)."""
        done = self.run_until(self.now + round(timeout_s * 1000 * US), lambda: not watch.pending, 10 * US)
        self.watches.remove(watch)
        if not done:
            raise SimError(f"{watch.name}: {len(watch.pending)} servers still waiting after {timeout_s} s")
        return (max(watch.done_us.values(), default=watch.started_us) - watch.started_us) / US


# --- measuring ---------------------------------------------------------------------------------------

def _deep_size(root: object) -> int:
    """Bytes reachable from ``root`` (modules, classes, functions and loggers excluded; shared strings counted)."""
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, logging.Logger,
            types.CodeType)
    seen: set[int] = set()
    stack: list[object] = [root]
    total = 0
    for _ in range(50_000_000):
        if not stack:
            break
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


BACKGROUND = frozenset({"HEARTBEAT", "SERVER_PRESENCE_SYNC", "timer"})
"""Timer-driven work that happens to fall in an operation's window: listed by type, left out of its totals."""


def _per_op(delta: dict[str, Any], count: int) -> dict[str, Any]:
    def total(counter: Counter[str]) -> float:
        return round(sum(v for k, v in counter.items() if k not in BACKGROUND) / count, 1)

    def per(counter: Counter[str]) -> dict[str, float]:
        return {k: round(v / count, 1) for k, v in sorted(counter.items())}

    return {"frames": total(delta["server_frames"]), "signs": total(delta["signs"]),
            "verifies": total(delta["verifies"]), "user_frames": total(delta["user_frames"]),
            "by_type": per(delta["server_frames"]), "signs_by_type": per(delta["signs"]),
            "verifies_by_work": per(delta["verifies"])}


def run(config: SimConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run one simulation; returns the JSON-ready result row."""
    wall0 = time.perf_counter()
    core_log = logging.getLogger("socp")
    level = core_log.level
    core_log.setLevel(logging.CRITICAL)   # thousands of servers would log every link; the counters say it
    try:
        return _run(config, log, wall0)
    finally:
        core_log.setLevel(level)


def _run(config: SimConfig, log: Callable[[str], None], wall0: float) -> dict[str, Any]:
    with fake_crypto() as meter:
        sim = Simulation(config, meter)
        n = config.servers
        # 1. the mesh forms
        formed = sim.run_until(round(config.mesh_timeout_s * 1000 * US), sim.full_mesh, 500 * US)
        if not formed:
            raise SimError(f"no full mesh of {n} servers within {config.mesh_timeout_s} s")
        mesh_s = sim.now / US / 1000
        log(f"  n={n}: full mesh at {mesh_s:.1f} s simulated ({time.perf_counter() - wall0:.1f} s wall)")
        # 2. bulk users attach (spread over --user-spread), round robin over the peers
        peers = sim.nodes[1:]
        spread = round(config.user_spread_s * 1000 * US)
        for i in range(config.users):
            user = sim.add_user(peers[i % len(peers)].index)
            sim._at(sim.now + sim.rng.randint(0, spread), CALL, sim.connect, user)
        total_users = config.users

        def all_known() -> bool:
            return all(len(node.state.directory) >= total_users for node in sim.live())

        t_users = sim.now
        if not sim.run_until(sim.now + spread + round(config.settle_timeout_s * 1000 * US), all_known, 500 * US):
            raise SimError(f"{total_users} users not known on every server within {config.settle_timeout_s} s")
        users_s = (sim.now - t_users) / US / 1000
        log(f"  n={n}: {total_users} users known everywhere after {users_s:.1f} s "
            f"({time.perf_counter() - wall0:.1f} s wall)")
        # 3. a quiet window: heartbeats and sync only
        sim.run_until(sim.now + round(config.heartbeat_s * 1000 * US))   # let the joins' echoes pass
        before, cpu_before = sim.tally.snapshot(), sum(node.cpu_us for node in sim.nodes)
        quiet = round(config.quiet_window_s * 1000 * US)
        sim.run_until(sim.now + quiet)
        q = sim.tally.since(before)
        quiet_s = quiet / US / 1000
        heartbeat = {
            "window_s": quiet_s,
            "signs_per_s": round(q["signs"]["HEARTBEAT"] / quiet_s, 2),
            "signs_per_s_per_node": round(q["signs"]["HEARTBEAT"] / quiet_s / n, 3),
            "frames_per_s": round(q["server_frames"]["HEARTBEAT"] / quiet_s, 1),
            "verifies_per_s_per_node": round(q["verifies"]["HEARTBEAT"] / quiet_s / n, 2),
            "all_signs_per_s": round(sum(q["signs"].values()) / quiet_s, 2),
            "all_frames_per_s": round(sum(q["server_frames"].values()) / quiet_s, 1),
            "cpu_share": round((sum(node.cpu_us for node in sim.nodes) - cpu_before) / quiet / n, 4),
        }
        log(f"  n={n}: quiet window done ({time.perf_counter() - wall0:.1f} s wall)")
        # 4. probes: one user advertised, then removed, one at a time
        advert_ms, remove_ms = [], []
        adv_totals: list[dict[str, Any]] = []
        rem_totals: list[dict[str, Any]] = []
        for i in range(config.probes):
            probe = sim.add_user(peers[sim.rng.randrange(len(peers))].index)
            uid = probe.user_id
            adv_before = sim.tally.snapshot()
            sim.connect(probe)
            watch = sim.watch(f"probe {i} advert", _knows(uid, True))
            advert_ms.append(sim.wait(watch, config.settle_timeout_s))
            sim.run_until(sim.now + 1000 * US)
            adv_totals.append(sim.tally.since(adv_before))
            rem_before = sim.tally.snapshot()
            sim.disconnect(probe)
            watch = sim.watch(f"probe {i} removal", _knows(uid, False))
            remove_ms.append(sim.wait(watch, config.settle_timeout_s))
            sim.run_until(sim.now + 1000 * US)
            rem_totals.append(sim.tally.since(rem_before))
        adv_delta = _sum_deltas(adv_totals)
        rem_delta = _sum_deltas(rem_totals)
        log(f"  n={n}: probes done ({time.perf_counter() - wall0:.1f} s wall)")
        # 5. a peer with users crashes: how long until its users are gone everywhere
        victim = max(reversed(peers), key=lambda node: len(node.state.local_users))   # a peer with users
        victim_users = set(victim.state.local_users)
        sim.crash(victim)
        crash_watch = sim.watch("crash removal",
                                lambda node: not any(uid in node.state.directory for uid in victim_users))
        crash_ms = sim.wait(crash_watch, config.peer_timeout_s * 3 + config.settle_timeout_s)
        sim.run_until(sim.now + round(config.heartbeat_s * 1000 * US))
        # 6. memory
        sample = [node for node in sim.nodes[1:] if node.alive][: config.memory_sample]
        per_node = [_deep_size(node.state) for node in sample]
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tally = sim.tally
        row: dict[str, Any] = {
            "servers": n, "links": n * (n - 1) // 2, "users": total_users,
            "mesh_formed_s": round(mesh_s, 2), "users_converged_s": round(users_s, 2),
            "advert": {**_per_op(adv_delta, config.probes),
                       "converge_ms": {"max": max(advert_ms), "mean": round(sum(advert_ms) / len(advert_ms), 1)}},
            "removal": {**_per_op(rem_delta, config.probes),
                        "converge_ms": {"max": max(remove_ms), "mean": round(sum(remove_ms) / len(remove_ms), 1)}},
            "heartbeat": heartbeat,
            "crash": {"mode": config.crash, "users": len(victim_users), "removed_everywhere_ms": crash_ms},
            "link_deaths": dict(tally.link_down), "false_link_deaths": dict(tally.false_link_down),
            "faults": dict(tally.faults), "frames_lost": tally.lost,
            "max_queue_wait_ms": round(max(node.max_queue_wait_us for node in sim.nodes) / US, 1),
            "memory_per_node_kib": round(sum(per_node) / len(per_node) / 1024, 1) if per_node else None,
            "peak_rss_per_node_kib": round(rss_kib / n, 1),
            "simulated_s": round(sim.now / US / 1000, 1), "events": sim.events_run,
            "wall_s": round(time.perf_counter() - wall0, 1),
        }
    return row


def _knows(user_id: str, present: bool) -> Callable[[SimNode], bool]:
    """A watch condition: ``user_id`` is (or is no longer) in a server's directory."""
    return lambda node: (user_id in node.state.directory) is present


def _sum_deltas(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"server_frames": Counter(), "user_frames": Counter(), "signs": Counter(),
                             "verifies": Counter(), "lost": 0, "false_link_down": 0}
    for delta in deltas:
        for key in total:
            total[key] = total[key] + delta[key]
    return total


# --- command line ------------------------------------------------------------------------------------

COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("servers", lambda r: r["servers"]),
    ("users", lambda r: r["users"]),
    ("adv frames", lambda r: r["advert"]["frames"]),
    ("adv USER_ADV", lambda r: r["advert"]["by_type"].get("USER_ADVERTISE", 0)),
    ("adv sign+ver", lambda r: f"{r['advert']['signs']}+{r['advert']['verifies']}"),
    ("rem frames", lambda r: r["removal"]["frames"]),
    ("rem sign+ver", lambda r: f"{r['removal']['signs']}+{r['removal']['verifies']}"),
    ("hb sig/s", lambda r: r["heartbeat"]["signs_per_s"]),
    ("hb sig/s/node", lambda r: r["heartbeat"]["signs_per_s_per_node"]),
    ("hb frames/s", lambda r: r["heartbeat"]["frames_per_s"]),
    ("adv conv ms", lambda r: r["advert"]["converge_ms"]["max"]),
    ("rem conv ms", lambda r: r["removal"]["converge_ms"]["max"]),
    ("crash rm ms", lambda r: r["crash"]["removed_everywhere_ms"]),
    ("false deaths", lambda r: sum(r["false_link_deaths"].values())),
    ("KiB/node", lambda r: r["memory_per_node_kib"]),
    ("wall s", lambda r: r["wall_s"]),
]


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    cells = [[name for name, _ in COLUMNS]] + [[str(get(row)) for _, get in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
                     for line in cells)


def parse_args(argv: list[str] | None) -> tuple[list[SimConfig], argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", type=int, default=100, help="servers, introducer included (default 100)")
    parser.add_argument("--users", type=int, default=None, help="bulk users (default: --users-per-server x servers)")
    parser.add_argument("--sizes", default="", help="a sweep of server counts, e.g. 100,300,1000")
    parser.add_argument("--users-per-server", type=float, default=10.0)
    parser.add_argument("--max-users", type=int, default=3000, help="cap of the default user count (sweeps)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_TIMINGS.heartbeat_interval, help="seconds")
    parser.add_argument("--peer-timeout", type=float, default=DEFAULT_TIMINGS.peer_timeout, help="seconds")
    parser.add_argument("--presence-sync", type=float, default=DEFAULT_TIMINGS.presence_sync_interval,
                        help="seconds")
    parser.add_argument("--replay-window", type=float, default=DEFAULTS.replay_window_s, help="seconds")
    parser.add_argument("--latency-ms", type=float, default=DEFAULTS.latency_ms)
    parser.add_argument("--jitter-ms", type=float, default=DEFAULTS.jitter_ms)
    parser.add_argument("--loss", type=float, default=0.0, help="probability a server-to-server frame is lost")
    parser.add_argument("--sign-ms", type=float, default=DEFAULTS.sign_ms)
    parser.add_argument("--verify-ms", type=float, default=DEFAULTS.verify_ms)
    parser.add_argument("--frame-ms", type=float, default=DEFAULTS.frame_ms)
    parser.add_argument("--join-spread", type=float, default=DEFAULTS.join_spread_s, help="seconds")
    parser.add_argument("--user-spread", type=float, default=DEFAULTS.user_spread_s, help="seconds")
    parser.add_argument("--quiet", type=float, default=None, help="quiet window, seconds (default 2 heartbeats)")
    parser.add_argument("--probes", type=int, default=DEFAULTS.probes)
    parser.add_argument("--crash", choices=("close", "silent"), default="close")
    parser.add_argument("--deadline-poll-ms", type=int, default=DEFAULTS.deadline_poll_ms)
    parser.add_argument("--out", type=Path, default=Path("results/simulate.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] or [args.servers]
    configs = []
    for size in sizes:
        users = args.users if args.users is not None else min(args.max_users, round(args.users_per_server * size))
        configs.append(SimConfig(
            servers=size, users=users, seed=args.seed, heartbeat_s=args.heartbeat, peer_timeout_s=args.peer_timeout,
            presence_sync_s=args.presence_sync, replay_window_s=args.replay_window, latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms, loss=args.loss, sign_ms=args.sign_ms, verify_ms=args.verify_ms,
            frame_ms=args.frame_ms, join_spread_s=args.join_spread, user_spread_s=args.user_spread, quiet_s=args.quiet,
            probes=args.probes,
            crash=args.crash, deadline_poll_ms=args.deadline_poll_ms))
    return configs, args


def main(argv: list[str] | None = None) -> int:
    """Run the simulations, print the table, write ``results/simulate.json``."""
    configs, args = parse_args(argv)
    rows = []
    for config in configs:
        print(f"simulating {config.servers} servers, {config.users} users ...", flush=True)
        rows.append(run(config, log=lambda line: print(line, flush=True)))
    print(table(rows))
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    result = {"commit": commit, "python": sys.version.split()[0], "configs": [asdict(c) for c in configs],
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
