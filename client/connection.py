"""The asyncio wrapper of :class:`socp.user.UserSession`: one WebSocket connection to one server.

Usage::

    async with await ClientConnection.connect("ws://127.0.0.1:8765", identity, downloads=Path("dl")) as conn:
        ref = await conn.send_direct("bob", "hi")
        outcome = await conn.delivery(ref)                        # Delivered, or DeliveryFailed with the reason
        await conn.send_public("hello everyone")
        await conn.send_file("bob", Path("report.pdf"))          # or "all" for the public channel
        message = await conn.wait_for(lambda e: isinstance(e, DirectMessage), 5.0, description="a message")

    # With a password: register it once, then log in from anywhere with nothing but the password.
    await conn.register_password("correct horse")
    conn = await ClientConnection.login("ws://127.0.0.1:8766", "alice", "correct horse")

The connection owns exactly one task, the reader, which feeds every frame to the session and queues the
events it produces; :meth:`ClientConnection.close` cancels and awaits it, so nothing outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus, InvalidURI

from client.downloads import DiskSink, SaveError, save_file
from client.errors import ConnectionFailed, ConnectionLost, FileTransferError, LoginFailed
from client.keystore import Identity
from socp import crypto
from socp.envelope import PUBLIC_GROUP, FrameType, is_uuid
from socp.errors import ERROR_BY_CODE, BadKey, ErrorCode, ProtocolError, SocpError
from socp.login import LoginChallenged, LoginGranted, LoginRefused, LoginSession, make_login_record, register_frame
from socp.presence import Directory, UserRecord
from socp.ratelimit import TokenBucket
from socp.settings import DEFAULT_MAX_FILE_BYTES
from socp.user import (
    Acked,
    ClientEvent,
    Delivered,
    DeliveryFailed,
    DirectoryEntry,
    DuplicateDelivery,
    FileReceived,
    FileRejected,
    FileSink,
    FrameRejected,
    HelloReaddressed,
    OutgoingFile,
    ServerError,
    ServerKeyChanged,
    UserList,
    UserOnline,
    UserSession,
    Welcomed,
)

logger = logging.getLogger("socp.client.connection")

MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Largest WebSocket message accepted from the server (a generous bound above the node's 2 MiB)."""

EVENT_QUEUE_LIMIT: Final = 10_000
"""Events kept for a consumer that does not read them; beyond it the oldest are dropped (bounded memory)."""

FILE_FRAMES_PER_SECOND: Final = 150.0
"""Pace of file frames: below the node's default per-connection rate limit (200/s), so no chunk is dropped."""
FILE_FRAME_BURST: Final = 500
"""Frames a file may send at once before the pace applies (the node's default burst is 1000)."""
FILE_WINDOW: Final = 3
"""With delivery receipts, dm file chunks sent and not yet acknowledged at most: a link loss between the
servers stops the transfer after this many (the origin server keeps and resends only those), and the
transfer goes on where it stopped when receipts come again. 1.5 MiB of hybrid chunks (also bounds a relaying
node's memory)."""
FILE_PROBE_SECONDS: Final = 5.0
"""How long the receipt of FILE_START is awaited before the chunks go without a window: a recipient on a server
without delivery receipts never acknowledges anything, and the file then goes as the plain standard sends it."""
FILE_STALL_SECONDS: Final = 600.0
"""Last-resort bound on waiting for the window to open (the servers' own delivery bound ends it first)."""
HASH_PIECE_BYTES: Final = 1024 * 1024
"""Read size while hashing a file to send."""


class _PathSource:
    """A file to send, read lazily (a :class:`socp.user.FileSource`): hashed once when opened, then read
    one chunk at a time, so a large file is never held in memory whole."""

    def __init__(self, path: Path, limit: int) -> None:
        """Open and hash ``path`` (blocking: call it off the event loop); :class:`FileTransferError` when it
        cannot be read or is larger than ``limit``."""
        try:
            self._handle = path.open("rb")
        except OSError as exc:
            raise FileTransferError(f"cannot read {path}: {exc.strerror}") from None
        try:
            digest = crypto.Sha256()
            size = 0
            while piece := self._handle.read(HASH_PIECE_BYTES):
                size += len(piece)
                if size > limit:
                    raise FileTransferError(f"{path.name} is above the limit of {_size_text(limit)}")
                digest.update(piece)
        except OSError as exc:
            self._handle.close()
            raise FileTransferError(f"cannot read {path}: {exc.strerror}") from None
        except BaseException:
            self._handle.close()
            raise
        self.size = size
        self.sha256 = digest.hexdigest()
        self._path = path

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; :class:`FileTransferError` when the file changed or fails."""
        try:
            self._handle.seek(offset)
            data = self._handle.read(length)
        except OSError as exc:
            raise FileTransferError(f"cannot read {self._path}: {exc.strerror}") from None
        if len(data) != min(length, self.size - offset):
            raise FileTransferError(f"{self._path} changed while it was being sent")
        return data

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


OUTCOMES_KEPT: Final = 10_000
"""Outcomes of sent messages remembered for a late :meth:`ClientConnection.delivery` call (the oldest go first)."""

EventPredicate = Callable[[ClientEvent], bool]
Outcome = Delivered | DeliveryFailed


class _Closed:
    """Queue sentinel: the reader has ended."""


_CLOSED: Final = _Closed()


@dataclasses.dataclass(slots=True)
class _Sending:
    """A file being sent: what its receipts update, and how the sending task is woken."""

    outgoing: OutgoingFile
    changed: asyncio.Event
    failure: str | None = None
    progress: Callable[[int, int], None] | None = None
    windowed: bool = False
    """True while the chunks go under the receipt window (receipts come for this file)."""
    start_ref: str | None = None
    start_delivered: bool = False


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the Unix epoch: the ``now`` the session wants."""
    return time.time_ns() // 1_000_000


def _monotonic_ms() -> int:
    """Monotonic time in integer milliseconds: the clock of the file pace (never jumps with the wall clock)."""
    return time.monotonic_ns() // 1_000_000


class ClientConnection:
    """A welcomed SOCP user connection; create it with :meth:`connect`.

    Events (:data:`socp.user.ClientEvent`) are consumed by one consumer through :meth:`next_event` or
    :meth:`wait_for`; both discard the events they pass over.
    """

    def __init__(self, websocket: WebSocket, session: UserSession, url: str, *,
                 downloads: Path | None = None) -> None:
        """Wrap an open WebSocket whose session is already welcomed; use :meth:`connect` instead."""
        self._ws = websocket
        self._session = session
        self.url = url
        self.downloads = downloads
        """Folder received files are written to; None keeps them in :class:`FileReceived` events only."""
        self.identity: Identity | None = None
        """Who we are: set by :meth:`connect` and by :meth:`login` (with the recovered key)."""
        self._waiters: list[tuple[Callable[[ClientEvent], bool], asyncio.Future[ClientEvent]]] = []
        self._file_pace = TokenBucket(FILE_FRAMES_PER_SECOND, FILE_FRAME_BURST)
        self._queue: asyncio.Queue[ClientEvent | _Closed] = asyncio.Queue(maxsize=EVENT_QUEUE_LIMIT)
        self._reader: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self._list_waiters: list[asyncio.Future[list[UserRecord]]] = []
        self._silent_lists = 0
        self._dropped = 0
        self._sending: dict[str, _Sending] = {}
        if downloads is not None:
            # Incoming files stream to a temporary file there and get their name once verified.
            folder = downloads

            def disk_sink(name: str, size: int) -> FileSink:
                return DiskSink(folder, name)

            session.file_sinks = disk_sink
        self._outcomes: OrderedDict[str, asyncio.Future[Outcome]] = OrderedDict()

    # --- life cycle ------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, identity: Identity, *, meta: Mapping[str, Any] | None = None,
                      timeout: float = 10.0, expected_server_pub: str | None = None,
                      sync_directory: bool = True, downloads: Path | None = None,
                      max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                      known_users: Mapping[str, tuple[str, str]] | None = None, hybrid_files: bool = True,
                      previous: ClientConnection | None = None, interop: bool = False,
                      server_id: str | None = None) -> ClientConnection:
        """Connect to ``url``, send USER_HELLO and wait for the server's welcome.

        ``meta`` is merged over ``{"display_name": identity.display_name}``. With ``sync_directory`` the
        connection also fetches the user list before returning, so that :attr:`directory` already holds
        everyone online (the UserOnline events of the initial adverts are queued as usual). Received files
        are written to ``downloads`` when given (see :class:`FileReceived`); ``max_file_bytes`` bounds the
        files sent and accepted. ``known_users`` are user pins kept from earlier sessions (see
        :meth:`socp.user.UserSession.known_users`). ``hybrid_files=False`` leaves the hybrid file chunks
        extension out of our hello (files to and from us are then plain RSA-OAEP chunks: for comparisons and
        interop tests). ``previous``, an earlier connection of the same user, hands over the messages already
        seen, so that one its (restarted) server delivers again is dropped as a :class:`DuplicateDelivery`.
        ``interop`` turns on the client side of the interop profile (a lenient welcome, docs/INTEROP.md).
        ``server_id``, the server's id when known (its ``/healthz``, an earlier connection), addresses the first
        hello to it: one round trip and one signature fewer than a ``"*"`` hello the server must have re-signed
        (PROTOCOL.md §3.6); a wrong one costs just that.

        Raises :class:`ConnectionFailed` (unreachable, handshake failed, no answer within ``timeout``,
        unacceptable answer), :class:`socp.errors.BadKey` when the server's key contradicts
        ``expected_server_pub``, and the :class:`ProtocolError` subclass matching an ERROR answer
        (``NameInUse``, ``BadKey``, …).
        """
        hello_meta = {"display_name": identity.display_name, **dict(meta or {})}
        seen = previous.session.replay if previous is not None and previous.user_id == identity.user_id else None
        session = UserSession(identity.user_id, identity.key, hello_meta, expected_server_pub,
                              max_file_bytes=max_file_bytes, known_users=known_users,
                              hybrid_files=hybrid_files, replay=seen, interop=interop,
                              server_id_hint=server_id)
        websocket = await _open_websocket(url, timeout)
        return await cls._welcome(websocket, session, url, identity, timeout, sync_directory, downloads)

    @classmethod
    async def login(cls, url: str, login: str, password: str, *, timeout: float = 10.0,
                    expected_server_pub: str | None = None, sync_directory: bool = True,
                    downloads: Path | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                    known_users: Mapping[str, tuple[str, str]] | None = None) -> ClientConnection:
        """Log in as ``login`` with only a password: fetch the sealed key, open it here, say hello with it.

        The password-derived keys are computed off the event loop (about 0.2 s). The recovered identity is
        :attr:`identity`; nothing is written to disk. Raises :class:`socp.errors.UserNotFound` (no such
        login), :class:`socp.errors.AuthFailed` (wrong password), :class:`socp.errors.RateLimited` (too many
        attempts), :class:`LoginFailed` (an unusable answer or record) and what :meth:`connect` raises.
        """
        attempt = LoginSession(login, password, expected_server_pub)
        websocket = await _open_websocket(url, timeout)
        try:
            async with asyncio.timeout(timeout):
                granted = await cls._login_exchange(websocket, attempt, url)
        except TimeoutError:
            await websocket.close()
            raise ConnectionFailed(f"{url} did not complete the login within {timeout:g} s") from None
        except BaseException:
            await websocket.close()
            raise
        identity = Identity(granted.user_id, login, granted.key)
        meta = {"display_name": login, **dict(granted.meta)}
        session = UserSession(granted.user_id, granted.key, meta, granted.server_pub,
                              max_file_bytes=max_file_bytes, login_nonce=attempt.nonce, server_id=granted.server_id,
                              known_users=known_users)
        return await cls._welcome(websocket, session, url, identity, timeout, sync_directory, downloads)

    @staticmethod
    async def _login_exchange(websocket: WebSocket, attempt: LoginSession, url: str) -> LoginGranted:
        await _send_on(websocket, attempt.request(now_ms()), url)
        while True:
            try:
                message = await websocket.recv()
            except ConnectionClosed as exc:
                raise ConnectionFailed(f"{url} closed the connection during the login ({_close_text(exc)})") from None
            for event in attempt.receive_text(message, now_ms()):
                if isinstance(event, LoginChallenged):
                    proof = await asyncio.to_thread(attempt.prove, now_ms())
                    await _send_on(websocket, proof, url)
                elif isinstance(event, LoginGranted):
                    return event
                elif isinstance(event, LoginRefused):
                    if event.code == "LOCAL":
                        raise LoginFailed(f"login at {url} failed: {event.detail}")
                    raise _refusal(ServerError(event.code, event.detail))

    @classmethod
    async def _welcome(cls, websocket: WebSocket, session: UserSession, url: str, identity: Identity,
                       timeout: float, sync_directory: bool, downloads: Path | None) -> ClientConnection:
        conn = cls(websocket, session, url, downloads=downloads)
        conn.identity = identity
        try:
            try:
                async with asyncio.timeout(timeout):
                    await conn._handshake()
            except TimeoutError:
                hint = ""
                if session.welcome_needs_ack:
                    hint = ("; a server that sends no ACK can be used only with its key pinned in advance "
                            "(known_servers.json or expected_server_pub): pin the server's key")
                raise ConnectionFailed(f"connected to {url}, but the server did not acknowledge USER_HELLO "
                                       f"within {timeout:g} s{hint}") from None
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
        """The id of the server that welcomed us (``"*"`` under the interop profile while a server that sent no
        ACK has not named itself yet in a signed frame)."""
        if not self._session.welcomed:  # connect() only returns welcomed connections
            raise ConnectionLost("connection was never welcomed")
        return self._session.server_id or "*"

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
        frame = self._session.direct_message(record.user_id, text, now_ms())
        if self._session.receipts_enabled:
            self._outcome(frame.msg_ref)
        try:
            await self._send(frame)
        except ConnectionLost as exc:
            self._dispatch_all(self._session.abandon_deliveries(str(exc)))
            raise
        return frame.msg_ref

    async def delivery(self, msg_ref: str, timeout: float | None = None) -> Delivered | DeliveryFailed:
        """The outcome of the message ``msg_ref`` sent on this connection (its event is queued as well).

        Resolves as :class:`Delivered` once the recipient's server handed it over, or :class:`DeliveryFailed`
        (an ERROR, no receipt within the bound, or this connection ended: never left hanging). Raises
        :class:`KeyError` for a message whose outcome is not tracked (the server gives no receipts, or it
        is long gone) and :class:`TimeoutError` after ``timeout`` s.
        """
        future = self._outcomes.get(msg_ref)
        if future is None:
            raise KeyError(f"no outcome tracked for {msg_ref} (the server announced no delivery receipts?)")
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise TimeoutError(f"no outcome for {msg_ref} within {timeout:g} s") from None

    @property
    def receipts_enabled(self) -> bool:
        """True when our server announced delivery receipts (each DM then ends Delivered or DeliveryFailed)."""
        return self._session.receipts_enabled

    async def send_public(self, text: str) -> str:
        """Send ``text`` to everyone on the public channel; returns the MSG_PUBLIC_CHANNEL's msg_ref.

        Our sender key is shared first with members who lack it, and replaced when a member has left.
        """
        frames = self._session.public_message(text, now_ms())
        for frame in frames:
            await self._send(frame)
        return frames[-1].msg_ref  # the message itself comes after any key shares

    async def send_file(self, name_or_id: str, path: Path | str, *,
                        progress: Callable[[int, int], None] | None = None) -> str:
        """Send the file at ``path`` to ``name_or_id``, or to the public channel when it is ``"all"``.

        Returns the transfer's file_id. The file is hashed first (off the event loop), then read and encrypted
        one chunk at a time: as hybrid chunks to a recipient that announced the extension, else as RSA-OAEP
        chunks. Frames are paced (:data:`FILE_FRAMES_PER_SECOND`) so that the node's rate limit never drops a
        chunk. With delivery receipts a dm file keeps at most :data:`FILE_WINDOW` chunks unacknowledged, so a
        transfer cut by a link loss between servers waits, then goes on where it stopped (when no receipt of
        FILE_START comes within :data:`FILE_PROBE_SECONDS`, the chunks go without a window, as the standard
        sends them); it fails (raising :class:`FileTransferError`) when a frame of it is reported
        undeliverable. ``progress(sent_bytes, size)`` is called after each chunk (with the window: acknowledged
        bytes).
        Raises :class:`FileTransferError` (missing, unreadable, too large, undeliverable),
        :class:`socp.errors.UserNotFound`.
        """
        path = Path(path)
        recipient = PUBLIC_GROUP if name_or_id == "all" else self._session.resolve(name_or_id).user_id
        limit = self._session.max_file_bytes
        source = await asyncio.to_thread(_PathSource, path, limit)
        try:
            outgoing = self._session.send_file(recipient, path.name, source, now_ms())
            windowed = self._session.receipts_enabled and outgoing.mode == "dm"
            sending = _Sending(outgoing, asyncio.Event(), progress=progress, windowed=windowed)
            self._sending[outgoing.file_id] = sending
            try:
                await self._send_frames(sending, progress)
            finally:
                del self._sending[outgoing.file_id]
        finally:
            source.close()
        return outgoing.file_id

    async def _send_frames(self, sending: _Sending, progress: Callable[[int, int], None] | None) -> None:
        outgoing = sending.outgoing
        while True:
            if sending.windowed and outgoing.next_is_chunk:
                if sending.start_ref is not None and not sending.start_delivered:
                    await self._probe(sending)
                if sending.windowed:
                    await self._window(sending)
            index = outgoing.next_chunk_index
            frame = outgoing.next_frame(now_ms())
            if frame is None:
                break
            await self._pace()
            if sending.windowed:  # tracked before it leaves, so that no receipt can come first
                self._session.track_delivery(frame.msg_ref, now_ms(), file_id=outgoing.file_id, index=index)
                if sending.start_ref is None and index is None:
                    sending.start_ref = frame.msg_ref  # FILE_START (no prelude in dm mode)
            await self._send(frame)
            if progress is not None and index is not None and not sending.windowed:
                progress(outgoing.sent_bytes, outgoing.size)
        if sending.windowed:
            await self._window(sending, until_empty=True)
        if sending.failure is not None:
            raise FileTransferError(sending.failure)

    async def _probe(self, sending: _Sending) -> None:
        """Await the receipt of FILE_START (:data:`FILE_PROBE_SECONDS`); without one, send without a window."""
        try:
            async with asyncio.timeout(FILE_PROBE_SECONDS):
                while sending.failure is None and not sending.start_delivered:
                    sending.changed.clear()
                    await sending.changed.wait()
        except TimeoutError:
            sending.windowed = False
            logger.info("no delivery receipt for file %s within %g s: sending it without a window (the "
                        "recipient's server may not give receipts)", sending.outgoing.file_id, FILE_PROBE_SECONDS)
        if sending.failure is not None:
            raise FileTransferError(sending.failure)

    async def _window(self, sending: _Sending, *, until_empty: bool = False) -> None:
        """Wait until fewer than :data:`FILE_WINDOW` chunks of ``sending`` await a receipt (none when
        ``until_empty``); raise :class:`FileTransferError` when one was reported undeliverable."""
        outgoing = sending.outgoing
        limit = 1 if until_empty else FILE_WINDOW
        try:
            async with asyncio.timeout(FILE_STALL_SECONDS):
                while sending.failure is None and outgoing.in_flight >= limit:
                    sending.changed.clear()
                    await sending.changed.wait()
        except TimeoutError:
            raise FileTransferError(f"{outgoing.name}: no delivery receipt for {FILE_STALL_SECONDS:g} s") from None
        if sending.failure is not None:
            raise FileTransferError(sending.failure)

    async def lookup_user(self, name_or_id: str, timeout: float = 10.0) -> DirectoryEntry:
        """A registered user's key and status, online or not, answered and signed by our server.

        ``name_or_id`` is a user id, else a login name. Raises :class:`socp.errors.UserNotFound`.
        """
        now = now_ms()
        # Ids are compared in their canonical lower-case form; a pasted upper-case id is still an id.
        query = (self._session.directory_query(now, user_id=name_or_id.lower()) if is_uuid(name_or_id.lower())
                 else self._session.directory_query(now, login=name_or_id))
        event = await self._request(query, query.msg_ref, timeout, "DIRECTORY_RESPONSE")
        assert isinstance(event, DirectoryEntry)
        return event

    async def register_password(self, password: str, *, login: str | None = None,
                                iterations: int = crypto.PBKDF2_MIN_ITERATIONS, timeout: float = 10.0) -> None:
        """Store our private key on the server network, sealed under ``password`` (made here, signed by us).

        ``login`` defaults to our display name. Afterwards :meth:`login` works on any node. The slow key
        derivation runs off the event loop. Raises the :class:`ProtocolError` of a refusal (``NameInUse``
        when another user holds the login).
        """
        identity = self.identity
        if identity is None:
            raise ConnectionLost("connection has no identity")
        name = login or identity.display_name
        now = now_ms()
        record = await asyncio.to_thread(make_login_record, identity.key, self.user_id, name, password, now,
                                         iterations=iterations)
        frame = register_frame(record, self.user_id, self.server_id, now_ms())
        await self._request(frame, frame.msg_ref, timeout, "ACK")

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
        while not self._session.welcomed:  # bounded by the caller's timeout
            # Interop profile: a server that sends no ACK is waited for up to the session's deadline only.
            due = self._session.welcome_deadline()
            try:
                async with asyncio.timeout(None if due is None else max(0.0, (due - now_ms()) / 1000) + 0.01):
                    message = await self._ws.recv()
            except TimeoutError:
                events = self._session.welcome_overdue(now_ms())
            except ConnectionClosed as exc:
                raise ConnectionFailed(f"{self.url} closed the connection before acknowledging USER_HELLO "
                                       f"({_close_text(exc)})") from None
            else:
                events = self._session.receive_text(message, now_ms())
            for event in events:
                if isinstance(event, Welcomed):
                    logger.info("welcomed by server %s at %s", event.server_id[:8], self.url)
                elif isinstance(event, HelloReaddressed):
                    # The server wants a hello signed for its own id (PROTOCOL.md §3.6): one more signature.
                    logger.info("server at %s is %s; saying hello to it by id", self.url, event.server_id[:8])
                    await self._send(self._session.hello(now_ms()))
                elif isinstance(event, ServerError):
                    raise _refusal(event)
                elif isinstance(event, ServerKeyChanged):
                    raise _key_refusal(self.url, event)
                elif isinstance(event, FrameRejected) and not self._session.welcomed:
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
                records = await waiter
        except TimeoutError:
            raise TimeoutError(f"no LIST_RESPONSE from {self.url} within {timeout:g} s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._list_waiters.remove(waiter)
        wanted = self._session.keys_wanted()
        if not wanted:
            return records
        await self._fetch_keys(wanted, timeout)
        return list(self._session.directory.listing())

    async def _fetch_keys(self, user_ids: list[str], timeout: float) -> None:
        """Interop profile: ask the server for the key of each user a list named by id only (PUBKEY_REQUEST) and
        wait, up to ``timeout`` in all, for the answers that add them to the directory; a user the server has no
        key for stays unlisted (logged)."""
        loop = asyncio.get_running_loop()
        waiters: list[tuple[Callable[[ClientEvent], bool], asyncio.Future[ClientEvent]]] = []
        for user_id in user_ids:
            def keyed(event: ClientEvent, user_id: str = user_id) -> bool:
                return isinstance(event, UserOnline) and event.record.user_id == user_id
            waiters.append((keyed, loop.create_future()))
        self._waiters.extend(waiters)
        try:
            for user_id in user_ids:
                await self._send(self._session.pubkey_request(user_id, now_ms()))
            await asyncio.wait([future for _, future in waiters], timeout=timeout)
        finally:
            for waiter in waiters:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        missing = [user_id[:8] for user_id, (_, future) in zip(user_ids, waiters, strict=True) if not future.done()]
        if missing:
            logger.warning("interop: no usable PUBKEY_RESPONSE from %s within %g s for %s", self.url, timeout,
                           ", ".join(missing))

    async def _send(self, text: str) -> None:
        await _send_on(self._ws, text, self.url, lost=True)

    async def _pace(self) -> None:
        """Wait until the file pace allows one more frame (:data:`FILE_FRAMES_PER_SECOND`, burst
        :data:`FILE_FRAME_BURST`), and spend it."""
        while not self._file_pace.take(now := _monotonic_ms()):
            await asyncio.sleep(max(1.0, self._file_pace.wait_ms(now)) / 1000)

    async def _request(self, frame: str, msg_ref: str, timeout: float, answer: str) -> ClientEvent:
        """Send ``frame`` and wait for the event answering it (matched by ``msg_ref``); a refusal raises."""
        def answers(event: ClientEvent) -> bool:
            return (isinstance(event, Acked | DirectoryEntry | ServerError)
                    and getattr(event, "msg_ref", None) == msg_ref)

        waiter: asyncio.Future[ClientEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((answers, waiter))
        try:
            await self._send(frame)
            async with asyncio.timeout(timeout):
                event = await waiter
        except TimeoutError:
            raise TimeoutError(f"no {answer} from {self.url} within {timeout:g} s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((answers, waiter))
        if isinstance(event, ServerError):
            raise _refusal(event)
        return event

    def _outcome(self, msg_ref: str) -> asyncio.Future[Outcome]:
        future = self._outcomes.get(msg_ref)
        if future is None:
            future = self._outcomes[msg_ref] = asyncio.get_running_loop().create_future()
            while len(self._outcomes) > OUTCOMES_KEPT:
                _, old = self._outcomes.popitem(last=False)
                if not old.done():
                    old.cancel()
        return future

    def _dispatch_all(self, events: list[ClientEvent]) -> None:
        for event in events:
            self._dispatch(event)

    async def _read_loop(self) -> None:
        failure: ConnectionClosed | None = None
        try:
            while True:
                # Wake up for the next delivery deadline too: an overdue message is reported even when the
                # server says nothing at all.
                due = self._session.next_delivery_deadline()
                try:
                    async with asyncio.timeout(None if due is None else max(0.0, (due - now_ms()) / 1000) + 0.01):
                        message = await self._ws.recv()
                except TimeoutError:
                    self._dispatch_all(self._session.expire_deliveries(now_ms()))
                    continue
                self._dispatch_all(self._session.receive_text(message, now_ms()))
        except ConnectionClosedOK:
            pass  # a clean close, as the end of ``async for`` over the socket
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
            # Messages still awaiting their receipt: their fate is unknown now, and said so.
            self._dispatch_all(self._session.abandon_deliveries(f"connection {reason} before a receipt"))
            self._enqueue(_CLOSED)

    def _dispatch(self, event: ClientEvent) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("event %r", event)  # DirectMessage keeps its text out of its repr
        if isinstance(event, FileReceived) and self.downloads is not None and event.path is None:
            event = self._save(event)
        elif isinstance(event, Delivered | DeliveryFailed) and event.file_id is not None:
            self._file_outcome(event)
        for predicate, answer in list(self._waiters):
            if not answer.done() and predicate(event):
                answer.set_result(event)
        if isinstance(event, Delivered | DeliveryFailed):
            outcome = self._outcomes.get(event.msg_ref)
            if outcome is not None and not outcome.done():
                outcome.set_result(event)
        if isinstance(event, UserList):
            for waiter in self._list_waiters:
                if not waiter.done():
                    waiter.set_result(list(event.records))
            if self._silent_lists:
                self._silent_lists -= 1
                return
        elif isinstance(event, ServerError) and event.about is not None and event.about.type == FrameType.LIST_REQUEST:
            self._fail_list_waiters(_refusal(event))
        elif isinstance(event, FrameRejected):
            logger.info("refused a frame from %s: %s", self.url, event.reason)
        elif isinstance(event, DuplicateDelivery):
            logger.info("dropped a second copy of %s from %s", event.msg_ref, self.url)
        self._enqueue(event)

    def _file_outcome(self, event: Delivered | DeliveryFailed) -> None:
        """A receipt (or a failure) for a frame of a file we are sending: opens its window, or stops it."""
        sending = self._sending.get(event.file_id or "")
        if sending is None:
            return
        outgoing = sending.outgoing
        if isinstance(event, Delivered):
            if event.msg_ref == sending.start_ref:
                sending.start_delivered = True
            if outgoing.acknowledge(event.msg_ref) and sending.progress is not None and sending.windowed:
                sending.progress(outgoing.sent_bytes - outgoing.in_flight * outgoing.chunk_bytes, outgoing.size)
        elif sending.failure is None and sending.windowed:
            # (Without a window, the plain standard's ERROR tells of a failure; a late TIMEOUT of the probe is moot.)
            sending.failure = f"{outgoing.name} to {outgoing.to[:8]} failed: {event.code}: {event.reason}"
        sending.changed.set()

    def _save(self, event: FileReceived) -> ClientEvent:
        """Write a verified file into the downloads folder; the event then carries the path, not the data."""
        assert self.downloads is not None
        try:
            path = save_file(self.downloads, event.name, event.data)
        except SaveError as exc:
            return FileRejected(event.sender_id, event.sender_label, event.file_id, event.name, str(exc))
        logger.info("saved file %s from %s to %s", event.file_id, event.sender_id[:8], path)
        return dataclasses.replace(event, data=b"", path=str(path))

    def _enqueue(self, item: ClientEvent | _Closed) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped += 1
            if self._dropped in (1, 100) or self._dropped % 10_000 == 0:
                logger.warning("event queue full: %d events dropped so far (nobody reads them)", self._dropped)
        self._queue.put_nowait(item)

    def _fail_list_waiters(self, exc: BaseException) -> None:
        waiters: list[asyncio.Future[Any]] = [*self._list_waiters, *(answer for _, answer in self._waiters)]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
                # Nobody may await it any more (a cancelled list_users); mark it retrieved.
                waiter.exception()


async def _open_websocket(url: str, timeout: float) -> WebSocket:
    try:
        async with asyncio.timeout(timeout):
            # No permessage-deflate: file chunks are base64 ciphertext, which deflate spends CPU on for little.
            return await ws_connect(url, max_size=MAX_FRAME_BYTES, open_timeout=None, compression=None)
    except TimeoutError:
        raise ConnectionFailed(f"cannot connect to {url}: no answer within {timeout:g} s") from None
    except (OSError, InvalidURI, InvalidHandshake, ValueError) as exc:
        raise ConnectionFailed(f"cannot connect to {url}: {_describe_connect_error(exc)}") from exc


async def _send_on(websocket: WebSocket, text: str, url: str, *, lost: bool = False) -> None:
    try:
        await websocket.send(text)
    except ConnectionClosed as exc:
        message = f"connection to {url} is closed ({_close_text(exc)})"
        raise (ConnectionLost(message) if lost else ConnectionFailed(message)) from None


def _size_text(size: int) -> str:
    """``1.5 MiB``-style sizes for messages."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


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
