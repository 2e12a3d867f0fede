"""All cryptography of SOCP (WIRE §1); the only module that imports ``cryptography``.

- keys: RSA-4096, e = 65537, for users and servers; public keys travel as base64url DER SPKI;
- encryption: RSA-OAEP(SHA-256), plaintext split into 446-byte pieces, 512-byte blocks concatenated;
- signatures: RSASSA-PSS(SHA-256), salt length 32 when signing, any salt length when verifying;
- symmetric: AES-256-GCM with a 12-byte nonce (public channel, file chunks in public mode, and dm file chunks
  under a per-file key wrapped with RSA-OAEP: the "hybrid file chunks" extension, bound to file and index);
- content signatures of every user frame kind (direct, public channel, key share, file);
- password login (project extension): PBKDF2-SHA256 (>= 600 000 iterations) then HKDF into two independent
  keys, one sealing the private key on the client, one proving knowledge of the password to servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from socp.codec import accepted_payload_forms, b64url_decode, b64url_encode, canonical_json
from socp.errors import BadFrame, BadKey, CryptoError

PrivateKey = rsa.RSAPrivateKey
PublicKey = rsa.RSAPublicKey

RSA_BITS = 4096
RSA_EXPONENT = 65537
OAEP_BLOCK_BYTES = RSA_BITS // 8
OAEP_MAX_PLAINTEXT = OAEP_BLOCK_BYTES - 2 * hashes.SHA256.digest_size - 2  # 446
PSS_SALT_LENGTH = 32
MAX_DIRECT_BLOCKS = 64
"""RSA-OAEP blocks a direct message may carry (28 KiB of text): decrypting one block costs milliseconds, so an
unbounded ciphertext would let one frame stall its recipient for seconds."""
MAX_FILE_CHUNK_BLOCKS = 8
"""RSA-OAEP blocks per dm FILE_CHUNK (WIRE §5)."""
MAX_KEY_WRAP_BLOCKS = 1
"""A wrapped 256-bit group key is exactly one block."""
AES_NONCE_BYTES = 12
FILE_KEY_BYTES = 32
"""A hybrid file key (AES-256): wrapped in one RSA-OAEP block for the recipient."""

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PSS_SIGN = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
_PSS_VERIFY = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)


# --- keys -----------------------------------------------------------------------------------------

def generate_private_key() -> PrivateKey:
    """A fresh RSA-4096 key with e = 65537 (about half a second of CPU)."""
    return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted with ``passphrase`` when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def private_key_from_pem(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key; raises :class:`CryptoError` on a wrong passphrase or a weak key."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except (ValueError, TypeError) as exc:
        # The message of the underlying library may say too much about the key; keep ours generic.
        raise CryptoError("cannot load private key (wrong passphrase or not a PEM RSA key)") from exc
    return _strong_rsa_private_key(key, "private key")


def _strong_rsa_private_key(key: object, what: str) -> PrivateKey:
    """``key`` if it is an RSA-4096 / e=65537 private key, else :class:`CryptoError` naming ``what``."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError(f"{what} is not an RSA key")
    try:
        check_key_strength(key.public_key())
    except BadKey as exc:
        raise CryptoError(f"{what} is too weak: {exc.detail}") from None
    return key


def check_key_strength(key: PublicKey) -> None:
    """Refuse anything but RSA-4096 with e = 65537 (:class:`BadKey`)."""
    numbers = key.public_numbers()
    if key.key_size != RSA_BITS or numbers.e != RSA_EXPONENT:
        raise BadKey(f"RSA-{RSA_BITS} with e={RSA_EXPONENT} required, got RSA-{key.key_size} e={numbers.e}",
                     fatal=True)


def encode_public_key(key: PublicKey) -> str:
    """base64url (no padding) of the DER SubjectPublicKeyInfo: the form SOCP emits."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b64url_encode(der)


def decode_public_key(text: object) -> PublicKey:
    """Parse a public key as emitted by us or any accepted variant, and check its strength.

    Accepts base64url with or without padding, standard base64, and base64 of PEM text.
    Raises :class:`BadKey` for anything malformed or weak.
    """
    if not isinstance(text, str) or not text:
        raise BadKey("public key must be a non-empty string", fatal=True)
    try:
        raw = text.encode("ascii") if text.lstrip().startswith("-----BEGIN") else b64url_decode(text)
        if raw.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_der_public_key(raw)
    except (BadFrame, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise BadKey("public key is not base64url DER SubjectPublicKeyInfo", fatal=True) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadKey("public key is not an RSA key", fatal=True)
    check_key_strength(key)
    return key


def normalize_public_key(text: object) -> str:
    """Parse any accepted key form and return it in the canonical SOCP encoding."""
    return encode_public_key(decode_public_key(text))


def key_fingerprint(key_text: str) -> str:
    """Short, stable, human-checkable fingerprint of an encoded public key (SHA-256, 16 hex digits)."""
    return hashlib.sha256(b64url_decode(key_text)).hexdigest()[:16]


# --- RSA-OAEP -------------------------------------------------------------------------------------

def rsa_encrypt(key: PublicKey, plaintext: bytes) -> str:
    """RSA-OAEP(SHA-256) of ``plaintext`` in 446-byte pieces; base64url of the concatenated blocks."""
    pieces = [plaintext[i:i + OAEP_MAX_PLAINTEXT] for i in range(0, len(plaintext), OAEP_MAX_PLAINTEXT)]
    return b64url_encode(b"".join(key.encrypt(piece, _OAEP) for piece in pieces or [b""]))


def rsa_block_count(ciphertext: str) -> int:
    """How many 512-byte RSA blocks a base64url ciphertext holds, from its length alone (no decoding)."""
    return (len(ciphertext.rstrip("=")) * 3 // 4 + OAEP_BLOCK_BYTES - 1) // OAEP_BLOCK_BYTES


def rsa_decrypt(key: PrivateKey, ciphertext: str, max_blocks: int | None = None) -> bytes:
    """Inverse of :func:`rsa_encrypt`; raises :class:`CryptoError` when it does not decrypt.

    ``max_blocks`` refuses longer ciphertexts before any RSA work is done.
    """
    if max_blocks is not None and rsa_block_count(ciphertext) > max_blocks:
        raise CryptoError(f"ciphertext of {rsa_block_count(ciphertext)} RSA blocks exceeds {max_blocks}")
    try:
        blob = b64url_decode(ciphertext)
    except BadFrame as exc:
        raise CryptoError("ciphertext is not base64url") from exc
    if not blob or len(blob) % OAEP_BLOCK_BYTES:
        raise CryptoError(f"ciphertext length {len(blob)} is not a multiple of {OAEP_BLOCK_BYTES}")
    try:
        return b"".join(
            key.decrypt(blob[i:i + OAEP_BLOCK_BYTES], _OAEP) for i in range(0, len(blob), OAEP_BLOCK_BYTES)
        )
    except ValueError as exc:
        raise CryptoError("ciphertext does not decrypt under this key") from exc


# --- RSASSA-PSS -----------------------------------------------------------------------------------

def sign(key: PrivateKey, data: bytes) -> str:
    """RSASSA-PSS(SHA-256, salt 32) signature of ``data``, base64url."""
    return b64url_encode(key.sign(data, _PSS_SIGN, hashes.SHA256()))


def verify(key: PublicKey, data: bytes, signature: str) -> bool:
    """True when ``signature`` is a valid PSS signature of ``data`` (any salt length)."""
    try:
        raw = b64url_decode(signature)
    except BadFrame:
        return False
    try:
        key.verify(raw, data, _PSS_VERIFY, hashes.SHA256())
    except _CryptoInvalidSignature:
        return False
    return True


def sign_payload(key: PrivateKey, payload: Mapping[str, Any]) -> str:
    """A payload-only signature (the standard's legacy transport form, WIRE §2); envelopes are signed by
    :meth:`socp.envelope.Envelope.signed`, never by this."""
    return sign(key, canonical_json(payload))


def verify_payload(key: PublicKey, payload: Mapping[str, Any], signature: str) -> bool:
    """Verify a legacy payload-only transport signature (canonical or an accepted variant); used only
    under the legacy-interop switch."""
    if not signature:
        return False
    return any(verify(key, form, signature) for form in accepted_payload_forms(payload))


def payload_form_index(key: PublicKey, payload: Mapping[str, Any], signature: str) -> int | None:
    """Which accepted payload-only form (:func:`socp.codec.accepted_payload_forms` index) ``signature``
    covers, or None; legacy-interop switch only."""
    if not signature:
        return None
    return next((i for i, form in enumerate(accepted_payload_forms(payload)) if verify(key, form, signature)), None)


# --- AES-256-GCM ----------------------------------------------------------------------------------

def generate_symmetric_key() -> bytes:
    """A random 256-bit key."""
    return os.urandom(32)


def aes_encrypt(key: bytes, plaintext: bytes, aad: bytes | None = None) -> str:
    """base64url of 12-byte nonce ‖ AES-256-GCM(plaintext), authenticating ``aad`` too when given."""
    nonce = os.urandom(AES_NONCE_BYTES)
    return b64url_encode(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))


def _nonce_and_body(text: str, what: str) -> tuple[bytes, bytes]:
    """Split base64url ``nonce ‖ AES-GCM ciphertext`` (the form :func:`aes_encrypt` emits); CryptoError if not."""
    try:
        blob = b64url_decode(text)
    except BadFrame as exc:
        raise CryptoError(f"{what} is not base64url") from exc
    if len(blob) < AES_NONCE_BYTES + 16:
        raise CryptoError(f"{what} is too short")
    return blob[:AES_NONCE_BYTES], blob[AES_NONCE_BYTES:]


def aes_decrypt(key: bytes, ciphertext: str, aad: bytes | None = None) -> bytes:
    """Inverse of :func:`aes_encrypt` (with the same ``aad``); raises :class:`CryptoError` on tampering, a
    wrong key or other ``aad``."""
    nonce, body = _nonce_and_body(ciphertext, "ciphertext")
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag as exc:
        raise CryptoError("ciphertext failed authentication") from exc


def file_chunk_aad(file_id: str, index: int) -> bytes:
    """The associated data of hybrid file chunk ``index`` of ``file_id``: a chunk decrypts only in its own
    place of its own file, so chunks cannot be reordered or moved between files (docs/PROTOCOL.md §7.2)."""
    return b"socp file chunk\x00" + file_id.encode("utf-8") + b"\x00" + str(index).encode("ascii")


def wrap_file_key(recipient: PublicKey, key: bytes) -> str:
    """A hybrid file key encrypted for ``recipient``: one RSA-OAEP block, base64url (FILE_START ``wrapped_key``)."""
    if len(key) != FILE_KEY_BYTES:
        raise CryptoError(f"a file key has {FILE_KEY_BYTES} bytes, not {len(key)}")
    return rsa_encrypt(recipient, key)


def unwrap_file_key(key: PrivateKey, wrapped: str) -> bytes:
    """Inverse of :func:`wrap_file_key`; raises :class:`CryptoError` unless it yields a 256-bit key."""
    raw = rsa_decrypt(key, wrapped, MAX_KEY_WRAP_BLOCKS)
    if len(raw) != FILE_KEY_BYTES:
        raise CryptoError(f"the wrapped file key holds {len(raw)} bytes, not {FILE_KEY_BYTES}")
    return raw


# --- content signatures (WIRE §5) -----------------------------------------------------------------

def direct_content_forms(ciphertext: str, sender: str, recipient: str, ts: int) -> list[bytes]:
    """The byte strings a MSG_DIRECT ``content_sig`` may cover (WIRE §5), the emitted form first.

    1. the ciphertext's raw bytes followed by the UTF-8 of ``from + to + str(ts)`` (emitted: the reading the
       strictest public implementation verifies);
    2. the ciphertext's base64url text followed by the same (this project's earlier form);
    3. ``canonical({"ciphertext", "from", "to", "ts"})`` (another implementation's reading).
    All three bind the same four facts, so accepting each weakens nothing. A ciphertext that is not base64url
    has no raw form; the other two still apply (and the decryption refuses it anyway).
    """
    tail = (sender + recipient + str(ts)).encode("utf-8")
    forms: list[bytes] = []
    with contextlib.suppress(BadFrame):
        forms.append(b64url_decode(ciphertext) + tail)
    forms.append(ciphertext.encode("utf-8") + tail)
    forms.append(canonical_json({"ciphertext": ciphertext, "from": sender, "to": recipient, "ts": ts}))
    return forms


def sign_direct(key: PrivateKey, ciphertext: str, sender: str, recipient: str, ts: int) -> str:
    """``content_sig`` of a direct message: PSS over the ciphertext's raw bytes ‖ ``from + to + str(ts)``."""
    try:
        raw = b64url_decode(ciphertext)
    except BadFrame as exc:
        raise CryptoError("a direct message ciphertext must be base64url") from exc
    return sign(key, raw + (sender + recipient + str(ts)).encode("utf-8"))


def verify_direct(key: PublicKey, signature: str, ciphertext: str, sender: str, recipient: str, ts: int) -> bool:
    """Verify a direct message ``content_sig`` in any of the three accepted forms (WIRE §5)."""
    return any(verify(key, form, signature) for form in direct_content_forms(ciphertext, sender, recipient, ts))


def _text_and_raw_forms(ciphertext: str, tail: bytes) -> list[bytes]:
    """``ciphertext`` as its base64url text, then as raw bytes (the accepted variant), followed by ``tail``."""
    forms = [ciphertext.encode("utf-8") + tail]
    with contextlib.suppress(BadFrame):
        forms.append(b64url_decode(ciphertext) + tail)
    return forms


def public_content_forms(ciphertext: str, sender: str, ts: int) -> list[bytes]:
    """What a MSG_PUBLIC_CHANNEL ``content_sig`` may cover: ``ciphertext + from + str(ts)`` (text, then raw)."""
    return _text_and_raw_forms(ciphertext, (sender + str(ts)).encode("utf-8"))


def sign_public(key: PrivateKey, ciphertext: str, sender: str, ts: int) -> str:
    """``content_sig`` of a public-channel message."""
    return sign(key, public_content_forms(ciphertext, sender, ts)[0])


def verify_public(key: PublicKey, signature: str, ciphertext: str, sender: str, ts: int) -> bool:
    """Verify a public-channel ``content_sig`` in either accepted form."""
    return any(verify(key, form, signature) for form in public_content_forms(ciphertext, sender, ts))


def key_share_content(shares: list[Any], creator_pub: str) -> bytes:
    """What a PUBLIC_CHANNEL_KEY_SHARE ``content_sig`` covers: ``canonical(shares) + creator_pub``."""
    return canonical_json(shares) + creator_pub.encode("utf-8")


def sign_key_share(key: PrivateKey, shares: list[Any], creator_pub: str) -> str:
    """``content_sig`` of a key share."""
    return sign(key, key_share_content(shares, creator_pub))


def verify_key_share(key: PublicKey, signature: str, shares: list[Any], creator_pub: str) -> bool:
    """Verify a key share's ``content_sig``."""
    return verify(key, key_share_content(shares, creator_pub), signature)


def file_content(file_id: str, name: str, size: int, sha256: str, sender: str, to: str, ts: int) -> bytes:
    """What a FILE_START ``content_sig`` covers: ``file_id + name + str(size) + sha256 + from + to + str(ts)``."""
    return (file_id + name + str(size) + sha256 + sender + to + str(ts)).encode("utf-8")


def sign_file(key: PrivateKey, file_id: str, name: str, size: int, sha256: str, sender: str, to: str,
              ts: int) -> str:
    """``content_sig`` of a FILE_START."""
    return sign(key, file_content(file_id, name, size, sha256, sender, to, ts))


def verify_file(key: PublicKey, signature: str, file_id: str, name: str, size: int, sha256: str, sender: str,
                to: str, ts: int) -> bool:
    """Verify a FILE_START ``content_sig``."""
    return verify(key, file_content(file_id, name, size, sha256, sender, to, ts), signature)


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data`` (the ``sha256`` field of FILE_START)."""
    return hashlib.sha256(data).hexdigest()


class Sha256:
    """Incremental SHA-256 (a file hashed piece by piece as it streams); :meth:`hexdigest` as :func:`sha256_hex`."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        """Add ``data``."""
        self._hash.update(data)

    def hexdigest(self) -> str:
        """Lower-case hex digest of everything added so far."""
        return self._hash.hexdigest()


def group_key_id(key: bytes) -> str:
    """The id of a public-channel sender key: derived from the key, so one key always has one id.

    A one-way function of a random 256-bit key reveals nothing about it.
    """
    return b64url_encode(hashlib.sha256(b"socp public channel key id\x00" + key).digest()[:12])


def random_token(nbytes: int = 24) -> str:
    """An unpredictable base64url token (login nonces, file ids)."""
    return b64url_encode(os.urandom(nbytes))


# --- password login (project extension, docs/PROTOCOL.md §9) -------------------------------------------

PBKDF2_MIN_ITERATIONS = 600_000
"""OWASP's 2023 floor for PBKDF2-HMAC-SHA256; clients refuse records asking for fewer (a server could
otherwise ask for a cheap derivation and brute-force the verifier it is sent)."""
PBKDF2_MAX_ITERATIONS = 20_000_000
"""Ceiling, so that a hostile record cannot make a client spin for minutes."""
SALT_BYTES = 16


_LOGIN_PROOF_LABEL = b"socp login proof\x00"


def seal_login_proof(server_key: PublicKey, nonce: str, server_id: str, verifier: bytes) -> str:
    """The USER_LOGIN_PROOF ``sealed_verifier``: RSA-OAEP to the challenging server of the verifier bound to
    that challenge's nonce and server id (a sniffed proof is unreadable and fails under any other challenge)."""
    bound = _LOGIN_PROOF_LABEL + nonce.encode("utf-8") + b"\x00" + server_id.encode("utf-8") + b"\x00"
    return rsa_encrypt(server_key, bound + verifier)


def open_login_proof(key: PrivateKey, sealed: str, nonce: str, server_id: str) -> bytes:
    """The verifier inside a ``sealed_verifier`` made for this ``nonce`` and ``server_id``; ``b""`` for anything
    else (garbage, another challenge, another server), which then never matches a stored verifier."""
    bound = _LOGIN_PROOF_LABEL + nonce.encode("utf-8") + b"\x00" + server_id.encode("utf-8") + b"\x00"
    try:
        plain = rsa_decrypt(key, sealed, max_blocks=1)
    except (CryptoError, BadFrame):
        return b""
    if not plain.startswith(bound) or len(plain) == len(bound):
        return b""
    return plain[len(bound):]


def derive_secret(key: PrivateKey, label: str) -> bytes:
    """A 256-bit secret only the holder of ``key`` can compute, stable across restarts, one per ``label``
    (HKDF-SHA256 over the private key's DER): e.g. the server's key for decoy login challenges."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode("utf-8")).derive(der)


def keyed_digest(secret: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 under ``secret`` of ``parts`` (NUL-separated, so that no two part lists collide)."""
    return hmac.new(secret, b"\x00".join(part.encode("utf-8") for part in parts), hashlib.sha256).digest()


def random_frame_id() -> str:
    """A random UUID v4 for an envelope's ``id`` (WIRE §2), from the same source as every nonce here."""
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


def new_salt() -> bytes:
    """A random salt for a password derivation or a verifier hash."""
    return os.urandom(SALT_BYTES)


def derive_password_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """``(sealing_key, verifier)`` from a password: PBKDF2-SHA256 once, then HKDF into two independent keys.

    The sealing key encrypts the private key on the client and never leaves it; the verifier is what the
    client shows a server to prove it knows the password. Knowing one tells nothing about the other.
    Slow on purpose (about 0.2 s at 600 000 iterations). Raises :class:`CryptoError` for iterations
    outside [:data:`PBKDF2_MIN_ITERATIONS`, :data:`PBKDF2_MAX_ITERATIONS`] or an empty salt.
    """
    if not PBKDF2_MIN_ITERATIONS <= iterations <= PBKDF2_MAX_ITERATIONS:
        raise CryptoError(f"password derivation needs {PBKDF2_MIN_ITERATIONS}..{PBKDF2_MAX_ITERATIONS} "
                          f"iterations, got {iterations}")
    if len(salt) < 8:
        raise CryptoError("password derivation needs a salt of at least 8 bytes")
    master = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    sealing = HKDF(hashes.SHA256(), 32, salt=None, info=b"socp privkey_store sealing key").derive(master)
    verifier = HKDF(hashes.SHA256(), 32, salt=None, info=b"socp pake_password verifier").derive(master)
    return sealing, verifier


def verifier_hash(verifier: bytes, salt: bytes) -> bytes:
    """What a server stores of a verifier: SHA-256(salt || verifier) (the verifier is already slow-derived)."""
    return hashlib.sha256(salt + verifier).digest()


def verifier_matches(verifier: bytes, salt: bytes, expected_hash: bytes) -> bool:
    """Constant-time check of a presented verifier against its stored hash."""
    return hmac.compare_digest(verifier_hash(verifier, salt), expected_hash)


def _store_aad(user_id: str) -> bytes:
    # Binding the blob to its user id stops a server from serving one user's blob as another's.
    return b"socp privkey_store\x00" + user_id.encode("utf-8")


def seal_private_key(key: PrivateKey, sealing_key: bytes, user_id: str) -> str:
    """base64url of nonce || AES-256-GCM(PKCS#8 DER of ``key``), bound to ``user_id``."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    nonce = os.urandom(AES_NONCE_BYTES)
    return b64url_encode(nonce + AESGCM(sealing_key).encrypt(nonce, der, _store_aad(user_id)))


def open_private_key(sealed: str, sealing_key: bytes, user_id: str) -> PrivateKey:
    """Inverse of :func:`seal_private_key`; raises :class:`CryptoError` (wrong password, altered blob, weak key)."""
    nonce, body = _nonce_and_body(sealed, "privkey_store")
    try:
        der = AESGCM(sealing_key).decrypt(nonce, body, _store_aad(user_id))
    except InvalidTag:
        raise CryptoError("privkey_store does not open with this password") from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        raise CryptoError("privkey_store does not hold a private key") from None
    return _strong_rsa_private_key(key, "the key in privkey_store")
