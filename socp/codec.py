"""Byte-level encodings shared by every frame: base64url and canonical JSON (WIRE §1, §2)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from typing import Any

from socp.errors import BadFrame


def b64url_encode(data: bytes) -> str:
    """Encode bytes as base64url without padding, the form SOCP emits for every binary value."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; standard-alphabet base64 is accepted too.

    Raises :class:`BadFrame` on anything that is not base64.
    """
    if not isinstance(text, str):
        raise BadFrame("expected a base64url string")
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadFrame("value is not valid base64url") from exc


BULK_STRING_CHARS = 16 * 1024
"""Strings at least this long (file chunk ciphertexts) are spliced into JSON text rather than re-encoded when
they need no escaping: :func:`dumps` gives the very same text, several times faster for bulk frames."""


_ESCAPED = bytes(range(0x20)) + b'"\\\x7f'
_NOT_ESCAPED = bytes(byte for byte in range(0x80) if byte not in _ESCAPED)


_RECENT_PLAIN: dict[int, tuple[str, bool]] = {}
"""``id(value) -> (value, plain)`` for the last few bulk strings judged. A relayed chunk's ciphertext (one
``str`` object) is encoded several times per hop (replay key, signature check, the signed copy, the wire
text); holding the value keeps its ``id`` from being reused while the entry lives."""
_RECENT_PLAIN_MAX = 8


def _plain_json_string(value: str) -> bool:
    """True when ``json.dumps`` writes ``value`` as itself between quotes: ASCII without control characters,
    DEL, ``"`` or ``\\`` (a byte-table pass: several times faster than ``str.isprintable``; remembered for
    the last few strings, by identity)."""
    known = _RECENT_PLAIN.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    plain = value.isascii() and not value.encode("ascii").translate(None, _NOT_ESCAPED)
    if len(_RECENT_PLAIN) >= _RECENT_PLAIN_MAX:
        del _RECENT_PLAIN[next(iter(_RECENT_PLAIN))]
    _RECENT_PLAIN[id(value)] = (value, plain)
    return plain


def dumps(obj: Any, *, sort_keys: bool = False, separators: tuple[str, str] | None = None,
          ensure_ascii: bool = True) -> str:
    """``json.dumps(obj, sort_keys=..., separators=..., ensure_ascii=...)``, character for character.

    Long strings that need no escaping (base64url ciphertexts) in nested objects are swapped for short
    placeholders, the rest is encoded by ``json``, and the strings are spliced back: encoding a megabyte string
    costs the ``json`` module milliseconds per copy, and a relayed file chunk is encoded several times.
    """
    bulk: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, str) and len(value) >= BULK_STRING_CHARS and _plain_json_string(value):
            bulk.append(value)
            return f"\x00socp-bulk-{len(bulk) - 1}\x00"
        return value

    if not isinstance(obj, dict):
        return json.dumps(obj, sort_keys=sort_keys, separators=separators, ensure_ascii=ensure_ascii)
    light = swap(obj)
    text = json.dumps(light, sort_keys=sort_keys, separators=separators, ensure_ascii=ensure_ascii)
    if not bulk:
        return text
    parts: list[str] = []
    rest = text
    for index, value in enumerate(bulk):
        # Placeholders hold NUL, which JSON always escapes: "\u0000socp-bulk-<i>\u0000" in quotes.
        marker = f'"\\u0000socp-bulk-{index}\\u0000"'
        before, found, rest = rest.partition(marker)
        if not found or marker in rest:  # not where expected (a string equal to a marker): take the slow way
            return json.dumps(obj, sort_keys=sort_keys, separators=separators, ensure_ascii=ensure_ascii)
        parts += [before, '"', value, '"']
    parts.append(rest)
    return "".join(parts)


def canonical_json(payload: Mapping[str, Any] | list[Any]) -> bytes:
    """The canonical payload bytes that transport signatures cover (WIRE §2).

    ``json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, UTF-8. A list is
    accepted too: a key share's ``content_sig`` covers ``canonical(shares)`` (WIRE §5).
    """
    value = dict(payload) if isinstance(payload, Mapping) and not isinstance(payload, dict) else payload
    return dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def canonical_envelope(frame_type: str, sender: str, to: str, ts: int, payload: Mapping[str, Any]) -> bytes:
    """The bytes a transport signature covers (WIRE §2): the canonical JSON of the five envelope fields
    ``type``, ``from``, ``to``, ``ts`` and ``payload`` (no ``sig``, no ``id`` nor other extra fields)."""
    return canonical_json({"type": frame_type, "from": sender, "to": to, "ts": ts, "payload": payload})


def accepted_payload_forms(payload: Mapping[str, Any]) -> Iterator[bytes]:
    """Every serialization of ``payload`` whose payload-only (legacy) signature we accept, canonical first.

    Only under the legacy-interop switch (WIRE §2): other implementations sign the payload alone, with
    ``ensure_ascii=False`` or with the default separators.
    """
    yield canonical_json(payload)
    yield json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    yield json.dumps(payload, sort_keys=True).encode("utf-8")
    yield json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
