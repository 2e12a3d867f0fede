"""Fast fake crypto for the simulator (:mod:`bench.simulate`): keys, signatures and a meter that counts them.

Real RSA-4096 keys cannot be made for a thousand servers and ten thousand users, nor real signatures computed
for millions of frames, so :func:`fake_crypto` swaps, *inside this process and only while it is active*, the
functions of :mod:`socp.crypto` that the server core calls:

- keys: :class:`FakePrivateKey` / :class:`FakePublicKey`; a public key's text is base64url (so
  ``key_fingerprint`` still works) of ``b"sim-rsa-4096:<index>"``, and ``decode_public_key`` refuses any other
  text with :class:`socp.errors.BadKey`, as the real one refuses a malformed or weak key;
- signatures: a keyed BLAKE2b of the signed bytes, so a signature verifies under its own key and data only
  (a wrong key or altered payload still fails, as with RSA-PSS);
- every ``sign`` and ``verify`` call is counted on :data:`METER`, on behalf of whichever node the simulator
  says is running (:attr:`Meter.current`); signatures made while a node runs are also listed
  (:attr:`Meter.made`) so the simulator can tell which frame type each one was made for.

``socp.crypto.sign_payload`` / ``verify_payload`` / ``verify_direct`` … call ``sign`` and ``verify`` through the
module's globals, so replacing those two (and the key functions) covers every signature the core makes or
checks. Nothing under ``socp/`` is edited; :func:`fake_crypto` restores the originals on exit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from socp import crypto
from socp.codec import b64url_decode, b64url_encode
from socp.errors import BadFrame, BadKey

KEY_PREFIX = b"sim-rsa-4096:"
_KEYS: dict[str, FakePublicKey] = {}
"""Every simulator key made so far, by text: decoding a known key is a dictionary look-up."""


class FakePublicKey:
    """A public key: just its SOCP text."""

    __slots__ = ("text",)
    key_size = crypto.RSA_BITS

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakePublicKey) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class FakePrivateKey:
    """A private key numbered ``index``; :meth:`public_key` gives its :class:`FakePublicKey`."""

    __slots__ = ("_public", "index")
    key_size = crypto.RSA_BITS

    def __init__(self, index: int) -> None:
        self.index = index
        self._public = FakePublicKey(b64url_encode(KEY_PREFIX + str(index).encode("ascii")))
        _KEYS[self._public.text] = self._public

    def public_key(self) -> FakePublicKey:
        return self._public


class Meter:
    """Counts of signatures and verifications, per node index (``-1``: clients and the simulator itself)."""

    def __init__(self) -> None:
        self.current = -1
        """Node index on whose CPU crypto runs now."""
        self.signs: dict[int, int] = {}
        self.verifies: dict[int, int] = {}
        self.made: list[str] = []
        """Signatures made since the simulator last cleared the list (while one work item ran)."""
        self._next_key = 0

    def new_key(self) -> FakePrivateKey:
        """A fresh, unique fake key."""
        self._next_key += 1
        return FakePrivateKey(self._next_key)

    def reset(self) -> None:
        """Forget every count."""
        self.signs.clear()
        self.verifies.clear()
        self.made.clear()


METER = Meter()
"""The one meter the fake functions count on."""


def _secret(key: Any) -> bytes:
    public = key.public_key() if isinstance(key, FakePrivateKey) else key
    if not isinstance(public, FakePublicKey):
        raise TypeError(f"not a simulator key: {type(key).__name__}")
    return public.text.encode("ascii")[:64]


def _mac(secret: bytes, data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12, key=secret).hexdigest()


def fake_sign(key: Any, data: bytes) -> str:
    """Stand-in for :func:`socp.crypto.sign` (counted)."""
    meter = METER
    meter.signs[meter.current] = meter.signs.get(meter.current, 0) + 1
    signature = "S" + _mac(_secret(key), data)
    meter.made.append(signature)
    return signature


def fake_verify(key: Any, data: bytes, signature: str) -> bool:
    """Stand-in for :func:`socp.crypto.verify` (counted)."""
    meter = METER
    meter.verifies[meter.current] = meter.verifies.get(meter.current, 0) + 1
    return isinstance(signature, str) and signature == "S" + _mac(_secret(key), data)


def fake_generate_private_key() -> FakePrivateKey:
    """Stand-in for :func:`socp.crypto.generate_private_key`."""
    return METER.new_key()


def fake_encode_public_key(key: Any) -> str:
    """Stand-in for :func:`socp.crypto.encode_public_key`."""
    if not isinstance(key, FakePublicKey):
        raise TypeError(f"not a simulator key: {type(key).__name__}")
    return key.text


def fake_decode_public_key(text: object) -> FakePublicKey:
    """Stand-in for :func:`socp.crypto.decode_public_key`: only simulator key texts are keys."""
    if isinstance(text, str) and (known := _KEYS.get(text)) is not None:
        return known
    if not isinstance(text, str) or not text:
        raise BadKey("public key must be a non-empty string", fatal=True)
    try:
        raw = b64url_decode(text)
    except BadFrame as exc:
        raise BadKey("public key is not base64url DER SubjectPublicKeyInfo", fatal=True) from exc
    if not raw.startswith(KEY_PREFIX):
        raise BadKey("public key is not an RSA key", fatal=True)
    return FakePublicKey(b64url_encode(raw))


def fake_normalize_public_key(text: object) -> str:
    """Stand-in for :func:`socp.crypto.normalize_public_key`."""
    return fake_decode_public_key(text).text


def fake_check_key_strength(key: Any) -> None:
    """Stand-in for :func:`socp.crypto.check_key_strength`: simulator keys are RSA-4096 by decree."""
    if not isinstance(key, FakePublicKey):
        raise BadKey("not a simulator key", fatal=True)


def fake_derive_secret(key: Any, label: str) -> bytes:
    """Stand-in for :func:`socp.crypto.derive_secret` (a simulator key has no DER to derive from)."""
    return hashlib.sha256(_secret(key) + label.encode("utf-8")).digest()


REPLACEMENTS: dict[str, Any] = {
    "derive_secret": fake_derive_secret,
    "sign": fake_sign,
    "verify": fake_verify,
    "generate_private_key": fake_generate_private_key,
    "encode_public_key": fake_encode_public_key,
    "decode_public_key": fake_decode_public_key,
    "normalize_public_key": fake_normalize_public_key,
    "check_key_strength": fake_check_key_strength,
}
"""``socp.crypto`` attribute → stand-in, while :func:`fake_crypto` is active."""


@contextmanager
def fake_crypto() -> Iterator[Meter]:
    """Swap the fakes into :mod:`socp.crypto` (counts reset), restore the originals on exit."""
    saved = {name: getattr(crypto, name) for name in REPLACEMENTS}
    METER.reset()
    try:
        for name, function in REPLACEMENTS.items():
            setattr(crypto, name, function)
        yield METER
    finally:
        for name, function in saved.items():
            setattr(crypto, name, function)
