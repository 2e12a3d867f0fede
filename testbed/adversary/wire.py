"""Speaking SOCP over the wire as anyone: a raw connection, an honest user, a rogue server.

Everything here crafts frames with the ``socp`` core only (the testbed never imports ``node``) and talks to
nodes over real WebSockets, as an attacker on the network would. Waiting for something *not* to happen is
bounded by an observation window (``quiet``), never open-ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from socp import crypto
from socp import envelope as env
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.errors import ProtocolError
from socp.server.mesh import JOIN_MAC, join_mac
from socp.user import ClientEvent, HelloReaddressed, UserSession, Welcomed

OPEN_TIMEOUT = 10.0
"""Seconds to open a WebSocket (a refused or capped connection fails within it)."""
MAX_SIZE = 16 * 1024 * 1024


def now_ms() -> int:
    """The wall clock in Unix milliseconds (frames carry it as ``ts``)."""
    return int(time.time() * 1000)


@dataclass(slots=True)
class Received:
    """One message a node sent us: the raw text, and the frame when it parsed."""

    text: str
    frame: Envelope | None


class Wire:
    """A raw WebSocket to a node: send any text, keep everything received (a reader task fills ``inbox``)."""

    def __init__(self, websocket: WebSocket, label: str) -> None:
        self.websocket = websocket
        self.label = label
        self.inbox: list[Received] = []
        self.close_code: int | None = None
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name=f"adversary-{label}")

    @classmethod
    async def open(cls, url: str, label: str, source: str | None = None) -> Wire:
        """Connect to ``url``, from the local address ``source`` when given (raises OSError / InvalidHandshake /
        TimeoutError when refused)."""
        extra: dict[str, Any] = {"local_addr": (source, 0)} if source else {}
        websocket = await connect(url, max_size=MAX_SIZE, open_timeout=OPEN_TIMEOUT, ping_interval=None, **extra)
        return cls(websocket, label)

    @property
    def closed(self) -> bool:
        """True once the node closed the connection (or we did)."""
        return self._reader.done()

    async def _read(self) -> None:
        try:
            async for message in self.websocket:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                try:
                    frame: Envelope | None = env.parse(text)
                except ProtocolError:
                    frame = None
                async with self._changed:
                    self.inbox.append(Received(text, frame))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.websocket.close_code
            async with self._changed:
                self._changed.notify_all()

    async def send(self, frame: Envelope | str) -> bool:
        """Send a frame or any text; False when the connection is already gone."""
        try:
            await self.websocket.send(frame.to_wire() if isinstance(frame, Envelope) else frame)
        except ConnectionClosed:
            return False
        return True

    async def wait_for(self, predicate: Callable[[Received], bool], timeout: float, start: int = 0
                       ) -> Received | None:
        """The first message from index ``start`` on that satisfies ``predicate`` within ``timeout``; None if
        none came (or the connection closed first)."""
        position = start
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async with self._changed:
                    while True:
                        while position < len(self.inbox):
                            if predicate(self.inbox[position]):
                                return self.inbox[position]
                            position += 1
                        if self.closed:
                            return None
                        await self._changed.wait()
        return None

    async def frame(self, frame_type: FrameType, timeout: float, start: int = 0) -> Envelope | None:
        """The first frame of ``frame_type`` received (from index ``start``) within ``timeout``."""
        found = await self.wait_for(lambda r: r.frame is not None and r.frame.type is frame_type, timeout, start)
        return found.frame if found is not None else None

    async def quiet(self, seconds: float) -> None:
        """Observe for ``seconds`` (or until the node closes the connection): what arrives lands in ``inbox``."""
        await self.wait_for(lambda r: False, seconds)

    async def until_closed(self, timeout: float) -> bool:
        """True when the node closes the connection within ``timeout``."""
        await self.quiet(timeout)
        return self.closed

    def frames(self, frame_type: FrameType | None = None, start: int = 0) -> list[Envelope]:
        """Frames received so far (of ``frame_type``)."""
        return [r.frame for r in self.inbox[start:]
                if r.frame is not None and (frame_type is None or r.frame.type is frame_type)]

    def errors(self, start: int = 0) -> list[str]:
        """The codes of the ERROR frames received so far."""
        return [str(f.payload.get("code")) for f in self.frames(FrameType.ERROR, start)]

    async def close(self) -> None:
        """Close our side and wait for the reader to end."""
        with contextlib.suppress(Exception):
            await self.websocket.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._reader, 5.0)


async def try_open(url: str, label: str, source: str | None = None) -> Wire | None:
    """A connection, or None when the node refuses it (connection caps) or cannot be reached."""
    try:
        return await Wire.open(url, label, source)
    except (OSError, InvalidHandshake, TimeoutError):
        return None


class HonestUser:
    """A well-behaved user: the client core (:class:`~socp.user.UserSession`) over a :class:`Wire`, so that a
    check can look both at what the node delivered (raw frames) and at what a client shows (events)."""

    def __init__(self, wire: Wire, session: UserSession, name: str, key: crypto.PrivateKey) -> None:
        self.wire = wire
        self.session = session
        self.name = name
        self.key = key
        self.events: list[ClientEvent] = []
        self._consumed = 0

    @property
    def user_id(self) -> str:
        """The user's id."""
        return self.session.user_id

    @property
    def pubkey(self) -> str:
        """The user's public key (canonical encoding)."""
        return self.session.pubkey

    @property
    def server_id(self) -> str:
        """The id of the server this user is on (from its ACK)."""
        return self.session.server_id or ""

    @classmethod
    async def connect(cls, url: str, name: str, key: crypto.PrivateKey, *, user_id: str | None = None,
                      timeout: float = 10.0, meta: Mapping[str, Any] | None = None) -> HonestUser:
        """Connect, say hello and wait for the welcome (raises RuntimeError naming the refusal)."""
        session = UserSession(user_id or str(uuid.uuid4()), key, {"display_name": name, **dict(meta or {})})
        wire = await Wire.open(url, name)
        user = cls(wire, session, name, key)
        await wire.send(session.hello(now_ms()))
        welcomed = await user.wait_event(lambda e: isinstance(e, Welcomed | HelloReaddressed), timeout)
        if isinstance(welcomed, HelloReaddressed):
            # The server wants a hello signed for its own id (PROTOCOL.md §2.3), as the client library does.
            await wire.send(session.hello(now_ms()))
            welcomed = await user.wait_event(lambda e: isinstance(e, Welcomed), timeout)
        if welcomed is None:
            codes = wire.errors()
            await wire.close()
            raise RuntimeError(f"{name} was not welcomed at {url} (errors {codes}, closed={wire.closed})")
        return user

    def pump(self) -> None:
        """Feed every message received since the last call through the client core."""
        while self._consumed < len(self.wire.inbox):
            received = self.wire.inbox[self._consumed]
            self._consumed += 1
            self.events.extend(self.session.receive_text(received.text, now_ms()))

    async def wait_event(self, predicate: Callable[[ClientEvent], bool], timeout: float) -> ClientEvent | None:
        """The first event (past or future) satisfying ``predicate`` within ``timeout``, else None."""
        def check(_: Received) -> bool:
            self.pump()
            return any(predicate(e) for e in self.events)

        self.pump()
        for event in self.events:
            if predicate(event):
                return event
        await self.wire.wait_for(check, timeout, self._consumed)
        self.pump()
        return next((e for e in self.events if predicate(e)), None)

    async def send_direct(self, recipient_id: str, text: str) -> str:
        """Send a DM; returns the frame's wire text (its ``msg_ref`` is ``.msg_ref``)."""
        self.pump()
        frame = self.session.direct_message(recipient_id, text, now_ms())
        await self.wire.send(frame)
        return frame

    async def wait_count(self, predicate: Callable[[ClientEvent], bool], count: int, timeout: float) -> int:
        """Wait until ``count`` events (past or future) satisfy ``predicate``, or ``timeout``; returns how many."""
        def enough(_: Received) -> bool:
            self.pump()
            return sum(1 for e in self.events if predicate(e)) >= count

        if not enough(Received("", None)):
            await self.wire.wait_for(enough, timeout, self._consumed)
        self.pump()
        return sum(1 for e in self.events if predicate(e))

    async def knows(self, user_id: str, timeout: float) -> bool:
        """Wait until this user's directory lists ``user_id``."""
        def listed(_: Received) -> bool:
            self.pump()
            return user_id in self.session.directory

        if listed(Received("", None)):
            return True
        return await self.wire.wait_for(listed, timeout, self._consumed) is not None

    async def close(self) -> None:
        """Leave."""
        await self.wire.close()


@dataclass(slots=True)
class RogueServer:
    """A malicious server: its own RSA-4096 key and id, links it opens itself (it never listens)."""

    key: crypto.PrivateKey
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    join_token: str | None = None
    links: dict[str, Wire] = field(default_factory=dict)
    """Node name → the link the rogue opened to it."""
    sent: dict[str, str] = field(default_factory=dict)
    """Node name → the wire text of the frame that opened our link to it (what a sniffer saw)."""
    _beats: asyncio.Task[None] | None = None

    @property
    def pubkey(self) -> str:
        """The rogue's public key."""
        return crypto.encode_public_key(self.key.public_key())

    def announce_payload(self) -> dict[str, Any]:
        """A SERVER_ANNOUNCE / SERVER_HELLO_JOIN payload with an address nobody can dial back."""
        return {"host": "127.0.0.1", "port": 9, "pubkey": self.pubkey}

    def opener(self, frame_type: FrameType, to: str) -> Envelope:
        """Our SERVER_HELLO_JOIN or link-opening SERVER_ANNOUNCE to ``to``, proving the join token (as an admitted
        member would) when we hold it."""
        ts = now_ms()
        payload = self.announce_payload()
        if self.join_token:
            payload[JOIN_MAC] = join_mac(self.join_token, frame_type, self.server_id, to, ts, payload)
        return self.make(frame_type, to, payload, ts=ts)

    def make(self, frame_type: FrameType, to: str, payload: Mapping[str, Any], *, ts: int | None = None,
             sender: str | None = None, signed: bool = True) -> Envelope:
        """A frame from the rogue (or claiming to be from ``sender``), signed with the rogue's key."""
        return env.make(frame_type, sender or self.server_id, to, ts or now_ms(), payload,
                        self.key if signed else None)

    async def join(self, url: str, name: str, timeout: float) -> Envelope | None:
        """Join through the introducer at ``url`` as a member would (signed hello, token if we have one), then
        announce ourselves on that link. Returns the SERVER_WELCOME, or None when refused."""
        wire = await Wire.open(url, f"rogue->{name}")
        await wire.send(self.opener(FrameType.SERVER_HELLO_JOIN, url.removeprefix("ws://")))
        welcome = await wire.frame(FrameType.SERVER_WELCOME, timeout)
        if welcome is None:
            await wire.close()
            return None
        self.server_id = str(welcome.payload["assigned_id"])
        self.links[name] = wire
        await wire.send(self.make(FrameType.SERVER_ANNOUNCE, BROADCAST, self.announce_payload()))
        self._start_heartbeats()
        return welcome

    async def link(self, url: str, name: str, server_id: str, timeout: float) -> bool:
        """Open a server link to ``url`` (server ``server_id``) with our SERVER_ANNOUNCE; True once the node talks
        to us as a server (its first frame on the link, e.g. its presence snapshot)."""
        wire = await Wire.open(url, f"rogue->{name}")
        opener = self.opener(FrameType.SERVER_ANNOUNCE, server_id)
        self.sent[name] = opener.to_wire()
        await wire.send(opener)
        first = await wire.wait_for(lambda r: r.frame is not None and r.frame.type is not FrameType.ERROR, timeout)
        if first is None:
            await wire.close()
            return False
        self.links[name] = wire
        self._start_heartbeats()
        return True

    async def send(self, name: str, frame: Envelope | str) -> bool:
        """Send on the link to ``name``."""
        return await self.links[name].send(frame)

    def _start_heartbeats(self, interval: float = 0.4) -> None:
        if self._beats is not None:
            return

        async def beat() -> None:
            while True:
                frame = await asyncio.to_thread(self.make, FrameType.HEARTBEAT, BROADCAST, {})
                for wire in list(self.links.values()):
                    await wire.send(frame)
                await asyncio.sleep(interval)  # a periodic timer, not a synchronisation

        self._beats = asyncio.create_task(beat(), name="rogue-heartbeats")

    async def close(self) -> None:
        """Stop heartbeating and drop every link."""
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
            self._beats = None
        for wire in self.links.values():
            await wire.close()
        self.links.clear()


def secret_fields(text: str) -> set[str]:
    """Names of login secrets (salt, verifier, sealed private key) that appear anywhere in ``text``."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("privkey_store", "pake_password", "verifier_hash", "salt", "sealed"):
                    found.add(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    with contextlib.suppress(ValueError):
        walk(json.loads(text))
    return found
