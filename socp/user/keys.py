"""Who is online and with which key: the directory the server reports, and the keys pinned to user ids.

Every user id this session has seen is bound to the first key seen for it: servers refuse a second key for a
known id, so a change can only come from a lying or compromised server, and it is refused. Keys sent along
with messages (``sender_pub``, ``creator_pub``) must match the key the directory holds for that sender, when
it holds one.

Display names are decoration anyone can claim (issue 11, finding 6). A name carried by more than one user id
this session has seen is shown with a short key fingerprint (:meth:`PeerDirectory.display`), and a name
belongs to the first user id seen with it: :meth:`PeerDirectory.resolve` never picks, for a name, another
user id while the first holder is offline, and asks (listing fingerprints) when two holders are online.

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
MAX_KEY_REQUESTS = 64
"""Users one LIST_RESPONSE may send PUBKEY_REQUESTs for (interop profile), and requests awaiting an answer."""
FINGERPRINT_CHARS = 8
"""Hex digits of the key fingerprint shown next to a display name that is not unique."""


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
        self._labels: dict[str, str] = {}
        """User id → the display label it was last seen with (online or not)."""
        self._unkeyed: list[str] = []
        """Users the last LIST_RESPONSE named by id only and we hold no record of (interop profile)."""
        self._asked: set[str] = set()
        """Users whose key we asked the server for (PUBKEY_REQUEST) and have no answer for yet."""
        self._holders: dict[str, list[str]] = {}
        """Case-folded display label → the user ids seen with it, first seen first."""

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
        # The key pinned for the id wins even while the user is offline (issue 11, finding 2: a forged
        # delivery under another key for a user this client no longer lists); a first sight pins it.
        expected = self._pinned.setdefault(sender, known.pubkey if known is not None else key_text)
        if expected != key_text:
            logger.warning("%s from %s refused: key %s is not the pinned key %s", what, sender,
                           crypto.key_fingerprint(key_text), crypto.key_fingerprint(expected))
            raise Rejected(f"{what} from {sender}: {noun} is not the key advertised for that user (the key "
                           f"pinned for it is {crypto.key_fingerprint(expected)})")
        return key_text, self.display(sender)

    def holders_of(self, key_text: str) -> list[str]:
        """The user ids ``key_text`` (canonical encoding) is pinned for; O(users pinned)."""
        return [user_id for user_id, pinned in self._pinned.items() if pinned == key_text]

    def preload(self, known: Mapping[str, tuple[str, str]]) -> None:
        """Pins remembered from earlier sessions (user id → (key, label)): they count as seen first, so a key
        or a claim to a name made later by someone else is refused or shown with a fingerprint."""
        for user_id, (key_text, label) in known.items():
            if user_id not in self._pinned:
                self._pinned[user_id] = key_text
                self._saw(UserRecord(user_id, "", key_text, {"display_name": label}))

    def pins(self) -> dict[str, tuple[str, str]]:
        """Every pinned user id → (key, last label seen), to remember for the next session."""
        return {user_id: (key_text, self._labels.get(user_id, user_id)) for user_id, key_text in self._pinned.items()}

    def display(self, user_id: str) -> str:
        """How to show ``user_id``: its display label, followed by ``[fingerprint]`` when another user id this
        session has seen carries the same label (a label is decoration; only the key tells users apart)."""
        label = self._labels.get(user_id, user_id)
        if len(self._holders.get(label.casefold(), ())) > 1 and user_id in self._pinned:
            return f"{label} [{crypto.key_fingerprint(self._pinned[user_id])[:FINGERPRINT_CHARS]}]"
        return label

    def resolve(self, name_or_id: str) -> UserRecord:
        """The online user called ``name_or_id``: a user id, a display label, or a unique id prefix.

        Raises :class:`UserNotFound` when nobody matches, and when a label is ambiguous (the detail lists
        the candidates' ids so that the caller can pick one).
        """
        wanted = name_or_id.strip()
        matches = self.directory.find(wanted)
        by_label = bool(matches) and wanted not in self.directory
        if by_label:
            return self._resolve_label(wanted, matches)
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

    def _resolve_label(self, wanted: str, matches: list[UserRecord]) -> UserRecord:
        """The online user a display label names: its first holder; never silently another one."""
        holders = self._holders.get(wanted.casefold(), [])
        first = holders[0] if holders else None
        if len(matches) == 1 and first in (None, matches[0].user_id):
            return matches[0]
        if len(matches) > 1:
            listed = "; ".join(f"{self.display(r.user_id)} id {r.user_id}" for r in matches)
            raise UserNotFound(f"{len(matches)} online users are called {wanted!r}: {listed}. Which one? To choose, "
                               "use the user id (or an id prefix)")
        assert first is not None
        other = matches[0]
        raise UserNotFound(f"{wanted!r} is the name of user {first} ({self.display(first)}), who is offline; the "
                           f"online {wanted!r} is another user, {self.display(other.user_id)} id {other.user_id}. "
                           "Use the id to write to that one")

    def _saw(self, record: UserRecord) -> None:
        """Remember ``record``'s label for :meth:`display` and :meth:`resolve`."""
        label = record.label
        self._labels[record.user_id] = label
        holders = self._holders.setdefault(label.casefold(), [])
        if record.user_id not in holders:
            holders.append(record.user_id)
            if len(holders) > 1:
                logger.warning("display name %r is used by %d user ids (%s); showing key fingerprints", label,
                               len(holders), ", ".join(h[:8] for h in holders))

    # --- frames received -------------------------------------------------------------------------

    def on_advertise(self, frame: Envelope) -> list[ClientEvent]:
        """USER_ADVERTISE: a user came online or changed its record."""
        return self._learn(frame, frame.payload["server_id"])

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
        unkeyed: list[str] = []
        for item in frame.payload["users"]:
            server_id = item.get("server_id") if isinstance(item, dict) else None
            record = _record(item, server_id) if isinstance(server_id, str) else None
            if record is None and isinstance(item, dict) and set(item) == {"user_id"}:
                # An id-only entry (another implementation's ``online_users``, docs/INTEROP.md): still online
                # as we know it; nothing new is learnt from it, so nothing needs verifying.
                record = self.directory.get(item["user_id"]) if isinstance(item["user_id"], str) else None
                if (record is None and isinstance(item["user_id"], str) and len(unkeyed) < MAX_KEY_REQUESTS
                        and item["user_id"] not in unkeyed):
                    unkeyed.append(item["user_id"])  # its key can be asked for (PUBKEY_REQUEST)
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
        self._unkeyed = unkeyed
        return [*rejected, UserList(tuple(self.directory.listing()))]

    def take_unkeyed(self) -> list[str]:
        """The users the last LIST_RESPONSE named by id only, with no record here (each returned once)."""
        unkeyed, self._unkeyed = self._unkeyed, []
        return unkeyed

    def asked(self, user_id: str) -> None:
        """A PUBKEY_REQUEST for ``user_id`` went out; its answer will be taken (at most
        :data:`MAX_KEY_REQUESTS` outstanding: the oldest question is forgotten)."""
        if len(self._asked) >= MAX_KEY_REQUESTS:
            self._asked.pop()
        self._asked.add(user_id)

    def on_pubkey_response(self, frame: Envelope, server_id: str | None) -> list[ClientEvent]:
        """PUBKEY_RESPONSE to a PUBKEY_REQUEST of ours: the user's key, vouched for by the server's transport
        signature as an advert's is, pinned as an advert's is. The user is placed at the ``server_id`` the
        answer names, else at our server (informational: the server routes by user id). An answer nobody
        asked for is ignored."""
        user_id = frame.payload["user_id"]
        if user_id not in self._asked:
            logger.debug("PUBKEY_RESPONSE for %s ignored: not asked for", user_id[:8])
            return []
        self._asked.discard(user_id)
        home = frame.payload.get("server_id")
        home = home if isinstance(home, str) and home else server_id or frame.sender
        return self._learn(frame, home)

    def _learn(self, frame: Envelope, server_id: str) -> list[ClientEvent]:
        """A user's record from a server-signed frame (an advert, a key answer): pinned, then placed at
        ``server_id``; :class:`UserOnline` when the directory changed."""
        record = _record(frame.payload, server_id)
        if record is None:
            raise Rejected(f"{frame.type} for {frame.payload['user_id']} carries no usable RSA-4096 pubkey")
        self._check_pin(record)
        is_new = self.directory.get(record.user_id) is None
        if not self.directory.advertise(record):
            return []
        return [UserOnline(record, is_new)]

    def _check_pin(self, record: UserRecord) -> None:
        """Pin ``record``'s key to its user id on first sight; refuse (:class:`Rejected`) a different one later."""
        pinned = self._pinned.setdefault(record.user_id, record.pubkey)
        if pinned != record.pubkey:
            raise Rejected(f"the key of {record.label} ({record.user_id}) changed from "
                           f"{crypto.key_fingerprint(pinned)} to {crypto.key_fingerprint(record.pubkey)}: refused, "
                           "the server may be impersonating this user")
        self._saw(record)


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
