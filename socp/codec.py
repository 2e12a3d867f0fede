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


def canonical_json(payload: Mapping[str, Any] | list[Any]) -> bytes:
    """The canonical payload bytes that transport signatures cover (WIRE §2).

    ``json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, UTF-8. A list is
    accepted too: a key share's ``content_sig`` covers ``canonical(shares)`` (WIRE §5).
    """
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


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
