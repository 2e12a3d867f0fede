"""What the session's components share: this user's key pair, outbound frames, and the one way to refuse a frame.

:class:`LocalUser` is the only holder of the private key among the components: they ask it to sign, decrypt
and build frames. :class:`OutboundFrame` is the wire text of a frame the session produced (a ``str``, as
before) that also knows its ``msg_ref``, so that shells never rebuild one. :class:`MsgRef` reads one back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from socp import crypto
from socp import envelope as env
from socp.envelope import Envelope, FrameType
from socp.errors import ProtocolError
from socp.presence import Attestation
from socp.replay import ReplayCache

logger = logging.getLogger("socp.user")


class OutboundFrame(str):
    """The JSON text of one frame to send (a ``str``) together with its ``msg_ref`` (WIRE §3).

    The ``msg_ref`` is how the server's ``ACK`` or ``ERROR`` about this frame names it: a shell matches the
    answer to a request with it, and never rebuilds it from the frame's fields.
    """

    msg_ref: str
    """``<type>:<from>:<to>:<ts>`` of this frame."""

    def __new__(cls, text: str, msg_ref: str) -> OutboundFrame:
        """Wrap ``text`` (the frame's wire form) with its ``msg_ref``."""
        self = super().__new__(cls, text)
        self.msg_ref = msg_ref
        return self

    @classmethod
    def of(cls, frame: Envelope) -> OutboundFrame:
        """``frame`` ready to send (logged at DEBUG with the ``>`` prefix)."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("> %s %s", frame.type, frame.msg_ref)
        return cls(frame.to_wire(), frame.msg_ref)


@dataclass(frozen=True, slots=True)
class MsgRef:
    """A ``msg_ref`` read back into its parts: ``<type>:<from>:<to>:<ts>``."""

    type: str
    sender: str
    to: str
    ts: int

    @classmethod
    def parse(cls, text: str | None) -> MsgRef | None:
        """The parts of ``text``, or None when it is not a ``msg_ref`` of four fields with an integer ``ts``."""
        parts = (text or "").split(":")
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]))

    def __str__(self) -> str:
        """The wire form."""
        return f"{self.type}:{self.sender}:{self.to}:{self.ts}"


class Rejected(Exception):
    """Internal: abort the processing of one frame; the session reports ``reason`` as :class:`FrameRejected`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FileSigner(Protocol):
    """What an outgoing file needs of its sender: who it is, a FILE_START signature, and framing."""

    @property
    def user_id(self) -> str:
        """The sender's user id."""
        ...

    @property
    def pubkey(self) -> str:
        """The sender's public key (canonical encoding)."""
        ...

    def sign_file(self, file_id: str, name: str, size: int, sha256: str, to: str, ts: int) -> str:
        """The FILE_START ``content_sig``."""
        ...

    def next_ts(self, now: int) -> int:
        """A ``ts`` of its own for the next frame (see :meth:`LocalUser.next_ts`)."""
        ...

    def frame(self, frame_type: FrameType, to: str, now: int, payload: dict[str, Any], *,
              signed: bool = False) -> OutboundFrame:
        """A frame from the sender, ready to send."""
        ...


class LocalUser:
    """This user: its id and key pair. Signs, decrypts and builds frames for the session's components."""

    __slots__ = ("_key", "_last_ts", "pubkey", "user_id")

    def __init__(self, user_id: str, key: crypto.PrivateKey) -> None:
        self.user_id = user_id
        self._key = key
        self.pubkey = crypto.encode_public_key(key.public_key())
        self._last_ts = 0

    def next_ts(self, now: int) -> int:
        """A ``ts`` for a new content frame: ``now``, or one past the previous one when ``now`` is not later
        (within a second: a clock set back further is believed).

        So two frames to the same recipient do not share a ``msg_ref`` (it names the frame in receipts and
        errors), even within one millisecond; sign with this ``ts`` and build the frame with it.
        """
        last = self._last_ts
        self._last_ts = last + 1 if last - 1000 < now <= last else now
        return self._last_ts

    def frame(self, frame_type: FrameType, to: str, now: int, payload: dict[str, Any], *,
              signed: bool = False) -> OutboundFrame:
        """A frame from this user, with a transport signature when ``signed``."""
        return OutboundFrame.of(env.make(frame_type, self.user_id, to, now, payload, self._key if signed else None))

    def sign_direct(self, ciphertext: str, to: str, ts: int) -> str:
        """The MSG_DIRECT ``content_sig``."""
        return crypto.sign_direct(self._key, ciphertext, self.user_id, to, ts)

    def sign_public(self, ciphertext: str, ts: int) -> str:
        """The MSG_PUBLIC_CHANNEL ``content_sig``."""
        return crypto.sign_public(self._key, ciphertext, self.user_id, ts)

    def sign_key_share(self, shares: list[Any]) -> str:
        """The PUBLIC_CHANNEL_KEY_SHARE ``content_sig``."""
        return crypto.sign_key_share(self._key, shares, self.pubkey)

    def sign_file(self, file_id: str, name: str, size: int, sha256: str, to: str, ts: int) -> str:
        """The FILE_START ``content_sig``."""
        return crypto.sign_file(self._key, file_id, name, size, sha256, self.user_id, to, ts)

    def attestation(self, server_id: str, ts: int) -> dict[str, Any]:
        """The ``attest`` of a USER_HELLO: this user's signed statement of being on ``server_id`` at ``ts``."""
        return Attestation.make(self._key, self.user_id, server_id, ts).to_wire()

    def decrypt(self, ciphertext: str, max_blocks: int) -> bytes:
        """RSA-OAEP decryption with this user's key; raises :class:`socp.errors.CryptoError`."""
        return crypto.rsa_decrypt(self._key, ciphertext, max_blocks)

    def unwrap_file_key(self, wrapped: str) -> bytes:
        """A hybrid file key wrapped for this user (FILE_START ``wrapped_key``); raises
        :class:`socp.errors.CryptoError`."""
        return crypto.unwrap_file_key(self._key, wrapped)


def admit(replay: ReplayCache, frame: Envelope, now: int, what: str) -> bool:
    """Whether ``frame`` is new to ``replay`` (False: a duplicate); a stale frame is :class:`Rejected`."""
    try:
        return replay.admit(frame, now)
    except ProtocolError as exc:
        raise Rejected(f"{what} {frame.msg_ref} refused: {exc.detail}") from None
