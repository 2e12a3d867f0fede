"""The public channel (WIRE §5): our sender key, who has it, and the keys others shared with us.

The session owns one random 256-bit sender key, shares it (RSA-OAEP per member, signed) with every member
that has not got it before its next message, and replaces it as soon as a member it was shared with has left
(:meth:`PublicChannel.member_left`, the directory's hook). Received keys are kept per (sender, key_id).

Cost: a message is one AES-GCM encryption and one signature; sharing the key with k newcomers is k RSA-OAEP
encryptions and one signature per :data:`MAX_SHARES_PER_FRAME` of them, so a rotation costs O(n) for n
members. Receiving a share is one verification and at most one decryption.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from socp import crypto
from socp.envelope import BROADCAST, PUBLIC_GROUP, Envelope, FrameType
from socp.errors import CryptoError
from socp.replay import ReplayCache
from socp.user.common import LocalUser, OutboundFrame, Rejected, admit, logger
from socp.user.events import (
    ClientEvent,
    DuplicateDelivery,
    PublicKeyReceived,
    PublicMessage,
    PublicMessageUnreadable,
)
from socp.user.keys import PeerDirectory

MAX_SHARES_PER_FRAME = 1000
"""Shares per PUBLIC_CHANNEL_KEY_SHARE we send (about 760 bytes each: far below the frame limit)."""
MAX_GROUP_KEYS = 4096
"""Received sender keys kept (the least recently received go first)."""


class PublicChannel:
    """Our public-channel sender key and the keys members shared with us."""

    def __init__(self, user: LocalUser, peers: PeerDirectory, replay: ReplayCache) -> None:
        self._user = user
        self._peers = peers
        self._replay = replay
        self._group_key: tuple[bytes, str] | None = None
        self._shared_with: set[str] = set()
        self._rotate = False
        self._group_keys: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._latest_key_id: dict[str, str] = {}

    @property
    def group_key(self) -> tuple[bytes, str] | None:
        """Our current sender key and its id (None before the first share)."""
        return self._group_key

    def has_group_key(self, sender_id: str, key_id: str | None = None) -> bool:
        """True when ``sender_id`` shared a public-channel key with us (``key_id``, or any)."""
        if key_id is None:
            return sender_id in self._latest_key_id
        return (sender_id, key_id) in self._group_keys

    def received_key(self, sender: str, raw_key_id: object) -> tuple[str, bytes | None]:
        """The id of the key a frame from ``sender`` names (its latest when it names none) and that key, if we
        hold it."""
        key_id = raw_key_id if isinstance(raw_key_id, str) else self._latest_key_id.get(sender, "")
        return key_id, self._group_keys.get((sender, key_id))

    def member_left(self, user_id: str) -> None:
        """A member left (or changed key): the next public message must use a key it never had."""
        if user_id in self._shared_with:
            self._shared_with.discard(user_id)
            self._rotate = True

    def message(self, text: str, now: int) -> list[OutboundFrame]:
        """Key shares when needed, then the MSG_PUBLIC_CHANNEL carrying ``text`` under our sender key."""
        frames = self.share_key(now)
        assert self._group_key is not None
        key, key_id = self._group_key
        ciphertext = crypto.aes_encrypt(key, text.encode("utf-8"))
        payload = {"ciphertext": ciphertext, "sender_pub": self._user.pubkey, "key_id": key_id,
                   "content_sig": self._user.sign_public(ciphertext, now)}
        frames.append(self._user.frame(FrameType.MSG_PUBLIC_CHANNEL, PUBLIC_GROUP, now, payload))
        return frames

    def share_key(self, now: int) -> list[OutboundFrame]:
        """Key shares that bring every current member up to date with our sender key (rotating it first
        when someone it was shared with has left)."""
        if self._group_key is None or self._rotate:
            key = crypto.generate_symmetric_key()
            self._group_key = (key, crypto.group_key_id(key))
            self._shared_with = set()
            self._rotate = False
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("new public-channel key %s", self._group_key[1])
        key, key_id = self._group_key
        newcomers = [record for record in self._peers.directory.listing()
                     if record.user_id != self._user.user_id and record.user_id not in self._shared_with]
        frames = []
        for start in range(0, len(newcomers), MAX_SHARES_PER_FRAME):
            batch = newcomers[start:start + MAX_SHARES_PER_FRAME]
            shares: list[Any] = [{"member": record.user_id,
                                  "wrapped_public_channel_key": crypto.rsa_encrypt(
                                      self._peers.public_key(record.pubkey), key)} for record in batch]
            payload = {"shares": shares, "creator_pub": self._user.pubkey, "key_id": key_id,
                       "content_sig": self._user.sign_key_share(shares)}
            frames.append(self._user.frame(FrameType.PUBLIC_CHANNEL_KEY_SHARE, BROADCAST, now, payload))
            self._shared_with.update(record.user_id for record in batch)
        return frames

    # --- frames received -------------------------------------------------------------------------

    def on_key_share(self, frame: Envelope, now: int) -> list[ClientEvent]:
        """PUBLIC_CHANNEL_KEY_SHARE: a member's sender key, wrapped for each member."""
        payload = frame.payload
        sender = frame.sender
        if sender == self._user.user_id:
            return []
        key_text, label = self._peers.sender_key(sender, payload["creator_pub"], "key share")
        shares = payload["shares"]
        if not crypto.verify_key_share(self._peers.public_key(key_text), payload["content_sig"], shares,
                                       payload["creator_pub"]):
            raise Rejected(f"key share from {label}: content_sig does not verify")
        if not admit(self._replay, frame, now, "key share"):
            return []
        mine = [share for share in shares if isinstance(share, dict) and share.get("member") == self._user.user_id]
        if not mine or not isinstance(mine[0].get("wrapped_public_channel_key"), str):
            return []  # a share for other members only
        try:
            key = self._user.decrypt(mine[0]["wrapped_public_channel_key"], crypto.MAX_KEY_WRAP_BLOCKS)
        except CryptoError:
            raise Rejected(f"key share from {label}: our share does not decrypt with this user's key") from None
        if len(key) != 32:
            raise Rejected(f"key share from {label}: the shared key is not 256 bits")
        raw_id = payload.get("key_id")
        key_id = raw_id if isinstance(raw_id, str) else ""
        self._group_keys[(sender, key_id)] = key
        self._group_keys.move_to_end((sender, key_id))
        while len(self._group_keys) > MAX_GROUP_KEYS:
            self._group_keys.popitem(last=False)
        self._latest_key_id[sender] = key_id
        return [PublicKeyReceived(sender, label, key_id)]

    def on_message(self, frame: Envelope, now: int) -> list[ClientEvent]:
        """MSG_PUBLIC_CHANNEL: a member's message, under one of its sender keys."""
        payload = frame.payload
        sender = frame.sender
        if sender == self._user.user_id:
            return []
        key_text, label = self._peers.sender_key(sender, payload["sender_pub"], "public message")
        if not crypto.verify_public(self._peers.public_key(key_text), payload["content_sig"], payload["ciphertext"],
                                    sender, frame.ts):
            raise Rejected(f"public message from {label}: content_sig does not verify")
        if not admit(self._replay, frame, now, "public message"):
            return [DuplicateDelivery(sender, label, frame.msg_ref)]
        key_id, key = self.received_key(sender, payload.get("key_id"))
        if key is None:
            return [PublicMessageUnreadable(sender, label, frame.ts, frame.msg_ref, key_id,
                                            f"it is encrypted under key {key_id or '(none)'}, which {label} never "
                                            "shared with us (sent before we joined, or a key share was lost)")]
        try:
            text = crypto.aes_decrypt(key, payload["ciphertext"]).decode("utf-8")
        except CryptoError:
            return [PublicMessageUnreadable(sender, label, frame.ts, frame.msg_ref, key_id,
                                            f"it does not decrypt under key {key_id} (altered in transit?)")]
        except UnicodeDecodeError:
            raise Rejected(f"public message from {label}: plaintext is not UTF-8") from None
        return [PublicMessage(sender, label, text, frame.ts, frame.msg_ref, key_id)]
