"""Who is online and with which key: the directory the server reports, and the keys pinned to user ids.

Every user id this session has seen is bound to the first key seen for it: servers refuse a second key for a
known id, so a change can only come from a lying or compromised server, and it is refused. Keys sent along
with messages (``sender_pub``, ``creator_pub``) must match the key the directory holds for that sender, when
it holds one.

Cost: an advert is O(1); a LIST_RESPONSE of n users is O(n). Decoded keys are cached (at most
:data:`MAX_KEY_CACHE`), so each peer's key is parsed once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from socp import crypto
from socp.envelope import Envelope
from socp.errors import BadKey, UserNotFound
from socp.presence import Directory, UserRecord, meta_of
from socp.user.common import Rejected, logger
from socp.user.events import ClientEvent, FrameRejected, UserList, UserOffline, UserOnline

MIN_ID_PREFIX = 4
"""Shortest user id prefix :meth:`PeerDirectory.resolve` accepts (``/list`` shows 8 characters)."""
MAX_KEY_CACHE = 1024
"""Decoded public keys kept; the cache starts over beyond it."""


class PeerDirectory:
    """The users online as the server reports them, their pinned keys, and a cache of decoded keys.

    Hooks registered with :meth:`on_member_left` are called when a user leaves or its listed key changes (the
    public channel then replaces its sender key).
    """

    def __init__(self) -> None:
        self.directory = Directory()
        """Users known online."""
        self._member_left_hooks: list[Callable[[str], None]] = []
        self._pinned: dict[str, str] = {}
        self._keys: dict[str, crypto.PublicKey] = {}

    def on_member_left(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(user_id)`` whenever a user leaves the directory or is listed with another key."""
        self._member_left_hooks.append(hook)

    def _member_left(self, user_id: str) -> None:
        for hook in self._member_left_hooks:
            hook(user_id)

    def public_key(self, key_text: str) -> crypto.PublicKey:
        """The decoded form of ``key_text`` (canonical encoding), cached."""
        key = self._keys.get(key_text)
        if key is None:
            key = crypto.decode_public_key(key_text)
            if len(self._keys) >= MAX_KEY_CACHE:
                self._keys.clear()
            self._keys[key_text] = key
        return key

    def recipient_key(self, user_id: str) -> crypto.PublicKey:
        """The key of online user ``user_id``; raises :class:`UserNotFound` when it is not in the directory."""
        record = self.directory.get(user_id)
        if record is None:
            raise UserNotFound(f"user {user_id} is not online (not in this client's directory)")
        return self.public_key(record.pubkey)

    def sender_key(self, sender: str, sender_pub: object, what: str, noun: str = "sender key"
                   ) -> tuple[str, str]:
        """The key a frame from ``sender`` carries (checked against the directory) and the sender's label.

        Raises :class:`Rejected` for an unusable key or one other than the key advertised for ``sender``.
        """
        try:
            key_text = crypto.normalize_public_key(sender_pub)
        except BadKey as exc:
            raise Rejected(f"{what} from {sender}: unusable {noun} ({exc.detail})") from None
        known = self.directory.get(sender)
        if known is not None and known.pubkey != key_text:
            raise Rejected(f"{what} from {sender}: {noun} is not the key advertised for that user")
        return key_text, known.label if known is not None else sender

    def resolve(self, name_or_id: str) -> UserRecord:
        """The online user called ``name_or_id``: a user id, a display label, or a unique id prefix.

        Raises :class:`UserNotFound` when nobody matches, and when a label is ambiguous (the detail lists
        the candidates' ids so that the caller can pick one).
        """
        wanted = name_or_id.strip()
        matches = self.directory.find(wanted)
        if not matches and len(wanted) >= MIN_ID_PREFIX:
            # /list shows short ids; accept one when it is unambiguous.
            prefix = wanted.lower()
            matches = [record for record in self.directory.listing() if record.user_id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserNotFound(f"user {wanted} is not online")
        ids = ", ".join(record.user_id for record in matches)
        raise UserNotFound(f"{len(matches)} online users match {wanted!r} ({ids}); use the user id")

    # --- frames received -------------------------------------------------------------------------

    def on_advertise(self, frame: Envelope) -> list[ClientEvent]:
        """USER_ADVERTISE: a user came online or changed its record."""
        record = _record(frame.payload, frame.payload["server_id"])
        if record is None:
            raise Rejected(f"USER_ADVERTISE for {frame.payload['user_id']} carries no usable RSA-4096 pubkey")
        self._check_pin(record)
        is_new = self.directory.get(record.user_id) is None
        if not self.directory.advertise(record):
            return []
        return [UserOnline(record, is_new)]

    def on_remove(self, frame: Envelope) -> list[ClientEvent]:
        """USER_REMOVE: a user went offline."""
        removed = self.directory.remove(frame.payload["user_id"], frame.payload["server_id"])
        if removed is None:
            return []
        self._member_left(removed.user_id)
        return [UserOffline(removed, frame.payload.get("reason") == "server_unreachable")]

    def on_list(self, frame: Envelope) -> list[ClientEvent]:
        """LIST_RESPONSE: the directory becomes exactly the usable entries listed."""
        records: list[UserRecord] = []
        rejected: list[ClientEvent] = []
        for item in frame.payload["users"]:
            server_id = item.get("server_id") if isinstance(item, dict) else None
            record = _record(item, server_id) if isinstance(server_id, str) else None
            if record is None:
                # One unusable entry (another implementation's key format, say) must not hide the others.
                logger.debug("LIST_RESPONSE entry skipped: needs user_id, server_id and an RSA-4096 pubkey")
                continue
            try:
                self._check_pin(record)
            except Rejected as exc:
                rejected.append(FrameRejected(exc.reason, frame.type.value))
                continue
            records.append(record)
        listed = {record.user_id: record.pubkey for record in records}
        for stale in self.directory.listing():
            if listed.get(stale.user_id) != stale.pubkey:
                self._member_left(stale.user_id)
            self.directory.remove(stale.user_id, stale.server_id)
        for record in records:
            self.directory.advertise(record)
        return [*rejected, UserList(tuple(self.directory.listing()))]

    def _check_pin(self, record: UserRecord) -> None:
        """Pin ``record``'s key to its user id on first sight; refuse (:class:`Rejected`) a different one later."""
        pinned = self._pinned.setdefault(record.user_id, record.pubkey)
        if pinned != record.pubkey:
            raise Rejected(f"the key of {record.label} ({record.user_id}) changed from "
                           f"{crypto.key_fingerprint(pinned)} to {crypto.key_fingerprint(record.pubkey)}: refused, "
                           "the server may be impersonating this user")


def _record(item: Mapping[str, Any], server_id: str) -> UserRecord | None:
    """A directory record from an advert or list entry, or None when it lacks a usable key."""
    user_id = item.get("user_id")
    meta = meta_of(item)
    raw_key = item.get("pubkey") or meta.get("pubkey")
    if not isinstance(user_id, str) or not user_id:
        return None
    try:
        key_text = crypto.normalize_public_key(raw_key)
    except BadKey:
        return None
    # The key variant in meta is not decoration; keep it out of what gets displayed.
    meta.pop("pubkey", None)
    return UserRecord(user_id, server_id, key_text, meta)
