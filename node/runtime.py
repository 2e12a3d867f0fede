"""The asyncio shell of a node: sockets, tasks, the clock and the database around ``ServerState``.

It does nothing clever: every received message, connection change and timer goes into the state
machine, and every action it queues is carried out in order (see :mod:`socp.server`).

The state machine lives on its own thread (:class:`node.core.CoreThread`): the event loop only does I/O, timers
and HTTP, so RSA signing never delays a read, a heartbeat or ``/healthz``. Every call into the core goes through
that one thread in the order the loop submits it (a frame is submitted as soon as it is read, so frames of all
connections reach the core in arrival order; a connection with :data:`INFLIGHT_FRAMES` frames queued is not
read further), and the actions and events each call produced are applied here, on the loop, in the same order.
Database records are written on the loop as the events are applied. ``/status`` is the core's latest status snapshot
plus the runtime's own load figures: ``loop_lag_ms`` and ``process`` (:mod:`node.metrics`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response

from node.config import NodeConfig
from node.core import CoreOutput, CoreThread, now_ms
from node.metrics import LoopLagMonitor, process_load
from node.storage import Database, NodeIdentity, save_identity
from socp.actions import (
    CloseLink,
    Dial,
    FramesDelivered,
    IdentityAssigned,
    LinkDown,
    LinkId,
    LinkUp,
    PeerFault,
    PublicChannelVersion,
    PublicWrapStored,
    RegistrationStored,
    Send,
    ServerPinned,
    UserJoined,
    UserLeft,
    UserRegistered,
)
from socp.server import ServerSettings, ServerState

logger = logging.getLogger("socp.node")

DIAL_TIMEOUT_S = 5.0
OUTBOX_BYTES = 32 * 1024 * 1024  # bytes queued for one peer before it is cut off as too slow
SEND_TIMEOUT_S = 30.0  # a peer that takes longer to accept one frame is cut off
INFLIGHT_FRAMES = 32  # frames of one connection queued at the core before the connection is read no further
INFLIGHT_BYTES = 4 * 1024 * 1024  # ... or bytes of them: a few megabyte file chunks, not 32 (bounded memory)
WS_MAX_QUEUE = 4  # frames websockets reads ahead per connection (its default, 16, is 32 MiB of 2 MiB frames)
_CLOSE = object()
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 "Try Again Later": a connection cap was reached

__all__ = ["NodeRuntime", "now_ms"]


@dataclass(slots=True)
class _LinkIO:
    connection: Connection | None = None
    outbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    queued_bytes: int = 0


class NodeRuntime:
    """Runs one node until ``stop`` is set: binds, joins, serves users and server links."""

    def __init__(self, config: NodeConfig, identity: NodeIdentity, database: Database,
                 on_listening: Callable[[str, int], None] | None = None) -> None:
        self.config = config
        self.identity = identity
        self.database = database
        self._on_listening = on_listening
        self._links: dict[LinkId, _LinkIO] = {}
        self._wakeup = asyncio.Event()
        self._deadline = 0  # the core's next_deadline(), as of the last output applied
        self._server_id = identity.server_id  # likewise
        self._tasks: asyncio.TaskGroup | None = None
        self._log = logging.LoggerAdapter(logger, {"node": identity.server_id[:8]})
        self._core = CoreThread(self._apply, self._log)
        self._lag = LoopLagMonitor()
        self._open_connections = 0
        self._per_source: dict[str, int] = {}
        self.refused_connections = 0
        """Inbound connections closed at once because a connection cap was reached."""
        if config.interop:
            self._log.warning("INTEROP PROFILE is ON: other implementations' field names and shapes are accepted "
                              "and each variant is logged once per peer (docs/INTEROP.md)")
        if config.legacy_interop:
            self._log.warning("LEGACY INTEROP is ON: payload-only transport signatures and USER_HELLO / "
                              "SERVER_ANNOUNCE addressed to '*' are accepted; captured frames can then be "
                              "re-timestamped or replayed to another server (WIRE §2). Never run it in production.")

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then close every connection."""
        max_size = self.config.max_frame_bytes * 2  # larger frames get our TOO_LARGE before websockets' 1009
        try:
            await self._serve(stop, max_size)
        finally:
            # Connection handlers have ended (the server waits for them); their last calls are queued.
            await self._core.close()
        self._log.info("stopped")

    async def _serve(self, stop: asyncio.Event, max_size: int) -> None:
        # No permessage-deflate (compression=None): deflating megabyte file chunks of base64 ciphertext, which
        # barely shrinks, cost more CPU than all the rest of relaying them.
        async with serve(self._serve_connection, self.config.host, self.config.port, max_size=max_size,
                         process_request=self._process_request, logger=logging.getLogger("socp.node.ws"),
                         compression=None, max_queue=WS_MAX_QUEUE) as server:
            port = self._bound_port(server)
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    lag = tasks.create_task(self._lag.run())
                    await self._core.start(self._make_state(port))
                    self._log.info("%s %s listening on ws://%s:%d",
                                   "introducer" if self.config.introducer else "server",
                                   self.config.name, self.config.host, port)
                    if self._on_listening:
                        self._on_listening(self.config.host, port)
                    timer = tasks.create_task(self._timer_loop())
                    await stop.wait()
                    timer.cancel()
                    lag.cancel()
                    server.close(close_connections=True)
                    for link_id, link in list(self._links.items()):
                        if link.connection is not None:
                            tasks.create_task(self._close_connection(link_id, link.connection, 1001,
                                                                     "server shutdown"))
            finally:
                self._tasks = None

    def _make_state(self, port: int) -> Callable[[int], ServerState]:
        """Read what the state starts from (on the loop: the database is the loop's); build it on the core thread."""
        settings = self._settings(port)
        database = self.database
        registrations = database.registrations(self.identity.server_id)
        pinned, version, wraps = database.pinned_servers(), database.public_version(), database.public_wraps()
        delivered = database.delivered(now_ms())
        key = self.identity.key
        return lambda now: ServerState(settings, key, now=now, rng=random.Random(), registrations=registrations,
                                       pinned_servers=pinned, public_version=version, public_wraps=wraps,
                                       delivered=delivered)

    # --- connections -----------------------------------------------------------------------------

    async def _serve_connection(self, connection: ServerConnection) -> None:
        def register(link_id: LinkId) -> None:
            self._links.setdefault(link_id, _LinkIO()).connection = connection

        source = _source_address(connection)
        refusal = self._admit_connection(source)
        if refusal is not None:
            # Refused before the core hears of it: no link, no frame read, no signature (CLOSE_TRY_AGAIN_LATER).
            self.refused_connections += 1
            self._log.info("refused a connection from %s: %s", source, refusal)
            await connection.close(CLOSE_TRY_AGAIN_LATER, refusal)
            return
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._open_connections += 1
        try:
            link_id = await self._core.call(lambda state, now: state.accept_link(now, source), before_apply=register)
            await self._pump(link_id, connection)
        finally:
            self._open_connections -= 1
            remaining = self._per_source.pop(source, 1) - 1
            if remaining > 0:
                self._per_source[source] = remaining

    def _admit_connection(self, source: str) -> str | None:
        """None when an inbound connection from ``source`` is within the caps, else the close reason."""
        config = self.config
        if self._open_connections >= config.max_connections:
            return f"too many connections ({config.max_connections}); try again later"
        if self._per_source.get(source, 0) >= config.max_connections_per_ip:
            return f"too many connections from your address ({config.max_connections_per_ip}); try again later"
        return None

    async def _dial(self, link_id: LinkId, host: str, port: int) -> None:
        uri = f"ws://{host}:{port}"
        try:
            async with asyncio.timeout(DIAL_TIMEOUT_S):
                connection = await connect(uri, max_size=self.config.max_frame_bytes * 2, compression=None,
                                           max_queue=WS_MAX_QUEUE, logger=logging.getLogger("socp.node.ws"))
        except Exception as exc:  # whatever the dial hit, it fails this dial, never the node
            if not isinstance(exc, OSError | TimeoutError | InvalidHandshake | InvalidURI):
                self._log.warning("unexpected error dialing %s: %r", uri, exc)
            self._log.info("cannot reach %s: %s", uri, exc or type(exc).__name__)
            self._links.pop(link_id, None)
            self._core.post(lambda state, now: state.dial_failed(link_id, now))
            return
        self._links.setdefault(link_id, _LinkIO()).connection = connection
        self._core.post(lambda state, now: state.dial_succeeded(link_id, now))
        await self._pump(link_id, connection)

    async def _pump(self, link_id: LinkId, connection: Connection) -> None:
        """Feed every message of ``connection`` to the state machine until it closes.

        A message goes to the core as soon as it is read, so frames of every connection reach the core in the
        order they arrived here. At most :data:`INFLIGHT_FRAMES` of one connection wait at the core; beyond that
        the connection is not read, so a flood waits in the socket (TCP backpressure), not in memory; the same
        once :data:`INFLIGHT_BYTES` of its frames wait (file chunks are large).
        """
        link = self._links.setdefault(link_id, _LinkIO())
        link.connection = connection
        failed: list[BaseException] = []
        inflight: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        inflight_bytes = 0

        def check(future: asyncio.Future[None]) -> None:
            if future.cancelled() or (error := future.exception()) is None or failed:
                return
            # A bug reached by one peer's input costs that peer its session, never the node.
            failed.append(error)
            self._log.error("internal error handling a frame on link %d; closing it", link_id, exc_info=error)
            if self._tasks is not None:
                self._tasks.create_task(self._close_connection(link_id, connection, 1011, "internal error"))

        reason = "connection closed"
        try:
            async for message in connection:
                future = self._core.submit(self._receive(link_id, message))
                future.add_done_callback(check)
                inflight.append((future, len(message)))
                inflight_bytes += len(message)
                while inflight and inflight[0][0].done():
                    inflight_bytes -= inflight.popleft()[1]
                while inflight and (len(inflight) >= INFLIGHT_FRAMES or inflight_bytes > INFLIGHT_BYTES):
                    oldest, size = inflight.popleft()
                    inflight_bytes -= size
                    await asyncio.wait([oldest])
                if failed:
                    break
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        finally:
            reason = "internal error" if failed else reason
            self._links.pop(link_id, None)
            if link.writer is not None:
                link.writer.cancel()
            self._core.post(lambda state, now: state.link_closed(link_id, now, reason))

    @staticmethod
    def _receive(link_id: LinkId, message: str | bytes) -> Callable[[ServerState, int], None]:
        return lambda state, now: state.receive_text(link_id, message, now)

    async def _write(self, link_id: LinkId, link: _LinkIO) -> None:
        """Send queued frames of one link in order; a close request ends it."""
        while True:
            item = await link.outbox.get()
            if link.connection is None:
                return
            if item is _CLOSE:
                await self._close_connection(link_id, link.connection, 1000, "closed by server")
                return
            text = str(item)
            link.queued_bytes -= len(text)
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await link.connection.send(text)
            except TimeoutError:
                self._log.warning("link %d accepted nothing for %.0f s: cutting it off", link_id, SEND_TIMEOUT_S)
                link.connection.transport.abort()
                return
            except ConnectionClosed:
                return
            except Exception:  # a broken connection ends its writer, never the node's task group
                self._log.exception("cannot send on link %d", link_id)
                return

    async def _close_connection(self, link_id: LinkId, connection: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await connection.close(code, reason[:120])

    # --- the state machine's outputs -------------------------------------------------------------

    def _apply(self, output: CoreOutput) -> None:
        """Carry out one core call's output, on the loop, in call order (see :mod:`node.core`)."""
        self._deadline, self._server_id = output.deadline, output.server_id
        tasks = self._tasks
        for action in output.actions:
            if isinstance(action, Send | CloseLink):
                link = self._links.get(action.link_id)
                if link is None or link.connection is None:
                    continue
                if isinstance(action, Send) and link.queued_bytes + len(action.text) > OUTBOX_BYTES:
                    # Queueing more (or a polite close behind the backlog) would only grow memory: cut it off now.
                    self._log.warning("link %d too slow (%d bytes queued): cutting it off", action.link_id,
                                      link.queued_bytes)
                    link.connection.transport.abort()
                    continue
                if isinstance(action, Send):
                    link.queued_bytes += len(action.text)
                link.outbox.put_nowait(action.text if isinstance(action, Send) else _CLOSE)
                if link.writer is None and tasks is not None:
                    link.writer = tasks.create_task(self._write(action.link_id, link))
            elif isinstance(action, Dial) and tasks is not None:
                self._links[action.link_id] = _LinkIO()
                tasks.create_task(self._dial(action.link_id, action.host, action.port))
        for event in output.events:
            try:
                self._record(event)
            except Exception:
                # A full disk or a locked database loses this record (logged), not the whole node.
                self._log.exception("cannot record %s", type(event).__name__)
        self._wakeup.set()

    def _record(self, event: object) -> None:
        now = now_ms()
        if isinstance(event, UserRegistered):
            self.database.register_user(event.user_id, event.pubkey, event.meta, now, self._server_id)
        elif isinstance(event, RegistrationStored):
            self.database.store_registration(event.registration)
        elif isinstance(event, PublicChannelVersion):
            self.database.set_public_version(event.version)
        elif isinstance(event, PublicWrapStored):
            self.database.store_wrap(event.member_id, event.wrapped_key)
        elif isinstance(event, ServerPinned):
            self.database.pin_server(event.server_id, event.pubkey, event.trusted, now)
        elif isinstance(event, FramesDelivered):
            self.database.remember_delivered(event.delivered, now)
        elif isinstance(event, IdentityAssigned):
            save_identity(self.config.data_dir, event.server_id, self.config.name)
            self._log = logging.LoggerAdapter(logger, {"node": event.server_id[:8]})
        elif isinstance(event, LinkUp):
            print(f"[federation] Connected to peer {event.server_id}", flush=True)
        elif isinstance(event, LinkDown):
            print(f"[federation] Lost peer {event.server_id} ({event.reason}); "
                  f"{event.users_dropped} users unreachable", flush=True)
        elif isinstance(event, UserJoined | UserLeft | PeerFault):
            self._log.debug("event %s", event)

    async def _timer_loop(self) -> None:
        while True:
            self._wakeup.clear()
            delay = max(0.0, (self._deadline - now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            if now_ms() >= self._deadline:
                try:
                    await self._core.run_timer()
                except Exception:
                    # A bug in a timer must not stop every future timer (heartbeats, reconnects).
                    self._log.exception("internal error in timers")

    # --- HTTP --------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """``/healthz`` and ``/status``, from the core's latest snapshot: they never wait for the core."""
        path = request.path.split("?", 1)[0]
        if path not in ("/healthz", "/status"):
            return None
        snapshot = self._core.status
        healthy = bool(snapshot and snapshot.get("healthy"))
        body = json.dumps(self.status()) + "\n"
        status = http.HTTPStatus.OK if healthy or path == "/status" else http.HTTPStatus.SERVICE_UNAVAILABLE
        response = connection.respond(status, body)
        response.headers = Headers({"Content-Type": "application/json", "Content-Length": str(len(response.body))})
        return response

    def status(self) -> dict[str, Any]:
        """The ``/status`` body: the core's latest ``status()`` snapshot, plus ``loop_lag_ms`` and ``process``."""
        snapshot = self._core.status
        body: dict[str, Any] = dict(snapshot) if snapshot is not None else {"healthy": False}
        body["loop_lag_ms"] = self._lag.summary()
        body["connections"] = {"open": self._open_connections, "refused": self.refused_connections,
                               "max": self.config.max_connections,
                               "max_per_ip": self.config.max_connections_per_ip}
        body["process"] = process_load()
        return body

    # --- helpers -------------------------------------------------------------------------------------

    def _bound_port(self, server: Server) -> int:
        for sock in server.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("server has no listening socket")

    def _settings(self, port: int) -> ServerSettings:
        config = self.config
        return ServerSettings(
            server_id=self.identity.server_id, advertise_host=config.advertise_host,
            advertise_port=config.advertise_port or port, introducer=config.introducer,
            bootstrap=config.bootstrap, heartbeat_interval_ms=config.timings.heartbeat_interval_ms,
            peer_timeout_ms=config.timings.peer_timeout_ms,
            presence_sync_interval_ms=config.timings.presence_sync_interval_ms,
            replay_window_ms=config.timings.replay_window_ms, max_frame_bytes=config.max_frame_bytes,
            allow_unsigned_hello=config.allow_unsigned_hello, rate_per_second=config.rate_limit,
            rate_burst=config.rate_burst,
            backoff_initial_ms=min(500, config.timings.heartbeat_interval_ms),
            max_file_bytes=config.max_file_bytes, login_max_failures=config.login_attempts,
            legacy_interop=config.legacy_interop, interop=config.interop,
            server_rate_per_second=config.server_rate_limit,
            server_rate_burst=config.server_rate_burst, admit_keys=config.admit_keys, join_token=config.join_token,
        )


def _source_address(connection: ServerConnection) -> str:
    """The peer's IP address as the socket sees it ("" when unknown): the unit of the per-source caps."""
    remote = connection.remote_address
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return ""
