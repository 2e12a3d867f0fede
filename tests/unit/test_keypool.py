"""tests.keypool: the on-disk key cache every test shares (no key is generated here: the real pool is copied)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import keypool, scaled
from tests.keypool import KeyPool


@pytest.fixture
def small_pool(key_pool: KeyPool, tmp_path: Path) -> KeyPool:
    """A pool in a fresh directory holding copies of shared keys 0 and 2 (key 1 is missing)."""
    for i in (0, 2):
        shutil.copy(key_pool.path(i), tmp_path / f"key-{i:03d}.pem")
    return KeyPool(tmp_path)


@pytest.fixture
def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> bytes:
        raise AssertionError("a cached key was generated again")
    monkeypatch.setattr(keypool, "_generate_pem", refuse)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(keypool.ENV_DIR, raising=False)
    assert keypool.default_cache_dir() == Path(keypool.__file__).resolve().parent.parent / ".cache" / "keypool"
    monkeypatch.setenv(keypool.ENV_DIR, str(tmp_path))
    assert keypool.default_cache_dir() == tmp_path
    assert KeyPool().cache_dir == tmp_path


def test_cached_keys_are_read_not_generated(key_pool: KeyPool, small_pool: KeyPool, no_generation: None) -> None:
    assert small_pool.path(2).name == "key-002.pem"
    assert small_pool.pem(0) == key_pool.pem(0)
    assert small_pool.pem(2) == key_pool.pem(2)
    assert small_pool.pem(0).startswith(b"-----BEGIN PRIVATE KEY-----")
    key = small_pool.key(0)
    assert key.key_size == 4096 and key.public_key().public_numbers().e == 65537
    assert small_pool.key(0) is key
    assert small_pool.public_text(0) == key_pool.public_text(0)
    assert len(small_pool) == 1                       # keys 0.. contiguous on disk


def test_ensure_generates_only_the_missing_keys(key_pool: KeyPool, small_pool: KeyPool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []

    def fake_generate() -> bytes:
        made.append(1)
        return key_pool.pem(5)
    monkeypatch.setattr(keypool, "_generate_pem", fake_generate)
    small_pool.ensure(3)
    assert made == [1]
    assert small_pool.path(1).read_bytes() == key_pool.pem(5)
    assert small_pool.pem(0) == key_pool.pem(0)
    assert len(small_pool) == 3
    assert not [p for p in small_pool.cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_store_never_clobbers_a_complete_key(key_pool: KeyPool, small_pool: KeyPool) -> None:
    kept = small_pool._store(small_pool.path(0), key_pool.pem(3))
    assert kept == key_pool.pem(0) == small_pool.path(0).read_bytes()


def test_incomplete_file_is_replaced(key_pool: KeyPool, small_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> None:
    small_pool.path(0).write_bytes(key_pool.pem(0)[:100])
    monkeypatch.setattr(keypool, "_generate_pem", lambda: key_pool.pem(4))
    assert small_pool.pem(0) == key_pool.pem(4)
    assert small_pool.path(0).read_bytes() == key_pool.pem(4)


def test_write_pem_is_private(small_pool: KeyPool, tmp_path: Path) -> None:
    target = small_pool.write_pem(0, tmp_path / "node" / "server.key.pem")
    assert target.read_bytes() == small_pool.pem(0)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_weak_keys_are_generated_once_and_cached(tmp_path: Path) -> None:
    pool = KeyPool(tmp_path)
    pem = pool.weak_pem(1024)
    assert (tmp_path / "weak-1024-e65537.pem").read_bytes() == pem
    assert KeyPool(tmp_path).weak_pem(1024) == pem
    key = pool.weak_key(1024, 3)
    assert key.key_size == 1024 and key.public_key().public_numbers().e == 3
    assert (tmp_path / "weak-1024-e3.pem").exists()


def test_command_line_entry(small_pool: KeyPool) -> None:
    shutil.copy(small_pool.path(0), small_pool.cache_dir / "key-001.pem")
    result = subprocess.run([sys.executable, "-m", "tests.keypool", "2"], capture_output=True, text=True,
                            timeout=scaled(60), check=True, cwd=Path(keypool.__file__).resolve().parent.parent,
                            env={**os.environ, keypool.ENV_DIR: str(small_pool.cache_dir)})
    assert "2 RSA-4096 keys ready" in result.stdout
    assert len(KeyPool(small_pool.cache_dir)) == 3


def test_negative_index_refused(small_pool: KeyPool) -> None:
    with pytest.raises(ValueError):
        small_pool.pem(-1)
