"""client.keystore: the on-disk identity layout other code and tests rely on."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest

from client.keystore import Identity, load_or_create_identity
from socp import crypto
from socp.errors import ConfigError, CryptoError
from tests.keypool import KeyPool

POOL_KEY = 9
FIXED_ID = "11111111-1111-4111-8111-111111111112"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_keygen(monkeypatch: pytest.MonkeyPatch, key_pool: KeyPool) -> None:
    """Key generation hands out a pool key instead of spending half a second."""
    monkeypatch.setattr(crypto, "generate_private_key", lambda: key_pool.key(POOL_KEY))


@pytest.mark.usefixtures("no_keygen")
def test_creates_both_files_private(tmp_path: Path, key_pool: KeyPool) -> None:
    key_dir = tmp_path / "keys"
    identity = load_or_create_identity(key_dir, "alice", None, None)
    assert identity.display_name == "alice" and uuid.UUID(identity.user_id).version == 4
    assert crypto.encode_public_key(identity.key.public_key()) == key_pool.public_text(POOL_KEY)
    assert json.loads((key_dir / "alice.json").read_text()) == {"user_id": identity.user_id, "display_name": "alice"}
    assert (key_dir / "alice.key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mode(key_dir) == 0o700
    assert mode(key_dir / "alice.json") == mode(key_dir / "alice.key.pem") == 0o600
    assert "PrivateKey" not in repr(identity) and "key=" not in repr(identity)
    again = load_or_create_identity(key_dir, "alice", identity.user_id, None)
    assert (again.user_id, again.display_name) == (identity.user_id, "alice")


def test_adopts_a_pre_placed_pem(tmp_path: Path, key_pool: KeyPool) -> None:
    key_pool.write_pem(POOL_KEY, tmp_path / "bob.key.pem")
    identity = load_or_create_identity(tmp_path, "bob", FIXED_ID.upper(), None)
    assert identity == Identity(FIXED_ID, "bob", identity.key)
    assert crypto.encode_public_key(identity.key.public_key()) == key_pool.public_text(POOL_KEY)
    assert json.loads((tmp_path / "bob.json").read_text()) == {"user_id": FIXED_ID, "display_name": "bob"}
    fresh = tmp_path / "other"
    fresh.mkdir()
    key_pool.write_pem(POOL_KEY, fresh / "bob.key.pem")
    assert uuid.UUID(load_or_create_identity(fresh, "bob", None, None).user_id).version == 4


def test_passphrase_encrypts_the_pem(tmp_path: Path, key_pool: KeyPool) -> None:
    (tmp_path / "carol.key.pem").write_bytes(crypto.private_key_to_pem(key_pool.key(POOL_KEY), b"s3cret"))
    with pytest.raises(CryptoError):
        load_or_create_identity(tmp_path, "carol", None, None)
    with pytest.raises(CryptoError):
        load_or_create_identity(tmp_path, "carol", None, b"wrong")
    assert load_or_create_identity(tmp_path, "carol", None, b"s3cret").display_name == "carol"


@pytest.mark.usefixtures("no_keygen")
def test_new_key_is_encrypted_with_the_passphrase(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "dave", None, b"pw")
    assert (tmp_path / "dave.key.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_or_create_identity(tmp_path, "dave", None, b"pw").display_name == "dave"


def test_refusals(tmp_path: Path, key_pool: KeyPool) -> None:
    key_pool.write_pem(POOL_KEY, tmp_path / "erin.key.pem")
    load_or_create_identity(tmp_path, "erin", FIXED_ID, None)
    with pytest.raises(ConfigError, match="holds user id"):
        load_or_create_identity(tmp_path, "erin", str(uuid.uuid4()), None)
    with pytest.raises(ConfigError, match="not a UUID"):
        load_or_create_identity(tmp_path, "erin", "nope", None)
    for bad_name in ("../evil", ".hidden", "-x", "a/b", ""):
        with pytest.raises(ConfigError, match="user name"):
            load_or_create_identity(tmp_path, bad_name, None, None)
    (tmp_path / "erin.key.pem").unlink()
    with pytest.raises(ConfigError, match="is missing"):
        load_or_create_identity(tmp_path, "erin", None, None)
