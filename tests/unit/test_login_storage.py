"""node/storage.py: schema versions and migrations, what survives a reopen, and clear refusals of bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.storage import SCHEMA_VERSION, Database
from socp import crypto
from socp.errors import ConfigError
from socp.login import make_login_record
from socp.registry import Registration
from tests.keypool import KeyPool

USER = "a11ce000-0000-4000-8000-0000000000a1"
OTHER = "b0b00000-0000-4000-8000-0000000000b0"

SCHEMA_1 = """
CREATE TABLE users (user_id TEXT PRIMARY KEY, pubkey TEXT NOT NULL, privkey_store TEXT, pake_password TEXT,
                    meta TEXT NOT NULL DEFAULT '{}', version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE groups (group_id TEXT PRIMARY KEY, creator_id TEXT NOT NULL, created_at INTEGER NOT NULL,
                     meta TEXT NOT NULL DEFAULT '{}', version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE group_members (group_id TEXT NOT NULL REFERENCES groups(group_id), member_id TEXT NOT NULL,
                            role TEXT NOT NULL DEFAULT 'member', wrapped_key TEXT, added_at INTEGER NOT NULL,
                            PRIMARY KEY (group_id, member_id));
CREATE TABLE server_pins (server_id TEXT PRIMARY KEY, pubkey TEXT NOT NULL, trusted INTEGER NOT NULL,
                          pinned_at INTEGER NOT NULL);
INSERT INTO groups VALUES ('public', 'system', 0, '{}', 1);
PRAGMA application_id=20681;
PRAGMA user_version=1;
"""


@pytest.fixture(scope="module")
def pubkey(key_pool: KeyPool) -> str:
    return key_pool.public_text(21)


def schema_1_file(path: Path, pubkey: str) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.execute("INSERT INTO users (user_id, pubkey, meta) VALUES (?, ?, ?)",
               (USER, pubkey, '{"display_name": "alice"}'))
    db.execute("INSERT INTO group_members VALUES ('public', ?, 'member', NULL, 5)", (USER,))
    db.commit()
    db.close()


def test_a_new_database_has_the_current_schema(tmp_path: Path) -> None:
    database = Database(tmp_path / "db.sqlite3")
    assert database.schema_version == SCHEMA_VERSION == 3
    assert database.public_version() == 1 and database.public_members() == [] and database.registrations("s") == []
    database.close()


def test_schema_1_migrates_keeping_users_and_membership(tmp_path: Path, pubkey: str) -> None:
    path = tmp_path / "db.sqlite3"
    schema_1_file(path, pubkey)
    database = Database(path)
    assert database.schema_version == SCHEMA_VERSION
    [registration] = database.registrations("home-server")
    assert (registration.user_id, registration.pubkey, registration.home_server) == (USER, pubkey, "home-server")
    assert registration.meta == {"display_name": "alice"} and registration.login is None
    assert database.public_members() == [USER] and database.registered_users() == {USER: pubkey}
    database.close()


def test_a_failed_migration_leaves_the_file_at_its_old_version(tmp_path: Path, pubkey: str) -> None:
    path = tmp_path / "db.sqlite3"
    schema_1_file(path, pubkey)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE users ADD COLUMN login TEXT")  # a hand edit that collides with migration 2
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"migration to schema 2 failed .* unchanged at schema 1"):
        Database(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT user_id FROM users").fetchall() == [(USER,)]
    db.close()


def test_registrations_wraps_and_version_survive_a_reopen(tmp_path: Path, key_pool: KeyPool) -> None:
    path = tmp_path / "db.sqlite3"
    key = key_pool.key(21)
    pub = crypto.encode_public_key(key.public_key())
    record = make_login_record(key, USER, "alice", "pw", 7)
    database = Database(path)
    database.register_user(USER, pub, {"display_name": "alice"}, 100, "server-a")
    database.store_registration(Registration(USER, pub, "server-a", {"display_name": "alice"}, record))
    database.store_registration(Registration(OTHER, key_pool.public_text(22), "server-b", {"display_name": "bob"}))
    database.set_public_version(9)
    database.store_wrap(USER, "wrapped-ciphertext")
    database.store_wrap(OTHER, "not a member here: ignored")
    database.close()
    database = Database(path)
    registrations = {r.user_id: r for r in database.registrations("ignored")}
    assert registrations[USER].login == record and registrations[USER].home_server == "server-a"
    assert registrations[OTHER].home_server == "server-b" and registrations[OTHER].login is None
    assert database.public_version() == 9 and database.public_wraps() == {USER: "wrapped-ciphertext"}
    assert database.public_members() == [USER]
    # An older password record never replaces a newer one.
    database.store_registration(Registration(USER, pub, "server-a", {}, make_login_record(key, USER, "alice", "x", 3)))
    assert {r.user_id: r for r in database.registrations("")}[USER].login == record
    database.close()


def test_a_corrupt_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    garbage = b"this is not a database, but it is someone's data\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(ConfigError, match=r"unusable .* restore a backup or move it away"):
        Database(path)
    assert path.read_bytes() == garbage


def test_a_damaged_database_is_refused(tmp_path: Path, pubkey: str) -> None:
    path = tmp_path / "db.sqlite3"
    Database(path).close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wipe the schema page behind the header
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"corrupt|unusable"):
        Database(path)


def test_a_foreign_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.execute("INSERT INTO notes VALUES ('keep me')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="was not created by socp-node; refusing to modify it"):
        Database(path)
    assert path.read_bytes() == before


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    Database(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=rf"schema 99, newer than this node's {SCHEMA_VERSION}"):
        Database(path)


def test_a_file_missing_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    Database(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE server_pins")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"lacks tables \['server_pins'\]"):
        Database(path)


def test_delivered_digests_are_kept_for_their_window_across_a_reopen(tmp_path: Path) -> None:
    """Delivery receipts, far side: the digests a node delivered survive a restart until their forget_at."""
    path = tmp_path / "db.sqlite3"
    database = Database(path)
    database.remember_delivered((("d1", 1_000), ("d2", 2_000)), now=500)
    database.remember_delivered((("d1", 3_000),), now=600)  # delivered again (a repeat): kept longer
    database.close()
    database = Database(path)
    assert database.delivered(now=900) == {"d2": 2_000, "d1": 3_000}
    assert list(database.delivered(now=900)) == ["d2", "d1"]  # in forget_at order
    assert database.delivered(now=2_500) == {"d1": 3_000}
    database.remember_delivered((("d3", 9_000),), now=2_500)  # a later write forgets what expired
    assert database.delivered(now=0) == {"d1": 3_000, "d3": 9_000}
    database.close()
