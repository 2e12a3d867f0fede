"""A pool of RSA-4096 private keys shared by every test, cached on disk across runs.

Generating an RSA-4096 key costs about half a second, and the tests never weaken keys to save time;
instead every key is generated once and kept in ``<repo>/.cache/keypool`` (``SOCP_KEYPOOL_DIR``
overrides it) as ``key-{i:03d}.pem``, unencrypted PKCS#8 PEM. Key ``i`` is the same key in every
test, every pytest process and every later run until the cache is deleted.

Concurrent pytest processes may share the directory: a key file is written to a temporary file and
then linked into place without clobbering (first writer wins, so every process agrees on key ``i``);
generation of a batch runs under an advisory lock, so two processes never generate the same keys.

Weak keys (RSA-1024/2048, e=3, …) for negative tests come from :meth:`KeyPool.weak_pem`, cached as
``weak-{bits}-e{exponent}.pem``.

Pre-generate from the command line: ``python -m tests.keypool 24``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from socp import crypto

try:  # POSIX advisory locks; without them concurrent processes merely duplicate work.
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = "SOCP_KEYPOOL_DIR"
GENERATION_WORKERS = 2


def default_cache_dir() -> Path:
    """``$SOCP_KEYPOOL_DIR`` when set, else ``<repo>/.cache/keypool``."""
    override = os.environ.get(ENV_DIR)
    return Path(override) if override else REPO_ROOT / ".cache" / "keypool"


def _generate_pem() -> bytes:
    """A fresh RSA-4096/e=65537 key as PKCS#8 PEM (runs in a worker process)."""
    return crypto.private_key_to_pem(crypto.generate_private_key())


def _generate_weak_pem(bits: int, exponent: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class KeyPool:
    """Numbered RSA-4096 private keys, generated on demand and cached in ``cache_dir``."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._pems: dict[int, bytes] = {}
        self._keys: dict[int, crypto.PrivateKey] = {}
        self._weak: dict[tuple[int, int], bytes] = {}
        self._mutex = threading.Lock()

    # --- strong keys -------------------------------------------------------------------------------

    def path(self, i: int) -> Path:
        """Where key ``i`` is cached."""
        if i < 0:
            raise ValueError(f"key index must be >= 0, got {i}")
        return self.cache_dir / f"key-{i:03d}.pem"

    def pem(self, i: int) -> bytes:
        """Key ``i`` as unencrypted PKCS#8 PEM, generated (and cached) when missing."""
        with self._mutex:
            cached = self._pems.get(i)
            if cached is not None:
                return cached
            path = self.path(i)
            data = self._read(path)
            if data is None:
                data = self._store(path, _generate_pem())
            self._pems[i] = data
            return data

    def key(self, i: int) -> crypto.PrivateKey:
        """Key ``i`` loaded (and checked to be RSA-4096, e=65537) by :mod:`socp.crypto`."""
        key = self._keys.get(i)
        if key is None:
            key = crypto.private_key_from_pem(self.pem(i))
            self._keys[i] = key
        return key

    def public_text(self, i: int) -> str:
        """The public half of key ``i`` in SOCP's wire encoding (base64url DER SPKI)."""
        return crypto.encode_public_key(self.key(i).public_key())

    def write_pem(self, i: int, path: Path) -> Path:
        """Write key ``i`` to ``path`` (mode 0600, for node processes that load a key file); returns it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.pem(i))
        return path

    def ensure(self, n: int) -> None:
        """Make keys ``0 .. n-1`` available, generating the missing ones in parallel (2 processes)."""
        missing = [i for i in range(n) if i not in self._pems and self._read(self.path(i)) is None]
        if missing:
            with self._generation_lock():
                # Another process may have generated them while we waited for the lock.
                missing = [i for i in missing if self._read(self.path(i)) is None]
                if len(missing) == 1:
                    self._store(self.path(missing[0]), _generate_pem())
                elif missing:
                    with ProcessPoolExecutor(GENERATION_WORKERS) as pool:
                        futures = {i: pool.submit(_generate_pem) for i in missing}
                        for i, future in futures.items():
                            self._store(self.path(i), future.result())
        for i in range(n):
            self.pem(i)

    def __len__(self) -> int:
        """How many consecutive keys from 0 are cached on disk."""
        count = 0
        while self.path(count).exists():
            count += 1
        return count

    # --- weak keys for negative tests ------------------------------------------------------------

    def weak_pem(self, bits: int, exponent: int = 65537) -> bytes:
        """An RSA key of ``bits`` bits and public exponent ``exponent`` as PKCS#8 PEM (cached).

        For tests that check weak keys are refused: RSA-1024, RSA-2048, e=3, …
        """
        with self._mutex:
            cached = self._weak.get((bits, exponent))
            if cached is not None:
                return cached
            path = self.cache_dir / f"weak-{bits}-e{exponent}.pem"
            data = self._read(path)
            if data is None:
                data = self._store(path, _generate_weak_pem(bits, exponent))
            self._weak[(bits, exponent)] = data
            return data

    def weak_key(self, bits: int, exponent: int = 65537) -> rsa.RSAPrivateKey:
        """:meth:`weak_pem` loaded with ``cryptography`` directly (socp.crypto refuses to load it)."""
        key = serialization.load_pem_private_key(self.weak_pem(bits, exponent), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    # --- files -------------------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        # A file that is not a complete PEM (should never happen with atomic writes) is regenerated.
        return data if data.rstrip().endswith(b"-----END PRIVATE KEY-----") else None

    def _store(self, path: Path, data: bytes) -> bytes:
        """Write ``data`` to ``path`` atomically unless another writer won; returns what ``path`` holds."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.cache_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)          # no clobber: the first complete key wins
            except FileExistsError:
                existing = self._read(path)
                if existing is not None:
                    return existing
                os.replace(tmp, path)       # a corrupt leftover: replace it
            except OSError:
                os.replace(tmp, path)       # file system without hard links: rename, last writer wins
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return data

    @contextlib.contextmanager
    def _generation_lock(self) -> Iterator[None]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - not POSIX
            yield
            return
        with open(self.cache_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def main(argv: list[str]) -> int:
    """``python -m tests.keypool [N]``: make sure keys 0..N-1 (default 24) are cached."""
    n = int(argv[0]) if argv else 24
    pool = KeyPool()
    pool.ensure(n)
    print(f"{n} RSA-4096 keys ready in {pool.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
