"""File transfers (WIRE §5): FILE_START, FILE_CHUNK…, FILE_END, in dm or public mode.

Outgoing transfers are produced one frame at a time (:class:`OutgoingFile`), reading the file lazily from a
:class:`FileSource`; incoming ones stream into a :class:`FileSink` (memory by default, a temporary file in the
client's downloads folder), bounded by ``max_file_bytes`` and :data:`MAX_INCOMING_FILES`, and are handed over
only after size and SHA-256 match (:class:`FileReceived`). A transfer silent for :data:`FILE_IDLE_MS` is abandoned.

dm chunks are RSA-OAEP blocks (the standard), or, toward a recipient that announced the *hybrid file chunks*
extension (WIRE §7, docs/PROTOCOL.md §7.2), AES-256-GCM under one random file key that FILE_START carries
wrapped with RSA-OAEP; each such chunk authenticates its file id and index, so chunks cannot be reordered or
moved between files, and a repeated chunk (resent after a link loss) is dropped by its index.

Cost: one signature per file; per chunk one RSA-OAEP (dm, :data:`DM_CHUNK_BYTES`) or AES-GCM (public,
:data:`PUBLIC_CHUNK_BYTES`; hybrid dm, :data:`HYBRID_CHUNK_BYTES`) operation on each side, plus one RSA-OAEP
block per hybrid file. Public mode first shares our sender key with the members lacking it (see
:mod:`socp.user.public`).
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from socp import crypto
from socp.envelope import PUBLIC_GROUP, Envelope, FrameType
from socp.errors import BadFrame, CryptoError, SocpError, TooLarge
from socp.features import Feature, announced
from socp.replay import ReplayCache
from socp.user.common import FileSigner, LocalUser, OutboundFrame, Rejected, admit
from socp.user.events import ClientEvent, FileIncoming, FileProgress, FileReceived, FileRejected
from socp.user.keys import PeerDirectory
from socp.user.public import PublicChannel

DM_CHUNK_BYTES = 8 * crypto.OAEP_MAX_PLAINTEXT
"""Plaintext per FILE_CHUNK in dm mode: 8 RSA-OAEP blocks of 446 bytes (WIRE §5: up to 8 blocks a chunk)."""
PUBLIC_CHUNK_BYTES = 48 * 1024
"""Plaintext per FILE_CHUNK in public mode (AES-GCM; about 64 KiB of base64url on the wire)."""
HYBRID_CHUNK_BYTES = 512 * 1024
"""Plaintext per FILE_CHUNK in hybrid dm mode: about 700 KB of base64url, under the 2 MiB frame limit also once
wrapped in SERVER_DELIVER; few frames (each costs a signature per hop, and its receipts two more) for speed,
small enough that a relaying node holding a window of them stays within its memory bound."""
MAX_CHUNKS_AHEAD = 8
"""Hybrid chunks kept (decrypted) while an earlier one is still missing; one further ahead discards the file."""
PROGRESS_MIN_BYTES = 256 * 1024
"""Files at least this large report :class:`FileProgress` every 10 %."""
FILE_IDLE_MS = 120_000
"""An incoming transfer with no frame for this long is discarded (:meth:`FileTransfers.expire`)."""
MAX_INCOMING_FILES = 8
"""Incoming transfers assembled at once; more are refused (bounded memory)."""
MAX_FILE_NAME = 1024
"""Longest file name accepted in FILE_START (the shell shortens names further before writing)."""
MAX_DISCARDED = 1024
"""Refused or discarded transfers remembered, so that their later frames are dropped quietly."""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FileSource(Protocol):
    """The content of an outgoing file, read lazily piece by piece (a shell reads it from disk)."""

    @property
    def size(self) -> int:
        """Length in bytes."""
        ...

    @property
    def sha256(self) -> str:
        """Lower-case hex SHA-256 of the whole content (FILE_START carries it before any chunk)."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end)."""
        ...


class BytesSource:
    """A :class:`FileSource` over bytes already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self.size = len(self._data)
        self.sha256 = crypto.sha256_hex(self._data)

    def read(self, offset: int, length: int) -> bytes:
        """A slice of the data."""
        return self._data[offset:offset + length]


class FileSink(Protocol):
    """Where an incoming file's verified plaintext goes, in order, as it arrives.

    Methods raise :class:`socp.errors.SocpError` (a subclass) when the content cannot be stored; the transfer
    is then discarded and the user told why.
    """

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        ...

    def finish(self) -> tuple[bytes, str | None]:
        """The file is whole and verified: keep it. Returns ``(data, None)`` for a sink that holds the content
        in memory, ``(b"", path)`` for one that wrote it to ``path``."""
        ...

    def discard(self) -> None:
        """The transfer failed: drop everything written (idempotent)."""
        ...


class MemorySink:
    """A :class:`FileSink` that keeps the file in memory (bounded by ``max_file_bytes``): the default."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._data += data

    def finish(self) -> tuple[bytes, str | None]:
        """The content; nothing is written anywhere."""
        return bytes(self._data), None

    def discard(self) -> None:
        """Free the content."""
        self._data = bytearray()


SinkFactory = Callable[[str, int], FileSink]
"""Opens the :class:`FileSink` of an accepted incoming file, given its name as sent (maybe hostile) and size."""


def memory_sink(name: str, size: int) -> FileSink:
    """The default :data:`SinkFactory`: files are assembled in memory."""
    return MemorySink()


class OutgoingFile:
    """One file being sent: its frames, produced (and encrypted) one at a time by :meth:`next_frame`.

    The first frames are any key shares the public channel needs, then FILE_START, the chunks and FILE_END.
    Each frame gets the ``now`` it is produced at (made strictly increasing by the signer's ``next_ts``), so
    that a long transfer stays inside the replay window and every frame has its own ``msg_ref``. ``signer`` is
    the sender (:class:`socp.user.common.FileSigner`): it signs FILE_START and builds frames. The content is read from
    ``source`` one chunk at a time. With ``file_key`` (and ``recipient_key``) the chunks are hybrid.

    The sender's window (resumable transfers): :meth:`acknowledge` marks a chunk delivered by its ``msg_ref``
    (a delivery receipt); :attr:`in_flight` counts the chunks produced but not acknowledged, so that a shell
    can stop producing while a link is down and go on where it stopped once receipts come back.
    """

    def __init__(self, signer: FileSigner, to: str, name: str, source: FileSource | bytes, file_id: str,
                 prelude: list[OutboundFrame], group_key: tuple[bytes, str] | None,
                 recipient_key: crypto.PublicKey | None, *, file_key: bytes | None = None) -> None:
        if isinstance(source, bytes | bytearray):
            source = BytesSource(bytes(source))
        self.file_id = file_id
        """The transfer's id (random)."""
        self.to = to
        """Recipient user id, or ``"public"``."""
        self.name = name
        self.size = source.size
        self.sha256 = source.sha256
        self.mode = "public" if to == PUBLIC_GROUP else "dm"
        self.hybrid = file_key is not None and group_key is None
        """True when the chunks are AES-256-GCM under a wrapped file key (the hybrid extension)."""
        if group_key is not None:
            chunk_bytes = PUBLIC_CHUNK_BYTES
        else:
            chunk_bytes = HYBRID_CHUNK_BYTES if self.hybrid else DM_CHUNK_BYTES
        self.chunk_bytes = chunk_bytes
        """Plaintext bytes per FILE_CHUNK (the last may be shorter)."""
        self.chunk_count = (self.size + chunk_bytes - 1) // chunk_bytes
        """Number of FILE_CHUNK frames (0 for an empty file)."""
        self._signer = signer
        self._source = source
        self._prelude = list(prelude)
        self._group_key = group_key
        self._recipient_key = recipient_key
        self._file_key = file_key
        self._next = -1  # -1: FILE_START next; chunk_count: FILE_END next
        self._unacked: dict[str, int] = {}

    @property
    def sent_bytes(self) -> int:
        """Plaintext bytes already produced as chunks."""
        return min(self.size, max(0, self._next) * self.chunk_bytes)

    @property
    def done(self) -> bool:
        """True once FILE_END has been produced."""
        return self._next > self.chunk_count

    @property
    def next_is_chunk(self) -> bool:
        """True when the next frame :meth:`next_frame` produces is a FILE_CHUNK (the frames a window holds back)."""
        return not self._prelude and 0 <= self._next < self.chunk_count

    @property
    def next_chunk_index(self) -> int | None:
        """The index of the FILE_CHUNK :meth:`next_frame` produces next, or None when the next frame is another."""
        return self._next if self.next_is_chunk else None

    @property
    def in_flight(self) -> int:
        """Chunks produced whose delivery receipt has not come (see :meth:`acknowledge`)."""
        return len(self._unacked)

    def acknowledge(self, msg_ref: str) -> bool:
        """A delivery receipt for ``msg_ref``: True when it named one of this file's unacknowledged chunks."""
        return self._unacked.pop(msg_ref, None) is not None

    def next_frame(self, now: int) -> OutboundFrame | None:
        """The next frame to send, or None when the transfer is complete."""
        signer = self._signer
        if self._prelude:
            return self._prelude.pop(0)
        if self._next > self.chunk_count:
            return None
        now = signer.next_ts(now)
        if self._next == -1:
            payload: dict[str, Any] = {
                "file_id": self.file_id, "name": self.name, "size": self.size, "sha256": self.sha256,
                "mode": self.mode, "sender_pub": signer.pubkey,
                "content_sig": signer.sign_file(self.file_id, self.name, self.size, self.sha256, self.to, now)}
            if self._group_key is not None:
                payload["key_id"] = self._group_key[1]  # extension: which sender key the chunks use
            elif self._file_key is not None:
                assert self._recipient_key is not None
                payload["wrapped_key"] = crypto.wrap_file_key(self._recipient_key, self._file_key)
            frame = signer.frame(FrameType.FILE_START, self.to, now, payload)
        elif self._next < self.chunk_count:
            index = self._next
            piece = self._source.read(index * self.chunk_bytes, self.chunk_bytes)
            if self._group_key is not None:
                ciphertext = crypto.aes_encrypt(self._group_key[0], piece)
            elif self._file_key is not None:
                ciphertext = crypto.aes_encrypt(self._file_key, piece, crypto.file_chunk_aad(self.file_id, index))
            else:
                assert self._recipient_key is not None
                ciphertext = crypto.rsa_encrypt(self._recipient_key, piece)
            frame = signer.frame(FrameType.FILE_CHUNK, self.to, now,
                                 {"file_id": self.file_id, "index": index, "ciphertext": ciphertext})
            self._unacked[frame.msg_ref] = index
        else:
            frame = signer.frame(FrameType.FILE_END, self.to, now, {"file_id": self.file_id})
        self._next += 1
        return frame


@dataclass(slots=True)
class _IncomingFile:
    sender_id: str
    sender_label: str
    file_id: str
    name: str
    size: int
    sha256: str
    mode: str
    group_key: bytes | None
    last_seen: int
    file_key: bytes | None = None  # hybrid dm chunks
    sink: FileSink | None = None
    hasher: crypto.Sha256 = field(default_factory=crypto.Sha256)
    received: int = 0
    next_index: int = 0
    next_progress: int = 1  # in tenths
    ahead: dict[int, bytes] = field(default_factory=dict)  # hybrid chunks past a gap, by index
    end_seen: bool = False


class FileTransfers:
    """Outgoing files (built as :class:`OutgoingFile`) and the incoming ones being received."""

    def __init__(self, user: LocalUser, peers: PeerDirectory, public: PublicChannel, replay: ReplayCache,
                 max_file_bytes: int, *, hybrid: bool = True) -> None:
        self._user = user
        self._peers = peers
        self._public = public
        self._replay = replay
        self.max_file_bytes = max_file_bytes
        """Largest file sent or accepted."""
        self.hybrid = hybrid
        """Whether dm files go as hybrid chunks to recipients that announced the extension."""
        self.sinks: SinkFactory = memory_sink
        """Opens where an accepted incoming file is written (a shell sets one that writes to disk)."""
        self._incoming: dict[tuple[str, str], _IncomingFile] = {}
        self._discarded: OrderedDict[tuple[str, str], None] = OrderedDict()

    @property
    def arriving(self) -> bool:
        """True while some incoming file is being received."""
        return bool(self._incoming)

    def send(self, recipient: str, name: str, data: bytes | FileSource, now: int,
             file_id: str | None) -> OutgoingFile:
        """An :class:`OutgoingFile` carrying ``data`` as ``name`` to ``recipient`` (a user id, or ``"public"``).

        A dm file goes as hybrid chunks when :attr:`hybrid` is on and the recipient announced the extension,
        else as RSA-OAEP chunks.
        """
        source = BytesSource(data) if isinstance(data, bytes | bytearray) else data
        if not name or len(name) > MAX_FILE_NAME:
            raise BadFrame(f"file name must be 1..{MAX_FILE_NAME} characters")
        if source.size > self.max_file_bytes:
            raise TooLarge(f"file {name} is {source.size} bytes, above the limit of {self.max_file_bytes} bytes",
                           fatal=False)
        file_id = file_id or crypto.random_token(12)
        if recipient == PUBLIC_GROUP:
            prelude = self._public.share_key(now)
            return OutgoingFile(self._user, recipient, name, source, file_id, prelude, self._public.group_key, None)
        recipient_key = self._peers.recipient_key(recipient)
        file_key = crypto.generate_symmetric_key() if self.peer_takes_hybrid(recipient) else None
        return OutgoingFile(self._user, recipient, name, source, file_id, [], None, recipient_key,
                            file_key=file_key)

    def peer_takes_hybrid(self, user_id: str) -> bool:
        """Whether a dm file to ``user_id`` would use hybrid chunks (we and they announced the extension)."""
        record = self._peers.directory.get(user_id)
        return (self.hybrid and record is not None
                and Feature.HYBRID_FILE_CHUNKS.value in announced(record.meta))

    def expire(self, now: int) -> list[ClientEvent]:
        """Discard incoming files that stalled for :data:`FILE_IDLE_MS`; one :class:`FileRejected` each."""
        stalled = [transfer for transfer in self._incoming.values() if now - transfer.last_seen > FILE_IDLE_MS]
        return [self._discard(transfer, f"no data for {FILE_IDLE_MS // 1000} s; transfer abandoned")
                for transfer in stalled]

    # --- frames received -------------------------------------------------------------------------

    def on_frame(self, frame: Envelope, now: int) -> list[ClientEvent]:
        """FILE_START, FILE_CHUNK or FILE_END from another user."""
        sender = frame.sender
        if sender == self._user.user_id:
            return []
        file_key = (sender, frame.payload["file_id"])
        if frame.type is FrameType.FILE_START:
            return self._on_start(frame, file_key, now)
        transfer = self._incoming.get(file_key)
        if transfer is None:
            if file_key in self._discarded:
                return []  # the user was told once already
            self._remember_discarded(file_key)
            raise Rejected(f"{frame.type} from {sender} for a file this client was not offered")
        if not admit(self._replay, frame, now, str(frame.type)):
            return []
        transfer.last_seen = now
        if frame.type is FrameType.FILE_END:
            if transfer.file_key is not None and transfer.received < transfer.size:
                transfer.end_seen = True  # a chunk resent after a link loss may still come
                return []
            return [self._finish(transfer)]
        return self._on_chunk(frame, transfer)

    def _on_chunk(self, frame: Envelope, transfer: _IncomingFile) -> list[ClientEvent]:
        index = frame.payload["index"]
        if index < transfer.next_index or index in transfer.ahead:
            return []  # a repeat (sent again after a link loss): already taken
        hybrid = transfer.file_key is not None
        if index != transfer.next_index and not (hybrid and index <= transfer.next_index + MAX_CHUNKS_AHEAD):
            return [self._discard(transfer, f"chunk {index} arrived where chunk {transfer.next_index} was expected")]
        try:
            if transfer.file_key is not None:
                piece = crypto.aes_decrypt(transfer.file_key, frame.payload["ciphertext"],
                                           crypto.file_chunk_aad(transfer.file_id, index))
            elif transfer.group_key is not None:
                piece = crypto.aes_decrypt(transfer.group_key, frame.payload["ciphertext"])
            else:
                piece = self._user.decrypt(frame.payload["ciphertext"], crypto.MAX_FILE_CHUNK_BLOCKS)
        except CryptoError:
            return [self._discard(transfer, f"chunk {index} does not decrypt (altered in transit?)")]
        if index != transfer.next_index:
            transfer.ahead[index] = piece
            return []
        events: list[ClientEvent] = []
        while True:
            try:
                event = self._take(transfer, piece)
            except SocpError as exc:
                return [self._discard(transfer, f"cannot store it: {exc}")]
            if isinstance(event, FileRejected):
                return [event]
            events += [event] if event is not None else []
            next_piece = transfer.ahead.pop(transfer.next_index, None)
            if next_piece is None:
                break
            piece = next_piece
        if transfer.end_seen and transfer.received >= transfer.size:
            events.append(self._finish(transfer))
        return events

    def _take(self, transfer: _IncomingFile, piece: bytes) -> FileProgress | FileRejected | None:
        """Append the next chunk's plaintext; a progress event every 10 % of a large file."""
        if transfer.received + len(piece) > transfer.size:
            return self._discard(transfer, f"more data than the {transfer.size} bytes announced")
        assert transfer.sink is not None
        transfer.sink.write(piece)
        transfer.hasher.update(piece)
        transfer.received += len(piece)
        transfer.next_index += 1
        if transfer.size >= PROGRESS_MIN_BYTES:
            tenths = transfer.received * 10 // transfer.size  # 10 % steps; 100 % is FileReceived itself
            if transfer.next_progress <= tenths < 10:
                transfer.next_progress = tenths + 1
                return FileProgress(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name,
                                    transfer.received, transfer.size)
        return None

    def _finish(self, transfer: _IncomingFile) -> FileReceived | FileRejected:
        del self._incoming[(transfer.sender_id, transfer.file_id)]
        if transfer.received != transfer.size:
            return self._discard(transfer, f"received {transfer.received} bytes, but {transfer.size} were announced")
        if transfer.hasher.hexdigest() != transfer.sha256:
            return self._discard(transfer, "SHA-256 mismatch: the file was altered in transit")
        assert transfer.sink is not None
        try:
            data, path = transfer.sink.finish()
        except SocpError as exc:
            return self._discard(transfer, f"cannot store it: {exc}")
        return FileReceived(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name, transfer.size,
                            transfer.sha256, transfer.mode, data, path)

    def _on_start(self, frame: Envelope, file_key: tuple[str, str], now: int) -> list[ClientEvent]:
        payload = frame.payload
        sender = frame.sender
        key_text, label = self._peers.sender_key(sender, payload["sender_pub"], "file")
        mode = payload.get("mode", "dm")
        expected_to = PUBLIC_GROUP if mode == "public" else self._user.user_id
        if mode not in ("dm", "public") or frame.to != expected_to:
            raise Rejected(f"file from {label}: mode {mode!r} does not match the recipient {frame.to}")
        name, size, digest = payload["name"], payload["size"], payload["sha256"]
        if not crypto.verify_file(self._peers.public_key(key_text), payload["content_sig"], payload["file_id"], name,
                                  size, digest, sender, frame.to, frame.ts):
            raise Rejected(f"file from {label}: content_sig does not verify")
        if not admit(self._replay, frame, now, "file"):
            return []
        shown_name = name if len(name) <= MAX_FILE_NAME else name[:MAX_FILE_NAME] + "…"
        pending = _IncomingFile(sender, label, payload["file_id"], shown_name, size, digest, mode, None, now)
        if file_key in self._incoming:
            return [self._reject(pending, "a transfer with this file id is already under way")]
        if size < 0 or len(name) > MAX_FILE_NAME or not _SHA256_HEX.fullmatch(digest):
            return [self._reject(pending, "the announcement is malformed (size, name or SHA-256)")]
        if size > self.max_file_bytes:
            return [self._reject(pending, f"it is {size} bytes, above this client's limit of "
                                          f"{self.max_file_bytes} bytes")]
        if len(self._incoming) >= MAX_INCOMING_FILES:
            return [self._reject(pending, f"{MAX_INCOMING_FILES} other files are already arriving")]
        if mode == "public":
            key_id, group_key = self._public.received_key(sender, payload.get("key_id"))
            if group_key is None:
                return [self._reject(pending, f"it is encrypted under key {key_id or '(none)'}, which {label} never "
                                              "shared with us")]
            pending.group_key = group_key
        elif "wrapped_key" in payload:
            wrapped = payload["wrapped_key"]
            try:
                if not isinstance(wrapped, str):
                    raise CryptoError("wrapped_key is not a string")
                pending.file_key = self._user.unwrap_file_key(wrapped)
            except CryptoError as exc:
                return [self._reject(pending, f"its file key does not unwrap ({exc})")]
        try:
            pending.sink = self.sinks(name, size)
        except SocpError as exc:
            return [self._reject(pending, f"cannot store it: {exc}")]
        self._incoming[file_key] = pending
        return [FileIncoming(sender, label, pending.file_id, pending.name, size, mode)]

    def _reject(self, transfer: _IncomingFile, reason: str) -> FileRejected:
        self._remember_discarded((transfer.sender_id, transfer.file_id))
        return FileRejected(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name, reason)

    def _discard(self, transfer: _IncomingFile, reason: str) -> FileRejected:
        """Drop an incoming transfer (what its sink holds is dropped too) and say why."""
        self._incoming.pop((transfer.sender_id, transfer.file_id), None)
        transfer.ahead.clear()
        if transfer.sink is not None:
            with contextlib.suppress(SocpError):  # the user is told; a leftover partial file is the shell's to log
                transfer.sink.discard()
            transfer.sink = None
        return self._reject(transfer, reason)

    def _remember_discarded(self, file_key: tuple[str, str]) -> None:
        self._discarded[file_key] = None
        while len(self._discarded) > MAX_DISCARDED:
            self._discarded.popitem(last=False)
