"""socp.crypto: keys, RSA-OAEP, RSASSA-PSS, payload and content signatures, AES-GCM (WIRE §1, §2, §5)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from socp import crypto
from socp.codec import b64url_decode, b64url_encode, canonical_json
from socp.errors import BadKey, CryptoError, ProtocolError
from tests.keypool import KeyPool

WEAK_KEYS = [(1024, 65537), (2048, 65537), (4096, 3)]


@pytest.fixture(scope="module")
def alice(key_pool: KeyPool) -> crypto.PrivateKey:
    return key_pool.key(0)


@pytest.fixture(scope="module")
def bob(key_pool: KeyPool) -> crypto.PrivateKey:
    return key_pool.key(1)


def _der(key: crypto.PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem(key: crypto.PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


# --- keys -----------------------------------------------------------------------------------------

def test_pool_keys_are_rsa_4096_e65537(alice: crypto.PrivateKey) -> None:
    assert alice.key_size == 4096
    assert alice.public_key().public_numbers().e == 65537


def test_encode_public_key_is_unpadded_b64url_der_spki(alice: crypto.PrivateKey) -> None:
    text = crypto.encode_public_key(alice.public_key())
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == _der(alice)
    assert text == base64.urlsafe_b64encode(_der(alice)).decode().rstrip("=")


def test_key_round_trip(alice: crypto.PrivateKey) -> None:
    text = crypto.encode_public_key(alice.public_key())
    decoded = crypto.decode_public_key(text)
    assert decoded.public_numbers() == alice.public_key().public_numbers()
    assert crypto.normalize_public_key(text) == text


@pytest.mark.parametrize("variant", ["padded_b64url", "std_base64", "std_base64_unpadded", "b64_of_pem",
                                     "b64url_of_pem", "raw_pem", "raw_pem_leading_whitespace"])
def test_decode_public_key_accepts_every_variant(alice: crypto.PrivateKey, variant: str) -> None:
    der, pem = _der(alice), _pem(alice)
    text = {
        "padded_b64url": base64.urlsafe_b64encode(der).decode(),
        "std_base64": base64.b64encode(der).decode(),
        "std_base64_unpadded": base64.b64encode(der).decode().rstrip("="),
        "b64_of_pem": base64.b64encode(pem).decode(),
        "b64url_of_pem": b64url_encode(pem),
        "raw_pem": pem.decode(),
        "raw_pem_leading_whitespace": "\n  " + pem.decode(),
    }[variant]
    assert crypto.normalize_public_key(text) == crypto.encode_public_key(alice.public_key())


@pytest.mark.parametrize(("bits", "exponent"), WEAK_KEYS)
def test_weak_keys_refused_with_bad_key(key_pool: KeyPool, bits: int, exponent: int) -> None:
    weak = key_pool.weak_key(bits, exponent)
    assert (weak.key_size, weak.public_key().public_numbers().e) == (bits, exponent)
    der = weak.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = weak.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    for text in (b64url_encode(der), base64.b64encode(pem).decode(), pem.decode()):
        with pytest.raises(BadKey) as info:
            crypto.decode_public_key(text)
        assert info.value.fatal
    with pytest.raises(BadKey):
        crypto.check_key_strength(weak.public_key())


@pytest.mark.parametrize("text", ["", "!!!!", "AAAA", b64url_encode(b"not a key at all"),
                                  "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----"])
def test_malformed_keys_refused_with_bad_key(text: str) -> None:
    with pytest.raises(BadKey):
        crypto.decode_public_key(text)


@pytest.mark.parametrize("value", [None, 42, b"bytes", ["list"]])
def test_non_string_keys_refused_with_bad_key(value: object) -> None:
    with pytest.raises(BadKey):
        crypto.decode_public_key(value)


def test_non_rsa_key_refused_with_bad_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = ec_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(BadKey):
        crypto.decode_public_key(b64url_encode(der))


def test_private_key_pem_round_trip(alice: crypto.PrivateKey) -> None:
    pem = crypto.private_key_to_pem(alice)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = crypto.private_key_from_pem(pem)
    assert loaded.private_numbers() == alice.private_numbers()


def test_private_key_pem_with_passphrase(alice: crypto.PrivateKey) -> None:
    pem = crypto.private_key_to_pem(alice, b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert crypto.private_key_from_pem(pem, b"correct horse").private_numbers() == alice.private_numbers()
    with pytest.raises(CryptoError):
        crypto.private_key_from_pem(pem, b"wrong")
    with pytest.raises(CryptoError):
        crypto.private_key_from_pem(pem)


def test_private_key_from_garbage_is_crypto_error() -> None:
    with pytest.raises(CryptoError):
        crypto.private_key_from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


@pytest.mark.parametrize(("bits", "exponent"), WEAK_KEYS)
def test_private_key_from_pem_weak_key_is_crypto_error(key_pool: KeyPool, bits: int, exponent: int) -> None:
    """A weak key file is a local problem (CryptoError, which the node turns into a ConfigError), not a
    wire error: node/storage.py catches CryptoError only."""
    with pytest.raises(CryptoError):
        crypto.private_key_from_pem(key_pool.weak_pem(bits, exponent))


def test_key_fingerprint_is_stable_16_hex(alice: crypto.PrivateKey, bob: crypto.PrivateKey) -> None:
    text = crypto.encode_public_key(alice.public_key())
    fingerprint = crypto.key_fingerprint(text)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert fingerprint == crypto.key_fingerprint(text)
    assert fingerprint != crypto.key_fingerprint(crypto.encode_public_key(bob.public_key()))


# --- RSA-OAEP -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "blocks"), [(0, 1), (1, 1), (446, 1), (447, 2), (892, 2), (893, 3), (5000, 12)])
def test_oaep_round_trip_and_block_layout(alice: crypto.PrivateKey, size: int, blocks: int) -> None:
    plaintext = bytes((i * 7 + 3) % 256 for i in range(size))
    ciphertext = crypto.rsa_encrypt(alice.public_key(), plaintext)
    raw = b64url_decode(ciphertext)
    assert "=" not in ciphertext
    assert len(raw) % 512 == 0
    assert len(raw) == 512 * blocks
    assert crypto.rsa_decrypt(alice, ciphertext) == plaintext


def test_oaep_block_is_standard_oaep_sha256(alice: crypto.PrivateKey) -> None:
    """Each 512-byte block decrypts on its own with plain RSA-OAEP(SHA-256, MGF1-SHA-256, no label)."""
    ciphertext = b64url_decode(crypto.rsa_encrypt(alice.public_key(), b"x" * 500))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert alice.decrypt(ciphertext[:512], oaep) == b"x" * 446
    assert alice.decrypt(ciphertext[512:], oaep) == b"x" * 54


def test_oaep_accepts_ciphertext_from_other_implementations(alice: crypto.PrivateKey) -> None:
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    block = alice.public_key().encrypt(b"hello", oaep)
    assert crypto.rsa_decrypt(alice, base64.b64encode(block).decode()) == b"hello"


def test_oaep_is_randomized(alice: crypto.PrivateKey) -> None:
    assert crypto.rsa_encrypt(alice.public_key(), b"same") != crypto.rsa_encrypt(alice.public_key(), b"same")


def test_oaep_wrong_key_is_crypto_error(alice: crypto.PrivateKey, bob: crypto.PrivateKey) -> None:
    ciphertext = crypto.rsa_encrypt(alice.public_key(), b"for alice only")
    with pytest.raises(CryptoError):
        crypto.rsa_decrypt(bob, ciphertext)


@pytest.mark.parametrize("mangle", ["truncate", "empty", "not_base64", "flip"])
def test_oaep_damaged_ciphertext_is_crypto_error(alice: crypto.PrivateKey, mangle: str) -> None:
    ciphertext = crypto.rsa_encrypt(alice.public_key(), b"payload")
    raw = b64url_decode(ciphertext)
    damaged = {
        "truncate": b64url_encode(raw[:-1]),
        "empty": "",
        "not_base64": "a",
        "flip": b64url_encode(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]),
    }[mangle]
    with pytest.raises(CryptoError):
        crypto.rsa_decrypt(alice, damaged)


# --- RSASSA-PSS -----------------------------------------------------------------------------------

def test_pss_sign_verify(alice: crypto.PrivateKey, bob: crypto.PrivateKey) -> None:
    signature = crypto.sign(alice, b"message")
    assert "=" not in signature
    assert len(b64url_decode(signature)) == 512
    assert crypto.verify(alice.public_key(), b"message", signature)
    assert not crypto.verify(alice.public_key(), b"message!", signature)
    assert not crypto.verify(bob.public_key(), b"message", signature)
    assert not crypto.verify(alice.public_key(), b"message", "")
    assert not crypto.verify(alice.public_key(), b"message", "a")


def test_pss_signature_uses_salt_32(alice: crypto.PrivateKey) -> None:
    signature = b64url_decode(crypto.sign(alice, b"salted"))
    salt32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    alice.public_key().verify(signature, b"salted", salt32, hashes.SHA256())


@pytest.mark.parametrize("salt_length", [padding.PSS.MAX_LENGTH, padding.PSS.DIGEST_LENGTH, 0, 20, 64])
def test_pss_verify_accepts_any_salt_length(alice: crypto.PrivateKey, salt_length: int) -> None:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt_length)
    raw = alice.sign(b"from another implementation", pss, hashes.SHA256())
    assert crypto.verify(alice.public_key(), b"from another implementation", b64url_encode(raw))
    assert crypto.verify(alice.public_key(), b"from another implementation", base64.b64encode(raw).decode())


def test_pkcs1v15_signature_is_refused(alice: crypto.PrivateKey) -> None:
    raw = alice.sign(b"legacy", padding.PKCS1v15(), hashes.SHA256())
    assert not crypto.verify(alice.public_key(), b"legacy", b64url_encode(raw))


PAYLOAD = {"text": "héllo ✓", "n": 3, "nested": {"b": [1, 2], "a": None}}


def test_payload_signature_over_canonical_form(alice: crypto.PrivateKey) -> None:
    signature = crypto.sign_payload(alice, PAYLOAD)
    assert crypto.verify(alice.public_key(), canonical_json(PAYLOAD), signature)
    assert crypto.verify_payload(alice.public_key(), PAYLOAD, signature)
    reordered = {"nested": {"a": None, "b": [1, 2]}, "n": 3, "text": "héllo ✓"}
    assert crypto.verify_payload(alice.public_key(), reordered, signature)


@pytest.mark.parametrize("dumps_kwargs", [
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
    {"sort_keys": True},
    {"sort_keys": True, "ensure_ascii": False},
])
def test_payload_signature_variants_accepted(alice: crypto.PrivateKey, dumps_kwargs: dict[str, object]) -> None:
    data = json.dumps(PAYLOAD, **dumps_kwargs).encode("utf-8")  # type: ignore[arg-type]
    assert data != canonical_json(PAYLOAD)
    assert crypto.verify_payload(alice.public_key(), PAYLOAD, crypto.sign(alice, data))


def test_payload_signature_over_unsorted_keys_refused(alice: crypto.PrivateKey) -> None:
    data = json.dumps({"text": PAYLOAD["text"], "n": 3, "nested": PAYLOAD["nested"]}, separators=(",", ":"))
    assert not crypto.verify_payload(alice.public_key(), PAYLOAD, crypto.sign(alice, data.encode()))


@pytest.mark.parametrize("tamper", [
    lambda p: {**p, "n": 4},
    lambda p: {**p, "extra": 1},
    lambda p: {k: v for k, v in p.items() if k != "n"},
    lambda p: {**p, "text": "hello ✓"},
    lambda p: {**p, "nested": {"b": [2, 1], "a": None}},
])
def test_tampered_payload_refused(alice: crypto.PrivateKey, tamper) -> None:  # type: ignore[no-untyped-def]
    signature = crypto.sign_payload(alice, PAYLOAD)
    assert not crypto.verify_payload(alice.public_key(), tamper(PAYLOAD), signature)


def test_payload_signature_wrong_key_or_empty_refused(alice: crypto.PrivateKey, bob: crypto.PrivateKey) -> None:
    signature = crypto.sign_payload(alice, PAYLOAD)
    assert not crypto.verify_payload(bob.public_key(), PAYLOAD, signature)
    assert not crypto.verify_payload(alice.public_key(), PAYLOAD, "")


# --- content signatures ---------------------------------------------------------------------------

SENDER = "6c1b9a52-29f5-4c44-9a43-5f3a3c1f5a10"
RECIPIENT = "0b3c7f3e-8a2d-4d1e-b2b6-6a9f0e1d2c3b"
TS = 1_760_000_000_123


def test_direct_content_sig_emits_raw_bytes_form(alice: crypto.PrivateKey, bob: crypto.PrivateKey) -> None:
    ciphertext = crypto.rsa_encrypt(bob.public_key(), b"hi bob")
    signature = crypto.sign_direct(alice, ciphertext, SENDER, RECIPIENT, TS)
    covered = b64url_decode(ciphertext) + (SENDER + RECIPIENT + str(TS)).encode("utf-8")
    assert crypto.verify(alice.public_key(), covered, signature)
    assert not crypto.verify(alice.public_key(), (ciphertext + SENDER + RECIPIENT + str(TS)).encode(), signature)
    assert crypto.verify_direct(alice.public_key(), signature, ciphertext, SENDER, RECIPIENT, TS)


def _direct_form(form: str, ciphertext: str) -> bytes:
    """The bytes each accepted ``content_sig`` form covers, spelled out independently of the code under test."""
    tail = (SENDER + RECIPIENT + str(TS)).encode("utf-8")
    if form == "raw":
        return b64url_decode(ciphertext) + tail
    if form == "text":
        return ciphertext.encode("utf-8") + tail
    return json.dumps({"ts": TS, "to": RECIPIENT, "from": SENDER, "ciphertext": ciphertext}, sort_keys=True,
                      separators=(",", ":")).encode("ascii")


@pytest.mark.parametrize("form", ["raw", "text", "json"])
def test_direct_content_sig_accepts_each_form(alice: crypto.PrivateKey, bob: crypto.PrivateKey, form: str) -> None:
    ciphertext = crypto.rsa_encrypt(bob.public_key(), b"hi bob")
    signature = crypto.sign(alice, _direct_form(form, ciphertext))
    assert crypto.verify_direct(alice.public_key(), signature, ciphertext, SENDER, RECIPIENT, TS)
    assert not crypto.verify_direct(alice.public_key(), signature, ciphertext, SENDER, RECIPIENT, TS + 1)
    assert not crypto.verify_direct(bob.public_key(), signature, ciphertext, SENDER, RECIPIENT, TS)


def test_direct_content_sig_json_form_with_spaces_refused(alice: crypto.PrivateKey, bob: crypto.PrivateKey) -> None:
    ciphertext = crypto.rsa_encrypt(bob.public_key(), b"hi bob")
    spaced = json.dumps({"ciphertext": ciphertext, "from": SENDER, "to": RECIPIENT, "ts": TS}, sort_keys=True)
    assert not crypto.verify_direct(alice.public_key(), crypto.sign(alice, spaced.encode()), ciphertext, SENDER,
                                    RECIPIENT, TS)


def test_direct_content_sig_needs_base64url_ciphertext(alice: crypto.PrivateKey) -> None:
    with pytest.raises(CryptoError):
        crypto.sign_direct(alice, "not base64url!", SENDER, RECIPIENT, TS)


@pytest.mark.parametrize("field", ["ciphertext", "sender", "recipient", "ts", "key"])
def test_direct_content_sig_binds_every_field(alice: crypto.PrivateKey, bob: crypto.PrivateKey, field: str) -> None:
    ciphertext = crypto.rsa_encrypt(bob.public_key(), b"hi bob")
    signature = crypto.sign_direct(alice, ciphertext, SENDER, RECIPIENT, TS)
    args: dict[str, object] = {"ciphertext": ciphertext, "sender": SENDER, "recipient": RECIPIENT, "ts": TS,
                               "key": alice.public_key()}
    args[field] = {
        "ciphertext": crypto.rsa_encrypt(bob.public_key(), b"hi bob"),
        "sender": RECIPIENT, "recipient": SENDER, "ts": TS + 1, "key": bob.public_key(),
    }[field]
    assert not crypto.verify_direct(args["key"], signature, args["ciphertext"], args["sender"],  # type: ignore[arg-type]
                                    args["recipient"], args["ts"])  # type: ignore[arg-type]


# --- AES-256-GCM ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1000, 70_000])
def test_aes_gcm_round_trip(size: int) -> None:
    key = crypto.generate_symmetric_key()
    assert len(key) == 32
    plaintext = bytes(i % 251 for i in range(size))
    ciphertext = crypto.aes_encrypt(key, plaintext)
    assert len(b64url_decode(ciphertext)) == 12 + size + 16
    assert crypto.aes_decrypt(key, ciphertext) == plaintext


def test_aes_gcm_nonce_is_fresh() -> None:
    key = crypto.generate_symmetric_key()
    first, second = crypto.aes_encrypt(key, b"same"), crypto.aes_encrypt(key, b"same")
    assert first != second
    assert b64url_decode(first)[:12] != b64url_decode(second)[:12]


@pytest.mark.parametrize("position", [0, 11, 12, -1])
def test_aes_gcm_tamper_is_crypto_error(position: int) -> None:
    key = crypto.generate_symmetric_key()
    raw = bytearray(b64url_decode(crypto.aes_encrypt(key, b"attack at dawn")))
    raw[position] ^= 0x01
    with pytest.raises(CryptoError):
        crypto.aes_decrypt(key, b64url_encode(bytes(raw)))


def test_aes_gcm_wrong_key_short_or_garbage_is_crypto_error() -> None:
    key = crypto.generate_symmetric_key()
    ciphertext = crypto.aes_encrypt(key, b"secret")
    with pytest.raises(CryptoError):
        crypto.aes_decrypt(crypto.generate_symmetric_key(), ciphertext)
    with pytest.raises(CryptoError):
        crypto.aes_decrypt(key, b64url_encode(b"\x00" * 27))
    with pytest.raises(CryptoError):
        crypto.aes_decrypt(key, "a")


def test_crypto_errors_never_look_like_wire_errors() -> None:
    assert not issubclass(CryptoError, ProtocolError)
