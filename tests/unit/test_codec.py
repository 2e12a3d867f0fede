"""socp.codec: canonical JSON bytes and base64url (WIRE §1, §2)."""

from __future__ import annotations

import base64
import json

import pytest

from socp import codec
from socp.codec import accepted_payload_forms, b64url_decode, b64url_encode, canonical_json
from socp.errors import BadFrame


def test_canonical_json_exact_bytes() -> None:
    payload = {"b": 1, "a": "é ✓", "c": [3, {"z": None, "y": True}], "A": "x"}
    assert canonical_json(payload) == b'{"A":"x","a":"\\u00e9 \\u2713","b":1,"c":[3,{"y":true,"z":null}]}'


def test_canonical_json_is_ascii_and_independent_of_insertion_order() -> None:
    first = canonical_json({"k": "日本", "n": -5, "e": {}})
    second = canonical_json({"e": {}, "n": -5, "k": "日本"})
    assert first == second == b'{"e":{},"k":"\\u65e5\\u672c","n":-5}'
    first.decode("ascii")


def test_canonical_json_escapes_astral_characters_as_surrogate_pairs() -> None:
    assert canonical_json({"s": "🙂"}) == b'{"s":"\\ud83d\\ude42"}'


def test_accepted_payload_forms_canonical_first_then_variants() -> None:
    payload = {"b": "é", "a": [1, 2]}
    forms = list(accepted_payload_forms(payload))
    assert forms[0] == canonical_json(payload)
    assert '{"a":[1,2],"b":"é"}'.encode() in forms                    # ensure_ascii=False
    assert b'{"a": [1, 2], "b": "\\u00e9"}' in forms                   # default separators
    assert '{"a": [1, 2], "b": "é"}'.encode() in forms                # both
    assert all(json.loads(form) == payload for form in forms)


@pytest.mark.parametrize(("data", "text"), [
    (b"", ""),
    (b"a", "YQ"),
    (b"ab", "YWI"),
    (b"abc", "YWJj"),
    (b"\xfb\xff\xbf", "-_-_"),
    (bytes(range(256)), base64.urlsafe_b64encode(bytes(range(256))).decode().rstrip("=")),
])
def test_b64url_encode_has_no_padding_and_url_alphabet(data: bytes, text: str) -> None:
    encoded = b64url_encode(data)
    assert encoded == text
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert b64url_decode(encoded) == data


@pytest.mark.parametrize("text", ["YQ", "YQ==", "YQ="])
def test_b64url_decode_with_or_without_padding(text: str) -> None:
    assert b64url_decode(text) == b"a"


def test_b64url_decode_accepts_standard_alphabet() -> None:
    data = b"\xfb\xff\xbf\xfe"
    standard = base64.b64encode(data).decode()
    assert "+" in standard or "/" in standard
    assert b64url_decode(standard) == data
    assert b64url_decode(base64.urlsafe_b64encode(data).decode()) == data


def test_b64url_decode_ignores_surrounding_whitespace() -> None:
    assert b64url_decode("  YWJj\n") == b"abc"


@pytest.mark.parametrize("text", ["a", "Y=Q", "ab$d", "é", "abcde"])
def test_b64url_decode_rejects_invalid_text(text: str) -> None:
    with pytest.raises(BadFrame):
        b64url_decode(text)


@pytest.mark.parametrize("value", [None, b"YWJj", 5, ["YWJj"]])
def test_b64url_decode_rejects_non_strings(value: object) -> None:
    with pytest.raises(BadFrame):
        b64url_decode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["!!!", "YW*Jj", "@@@@", "YWJj.."])
def test_b64url_decode_rejects_non_alphabet_characters(text: str) -> None:
    with pytest.raises(BadFrame):
        b64url_decode(text)


@pytest.mark.parametrize("payload", [
    {"ciphertext": "A-_b" * 8192, "file_id": "x", "index": 3},
    {"outer": {"payload": {"ciphertext": "Qz09" * 8192, "z": "é"}}, "tag": "\x00socp-bulk-0\x00"},
    {"x": "\x00socp-bulk-0\x00" + "A" * 20_000, "y": "B" * 20_000},
    {"quote": "A" * 20_000 + '"', "slash": "B" * 20_000 + "\\", "nl": "C" * 20_000 + "\n", "del": "D" * 20_000 + "\x7f",
     "accent": "é" * 20_000, "plain": "E" * 20_000},
    {"list": ["A" * 20_000], "same": "A" * 20_000},
])
def test_dumps_is_json_dumps_also_for_bulk_strings(payload: dict[str, object]) -> None:
    """The bulk-string fast path (file chunks) writes exactly what json.dumps writes, in every form we use."""
    for options in ({"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True},
                    {"separators": (",", ":"), "ensure_ascii": False}, {}):
        assert codec.dumps(payload, **options) == json.dumps(payload, **options)  # type: ignore[arg-type]
    assert codec.canonical_json(payload) == json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
