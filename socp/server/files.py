"""File transfer bookkeeping (WIRE §5, files): FILE_START is checked like a direct message and opens a
transfer; its chunks and FILE_END are routed only while it is open, within the size it announced.

Cost: one content signature check per FILE_START; chunks cost no signature check here (the transfer is
bound to its sender), one frame each on one link (routed) or n - 1 + u links (a public file). Memory: at
most :data:`MAX_FILES_PER_SENDER` open transfers per local sender, forgotten one replay window after their
last frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from socp import crypto
from socp.envelope import PUBLIC_GROUP, Envelope, FrameType
from socp.errors import BadFrame, InvalidSignature, ProtocolError, RateLimited, TooLarge
from socp.server.config import FILE_SLACK, MAX_FILES_PER_SENDER, ServerSettings
from socp.server.links import Link
from socp.server.outbox import Outbox
from socp.server.presence import Presence
from socp.server.public import PublicChannel, check_sender_pub
from socp.server.routing import Routing

FileKey = tuple[str, str]
"""(sender, file_id)."""


@dataclass(slots=True)
class FileTransfer:
    """A file whose verified FILE_START this server routed; its chunks may follow."""

    to: str
    size: int
    budget: int          # ciphertext characters still allowed (bounds a sender that lies about the size)
    expires: int


class Files:
    """Open transfers, and those refused (whose later frames are dropped quietly: the sender was told once)."""

    def __init__(self, settings: ServerSettings, out: Outbox, presence: Presence, routing: Routing,
                 public: PublicChannel) -> None:
        self._settings = settings
        self._out = out
        self._presence = presence
        self._routing = routing
        self._public = public
        self._files: dict[FileKey, FileTransfer] = {}
        self._refused: dict[FileKey, int] = {}

    def sweep(self, now: int) -> None:
        """``sweep`` subscriber: a transfer whose chunks stopped coming is forgotten after one replay window."""
        self._files = {key: transfer for key, transfer in self._files.items() if transfer.expires > now}
        self._refused = {key: expiry for key, expiry in self._refused.items() if expiry > now}

    def on_file_frame(self, link: Link, frame: Envelope, now: int) -> None:
        """FILE_START, FILE_CHUNK or FILE_END from a local user."""
        payload = frame.payload
        file_key = (frame.sender, payload["file_id"])
        window = self._settings.replay_window_ms
        if frame.type is FrameType.FILE_START:
            if file_key in self._files or file_key in self._refused:
                raise BadFrame(f"file_id {payload['file_id']} was used already", msg_ref=frame.msg_ref)
            if sum(1 for sender, _ in self._files if sender == frame.sender) >= MAX_FILES_PER_SENDER:
                raise RateLimited(f"{MAX_FILES_PER_SENDER} files are already in flight; finish one first",
                                  msg_ref=frame.msg_ref)
            try:
                self._check_start(link, frame)
            except ProtocolError:
                # Told once, here; the chunks that follow are dropped quietly.
                self._refused[file_key] = now + window
                raise
            transfer = FileTransfer(frame.to, payload["size"], 2 * payload["size"] + FILE_SLACK, now + window)
        else:
            existing = self._files.get(file_key)
            if existing is None:
                if file_key in self._refused:
                    return  # the sender was told once when the transfer failed
                raise BadFrame(f"{frame.type} for file_id {payload['file_id']} without an accepted FILE_START",
                               msg_ref=frame.msg_ref)
            transfer = existing
            if frame.to != transfer.to:
                raise BadFrame(f"{frame.type} addressed to {frame.to}, but the file goes to {transfer.to}",
                               msg_ref=frame.msg_ref)
            if frame.type is FrameType.FILE_CHUNK:
                transfer.budget -= len(payload["ciphertext"])
                if transfer.budget < 0:
                    self._files.pop(file_key, None)
                    self._refused[file_key] = now + window
                    raise TooLarge(f"file {payload['file_id']} carries more data than its announced "
                                   f"{transfer.size} bytes; transfer stopped", msg_ref=frame.msg_ref, fatal=False)
            transfer.expires = now + window
        try:
            if transfer.to == PUBLIC_GROUP:
                self._public.fan_out(frame.type, frame.sender, frame.ts, payload, now)
            else:
                self._routing.route(link, frame, now, lambda at: self._bounced(file_key, at))
        except ProtocolError:
            # Tell the sender once; later frames of the same file are dropped quietly.
            self._files.pop(file_key, None)
            self._refused[file_key] = now + window
            raise
        if frame.type is FrameType.FILE_END:
            self._files.pop(file_key, None)
        else:
            self._files[file_key] = transfer

    def _bounced(self, file_key: FileKey, now: int) -> bool:
        """A forwarded frame of ``file_key`` bounced: stop the transfer; False when the sender was told already."""
        if file_key in self._refused:
            return False  # the sender was already told about this file; one ERROR per transfer is enough
        self._files.pop(file_key, None)
        self._refused[file_key] = now + self._settings.replay_window_ms
        return True

    def _check_start(self, link: Link, frame: Envelope) -> None:
        sender = self._presence.local(link.peer)
        assert sender is not None, "user frames arrive on attached links only"
        payload = frame.payload
        mode = payload.get("mode", "dm")
        if mode not in ("dm", "public"):
            raise BadFrame("FILE_START mode must be 'dm' or 'public'", msg_ref=frame.msg_ref)
        if (mode == "public") != (frame.to == PUBLIC_GROUP):
            raise BadFrame("FILE_START mode 'public' goes to 'public', mode 'dm' to a user", msg_ref=frame.msg_ref)
        size = payload["size"]
        if size < 0:
            raise BadFrame("FILE_START size must not be negative", msg_ref=frame.msg_ref)
        limit = self._settings.max_file_bytes
        if size > limit:
            raise TooLarge(f"file of {size} bytes exceeds this server's limit of {limit} "
                           f"bytes ({limit / 1048576:.0f} MiB)", msg_ref=frame.msg_ref, fatal=False)
        check_sender_pub(sender, payload["sender_pub"], frame)
        if not crypto.verify_file(self._out.public_key(sender.pubkey), payload["content_sig"], payload["file_id"],
                                  payload["name"], size, payload["sha256"], frame.sender, frame.to, frame.ts):
            raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
