"""The node's persistent state: identity and key files, and the SQLite database (WIRE §6)."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socp import crypto
from socp.errors import ConfigError, CryptoError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x50C9  # marks the file as ours, so a foreign SQLite file is refused instead of altered

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        pubkey TEXT NOT NULL,
        privkey_store TEXT,
        pake_password TEXT,
        meta TEXT NOT NULL DEFAULT '{}',
        version INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE groups (
        group_id TEXT PRIMARY KEY,
        creator_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        version INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE group_members (
        group_id TEXT NOT NULL REFERENCES groups(group_id),
        member_id TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'member',
        wrapped_key TEXT,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, member_id)
    );
    CREATE TABLE server_pins (
        server_id TEXT PRIMARY KEY,
        pubkey TEXT NOT NULL,
        trusted INTEGER NOT NULL,
        pinned_at INTEGER NOT NULL
    );
    INSERT INTO groups (group_id, creator_id, created_at, meta, version) VALUES ('public', 'system', 0, '{}', 1);
    """,
}


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who this node is: its server id, name and private key."""

    server_id: str
    name: str
    key: crypto.PrivateKey

    @property
    def pubkey(self) -> str:
        """The public key in SOCP encoding."""
        return crypto.encode_public_key(self.key.public_key())


def load_or_create_identity(data_dir: Path, name: str, requested_id: str | None) -> NodeIdentity:
    """Load ``identity.json`` and ``server.key.pem`` from ``data_dir``, creating what is missing.

    A requested id overrides the stored one (and is stored). Raises :class:`ConfigError` when the
    directory cannot be used.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    key_path = data_dir / "server.key.pem"
    identity_path = data_dir / "identity.json"
    try:
        if key_path.exists():
            key = crypto.private_key_from_pem(key_path.read_bytes())
        else:
            key = crypto.generate_private_key()
            write_private(key_path, crypto.private_key_to_pem(key))
        stored: dict[str, Any] = json.loads(identity_path.read_text()) if identity_path.exists() else {}
    except (OSError, ValueError, CryptoError) as exc:
        raise ConfigError(f"cannot load node identity from {data_dir}: {exc}") from None
    server_id = requested_id or stored.get("server_id") or str(uuid.uuid4())
    if stored.get("server_id") != server_id or stored.get("name") != name:
        save_identity(data_dir, server_id, name)
    return NodeIdentity(server_id, name, key)


def save_identity(data_dir: Path, server_id: str, name: str) -> None:
    """Persist the node's id and name (atomically)."""
    write_private(data_dir / "identity.json", json.dumps({"server_id": server_id, "name": name}).encode())


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class Database:
    """The node's SQLite database: users, groups, group members and server pins.

    Writes are small and rare (a user's first hello, a new pin), so they run inline on the event
    loop; WAL mode keeps them short.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"database {path} is unusable ({exc}); move it away to start afresh") from None

    def _migrate(self) -> None:
        application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if application_id != APPLICATION_ID and (tables or version):
            raise ConfigError(f"database {self.path} was not created by socp-node; refusing to modify it")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"database {self.path} has schema {version}, newer than this node's {SCHEMA_VERSION}")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._db.executescript(f"BEGIN; {_MIGRATIONS[target]}; PRAGMA application_id={APPLICATION_ID}; "
                                   f"PRAGMA user_version={target}; COMMIT;")

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def registered_users(self) -> dict[str, str]:
        """user_id → pubkey of every user ever registered here."""
        return dict(self._db.execute("SELECT user_id, pubkey FROM users").fetchall())

    def register_user(self, user_id: str, pubkey: str, meta: Mapping[str, Any], now: int) -> None:
        """Record a user's key (first hello) or refresh its meta; adds it to the public channel."""
        self._db.execute(
            "INSERT INTO users (user_id, pubkey, meta) VALUES (?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET meta=excluded.meta, version=version+1 WHERE meta != excluded.meta",
            (user_id, pubkey, json.dumps(dict(meta), sort_keys=True)))
        self._db.execute("INSERT OR IGNORE INTO group_members (group_id, member_id, role, added_at) "
                         "VALUES ('public', ?, 'member', ?)", (user_id, now))

    def pinned_servers(self) -> dict[str, str]:
        """server_id → pubkey of every pinned server."""
        return dict(self._db.execute("SELECT server_id, pubkey FROM server_pins").fetchall())

    def pin_server(self, server_id: str, pubkey: str, trusted: bool, now: int) -> None:
        """Remember a server's key pin (first one wins)."""
        self._db.execute("INSERT OR IGNORE INTO server_pins VALUES (?, ?, ?, ?)",
                         (server_id, pubkey, int(trusted), now))

    def close(self) -> None:
        """Close the database file."""
        self._db.close()
