"""Direct messages (WIRE §5): MSG_DIRECT out, USER_DELIVER in, verified end to end.

The ``content_sig`` must verify with the sender's key, which must match the key the directory holds for that
sender when it holds one. Only verified deliveries enter the replay cache, so that a mangled copy cannot
shadow the real one; a second genuine copy is reported as :class:`DuplicateDelivery`, never shown twice.

Cost: one RSA-OAEP encryption (up to :data:`socp.crypto.MAX_DIRECT_BLOCKS` blocks) and two signatures per
message sent; one verification and one decryption per message received.
"""

from __future__ import annotations

from socp import crypto
from socp.envelope import Envelope, FrameType
from socp.errors import ProtocolError, SocpError, TooLarge
from socp.replay import ReplayCache
from socp.user.common import LocalUser, OutboundFrame, Rejected
from socp.user.events import ClientEvent, DirectMessage, DuplicateDelivery
from socp.user.keys import PeerDirectory


class DirectMessages:
    """Builds MSG_DIRECT frames and opens USER_DELIVER frames for :class:`socp.user.UserSession`."""

    def __init__(self, user: LocalUser, peers: PeerDirectory, replay: ReplayCache) -> None:
        self._user = user
        self._peers = peers
        self._replay = replay

    def message(self, recipient: str, text: str, now: int) -> OutboundFrame:
        """A MSG_DIRECT carrying ``text`` encrypted to online user ``recipient``.

        Raises :class:`socp.errors.UserNotFound` (not in the directory) and :class:`TooLarge`.
        """
        recipient_key = self._peers.recipient_key(recipient)
        size = len(text.encode("utf-8"))
        if size > crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT:
            raise TooLarge(f"message of {size} bytes exceeds {crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT} "
                           "bytes; send it as a file", fatal=False)
        ciphertext = crypto.rsa_encrypt(recipient_key, text.encode("utf-8"))
        ts = self._user.next_ts(now)  # a msg_ref of its own, even for two messages in one millisecond
        payload = {"ciphertext": ciphertext, "sender_pub": self._user.pubkey,
                   "content_sig": self._user.sign_direct(ciphertext, recipient, ts)}
        return self._user.frame(FrameType.MSG_DIRECT, recipient, ts, payload, signed=True)

    def _inferred_sender(self, frame: Envelope) -> str:
        """Interop profile, a USER_DELIVER without ``sender`` (fengyuan213/Secure-Programming-Group delivers the
        MSG_DIRECT payload as it came): the user whose pinned key is ``sender_pub`` and whose id the
        ``content_sig`` binds as ``from``. The signature covers the sender's id, so at most one candidate
        verifies; none: :class:`Rejected`."""
        payload = frame.payload
        try:
            key_text = crypto.normalize_public_key(payload["sender_pub"])
        except SocpError:
            raise Rejected("USER_DELIVER without sender carries an unusable sender_pub") from None
        key = self._peers.public_key(key_text)
        for candidate in self._peers.holders_of(key_text):
            if crypto.verify_direct(key, payload["content_sig"], payload["ciphertext"], candidate,
                                    self._user.user_id, frame.ts):
                return candidate
        raise Rejected("USER_DELIVER without sender: no known user holding its sender_pub signed it")

    def on_deliver(self, frame: Envelope, now: int) -> list[ClientEvent]:
        """USER_DELIVER: a direct message for us, relayed by the server."""
        payload = frame.payload
        sender = payload["sender"] or self._inferred_sender(frame)
        original_ref = f"{FrameType.MSG_DIRECT}:{sender}:{frame.to}:{frame.ts}"
        if frame.to != self._user.user_id:
            raise Rejected(f"USER_DELIVER addressed to {frame.to}, not to this user")
        key_text, label = self._peers.sender_key(sender, payload["sender_pub"], "message", "sender_pub")
        if not crypto.verify_direct(self._peers.public_key(key_text), payload["content_sig"], payload["ciphertext"],
                                    sender, self._user.user_id, frame.ts):
            raise Rejected(f"message from {sender}: content_sig does not verify")
        try:
            if not self._replay.admit(frame, now):
                return [DuplicateDelivery(sender, label, original_ref)]
        except ProtocolError as exc:
            raise Rejected(f"message {original_ref} refused: {exc.detail}") from None
        try:
            text = self._user.decrypt(payload["ciphertext"], crypto.MAX_DIRECT_BLOCKS).decode("utf-8")
        except SocpError:
            # The crypto error's own text may describe the key; the reason stays generic on purpose.
            raise Rejected(f"message from {sender}: ciphertext does not decrypt with this user's key") from None
        except UnicodeDecodeError:
            raise Rejected(f"message from {sender}: plaintext is not UTF-8") from None
        return [DirectMessage(sender, label, text, frame.ts, original_ref)]
