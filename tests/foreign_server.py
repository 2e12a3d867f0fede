"""A foreign SOCP server for tests: another implementation's handshake and signature habits, over real
WebSockets (issue 14, docs/INTEROP.md).

:class:`ForeignServer` is a minimal relay written from the issue's description of the other implementations,
using only :mod:`socp` crypto and framing: it welcomes users (with an ``ACK``, or with none at all:
:class:`ClientWelcome`), joins an introducer or welcomes a joiner, and relays direct messages between its users
and the servers it is linked to. :class:`Handshake` says which of the issue's federation variants it plays:

- ``welcome_null_id``: its ``SERVER_WELCOME`` says ``assigned_id: null`` (keep the id you asked for);
- ``announce_address=False``: its ``SERVER_ANNOUNCE`` has no ``host``/``port``;
- ``keys_in_fields``: it names its own key only as ``server_id`` + ``server_pub`` (its welcome lists no
  servers) and learns a peer's key only from those fields of the peer's join, welcome or announce;
- ``sig``: how it signs and what it verifies (:class:`SigForm`): our canonical envelope, the standard's
  payload-only canonical JSON, or ``json.dumps(payload, sort_keys=True)`` *with* spaces. A frame from a peer
  that does not verify in its own form is dropped and counted in :attr:`ForeignServer.refused` (it refuses our
  compact envelope signatures, as the issue reports), except a join, which it does not check (the standard
  allows an unsigned join).

It is test code: bounded queues and loops, no persistence, no replay cache, no rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from socp import crypto
from socp.codec import canonical_json
from socp.server.mesh import JOIN_MAC, join_mac

logger = logging.getLogger("tests.foreign_server")

HEARTBEAT_SECONDS = 0.5
"""How often it sends HEARTBEAT on each server link (our FAST_TIMINGS peer timeout is 2 s)."""

Socket = ClientConnection | ServerConnection


class SigForm(Enum):
    """What a transport signature covers, and how it is serialised."""

    ENVELOPE = "envelope"
    """Ours (WIRE §2): the canonical envelope."""
    PAYLOAD = "payload"
    """The standard's: the payload alone, canonical JSON."""
    SPACES = "spaces"
    """The payload alone as ``json.dumps(payload, sort_keys=True)``: default separators, with spaces."""


class ClientWelcome(Enum):
    """How it answers a user's USER_HELLO."""

    ACK = "ack"
    """``ACK {msg_ref: USER_HELLO, server_id, server_pub}``, then the adverts of the users it knows."""
    NO_ACK = "no-ack"
    """No ACK: only the adverts of the users it knows (the new user's own first), signed."""
    SILENT = "silent"
    """Nothing at all until something else happens (another user's advert, a list answer, a message)."""
    LATE_ACK = "late-ack"
    """As aniketrattan/secure-programming-group-17 (integration/) welcomes, measured against it: its own
    ``PUBLIC_CHANNEL_KEY_SHARE`` (a server-made group key), ``CLIENT_WELCOME``, then ``ACK {msg_ref:
    USER_HELLO_OK, server_pub}`` (no ``server_id``) :data:`LATE_ACK_SECONDS` after the hello; every frame to its
    users is signed over the payload alone."""


LATE_ACK_SECONDS = 3.5
"""When a :attr:`ClientWelcome.LATE_ACK` server acknowledges USER_HELLO: past the client's 3 s no-ACK wait (the
real server took 3.3 s here: it re-parses its RSA-4096 private key for each of the three frames it signs)."""


@dataclass(frozen=True, slots=True)
class Handshake:
    """Which federation handshake variants the foreign server plays (see the module docstring)."""

    name: str
    welcome_null_id: bool = False
    announce_address: bool = True
    keys_in_fields: bool = False
    sig: SigForm = SigForm.ENVELOPE

    @property
    def weakens(self) -> bool:
        """True when our node must refuse it by default: anything but our envelope signature and WIRE's fields."""
        return self.welcome_null_id or not self.announce_address or self.sig is not SigForm.ENVELOPE


HANDSHAKES = (
    Handshake("assigned-id-null", welcome_null_id=True),
    Handshake("announce-without-address", announce_address=False),
    Handshake("keys-in-fields-only", keys_in_fields=True),
    Handshake("sort-keys-with-spaces", sig=SigForm.SPACES),
    Handshake("payload-only", sig=SigForm.PAYLOAD),
)
"""One foreign server per handshake variant of issue 14, item 5."""


def now_ms() -> int:
    """Wall-clock milliseconds."""
    return time.time_ns() // 1_000_000


def signed_bytes(form: SigForm, frame: dict[str, Any]) -> bytes:
    """What a signature in ``form`` covers for ``frame`` (a decoded frame)."""
    payload = frame.get("payload") or {}
    if form is SigForm.ENVELOPE:
        return canonical_json({k: frame[k] for k in ("type", "from", "to", "ts")} | {"payload": payload})
    if form is SigForm.PAYLOAD:
        return canonical_json(payload)
    return json.dumps(payload, sort_keys=True).encode()


@dataclass(slots=True)
class _Peer:
    """A linked server."""

    server_id: str
    key: crypto.PublicKey
    socket: Socket


@dataclass(slots=True)
class _RemoteUser:
    pubkey: str
    server_id: str


@dataclass
class ForeignServer:
    """A foreign server on 127.0.0.1 (see the module docstring). ``async with`` starts and stops it."""

    key: crypto.PrivateKey
    handshake: Handshake = field(default_factory=lambda: Handshake("standard"))
    welcome: ClientWelcome = ClientWelcome.ACK
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    port: int = 0
    refused: list[str] = field(default_factory=list)
    """Frames from peers dropped because their signature does not verify in our form (``TYPE from``)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    """Payloads of ERROR frames received from servers (a refused join or announce says why here)."""
    peers: dict[str, _Peer] = field(default_factory=dict)
    local: dict[str, tuple[str, ServerConnection]] = field(default_factory=dict)
    """Local user id → (its key, its connection)."""
    remote: dict[str, _RemoteUser] = field(default_factory=dict)
    assigned_ids: list[str | None] = field(default_factory=list)
    welcomes: list[dict[str, Any]] = field(default_factory=list)
    """Payloads of the SERVER_WELCOMEs it received (what an introducer told a newcomer)."""
    join_token: str = field(default="", repr=False)
    """A closed federation's join token: its join then carries ``join_mac`` (PROTOCOL.md §5.2.1)."""
    _server: Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def pubkey(self) -> str:
        """Its public key, wire encoding."""
        return crypto.encode_public_key(self.key.public_key())

    @property
    def url(self) -> str:
        """Where users and servers reach it."""
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ForeignServer:
        self._server = await serve(self._accept, "127.0.0.1", 0, max_size=4 * 1024 * 1024, compression=None)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self.peers.values()):
            await peer.socket.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # --- framing ---------------------------------------------------------------------------------------

    def frame(self, frame_type: str, to: str, payload: dict[str, Any], ts: int | None = None,
              form: SigForm | None = None) -> str:
        """A frame from us, signed in our form (``form`` overrides it; user-facing frames use the envelope)."""
        frame: dict[str, Any] = {"type": frame_type, "from": self.server_id, "to": to,
                                 "ts": now_ms() if ts is None else ts, "payload": payload, "id": str(uuid.uuid4())}
        frame["sig"] = crypto.sign(self.key, signed_bytes(form or self.handshake.sig, frame))
        return json.dumps(frame)

    def _verifies(self, frame: dict[str, Any], key: crypto.PublicKey) -> bool:
        sig = frame.get("sig")
        return isinstance(sig, str) and bool(sig) and crypto.verify(key, signed_bytes(self.handshake.sig, frame), sig)

    @property
    def _user_form(self) -> SigForm:
        """How frames to its users are signed: payload-only for :attr:`ClientWelcome.LATE_ACK`, else ours."""
        return SigForm.PAYLOAD if self.welcome is ClientWelcome.LATE_ACK else SigForm.ENVELOPE

    def _own_fields(self) -> dict[str, Any]:
        """Our key in a join or announce: ``pubkey`` (the standard's field), and ``server_id`` + ``server_pub``
        too when this implementation reads keys only from those."""
        if self.handshake.keys_in_fields:
            return {"pubkey": self.pubkey, "server_id": self.server_id, "server_pub": self.pubkey}
        return {"pubkey": self.pubkey}

    def _peer_key(self, frame: dict[str, Any]) -> str | None:
        """The key a peer's join, welcome or announce names as its own, read as this implementation reads it."""
        payload = frame.get("payload") or {}
        if self.handshake.keys_in_fields:
            named = payload.get("server_pub") if payload.get("server_id") == frame.get("from") else None
            return named if isinstance(named, str) else None
        if isinstance(payload.get("pubkey"), str):
            return str(payload["pubkey"])
        for entry in payload.get("servers") or payload.get("clients") or []:
            if isinstance(entry, dict) and frame.get("from") in (entry.get("server_id"), entry.get("user_id")):
                return str(entry.get("pubkey"))
        return None

    def _announce(self, to: str) -> str:
        payload: dict[str, Any] = self._own_fields()
        if self.handshake.announce_address:
            payload |= {"host": "127.0.0.1", "port": self.port}
        return self.frame("SERVER_ANNOUNCE", to, payload)

    # --- federation --------------------------------------------------------------------------------------

    async def join(self, host: str, port: int, timeout: float = 10.0) -> str:
        """Join the introducer at ``host:port``: SERVER_HELLO_JOIN, its SERVER_WELCOME, then our announce to
        ``"*"`` on the link, which stays open. Returns the introducer's id; raises AssertionError with the
        introducer's ERROR when refused."""
        socket = await connect(f"ws://{host}:{port}", max_size=4 * 1024 * 1024, compression=None)
        payload = {"host": "127.0.0.1", "port": self.port} | self._own_fields()
        ts = now_ms()
        if self.join_token:
            payload[JOIN_MAC] = join_mac(self.join_token, "SERVER_HELLO_JOIN", self.server_id, f"{host}:{port}", ts,
                                         payload)
        await socket.send(self.frame("SERVER_HELLO_JOIN", f"{host}:{port}", payload, ts=ts))
        async with asyncio.timeout(timeout):
            frame = json.loads(await socket.recv())
        if frame.get("type") != "SERVER_WELCOME":
            await socket.close()
            self.errors.append(frame.get("payload") or {})
            raise AssertionError(f"join refused: {frame}")
        self.welcomes.append(frame.get("payload") or {})
        key_text = self._peer_key(frame)
        if key_text is None or not self._verifies(frame, crypto.decode_public_key(key_text)):
            await socket.close()
            raise AssertionError("SERVER_WELCOME not signed by the key it names, in our form")
        peer = _Peer(frame["from"], crypto.decode_public_key(key_text), socket)
        self.peers[peer.server_id] = peer
        await socket.send(self._announce("*"))
        await self._advertise_all(peer)
        self._spawn(self._serve_peer(peer))
        # The other servers the welcome lists (by server_id + pubkey, which every variant reads): link to each.
        for entry in frame["payload"].get("servers") or []:
            if (isinstance(entry, dict) and entry.get("server_id") not in (peer.server_id, self.server_id)
                    and entry.get("host") and isinstance(entry.get("port"), int) and entry.get("pubkey")):
                await self.link(entry["host"], entry["port"], to=entry["server_id"], key=entry["pubkey"])
        return peer.server_id

    async def link(self, host: str, port: int, to: str = "*", key: str | None = None) -> None:
        """Open a direct link to the server at ``host:port`` with our SERVER_ANNOUNCE addressed to ``to``; its
        key is ``key`` when known (a welcome listed it), else learnt from its first frame that names one."""
        socket = await connect(f"ws://{host}:{port}", max_size=4 * 1024 * 1024, compression=None)
        await socket.send(self._announce(to))
        if key is None or to == "*":
            self._spawn(self._await_peer(socket))
            return
        peer = _Peer(to, crypto.decode_public_key(key), socket)
        self.peers[to] = peer
        await self._advertise_all(peer)
        self._spawn(self._serve_peer(peer))

    async def _await_peer(self, socket: Socket) -> None:
        """A link we opened: the peer is known by its first verified frame naming its key, else by ``from``."""
        with contextlib.suppress(ConnectionClosed):
            async for message in socket:
                frame = json.loads(message)
                if frame.get("type") == "ERROR":
                    self.errors.append(frame.get("payload") or {})
                    continue
                key_text = self._peer_key(frame)
                if key_text is None:
                    continue
                peer = _Peer(frame["from"], crypto.decode_public_key(key_text), socket)
                if self._verifies(frame, peer.key):
                    self.peers[peer.server_id] = peer
                    await self._advertise_all(peer)
                    self._spawn(self._heartbeats(peer))
                    await self._server_loop(peer)
                    return

    async def _serve_peer(self, peer: _Peer) -> None:
        self._spawn(self._heartbeats(peer))
        await self._server_loop(peer)

    async def _heartbeats(self, peer: _Peer) -> None:
        """HEARTBEAT every :data:`HEARTBEAT_SECONDS` while the link is open (and this server runs)."""
        with contextlib.suppress(ConnectionClosed):
            while self.peers.get(peer.server_id) is peer:
                await peer.socket.send(self.frame("HEARTBEAT", "*", {}))
                await asyncio.sleep(HEARTBEAT_SECONDS)  # a period, not a synchronisation

    async def _server_loop(self, peer: _Peer) -> None:
        try:
            async for message in peer.socket:
                await self._on_server_frame(peer, json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            if self.peers.get(peer.server_id) is peer:
                del self.peers[peer.server_id]

    async def _on_server_frame(self, peer: _Peer, frame: dict[str, Any]) -> None:
        kind, payload = frame.get("type"), frame.get("payload") or {}
        if kind == "ERROR":
            self.errors.append(payload)
            return
        if not self._verifies(frame, peer.key):
            self.refused.append(f"{kind} from {str(frame.get('from'))[:8]}")
            return
        if kind == "USER_ADVERTISE" and isinstance(payload.get("user_id"), str):
            await self._learn(payload["user_id"], payload.get("pubkey"), frame["from"])
        elif kind == "SERVER_PRESENCE_SYNC":
            for user in payload.get("users") or []:
                if isinstance(user, dict):
                    await self._learn(user.get("user_id"), user.get("pubkey"), frame["from"])
        elif kind == "USER_REMOVE":
            self.remote.pop(str(payload.get("user_id")), None)
        elif kind == "SERVER_DELIVER" and "kind" not in payload:
            local = self.local.get(str(payload.get("user_id")))
            if local is not None:
                body = {k: payload[k] for k in ("ciphertext", "sender", "sender_pub", "content_sig") if k in payload}
                await local[1].send(self.frame("USER_DELIVER", payload["user_id"], body, ts=frame["ts"],
                                               form=self._user_form))

    async def _learn(self, user_id: object, pubkey: object, server_id: str) -> None:
        """A remote user's record; a new one is advertised to our users."""
        if not (isinstance(user_id, str) and isinstance(pubkey, str)) or user_id in self.local:
            return
        known = self.remote.get(user_id)
        self.remote[user_id] = _RemoteUser(pubkey, server_id)
        if known is None or known.pubkey != pubkey:
            for local_id, (_, socket) in list(self.local.items()):
                with contextlib.suppress(ConnectionClosed):
                    await socket.send(self._advert(user_id, pubkey, local_id, self._user_form, home=server_id))

    async def _advertise_all(self, peer: _Peer) -> None:
        for user_id, (pubkey, _) in list(self.local.items()):
            await peer.socket.send(self._advert(user_id, pubkey))

    def _advert(self, user_id: str, pubkey: str, to: str = "*", form: SigForm | None = None,
                home: str | None = None) -> str:
        # No attestation: this implementation has none (our nodes accept that only under --interop).
        return self.frame("USER_ADVERTISE", to, {"user_id": user_id, "server_id": home or self.server_id,
                                                 "pubkey": pubkey, "meta": {"display_name": user_id[:8]}}, form=form)

    # --- connections to us ---------------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, socket: ServerConnection) -> None:
        try:
            first = json.loads(await asyncio.wait_for(socket.recv(), 10.0))
        except (TimeoutError, ConnectionClosed, ValueError):
            return
        kind = first.get("type")
        if kind == "USER_HELLO":
            await self._user(socket, first)
        elif kind == "SERVER_HELLO_JOIN":
            await self._welcome_joiner(socket, first)
        elif kind in ("SERVER_ANNOUNCE", "SERVER_HELLO_LINK"):
            key_text = self._peer_key(first)
            if key_text is not None and self._verifies(first, crypto.decode_public_key(key_text)):
                peer = _Peer(first["from"], crypto.decode_public_key(key_text), socket)
                self.peers[peer.server_id] = peer
                await socket.send(self._announce(peer.server_id))
                await self._advertise_all(peer)
                await self._serve_peer(peer)

    async def _welcome_joiner(self, socket: ServerConnection, join: dict[str, Any]) -> None:
        """A server joins us: welcome it (with the variant's ``assigned_id``), announce ourselves, link."""
        key_text = self._peer_key(join)
        if key_text is None:
            await socket.send(self.frame("ERROR", str(join.get("from")), {"code": "BAD_KEY", "detail": "no key"}))
            return
        assigned = None if self.handshake.welcome_null_id else join["from"]
        self.assigned_ids.append(assigned)
        payload: dict[str, Any] = {"assigned_id": assigned}
        if self.handshake.keys_in_fields:
            payload |= {"server_id": self.server_id, "server_pub": self.pubkey, "servers": []}
        else:
            payload["servers"] = [{"server_id": self.server_id, "host": "127.0.0.1", "port": self.port,
                                   "pubkey": self.pubkey}]
        await socket.send(self.frame("SERVER_WELCOME", join["from"], payload))
        peer = _Peer(join["from"], crypto.decode_public_key(key_text), socket)
        self.peers[peer.server_id] = peer
        await socket.send(self._announce("*"))
        await self._advertise_all(peer)
        await self._serve_peer(peer)

    async def _user(self, socket: ServerConnection, hello: dict[str, Any]) -> None:
        payload = hello.get("payload") or {}
        user_id, pubkey = hello.get("from"), payload.get("pubkey", payload.get("pubkey_b64u"))
        if not isinstance(user_id, str) or not isinstance(pubkey, str):
            return
        self.local[user_id] = (pubkey, socket)
        try:
            if self.welcome is ClientWelcome.LATE_ACK:
                started = asyncio.get_running_loop().time()
                await socket.send(self.frame("PUBLIC_CHANNEL_KEY_SHARE", user_id, {
                    "version": 2, "shares": [{"member": user_id, "wrapped": "AAAA"}], "creator_pub": self.pubkey,
                    "content_sig": "AAAA"}, form=self._user_form))
                await socket.send(self.frame("CLIENT_WELCOME", user_id, {"server_id": self.server_id},
                                             form=self._user_form))
                # It is slow, not waiting for anything: this plays its signing time.
                await asyncio.sleep(max(0.0, LATE_ACK_SECONDS - (asyncio.get_running_loop().time() - started)))
                await socket.send(self.frame("ACK", user_id, {"msg_ref": "USER_HELLO_OK", "server_pub": self.pubkey},
                                             form=self._user_form))
            if self.welcome is ClientWelcome.ACK:
                await socket.send(self.frame("ACK", user_id, {"msg_ref": "USER_HELLO", "server_id": self.server_id,
                                                              "server_pub": self.pubkey}, form=self._user_form))
            if self.welcome is not ClientWelcome.SILENT:
                await socket.send(self._advert(user_id, pubkey, user_id, self._user_form))
                for other_id, other_pub, home in self._users(exclude=user_id):
                    await socket.send(self._advert(other_id, other_pub, user_id, self._user_form, home=home))
            for other_id, (_, other_socket) in list(self.local.items()):
                if other_id != user_id:
                    with contextlib.suppress(ConnectionClosed):
                        await other_socket.send(self._advert(user_id, pubkey, other_id, self._user_form))
            for peer in list(self.peers.values()):
                with contextlib.suppress(ConnectionClosed):
                    await peer.socket.send(self._advert(user_id, pubkey))
            async for message in socket:
                await self._on_user_frame(user_id, socket, json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            self.local.pop(user_id, None)

    def _users(self, exclude: str) -> list[tuple[str, str, str]]:
        """Every user we know but ``exclude``: (id, key, server id)."""
        users = [(uid, pub, self.server_id) for uid, (pub, _) in self.local.items() if uid != exclude]
        return users + [(uid, r.pubkey, r.server_id) for uid, r in self.remote.items() if uid != exclude]

    async def _on_user_frame(self, user_id: str, socket: ServerConnection, frame: dict[str, Any]) -> None:
        kind, payload, to = frame.get("type"), frame.get("payload") or {}, frame.get("to")
        if kind in ("LIST_REQUEST", "CMD_LIST"):
            users = [{"user_id": uid, "server_id": sid, "pubkey": pub} for uid, pub, sid in self._users("")]
            await socket.send(self.frame("LIST_RESPONSE", user_id, {"users": users}, form=self._user_form))
        elif kind == "MSG_DIRECT" and isinstance(to, str):
            body = {k: payload[k] for k in ("ciphertext", "sender_pub", "content_sig") if k in payload}
            if to in self.local:
                await self.local[to][1].send(self.frame("USER_DELIVER", to, body | {"sender": user_id},
                                                        ts=frame["ts"], form=self._user_form))
            elif to in self.remote and (peer := self.peers.get(self.remote[to].server_id)) is not None:
                await peer.socket.send(self.frame("SERVER_DELIVER", peer.server_id,
                                                  body | {"user_id": to, "sender": user_id}, ts=frame["ts"]))

