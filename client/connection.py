"""The asyncio wrapper of :class:`socp.user.UserSession`: one WebSocket connection to one server.

Usage::

    async with await ClientConnection.connect("ws://127.0.0.1:8765", identity) as conn:
        await conn.send_direct("bob", "hi")
        message = await conn.wait_for(lambda e: isinstance(e, DirectMessage), 5.0, description="a message")

The connection owns exactly one task, the reader, which feeds every frame to the session and queues the
events it produces; :meth:`ClientConnection.close` cancels and awaits it, so nothing outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from client.errors import ConnectionFailed, ConnectionLost
from client.keystore import Identity
from socp import crypto
from socp.errors import ERROR_BY_CODE, BadKey, ErrorCode, ProtocolError, SocpError
from socp.presence import Directory, UserRecord
from socp.user import (
    ClientEvent,
    FrameRejected,
    ServerError,
    ServerKeyChanged,
    UserList,
    UserSession,
    Welcomed,
)

logger = logging.getLogger("socp.client.connection")

MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Largest WebSocket message accepted from the server (a generous bound above the node's 2 MiB)."""

EVENT_QUEUE_LIMIT: Final = 10_000
"""Events kept for a consumer that does not read them; beyond it the oldest are dropped (bounded memory)."""

EventPredicate = Callable[[ClientEvent], bool]


class _Closed:
    """Queue sentinel: the reader has ended."""


_CLOSED: Final = _Closed()


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the Unix epoch: the ``now`` the session wants."""
    return time.time_ns() // 1_000_000


class ClientConnection:
    """A welcomed SOCP user connection; create it with :meth:`connect`.

    Events (:data:`socp.user.ClientEvent`) are consumed by one consumer through :meth:`next_event` or
    :meth:`wait_for`; both discard the events they pass over.
    """

    def __init__(self, websocket: WebSocket, session: UserSession, url: str) -> None:
        """Wrap an open WebSocket whose session is already welcomed; use :meth:`connect` instead."""
        self._ws = websocket
        self._session = session
        self.url = url
        self._queue: asyncio.Queue[ClientEvent | _Closed] = asyncio.Queue(maxsize=EVENT_QUEUE_LIMIT)
        self._reader: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self._list_waiters: list[asyncio.Future[list[UserRecord]]] = []
        self._silent_lists = 0
        self._dropped = 0

    # --- life cycle ------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, identity: Identity, *, meta: Mapping[str, Any] | None = None,
                      timeout: float = 10.0, expected_server_pub: str | None = None,
                      sync_directory: bool = True) -> ClientConnection:
        """Connect to ``url``, send USER_HELLO and wait for the server's welcome.

        ``meta`` is merged over ``{"display_name": identity.display_name}``. With ``sync_directory`` the
        connection also fetches the user list before returning, so that :attr:`directory` already holds
        everyone online (the UserOnline events of the initial adverts are queued as usual).

        Raises :class:`ConnectionFailed` (unreachable, handshake failed, no answer within ``timeout``,
        unacceptable answer), :class:`socp.errors.BadKey` when the server's key contradicts
        ``expected_server_pub``, and the :class:`ProtocolError` subclass matching an ERROR answer
        (``NameInUse``, ``BadKey``, …).
        """
        hello_meta = {"display_name": identity.display_name, **dict(meta or {})}
        session = UserSession(identity.user_id, identity.key, hello_meta, expected_server_pub)
        try:
            async with asyncio.timeout(timeout):
                websocket = await ws_connect(url, max_size=MAX_FRAME_BYTES, open_timeout=None)
        except TimeoutError:
            raise ConnectionFailed(f"cannot connect to {url}: no answer within {timeout:g} s") from None
        except (OSError, InvalidURI, InvalidHandshake, ValueError) as exc:
            raise ConnectionFailed(f"cannot connect to {url}: {_describe_connect_error(exc)}") from exc
        conn = cls(websocket, session, url)
        try:
            try:
                async with asyncio.timeout(timeout):
                    await conn._handshake()
            except TimeoutError:
                raise ConnectionFailed(f"connected to {url}, but the server did not acknowledge USER_HELLO "
                                       f"within {timeout:g} s") from None
            conn._reader = asyncio.create_task(conn._read_loop(), name=f"socp-client-reader-{identity.user_id[:8]}")
            if sync_directory:
                await conn._initial_sync(timeout)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the WebSocket and await the reader; idempotent."""
        try:
            await self._ws.close()
        finally:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.cancel()
                # The reader ends on its own once the socket is closed; cancel() covers a stuck peer.
                await asyncio.gather(reader, return_exceptions=True)
            self._fail_list_waiters(ConnectionLost(self._closed_reason or "connection closed"))

    async def __aenter__(self) -> ClientConnection:
        """Return the connection itself (it is already connected)."""
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Close the connection."""
        await self.close()

    # --- read-only views -------------------------------------------------------------------------

    @property
    def session(self) -> UserSession:
        """The protocol state machine behind this connection."""
        return self._session

    @property
    def user_id(self) -> str:
        """Our user id."""
        return self._session.user_id

    @property
    def server_id(self) -> str:
        """The id of the server that welcomed us."""
        server_id = self._session.server_id
        if server_id is None:  # connect() only returns welcomed connections
            raise ConnectionLost("connection was never welcomed")
        return server_id

    @property
    def server_pub(self) -> str:
        """The server key pinned at the welcome (canonical encoding)."""
        server_pub = self._session.server_pub
        if server_pub is None:
            raise ConnectionLost("connection was never welcomed")
        return server_pub

    @property
    def directory(self) -> Directory:
        """Users known online."""
        return self._session.directory

    @property
    def closed(self) -> bool:
        """True once the reader has seen the connection end."""
        return self._closed_reason is not None

    # --- sending ---------------------------------------------------------------------------------

    async def send_direct(self, name_or_id: str, text: str) -> str:
        """Send ``text`` end-to-end encrypted to the user called ``name_or_id``; returns the frame's msg_ref.

        Raises :class:`socp.errors.UserNotFound` when nobody (or more than one user) matches locally; a
        recipient gone meanwhile is reported later as a :class:`ServerError` event naming that msg_ref.
        """
        record = self._session.resolve(name_or_id)
        now = now_ms()
        frame = self._session.direct_message(record.user_id, text, now)
        await self._send(frame)
        return f"MSG_DIRECT:{self.user_id}:{record.user_id}:{now}"

    async def request_list(self) -> None:
        """Send LIST_REQUEST; the answer arrives as a :class:`socp.user.UserList` event."""
        await self._send(self._session.list_request(now_ms()))

    async def list_users(self, timeout: float = 10.0) -> list[UserRecord]:
        """Ask the server for everyone online and return the answer (the UserList event is queued too)."""
        return await self._list(timeout)

    # --- receiving -------------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        """The next event; raises :class:`TimeoutError` after ``timeout`` s and :class:`ConnectionLost`."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise TimeoutError(f"no event from {self.url} within {timeout:g} s") from None
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # later callers must see the end too
            raise ConnectionLost(f"connection to {self.url} ended: {self._closed_reason}")
        return item

    async def wait_for(self, predicate: EventPredicate, timeout: float, *,
                       description: str | None = None) -> ClientEvent:
        """The first event satisfying ``predicate``, discarding those before it.

        Raises :class:`TimeoutError` naming what was awaited (``description`` or the predicate's name) and
        the last events seen, and :class:`ConnectionLost` when the connection ends first.
        """
        what = description or getattr(predicate, "__name__", repr(predicate))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: deque[ClientEvent] = deque(maxlen=8)
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                event = await self.next_event(remaining)
            except TimeoutError:
                last = "; ".join(repr(e) for e in seen) or "none"
                raise TimeoutError(f"user {self.user_id[:8]} waited {timeout:g} s for {what} from {self.url}; "
                                   f"last events seen: {last}") from None
            except ConnectionLost as exc:
                raise ConnectionLost(f"{exc} while user {self.user_id[:8]} waited for {what}") from None
            if predicate(event):
                return event
            seen.append(event)

    # --- internals -------------------------------------------------------------------------------

    async def _handshake(self) -> None:
        await self._send(self._session.hello(now_ms()))
        while not self._session.welcomed:
            try:
                message = await self._ws.recv()
            except ConnectionClosed as exc:
                raise ConnectionFailed(f"{self.url} closed the connection before acknowledging USER_HELLO "
                                       f"({_close_text(exc)})") from None
            for event in self._session.receive_text(message, now_ms()):
                if isinstance(event, Welcomed):
                    logger.info("welcomed by server %s at %s", event.server_id[:8], self.url)
                elif isinstance(event, ServerError):
                    raise _refusal(event)
                elif isinstance(event, ServerKeyChanged):
                    raise _key_refusal(self.url, event)
                elif isinstance(event, FrameRejected):
                    raise ConnectionFailed(f"{self.url} answered USER_HELLO with a frame this client refuses: "
                                           f"{event.reason}")
                else:
                    self._enqueue(event)

    async def _initial_sync(self, timeout: float) -> None:
        # The server pushes an advert for every known user right after its ACK and answers requests in
        # order, so once the LIST_RESPONSE is in, the directory is complete: a /tell typed at once works.
        self._silent_lists += 1
        try:
            await self._list(timeout)
        except (TimeoutError, ProtocolError) as exc:
            self._silent_lists = 0
            logger.warning("initial user list from %s unavailable (%s); relying on adverts", self.url, exc)

    async def _list(self, timeout: float) -> list[UserRecord]:
        waiter: asyncio.Future[list[UserRecord]] = asyncio.get_running_loop().create_future()
        self._list_waiters.append(waiter)
        try:
            await self._send(self._session.list_request(now_ms()))
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            raise TimeoutError(f"no LIST_RESPONSE from {self.url} within {timeout:g} s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._list_waiters.remove(waiter)

    async def _send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection to {self.url} is closed ({_close_text(exc)})") from None

    async def _read_loop(self) -> None:
        failure: ConnectionClosed | None = None
        try:
            async for message in self._ws:
                for event in self._session.receive_text(message, now_ms()):
                    self._dispatch(event)
        except ConnectionClosed as exc:
            failure = exc
        finally:
            if failure is not None:
                reason = f"connection lost ({_close_text(failure)})"
            else:
                close = _close_text(None, self._ws.close_code, self._ws.close_reason or "")
                reason = f"connection closed ({close})"
            self._closed_reason = reason
            logger.info("connection to %s ended: %s", self.url, reason)
            self._fail_list_waiters(ConnectionLost(f"connection to {self.url} ended: {reason}"))
            self._enqueue(_CLOSED)

    def _dispatch(self, event: ClientEvent) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("event %r", event)  # DirectMessage keeps its text out of its repr
        if isinstance(event, UserList):
            for waiter in self._list_waiters:
                if not waiter.done():
                    waiter.set_result(list(event.records))
            if self._silent_lists:
                self._silent_lists -= 1
                return
        elif isinstance(event, ServerError) and (event.msg_ref or "").startswith("LIST_REQUEST:"):
            self._fail_list_waiters(_refusal(event))
        elif isinstance(event, FrameRejected):
            logger.info("refused a frame from %s: %s", self.url, event.reason)
        self._enqueue(event)

    def _enqueue(self, item: ClientEvent | _Closed) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped += 1
            if self._dropped in (1, 100) or self._dropped % 10_000 == 0:
                logger.warning("event queue full: %d events dropped so far (nobody reads them)", self._dropped)
        self._queue.put_nowait(item)

    def _fail_list_waiters(self, exc: BaseException) -> None:
        for waiter in self._list_waiters:
            if not waiter.done():
                waiter.set_exception(exc)
                # Nobody may await it any more (a cancelled list_users); mark it retrieved.
                waiter.exception()


def _refusal(error: ServerError) -> SocpError:
    """The exception matching an ERROR frame: a ProtocolError subclass when the code is a standard one."""
    try:
        cls = ERROR_BY_CODE[ErrorCode(error.code)]
    except (ValueError, KeyError):
        return ConnectionFailed(f"server refused us: {error.code}: {error.detail}")
    return cls(error.detail or f"server answered {error.code}", msg_ref=error.msg_ref)


def _key_refusal(url: str, event: ServerKeyChanged) -> SocpError:
    return BadKey(f"server {event.server_id} at {url} presented key {crypto.key_fingerprint(event.received_pub)}, "
                  f"but {crypto.key_fingerprint(event.expected_pub)} was expected: refusing it (possible "
                  "impersonation)", fatal=True)


def _describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or f"[Errno {errno.ECONNREFUSED}]" in str(exc):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, InvalidURI):
        return "not a valid ws:// or wss:// URL"
    if isinstance(exc, InvalidStatus):
        return f"the server answered HTTP {exc.response.status_code} instead of accepting a WebSocket"
    if isinstance(exc, InvalidHandshake):
        return f"WebSocket handshake failed ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _close_text(exc: ConnectionClosed | None, code: int | None = None, reason: str = "") -> str:
    if exc is not None:
        close = exc.rcvd or exc.sent
        code, reason = (close.code, close.reason) if close is not None else (None, "")
    if code is None:
        return "no close frame"
    return f"code {code}{': ' + reason if reason else ''}"
