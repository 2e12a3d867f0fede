"""A fake wire for :class:`socp.server.ServerState`: several servers and users, no event loop, no sockets.

In the spirit of h11's ``ConnectionPair`` and aioquic's ``now += TICK`` tests: the :class:`Net` owns a
hand-advanced clock and a FIFO of everything in flight. It plays the asyncio shell for every server:

- a ``Dial(link, host, port)`` becomes a link pair between the dialing state and the state listening
  on ``(host, port)`` (``accept_link`` there, ``dial_succeeded`` here), or ``dial_failed`` when nobody
  listens or :attr:`Net.refuse_dial` says so;
- a ``Send`` travels to the other end of its link in order, unless :attr:`Net.drop` drops it;
- a ``CloseLink`` is delivered after what was queued before it, then ``link_closed`` is called on both
  ends (a user end is marked closed);
- :meth:`Net.tick` advances ``now`` by :data:`TICK` and runs ``handle_timer`` on every state whose
  ``next_deadline()`` has come, then :meth:`Net.pump` delivers until the network is quiet.

:class:`FakeUser` is a client built from :mod:`socp.envelope` and :mod:`socp.crypto` only: it sends
``USER_HELLO`` / ``MSG_DIRECT`` / anything, and records every frame its server sends it.

Typical use::

    net = Net(key_pool)
    intro = net.introducer("I")
    a, b = net.peer("A", via=intro), net.peer("B", via=intro)
    alice, bob = net.user("alice", a), net.user("bob", b)
    alice.send_direct(bob, b"hi")
    net.pump()
    [deliver] = bob.received("USER_DELIVER")
"""

from __future__ import annotations

import json
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import CloseLink, Dial, Event, Send
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.presence import Attestation
from socp.server import BootstrapEntry, ServerSettings, ServerState
from socp.settings import FAST_TIMINGS
from tests.keypool import KeyPool

T0 = 1_760_000_000_000
"""Start of every simulated clock (ms since the epoch)."""

TICK = 50
"""Clock step of :meth:`Net.tick`, in ms."""

TIMINGS = replace(FAST_TIMINGS, heartbeat_interval=1.0, peer_timeout=3.0)
"""The test timings (:data:`socp.settings.FAST_TIMINGS`, with a heartbeat and a peer timeout twice as long so a
lost frame or two never kills a simulated link; presence sync and replay window as there)."""

FAST: dict[str, int] = {
    "heartbeat_interval_ms": TIMINGS.heartbeat_interval_ms,
    "peer_timeout_ms": TIMINGS.peer_timeout_ms,
    "presence_sync_interval_ms": TIMINGS.presence_sync_interval_ms,
    "replay_window_ms": TIMINGS.replay_window_ms,
    "backoff_initial_ms": 400,
    "backoff_max_ms": 3_200,
}
"""Settings that make every protocol timer fire within a few simulated seconds."""

Endpoint = tuple[str, int]
"""(owner name, link id) — a user's end of its connection has link id 0."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One text message in flight, as a drop rule sees it."""

    src: str
    dst: str
    text: str

    @property
    def type(self) -> str | None:
        """The frame's ``type`` when the text is a JSON object with one, else None."""
        try:
            data = json.loads(self.text)
        except ValueError:
            return None
        value = data.get("type") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class DialRecord:
    """A Dial action and how it ended."""

    at: int
    src: str
    dst: str | None
    ok: bool


@dataclass(slots=True)
class Node:
    """One server on the fake network."""

    name: str
    state: ServerState
    host: str
    port: int
    key: crypto.PrivateKey
    events: list[Event] = field(default_factory=list)

    @property
    def server_id(self) -> str:
        return self.state.server_id

    @property
    def pubkey(self) -> str:
        return self.state.pubkey

    def events_of(self, kind: type) -> list[Any]:
        """Events of one class, in order."""
        return [event for event in self.events if isinstance(event, kind)]


class FakeUser:
    """A SOCP client reduced to frames: builds and signs what it sends, records what it receives."""

    def __init__(self, net: Net, name: str, key: Any, user_id: str, meta: dict[str, Any]) -> None:
        self.net = net
        self.name = name
        self.key = key
        self.user_id = user_id
        self.meta = meta
        self.pubkey = crypto.encode_public_key(key.public_key())
        self.node: Node | None = None
        self.link: int | None = None
        self.inbox: list[Envelope] = []
        self.closed = False
        self.close_reason = ""
        self.server_pub: str | None = None
        self.known: dict[str, str] = {}
        """user id → server id, as this user's USER_ADVERTISE / USER_REMOVE stream says."""

    def __repr__(self) -> str:
        return f"FakeUser({self.name}, {self.user_id[:8]})"

    @property
    def endpoint(self) -> Endpoint:
        return (self.name, 0)

    # --- connecting --------------------------------------------------------------------------------

    def hello_frame(self, *, to: str = BROADCAST, signed: bool = True, ts: int | None = None,
                    pubkey: str | None = None, sign_with: Any = None, attested: bool = True,
                    **extra: Any) -> Envelope:
        """A USER_HELLO of this user (proof of possession signature unless ``signed=False``), with the user's
        location attestation when addressed to a server id (unless ``attested=False``)."""
        ts = self.net.now if ts is None else ts
        payload: dict[str, Any] = {"client": "fake-user/1", "pubkey": pubkey or self.pubkey,
                                   "enc_pubkey": pubkey or self.pubkey, "meta": dict(self.meta)}
        if attested and env.is_uuid(to):
            payload["attest"] = Attestation.make(sign_with or self.key, self.user_id, to, ts).to_wire()
        payload.update(extra)
        frame = env.make(FrameType.USER_HELLO, self.user_id, to, ts, payload)
        return frame.signed(sign_with or self.key) if signed else frame

    def open(self, node: Node, *, source: str = "") -> None:
        """Open a connection to ``node`` without sending anything (from address ``source``, as the shell says)."""
        self.node = node
        self.link = node.state.accept_link(self.net.now, source)
        self.closed = False
        self.net._wire(self.endpoint, (node.name, self.link))
        self.net._collect(node)

    def connect(self, node: Node, *, pump: bool = True, **hello: Any) -> FakeUser:
        """Open a connection to ``node`` and say USER_HELLO (see :meth:`hello_frame` for options)."""
        self.open(node)
        self.send(self.hello_frame(to=node.server_id, **hello), pump=pump)
        return self

    def disconnect(self, *, pump: bool = True) -> None:
        """Close the connection from the user's side."""
        self.net._enqueue_close(self.endpoint)
        if pump:
            self.net.pump()

    # --- sending -----------------------------------------------------------------------------------

    def send(self, frame: Envelope | str | bytes, *, pump: bool = True) -> None:
        """Send a frame (or raw text) to the server, then let the network settle unless ``pump=False``."""
        text = frame.to_wire() if isinstance(frame, Envelope) else frame
        self.net._enqueue_data(self.endpoint, text if isinstance(text, str) else text.decode("utf-8"))
        if pump:
            self.net.pump()

    def frame(self, frame_type: FrameType, to: str, payload: dict[str, Any], *, ts: int | None = None,
              signed: bool = False) -> Envelope:
        """Any frame from this user (envelope-signed only when asked)."""
        frame = env.make(frame_type, self.user_id, to, self.net.now if ts is None else ts, payload)
        return frame.signed(self.key) if signed else frame

    def direct_frame(self, to: FakeUser | str, plaintext: bytes = b"hello", *, recipient_pub: str | None = None,
                     ts: int | None = None, sender: str | None = None, sender_pub: str | None = None,
                     content_sig: str | None = None) -> Envelope:
        """A MSG_DIRECT to ``to``, encrypted under the recipient's key and content-signed by ours."""
        recipient_id = to.user_id if isinstance(to, FakeUser) else to
        if recipient_pub is None:
            recipient_pub = to.pubkey if isinstance(to, FakeUser) else self.pubkey
        ts = self.net.now if ts is None else ts
        sender = sender or self.user_id
        ciphertext = crypto.rsa_encrypt(crypto.decode_public_key(recipient_pub), plaintext)
        if content_sig is None:
            content_sig = crypto.sign_direct(self.key, ciphertext, sender, recipient_id, ts)
        payload = {"ciphertext": ciphertext, "sender_pub": sender_pub or self.pubkey, "content_sig": content_sig}
        return env.make(FrameType.MSG_DIRECT, sender, recipient_id, ts, payload)

    def send_direct(self, to: FakeUser | str, plaintext: bytes = b"hello", *, pump: bool = True,
                    **options: Any) -> Envelope:
        """Build (see :meth:`direct_frame`), send and return a MSG_DIRECT."""
        frame = self.direct_frame(to, plaintext, **options)
        self.send(frame, pump=pump)
        return frame

    # --- receiving ---------------------------------------------------------------------------------

    def _receive(self, text: str) -> None:
        frame = env.parse(text)          # everything a server sends must parse
        self.inbox.append(frame)
        if frame.type is FrameType.ACK and frame.payload.get("msg_ref") == "USER_HELLO":
            self.server_pub = frame.payload.get("server_pub")
        elif frame.type is FrameType.USER_ADVERTISE:
            self.known[frame.payload["user_id"]] = frame.payload["server_id"]
        elif (frame.type is FrameType.USER_REMOVE
              and self.known.get(frame.payload["user_id"]) == frame.payload["server_id"]):
            del self.known[frame.payload["user_id"]]

    def received(self, frame_type: FrameType | str | None = None) -> list[Envelope]:
        """Frames received so far, optionally of one type."""
        return [frame for frame in self.inbox if frame_type is None or frame.type == frame_type]

    def errors(self, code: str | None = None) -> list[Envelope]:
        """ERROR frames received so far, optionally with one code."""
        return [frame for frame in self.received(FrameType.ERROR) if code is None or frame.payload["code"] == code]

    def clear(self) -> None:
        """Forget the inbox (not the ``known`` view)."""
        self.inbox.clear()

    def signed_by_server(self, frame: Envelope) -> bool:
        """True when ``frame`` carries a valid transport signature by the key our server's ACK gave us."""
        assert self.server_pub is not None, f"{self} has no server_pub (no ACK yet)"
        return frame.verify(crypto.decode_public_key(self.server_pub))

    def decrypt(self, frame: Envelope) -> bytes:
        """Plaintext of a USER_DELIVER (or MSG_DIRECT) addressed to us."""
        return crypto.rsa_decrypt(self.key, frame.payload["ciphertext"])


class Net:
    """The fake network: servers, users, links in flight, a hand-advanced clock and drop rules."""

    def __init__(self, pool: KeyPool, *, seed: int = 1, now: int = T0, first_key: int = 0) -> None:
        self.pool = pool
        self.now = now
        self.rng = random.Random(seed)
        self.nodes: dict[str, Node] = {}
        self.users: dict[str, FakeUser] = {}
        self.drop: Callable[[Packet], bool] | None = None
        """Drop rule: a packet for which it returns True is lost (the link stays up)."""
        self.refuse_dial: Callable[[str, str], bool] | None = None
        """Dial rule: ``(dialer name, target name) -> True`` makes the dial fail."""
        self.paused: set[str] = set()
        """Servers stalled by :meth:`pause`: no timer runs, what reaches them waits unread."""
        self.delivered: list[Packet] = []
        self.dropped: list[Packet] = []
        self._held: list[tuple[str, Endpoint, Endpoint | None, Any]] = []
        self.dials: list[DialRecord] = []
        self._addrs: dict[tuple[str, int], Node] = {}
        self._wires: dict[Endpoint, Endpoint] = {}
        self._queue: deque[tuple[str, Endpoint, Endpoint | None, Any]] = deque()
        self._next_key = first_key
        self._next_port = 9001

    # --- building the network ----------------------------------------------------------------------

    def key_index(self) -> int:
        """The next unused pool key index."""
        index = self._next_key
        self._next_key += 1
        return index

    def new_id(self) -> str:
        """A deterministic UUID v4."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def server(self, name: str, *, introducer: bool = False, bootstrap: Iterable[BootstrapEntry] = (),
               server_id: str | None = None, key: crypto.PrivateKey | None = None, start: bool = True,
               host: str | None = None, port: int | None = None, delivered: Mapping[str, int] | None = None,
               **settings: Any) -> Node:
        """Add a server listening on ``(host, port)``; peers start joining at once unless ``start=False``.
        ``delivered``: the digests a restarted node's database gives back (delivery receipts, far side)."""
        assert name not in self.nodes and name not in self.users, f"name {name} taken"
        key = key or self.pool.key(self.key_index())
        host = host or f"{name.lower()}.test"
        if port is None:
            port, self._next_port = self._next_port, self._next_port + 1
        options = {**FAST, **settings}
        state = ServerState(
            ServerSettings(server_id=server_id or self.new_id(), advertise_host=host, advertise_port=port,
                           introducer=introducer, bootstrap=tuple(bootstrap), **options),
            key, now=self.now, rng=random.Random(self.rng.getrandbits(64)), delivered=delivered)
        node = Node(name, state, host, port, key)
        self.nodes[name] = node
        self._addrs[(host, port)] = node
        if start:
            self.start(node)
        return node

    def introducer(self, name: str = "I", **options: Any) -> Node:
        """Add an introducer."""
        return self.server(name, introducer=True, **options)

    def peer(self, name: str, via: Node | Iterable[Node] = (), *, pin: bool = True, **options: Any) -> Node:
        """Add a peer that joins through ``via`` (pinned to their keys unless ``pin=False``)."""
        introducers = [via] if isinstance(via, Node) else list(via)
        options.setdefault("bootstrap", [BootstrapEntry(i.host, i.port, i.pubkey if pin else None)
                                         for i in introducers])
        return self.server(name, **options)

    def start(self, node: Node) -> None:
        """``start()`` the server and let its join run."""
        node.state.start(self.now)
        if self.now >= node.state.next_deadline():
            node.state.handle_timer(self.now)
        self._collect(node)
        self.pump()

    def user(self, name: str, node: Node | None = None, *, key: Any = None, user_id: str | None = None,
             display_name: str | None = None, **hello: Any) -> FakeUser:
        """Add a user (connected to ``node`` with a signed USER_HELLO when given)."""
        assert name not in self.nodes and name not in self.users, f"name {name} taken"
        key = key or self.pool.key(self.key_index())
        meta = {"display_name": display_name if display_name is not None else name}
        user = FakeUser(self, name, key, user_id or self.new_id(), meta)
        self.users[name] = user
        if node is not None:
            user.connect(node, **hello)
        return user

    # --- time --------------------------------------------------------------------------------------

    def pump(self, max_steps: int = 100_000) -> None:
        """Deliver everything in flight (and what it causes) without advancing the clock."""
        for _ in range(max_steps):
            if not self._queue:
                return
            self._step(self._queue.popleft())
        raise AssertionError(f"network did not settle within {max_steps} deliveries (a loop?)")

    def tick(self) -> None:
        """Advance the clock by one TICK, run due timers, deliver."""
        self.now += TICK
        for node in list(self.nodes.values()):
            if node.name not in self.paused and self.now >= node.state.next_deadline():
                node.state.handle_timer(self.now)
                self._collect(node)
        self.pump()

    def run(self, ms: int) -> None:
        """Let ``ms`` of simulated time pass."""
        end = self.now + ms
        while self.now < end:
            self.tick()

    def run_until(self, predicate: Callable[[], bool], within_ms: int, what: str = "condition") -> int:
        """Tick until ``predicate()`` holds; returns the simulated ms it took, fails after ``within_ms``."""
        start = self.now
        self.pump()
        while not predicate():
            if self.now - start > within_ms:
                raise AssertionError(f"{what}: not reached within {within_ms} simulated ms\n{self.describe()}")
            self.tick()
        return self.now - start

    # --- views -------------------------------------------------------------------------------------

    def full_mesh(self, nodes: Iterable[Node] | None = None) -> bool:
        """True when every pair of the given servers (default: all) has a link."""
        group = list(nodes or self.nodes.values())
        return all(set(node.state.linked_servers) >= {other.server_id for other in group if other is not node}
                   for node in group)

    def describe(self) -> str:
        """A multi-line account of every server, for failure messages."""
        lines = [f"now = T0 + {self.now - T0} ms"]
        for node in self.nodes.values():
            status = node.state.status()
            lines.append(f"  {node.name} {node.server_id[:8]} joined={status['joined']} "
                         f"healthy={status['healthy']} linked={[self.name_of(s) for s in status['linked_servers']]} "
                         f"users={status['known_users']}")
        lines += [f"  last delivered: {p.src}->{p.dst} {p.type}" for p in self.delivered[-8:]]
        return "\n".join(lines)

    def name_of(self, server_id: str) -> str:
        """Node name of a server id (for messages)."""
        return next((n.name for n in self.nodes.values() if n.server_id == server_id), server_id[:8])

    def packets(self, src: str | None = None, dst: str | None = None, frame_type: str | None = None) -> list[Packet]:
        """Delivered packets matching the filters."""
        return [p for p in self.delivered if (src is None or p.src == src) and (dst is None or p.dst == dst)
                and (frame_type is None or p.type == frame_type)]

    def links_between(self, a: str, b: str) -> int:
        """How many connections join the endpoints named ``a`` and ``b``."""
        return sum(1 for src, dst in self._wires.items() if src[0] == a and dst[0] == b)

    # --- interventions -----------------------------------------------------------------------------

    def inject(self, src: str, dst: str, text: str, *, pump: bool = True) -> None:
        """Send ``text`` from ``src`` to ``dst`` on the (single) connection between them, as if ``src``
        had sent it: how a test makes a server misbehave on an established link."""
        ends = [end for end, other in self._wires.items() if end[0] == src and other[0] == dst]
        assert len(ends) == 1, f"expected one link {src}->{dst}, found {len(ends)}"
        self._enqueue_data(ends[0], text)
        if pump:
            self.pump()

    def pause(self, node: Node) -> None:
        """Stall ``node`` (a blocked event loop, a paused process): its timers stop and frames sent to it
        wait unread; its connections stay open."""
        self.paused.add(node.name)

    def resume(self, node: Node) -> None:
        """End the stall in the worst order for its peers: the late timer runs first, then the waiting
        frames are read."""
        self.paused.discard(node.name)
        if self.now >= node.state.next_deadline():
            node.state.handle_timer(self.now)
            self._collect(node)
        held, self._held = self._held, []
        self._queue.extendleft(reversed(held))
        self.pump()

    def crash(self, node: Node) -> None:
        """The server vanishes: every connection of it closes and nobody can dial it any more."""
        for end in [end for end in self._wires if end[0] == node.name]:
            self._enqueue_close(end, "crashed")
        self.pump()
        del self.nodes[node.name]
        del self._addrs[(node.host, node.port)]

    # --- the shell's work --------------------------------------------------------------------------

    def _wire(self, a: Endpoint, b: Endpoint) -> None:
        self._wires[a] = b
        self._wires[b] = a

    def _enqueue_data(self, src: Endpoint, text: str) -> None:
        dst = self._wires.get(src)
        if dst is not None:
            self._queue.append(("data", src, dst, text))

    def _enqueue_close(self, src: Endpoint, reason: str = "closed") -> None:
        self._queue.append(("close", src, self._wires.get(src), reason))

    def _collect(self, node: Node) -> None:
        for action in node.state.data_to_send():
            src = (node.name, action.link_id)
            if isinstance(action, Send):
                self._enqueue_data(src, action.text)
            elif isinstance(action, CloseLink):
                self._enqueue_close(src, action.reason)
            elif isinstance(action, Dial):
                self._queue.append(("dial", src, None, (action.host, action.port)))
        node.events.extend(node.state.events_received())

    def _step(self, item: tuple[str, Endpoint, Endpoint | None, Any]) -> None:
        kind, src, dst, data = item
        if kind == "dial":
            self._dial(src, data)
        elif kind == "data":
            assert dst is not None
            if self._wires.get(src) != dst:
                return                                   # the connection closed meanwhile
            if dst[0] in self.paused:
                self._held.append(item)
                return
            packet = Packet(src[0], dst[0], data)
            if self.drop is not None and self.drop(packet):
                self.dropped.append(packet)
                return
            self.delivered.append(packet)
            self._deliver(dst, data)
        elif kind == "close":
            if dst is not None and self._wires.get(src) == dst:
                del self._wires[src], self._wires[dst]
                self._closed(src, data)
                self._closed(dst, data)
            elif dst is None:
                self._closed(src, data)

    def _dial(self, src: Endpoint, addr: tuple[str, int]) -> None:
        dialer = self.nodes[src[0]]
        target = self._addrs.get(addr)
        ok = target is not None and not (self.refuse_dial is not None and self.refuse_dial(dialer.name, target.name))
        self.dials.append(DialRecord(self.now, dialer.name, target.name if target else None, ok))
        if not ok or target is None:
            dialer.state.dial_failed(src[1], self.now)
            self._collect(dialer)
            return
        accepted = (target.name, target.state.accept_link(self.now))
        self._wire(src, accepted)
        self._collect(target)
        dialer.state.dial_succeeded(src[1], self.now)
        self._collect(dialer)

    def _deliver(self, dst: Endpoint, text: str) -> None:
        node = self.nodes.get(dst[0])
        if node is not None:
            node.state.receive_text(dst[1], text, self.now)
            self._collect(node)
        else:
            self.users[dst[0]]._receive(text)

    def _closed(self, end: Endpoint, reason: str) -> None:
        node = self.nodes.get(end[0])
        if node is not None:
            node.state.link_closed(end[1], self.now, reason=reason)
            self._collect(node)
        else:
            user = self.users[end[0]]
            user.closed, user.close_reason = True, reason


def drop_from(*names: str) -> Callable[[Packet], bool]:
    """A drop rule losing everything the named endpoints send."""
    return lambda packet: packet.src in names


def drop_between(a: str, b: str) -> Callable[[Packet], bool]:
    """A drop rule losing everything between two endpoints, both directions."""
    return lambda packet: {packet.src, packet.dst} == {a, b}
