"""The asyncio shell of a node: sockets, tasks, the clock and the database around ``ServerState``.

It does nothing clever: every received message, connection change and timer goes into the state
machine, and every action it queues is carried out in order (see :mod:`socp.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response

from node.config import NodeConfig
from node.storage import Database, NodeIdentity, save_identity
from socp.actions import (
    CloseLink,
    Dial,
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
_CLOSE = object()


def now_ms() -> int:
    """Wall-clock time in integer milliseconds (SOCP ``ts`` unit)."""
    return time.time_ns() // 1_000_000


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
        self.state: ServerState | None = None
        self._links: dict[LinkId, _LinkIO] = {}
        self._wakeup = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._log = logging.LoggerAdapter(logger, {"node": identity.server_id[:8]})

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then close every connection."""
        max_size = self.config.max_frame_bytes * 2  # larger frames get our TOO_LARGE before websockets' 1009
        async with serve(self._serve_connection, self.config.host, self.config.port, max_size=max_size,
                         process_request=self._process_request, logger=logging.getLogger("socp.node.ws"),
                         ) as server:
            port = self._bound_port(server)
            self.state = ServerState(self._settings(port), self.identity.key, now=now_ms(), rng=random.Random(),
                                     registrations=self.database.registrations(self.identity.server_id),
                                     pinned_servers=self.database.pinned_servers(),
                                     public_version=self.database.public_version(),
                                     public_wraps=self.database.public_wraps())
            self.state.start(now_ms())
            self._log.info("%s %s listening on ws://%s:%d", "introducer" if self.config.introducer else "server",
                           self.config.name, self.config.host, port)
            if self._on_listening:
                self._on_listening(self.config.host, port)
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                timer = tasks.create_task(self._timer_loop())
                self._flush()
                await stop.wait()
                timer.cancel()
                server.close(close_connections=True)
                for link_id, link in list(self._links.items()):
                    if link.connection is not None:
                        tasks.create_task(self._close_connection(link_id, link.connection, 1001, "server shutdown"))
        self._log.info("stopped")

    # --- connections -----------------------------------------------------------------------------

    async def _serve_connection(self, connection: ServerConnection) -> None:
        state = self._state()
        link_id = state.accept_link(now_ms())
        await self._pump(link_id, connection)

    async def _dial(self, link_id: LinkId, host: str, port: int) -> None:
        state = self._state()
        uri = f"ws://{host}:{port}"
        try:
            async with asyncio.timeout(DIAL_TIMEOUT_S):
                connection = await connect(uri, max_size=self.config.max_frame_bytes * 2,
                                           logger=logging.getLogger("socp.node.ws"))
        except Exception as exc:  # whatever the dial hit, it fails this dial, never the node
            if not isinstance(exc, OSError | TimeoutError | InvalidHandshake | InvalidURI):
                self._log.warning("unexpected error dialing %s: %r", uri, exc)
            self._log.info("cannot reach %s: %s", uri, exc or type(exc).__name__)
            self._links.pop(link_id, None)
            state.dial_failed(link_id, now_ms())
            self._flush()
            return
        self._links.setdefault(link_id, _LinkIO())
        self._links[link_id].connection = connection
        state.dial_succeeded(link_id, now_ms())
        await self._pump(link_id, connection)

    async def _pump(self, link_id: LinkId, connection: Connection) -> None:
        """Feed every message of ``connection`` to the state machine until it closes."""
        state = self._state()
        link = self._links.setdefault(link_id, _LinkIO())
        link.connection = connection
        self._flush()
        reason = "connection closed"
        try:
            async for message in connection:
                try:
                    state.receive_text(link_id, message, now_ms())
                except Exception:
                    # A bug reached by one peer's input costs that peer its session, never the node.
                    self._log.exception("internal error handling a frame on link %d; closing it", link_id)
                    reason = "internal error"
                    await self._close_connection(link_id, connection, 1011, reason)
                    break
                finally:
                    self._flush()
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        finally:
            self._links.pop(link_id, None)
            if link.writer is not None:
                link.writer.cancel()
            state.link_closed(link_id, now_ms(), reason)
            self._flush()

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

    def _flush(self) -> None:
        state = self._state()
        tasks = self._tasks
        for action in state.data_to_send():
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
        for event in state.events_received():
            try:
                self._record(event)
            except Exception:
                # A full disk or a locked database loses this record (logged), not the whole node.
                self._log.exception("cannot record %s", type(event).__name__)
        self._wakeup.set()

    def _record(self, event: object) -> None:
        now = now_ms()
        if isinstance(event, UserRegistered):
            self.database.register_user(event.user_id, event.pubkey, event.meta, now, self._state().server_id)
        elif isinstance(event, RegistrationStored):
            self.database.store_registration(event.registration)
        elif isinstance(event, PublicChannelVersion):
            self.database.set_public_version(event.version)
        elif isinstance(event, PublicWrapStored):
            self.database.store_wrap(event.member_id, event.wrapped_key)
        elif isinstance(event, ServerPinned):
            self.database.pin_server(event.server_id, event.pubkey, event.trusted, now)
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
        state = self._state()
        while True:
            self._wakeup.clear()
            delay = max(0.0, (state.next_deadline() - now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            if now_ms() >= state.next_deadline():
                try:
                    state.handle_timer(now_ms())
                except Exception:
                    # A bug in a timer must not stop every future timer (heartbeats, reconnects).
                    self._log.exception("internal error in timers")
                self._flush()

    # --- HTTP --------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path not in ("/healthz", "/status"):
            return None
        state = self.state
        healthy = state is not None and state.healthy
        body = json.dumps(state.status() if state else {"healthy": False}) + "\n"
        status = http.HTTPStatus.OK if healthy or path == "/status" else http.HTTPStatus.SERVICE_UNAVAILABLE
        response = connection.respond(status, body)
        response.headers = Headers({"Content-Type": "application/json", "Content-Length": str(len(response.body))})
        return response

    # --- helpers -------------------------------------------------------------------------------------

    def _state(self) -> ServerState:
        if self.state is None:
            raise RuntimeError("node state used before the socket was bound")
        return self.state

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
        )
