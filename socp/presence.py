"""Who is online where: the presence directory and the routing decision built on it (WIRE §4.5, §5)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


def display_label(user_id: str, meta: Mapping[str, Any]) -> str:
    """How a user is shown: ``meta.display_name`` when it is a non-empty string, else the user id."""
    name = meta.get("display_name") if isinstance(meta, Mapping) else None
    return name.strip() if isinstance(name, str) and name.strip() else user_id


def meta_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``meta`` object of a payload, or an empty one when it is missing or not an object."""
    meta = payload.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else {}


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
