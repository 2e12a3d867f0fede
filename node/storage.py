"""The node's persistent state: identity and key files, and the SQLite database (WIRE §6).

Schema history (``PRAGMA user_version``; each step is one migration in :data:`_MIGRATIONS`, applied in a
transaction, so a file is always at exactly one version):

1. the standard's ``users``, ``groups`` (row ``public``/``system``), ``group_members``, plus ``server_pins``;
2. the network-wide registry and password login: ``users.home_server``, ``users.login`` (unique),
   ``users.login_version``, ``users.login_sig``; ``users.privkey_store`` / ``users.pake_password`` hold the
   client-made records as JSON text;
3. ``delivered``: digests of forwarded frames this node handed to their recipients (delivery receipts), kept
   for the replay window so that a restarted node does not deliver a resent copy again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socp import crypto
from socp.errors import ConfigError, CryptoError, ProtocolError
from socp.registry import LoginRecord, Registration

logger = logging.getLogger("socp.node.storage")

SCHEMA_VERSION = 3
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
    2: """
    ALTER TABLE users ADD COLUMN home_server TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN login TEXT;
    ALTER TABLE users ADD COLUMN login_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN login_sig TEXT;
    CREATE UNIQUE INDEX users_login ON users(login) WHERE login IS NOT NULL;
    """,
    3: """
    CREATE TABLE delivered (
        digest TEXT PRIMARY KEY,
        forget_at INTEGER NOT NULL
    );
    CREATE INDEX delivered_forget_at ON delivered(forget_at);
    """,
}

_REQUIRED_TABLES = ("users", "groups", "group_members", "server_pins", "delivered")


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
        handle.flush()
        os.fsync(handle.fileno())  # the rename must not publish a file whose data a crash can still lose
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
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path} ({exc})") from None
        try:
            # Checked before anything is written: a foreign or damaged file is refused, never "repaired".
            integrity = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if integrity != "ok":
                raise ConfigError(f"database {path} is corrupt ({integrity}); restore a backup or move it away "
                                  "to start afresh (its users would be lost)")
            self._migrate()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"database {path} is unusable ({exc}); restore a backup or move it away to start "
                              "afresh") from None
        except ConfigError:
            self._db.close()
            raise
        # Delivered digests are written with every receipt flush (many per second under a burst). A commit that
        # waits for fsync costs milliseconds on the event loop, and with a dozen nodes on one disk far more; this
        # second connection commits them with synchronous=NORMAL: durable when the node process crashes (the
        # failure they guard against), lost only with the machine, when the recipient's client still drops the
        # repeat. Every other table keeps the main connection's full durability.
        self._fast = sqlite3.connect(path, isolation_level=None)
        self._fast.execute("PRAGMA synchronous=NORMAL")

    def _migrate(self) -> None:
        application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if application_id != APPLICATION_ID and (tables or version):
            raise ConfigError(f"database {self.path} was not created by socp-node; refusing to modify it")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"database {self.path} has schema {version}, newer than this node's {SCHEMA_VERSION}")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                self._db.executescript(f"BEGIN; {_MIGRATIONS[target]}; PRAGMA application_id={APPLICATION_ID}; "
                                       f"PRAGMA user_version={target}; COMMIT;")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ConfigError(f"database {self.path}: migration to schema {target} failed ({exc}); the file "
                                  f"is unchanged at schema {target - 1}") from None
            if target > 1:
                logger.info("database %s migrated to schema %d", self.path, target)
        present = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [table for table in _REQUIRED_TABLES if table not in present]
        if missing:
            raise ConfigError(f"database {self.path} claims schema {SCHEMA_VERSION} but lacks tables {missing}; "
                              "restore a backup or move it away")
        self._db.execute("INSERT OR IGNORE INTO groups (group_id, creator_id, created_at, meta, version) "
                         "VALUES ('public', 'system', 0, '{}', 1)")

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def registered_users(self) -> dict[str, str]:
        """user_id → pubkey of every user ever registered here."""
        return dict(self._db.execute("SELECT user_id, pubkey FROM users").fetchall())

    def register_user(self, user_id: str, pubkey: str, meta: Mapping[str, Any], now: int,
                      home_server: str = "") -> None:
        """Record a local user's key (first hello) or refresh its meta; adds it to the public channel."""
        self._db.execute(
            "INSERT INTO users (user_id, pubkey, meta, home_server) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET meta=excluded.meta, version=version+1 WHERE meta != excluded.meta",
            (user_id, pubkey, json.dumps(dict(meta), sort_keys=True), home_server))
        self._db.execute("INSERT OR IGNORE INTO group_members (group_id, member_id, role, added_at) "
                         "VALUES ('public', ?, 'member', ?)", (user_id, now))

    def store_registration(self, registration: Registration) -> None:
        """Insert or update a registry record (never its key: a user id is bound to one key for good)."""
        login = registration.login
        row = (registration.user_id, registration.pubkey, json.dumps(dict(registration.meta), sort_keys=True),
               registration.home_server, login.login if login else None,
               json.dumps(dict(login.privkey_store), sort_keys=True) if login else None,
               json.dumps(dict(login.pake_password), sort_keys=True) if login else None,
               login.version if login else 0, login.content_sig if login else None)
        try:
            self._db.execute(
                "INSERT INTO users (user_id, pubkey, meta, home_server, login, privkey_store, pake_password, "
                "login_version, login_sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET meta=excluded.meta, "
                "home_server=CASE WHEN home_server = '' THEN excluded.home_server ELSE home_server END, "
                "login=excluded.login, privkey_store=excluded.privkey_store, pake_password=excluded.pake_password, "
                "login_version=excluded.login_version, login_sig=excluded.login_sig, version=version+1 "
                "WHERE excluded.login_version >= login_version", row)
        except sqlite3.IntegrityError as exc:
            # The core keeps logins unique; a clash here means the file was edited by hand. Keep serving.
            logger.error("cannot store user %s: %s", registration.user_id[:8], exc)

    def registrations(self, default_home: str) -> list[Registration]:
        """Every registry record; rows from schema 1 (no home server) are attributed to ``default_home``.

        A row whose password records no longer parse is loaded without them (and logged), never dropped.
        """
        result = []
        for (user_id, pubkey, meta, home, login, store, pake, version, sig) in self._db.execute(
                "SELECT user_id, pubkey, meta, home_server, login, privkey_store, pake_password, login_version, "
                "login_sig FROM users"):
            record = None
            if login is not None:
                try:
                    record = LoginRecord.from_wire({"login": login, "privkey_store": json.loads(store),
                                                    "pake_password": json.loads(pake), "version": version,
                                                    "content_sig": sig})
                except (ValueError, TypeError, ProtocolError) as exc:
                    logger.error("user %s: stored password records are unusable (%s); loading without them",
                                 user_id[:8], exc)
            try:
                meta_value = json.loads(meta)
            except ValueError:
                meta_value = {}
            result.append(Registration(user_id, pubkey, home or default_home,
                                       meta_value if isinstance(meta_value, dict) else {}, record))
        return result

    def public_version(self) -> int:
        """The public channel's membership version (``groups.version`` of ``public``)."""
        row = self._db.execute("SELECT version FROM groups WHERE group_id='public'").fetchone()
        return int(row[0]) if row else 0

    def set_public_version(self, version: int) -> None:
        """Persist the public channel's membership version."""
        self._db.execute("UPDATE groups SET version=? WHERE group_id='public'", (version,))

    def public_members(self) -> list[str]:
        """Member ids of the public channel (users registered on this server)."""
        return [row[0] for row in self._db.execute(
            "SELECT member_id FROM group_members WHERE group_id='public' ORDER BY member_id")]

    def public_wraps(self) -> dict[str, str]:
        """member_id → the latest wrapped public-channel key that member was sent."""
        return dict(self._db.execute("SELECT member_id, wrapped_key FROM group_members "
                                     "WHERE group_id='public' AND wrapped_key IS NOT NULL").fetchall())

    def store_wrap(self, member_id: str, wrapped_key: str) -> None:
        """Remember the latest wrap a member was sent (a ciphertext; never a clear key)."""
        self._db.execute("UPDATE group_members SET wrapped_key=? WHERE group_id='public' AND member_id=?",
                         (wrapped_key, member_id))

    def pinned_servers(self) -> dict[str, str]:
        """server_id → pubkey of every pinned server."""
        return dict(self._db.execute("SELECT server_id, pubkey FROM server_pins").fetchall())

    def pin_server(self, server_id: str, pubkey: str, trusted: bool, now: int) -> None:
        """Remember a server's key pin (first one wins)."""
        self._db.execute("INSERT OR IGNORE INTO server_pins VALUES (?, ?, ?, ?)",
                         (server_id, pubkey, int(trusted), now))

    def remember_delivered(self, delivered: tuple[tuple[str, int], ...], now: int) -> None:
        """Keep the digests of frames delivered here until their ``forget_at`` (one transaction per batch), and
        forget those whose time has come."""
        self._fast.execute("BEGIN")
        try:
            self._fast.executemany("INSERT OR REPLACE INTO delivered VALUES (?, ?)", delivered)
            self._fast.execute("DELETE FROM delivered WHERE forget_at <= ?", (now,))
        except sqlite3.Error:
            self._fast.execute("ROLLBACK")
            raise
        self._fast.execute("COMMIT")

    def delivered(self, now: int) -> dict[str, int]:
        """digest → forget_at of the frames delivered here that are still remembered at ``now``."""
        return dict(self._fast.execute("SELECT digest, forget_at FROM delivered WHERE forget_at > ? "
                                       "ORDER BY forget_at", (now,)).fetchall())

    def close(self) -> None:
        """Close the database file."""
        self._fast.close()
        self._db.close()
