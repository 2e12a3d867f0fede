"""File transfers (WIRE §5): FILE_START, FILE_CHUNK…, FILE_END, in dm or public mode.

Outgoing transfers are produced one frame at a time (:class:`OutgoingFile`); incoming ones are assembled in
memory, bounded by ``max_file_bytes`` and :data:`MAX_INCOMING_FILES`, and handed over only after size and
SHA-256 match (:class:`FileReceived`). A transfer silent for :data:`FILE_IDLE_MS` is abandoned.

Cost: one signature per file; per chunk one RSA-OAEP (dm, :data:`DM_CHUNK_BYTES`) or AES-GCM (public,
:data:`PUBLIC_CHUNK_BYTES`) operation on each side. Public mode first shares our sender key with the members
lacking it (see :mod:`socp.user.public`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from socp import crypto
from socp.envelope import PUBLIC_GROUP, Envelope, FrameType
from socp.errors import BadFrame, CryptoError, TooLarge
from socp.replay import ReplayCache
from socp.user.common import FileSigner, LocalUser, OutboundFrame, Rejected, admit
from socp.user.events import ClientEvent, FileIncoming, FileProgress, FileReceived, FileRejected
from socp.user.keys import PeerDirectory
from socp.user.public import PublicChannel

DM_CHUNK_BYTES = 8 * crypto.OAEP_MAX_PLAINTEXT
"""Plaintext per FILE_CHUNK in dm mode: 8 RSA-OAEP blocks of 446 bytes (WIRE §5: up to 8 blocks a chunk)."""
PUBLIC_CHUNK_BYTES = 48 * 1024
"""Plaintext per FILE_CHUNK in public mode (AES-GCM; about 64 KiB of base64url on the wire)."""
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


class OutgoingFile:
    """One file being sent: its frames, produced (and encrypted) one at a time by :meth:`next_frame`.

    The first frames are any key shares the public channel needs, then FILE_START, the chunks and FILE_END.
    Each frame gets the ``now`` it is produced at, so that a long transfer stays inside the replay window.
    ``signer`` is the sender (:class:`socp.user.common.FileSigner`): it signs FILE_START and builds frames.
    """

    def __init__(self, signer: FileSigner, to: str, name: str, data: bytes, file_id: str,
                 prelude: list[OutboundFrame], group_key: tuple[bytes, str] | None,
                 recipient_key: crypto.PublicKey | None) -> None:
        self.file_id = file_id
        """The transfer's id (random)."""
        self.to = to
        """Recipient user id, or ``"public"``."""
        self.name = name
        self.size = len(data)
        self.sha256 = crypto.sha256_hex(data)
        self.mode = "public" if to == PUBLIC_GROUP else "dm"
        chunk_bytes = PUBLIC_CHUNK_BYTES if group_key is not None else DM_CHUNK_BYTES
        self.chunk_count = (len(data) + chunk_bytes - 1) // chunk_bytes
        """Number of FILE_CHUNK frames (0 for an empty file)."""
        self._signer = signer
        self._data = data
        self._chunk_bytes = chunk_bytes
        self._prelude = list(prelude)
        self._group_key = group_key
        self._recipient_key = recipient_key
        self._next = -1  # -1: FILE_START next; chunk_count: FILE_END next

    @property
    def sent_bytes(self) -> int:
        """Plaintext bytes already produced as chunks."""
        return min(self.size, max(0, self._next) * self._chunk_bytes)

    @property
    def done(self) -> bool:
        """True once FILE_END has been produced."""
        return self._next > self.chunk_count

    def next_frame(self, now: int) -> OutboundFrame | None:
        """The next frame to send, or None when the transfer is complete."""
        signer = self._signer
        if self._prelude:
            return self._prelude.pop(0)
        if self._next > self.chunk_count:
            return None
        if self._next == -1:
            payload: dict[str, Any] = {
                "file_id": self.file_id, "name": self.name, "size": self.size, "sha256": self.sha256,
                "mode": self.mode, "sender_pub": signer.pubkey,
                "content_sig": signer.sign_file(self.file_id, self.name, self.size, self.sha256, self.to, now)}
            if self._group_key is not None:
                payload["key_id"] = self._group_key[1]  # extension: which sender key the chunks use
            frame = signer.frame(FrameType.FILE_START, self.to, now, payload)
        elif self._next < self.chunk_count:
            piece = self._data[self._next * self._chunk_bytes:(self._next + 1) * self._chunk_bytes]
            if self._group_key is not None:
                ciphertext = crypto.aes_encrypt(self._group_key[0], piece)
            else:
                assert self._recipient_key is not None
                ciphertext = crypto.rsa_encrypt(self._recipient_key, piece)
            frame = signer.frame(FrameType.FILE_CHUNK, self.to, now,
                                 {"file_id": self.file_id, "index": self._next, "ciphertext": ciphertext})
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
    data: bytearray = field(default_factory=bytearray)
    next_index: int = 0
    next_progress: int = 1  # in tenths


class FileTransfers:
    """Outgoing files (built as :class:`OutgoingFile`) and the incoming ones being assembled."""

    def __init__(self, user: LocalUser, peers: PeerDirectory, public: PublicChannel, replay: ReplayCache,
                 max_file_bytes: int) -> None:
        self._user = user
        self._peers = peers
        self._public = public
        self._replay = replay
        self.max_file_bytes = max_file_bytes
        """Largest file sent or accepted."""
        self._incoming: dict[tuple[str, str], _IncomingFile] = {}
        self._discarded: OrderedDict[tuple[str, str], None] = OrderedDict()

    @property
    def arriving(self) -> bool:
        """True while some incoming file is being assembled."""
        return bool(self._incoming)

    def send(self, recipient: str, name: str, data: bytes, now: int, file_id: str | None) -> OutgoingFile:
        """An :class:`OutgoingFile` carrying ``data`` as ``name`` to ``recipient`` (a user id, or ``"public"``)."""
        if not name or len(name) > MAX_FILE_NAME:
            raise BadFrame(f"file name must be 1..{MAX_FILE_NAME} characters")
        if len(data) > self.max_file_bytes:
            raise TooLarge(f"file {name} is {len(data)} bytes, above the limit of {self.max_file_bytes} bytes",
                           fatal=False)
        file_id = file_id or crypto.random_token(12)
        if recipient == PUBLIC_GROUP:
            prelude = self._public.share_key(now)
            return OutgoingFile(self._user, recipient, name, data, file_id, prelude, self._public.group_key, None)
        recipient_key = self._peers.recipient_key(recipient)
        return OutgoingFile(self._user, recipient, name, data, file_id, [], None, recipient_key)

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
            return [self._finish(transfer)]
        return self._on_chunk(frame, transfer)

    def _on_chunk(self, frame: Envelope, transfer: _IncomingFile) -> list[ClientEvent]:
        index = frame.payload["index"]
        if index != transfer.next_index:
            return [self._discard(transfer, f"chunk {index} arrived where chunk {transfer.next_index} was expected")]
        try:
            if transfer.group_key is not None:
                piece = crypto.aes_decrypt(transfer.group_key, frame.payload["ciphertext"])
            else:
                piece = self._user.decrypt(frame.payload["ciphertext"], crypto.MAX_FILE_CHUNK_BLOCKS)
        except CryptoError:
            return [self._discard(transfer, f"chunk {index} does not decrypt (altered in transit?)")]
        transfer.data += piece
        transfer.next_index += 1
        if len(transfer.data) > transfer.size:
            return [self._discard(transfer, f"more data than the {transfer.size} bytes announced")]
        if transfer.size >= PROGRESS_MIN_BYTES:
            tenths = len(transfer.data) * 10 // transfer.size  # 10 % steps; 100 % is FileReceived itself
            if transfer.next_progress <= tenths < 10:
                transfer.next_progress = tenths + 1
                return [FileProgress(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name,
                                     len(transfer.data), transfer.size)]
        return []

    def _finish(self, transfer: _IncomingFile) -> FileReceived | FileRejected:
        del self._incoming[(transfer.sender_id, transfer.file_id)]
        if len(transfer.data) != transfer.size:
            return self._discard(transfer, f"received {len(transfer.data)} bytes, but {transfer.size} were announced")
        if crypto.sha256_hex(bytes(transfer.data)) != transfer.sha256:
            return self._discard(transfer, "SHA-256 mismatch: the file was altered in transit")
        return FileReceived(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name, transfer.size,
                            transfer.sha256, transfer.mode, bytes(transfer.data))

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
        self._incoming[file_key] = pending
        return [FileIncoming(sender, label, pending.file_id, pending.name, size, mode)]

    def _reject(self, transfer: _IncomingFile, reason: str) -> FileRejected:
        self._remember_discarded((transfer.sender_id, transfer.file_id))
        return FileRejected(transfer.sender_id, transfer.sender_label, transfer.file_id, transfer.name, reason)

    def _discard(self, transfer: _IncomingFile, reason: str) -> FileRejected:
        """Drop an incoming transfer (its data is freed) and say why."""
        self._incoming.pop((transfer.sender_id, transfer.file_id), None)
        transfer.data = bytearray()
        return self._reject(transfer, reason)

    def _remember_discarded(self, file_key: tuple[str, str]) -> None:
        self._discarded[file_key] = None
        while len(self._discarded) > MAX_DISCARDED:
            self._discarded.popitem(last=False)
