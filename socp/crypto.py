"""All cryptography of SOCP (WIRE §1); the only module that imports ``cryptography``.

- keys: RSA-4096, e = 65537, for users and servers; public keys travel as base64url DER SPKI;
- encryption: RSA-OAEP(SHA-256), plaintext split into 446-byte pieces, 512-byte blocks concatenated;
- signatures: RSASSA-PSS(SHA-256), salt length 32 when signing, any salt length when verifying;
- symmetric: AES-256-GCM with a 12-byte nonce (public channel, file chunks in public mode).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from socp.codec import accepted_payload_forms, b64url_decode, b64url_encode, canonical_json
from socp.errors import BadFrame, BadKey, CryptoError

PrivateKey = rsa.RSAPrivateKey
PublicKey = rsa.RSAPublicKey

RSA_BITS = 4096
RSA_EXPONENT = 65537
OAEP_BLOCK_BYTES = RSA_BITS // 8
OAEP_MAX_PLAINTEXT = OAEP_BLOCK_BYTES - 2 * hashes.SHA256.digest_size - 2  # 446
PSS_SALT_LENGTH = 32
AES_NONCE_BYTES = 12

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
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError("private key is not an RSA key")
    try:
        check_key_strength(key.public_key())
    except BadKey as exc:
        raise CryptoError(f"private key is too weak: {exc.detail}") from None
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


def rsa_decrypt(key: PrivateKey, ciphertext: str) -> bytes:
    """Inverse of :func:`rsa_encrypt`; raises :class:`CryptoError` when it does not decrypt."""
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
    """Transport signature over the canonical payload (WIRE §2)."""
    return sign(key, canonical_json(payload))


def verify_payload(key: PublicKey, payload: Mapping[str, Any], signature: str) -> bool:
    """Verify a transport signature over the canonical payload or one of the accepted variants."""
    if not signature:
        return False
    return any(verify(key, form, signature) for form in accepted_payload_forms(payload))


# --- AES-256-GCM ----------------------------------------------------------------------------------

def generate_symmetric_key() -> bytes:
    """A random 256-bit key."""
    return os.urandom(32)


def aes_encrypt(key: bytes, plaintext: bytes) -> str:
    """base64url of 12-byte nonce ‖ AES-256-GCM(plaintext)."""
    nonce = os.urandom(AES_NONCE_BYTES)
    return b64url_encode(nonce + AESGCM(key).encrypt(nonce, plaintext, None))


def aes_decrypt(key: bytes, ciphertext: str) -> bytes:
    """Inverse of :func:`aes_encrypt`; raises :class:`CryptoError` on tampering or a wrong key."""
    try:
        blob = b64url_decode(ciphertext)
    except BadFrame as exc:
        raise CryptoError("ciphertext is not base64url") from exc
    if len(blob) < AES_NONCE_BYTES + 16:
        raise CryptoError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:AES_NONCE_BYTES], blob[AES_NONCE_BYTES:], None)
    except InvalidTag as exc:
        raise CryptoError("ciphertext failed authentication") from exc


# --- content signatures (WIRE §5) -----------------------------------------------------------------

def direct_content_forms(ciphertext: str, sender: str, recipient: str, ts: int) -> list[bytes]:
    """The byte strings a MSG_DIRECT ``content_sig`` may cover: ciphertext text first, raw bytes second."""
    tail = (sender + recipient + str(ts)).encode("utf-8")
    forms = [ciphertext.encode("utf-8") + tail]
    with contextlib.suppress(BadFrame):
        forms.append(b64url_decode(ciphertext) + tail)
    return forms


def sign_direct(key: PrivateKey, ciphertext: str, sender: str, recipient: str, ts: int) -> str:
    """``content_sig`` of a direct message: PSS over ``ciphertext + from + to + str(ts)``."""
    return sign(key, direct_content_forms(ciphertext, sender, recipient, ts)[0])


def verify_direct(key: PublicKey, signature: str, ciphertext: str, sender: str, recipient: str, ts: int) -> bool:
    """Verify a direct message ``content_sig`` in either accepted form."""
    return any(verify(key, form, signature) for form in direct_content_forms(ciphertext, sender, recipient, ts))
