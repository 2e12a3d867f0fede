"""Who is online where: the presence directory and the routing decision built on it (WIRE §4.5, §5)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from socp import crypto
from socp.codec import canonical_json
from socp.errors import BadFrame

ATTEST_CONTEXT = "SOCP-USER-LOCATION-v1"
"""Domain separation of a location attestation's signature (no other signed content starts with it)."""


def display_label(user_id: str, meta: Mapping[str, Any]) -> str:
    """How a user is shown: ``meta.display_name`` when it is a non-empty string, else the user id."""
    name = meta.get("display_name") if isinstance(meta, Mapping) else None
    return name.strip() if isinstance(name, str) and name.strip() else user_id


def meta_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``meta`` object of a payload, or an empty one when it is missing or not an object."""
    meta = payload.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else {}


def attestation_content(user_id: str, server_id: str, ts: int) -> bytes:
    """The bytes a user signs to say "I am attached to ``server_id`` since ``ts``" (PROTOCOL.md §4.5.1)."""
    return canonical_json({"context": ATTEST_CONTEXT, "user_id": user_id, "server_id": server_id, "ts": ts})


@dataclass(frozen=True, slots=True)
class Attestation:
    """A user's own signed statement of where it is attached: the only proof that lets a server place a user
    on itself. Receivers verify it with the key pinned for the user and keep the newest (highest ``ts``)."""

    user_id: str
    server_id: str
    ts: int
    sig: str = field(repr=False)

    def verify(self, key: crypto.PublicKey) -> bool:
        """True when ``sig`` is the user's signature over this statement."""
        return crypto.verify(key, attestation_content(self.user_id, self.server_id, self.ts), self.sig)

    def to_wire(self) -> dict[str, Any]:
        """The ``attest`` object carried in USER_ATTEST, USER_ADVERTISE and presence snapshots."""
        return {"server_id": self.server_id, "ts": self.ts, "sig": self.sig}

    @classmethod
    def from_wire(cls, user_id: str, item: object) -> Attestation:
        """Parse an ``attest`` object for ``user_id`` (the signature is checked by :meth:`verify`)."""
        if not isinstance(item, Mapping):
            raise BadFrame("attest must be an object {server_id, ts, sig}")
        server_id, ts, sig = item.get("server_id"), item.get("ts"), item.get("sig")
        if (not isinstance(server_id, str) or not isinstance(ts, int) or isinstance(ts, bool)
                or not isinstance(sig, str) or not sig):
            raise BadFrame("attest needs server_id (string), ts (integer) and sig (string)")
        return cls(user_id, server_id, ts, sig)

    @classmethod
    def make(cls, key: crypto.PrivateKey, user_id: str, server_id: str, ts: int) -> Attestation:
        """Sign a new attestation with the user's private key (client side; one RSA signature)."""
        return cls(user_id, server_id, ts, crypto.sign(key, attestation_content(user_id, server_id, ts)))


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user known online: where it is attached and the key its messages are verified with."""

    user_id: str
    server_id: str
    pubkey: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """Display label (``meta.display_name`` or the user id)."""
        return display_label(self.user_id, self.meta)

    def to_wire(self) -> dict[str, Any]:
        """The record as a LIST_RESPONSE entry."""
        return {"user_id": self.user_id, "server_id": self.server_id, "pubkey": self.pubkey,
                "meta": dict(self.meta)}


class Directory:
    """``user_locations`` with the records behind it; every mutator says what changed.

    The rules (WIRE §4.5): an advert moves a user to its origin server; a removal applies only while
    the user still maps to the removing server; a presence snapshot replaces everything held for its
    server; a dead link drops every user of that server.
    """

    def __init__(self) -> None:
        self._users: dict[str, UserRecord] = {}

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def get(self, user_id: str) -> UserRecord | None:
        """The record of ``user_id``, or None when it is not known online."""
        return self._users.get(user_id)

    def location(self, user_id: str) -> str | None:
        """The server ``user_id`` is attached to, or None."""
        record = self._users.get(user_id)
        return record.server_id if record else None

    def advertise(self, record: UserRecord) -> bool:
        """Record ``record`` as online; True when this changed the directory."""
        previous = self._users.get(record.user_id)
        self._users[record.user_id] = record
        return previous != record or (previous is not None and previous.meta != record.meta)

    def remove(self, user_id: str, server_id: str) -> UserRecord | None:
        """Remove ``user_id`` if it still maps to ``server_id``; the removed record, else None."""
        record = self._users.get(user_id)
        if record is None or record.server_id != server_id:
            return None
        del self._users[user_id]
        return record

    def users_of(self, server_id: str) -> list[UserRecord]:
        """Every user currently mapped to ``server_id``."""
        return [record for record in self._users.values() if record.server_id == server_id]

    def replace_server(self, server_id: str, records: Iterable[UserRecord]) -> tuple[list[UserRecord],
                                                                                    list[UserRecord]]:
        """Apply a presence snapshot of ``server_id``: returns (added or changed, removed)."""
        incoming = {record.user_id: record for record in records if record.server_id == server_id}
        removed = [record for record in self.users_of(server_id) if record.user_id not in incoming]
        for record in removed:
            del self._users[record.user_id]
        added = [record for record in incoming.values() if self.advertise(record)]
        return added, removed

    def drop_server(self, server_id: str) -> list[UserRecord]:
        """Forget every user of ``server_id`` (its link died); returns them."""
        return self.replace_server(server_id, [])[1]

    def listing(self) -> list[UserRecord]:
        """Every known user, sorted by display label then user id (LIST_RESPONSE order)."""
        return sorted(self._users.values(), key=lambda record: (record.label.casefold(), record.user_id))

    def find(self, name_or_id: str) -> list[UserRecord]:
        """Users whose id equals ``name_or_id``, else whose display label matches it (case-insensitive)."""
        if name_or_id in self._users:
            return [self._users[name_or_id]]
        wanted = name_or_id.casefold()
        return [record for record in self.listing() if record.label.casefold() == wanted]
