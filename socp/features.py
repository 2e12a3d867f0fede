"""The project's negotiated extensions (WIRE §7): their names on the wire, and reading a peer's list.

A server announces ``features`` in SERVER_ANNOUNCE / SERVER_HELLO_JOIN / SERVER_WELCOME payloads (and in each
SERVER_WELCOME entry), and in the ACK of USER_HELLO; our client announces them in ``USER_HELLO.meta.features``.
An extension is used only with a peer that announced it; any other peer gets the plain standard.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final


class Feature(enum.StrEnum):
    """One negotiated extension; the value is its name in ``features`` lists."""

    DELIVERY_RECEIPTS = "delivery_receipts"
    """Receipts between servers and to senders, resending after link loss, ERROR TIMEOUT after a bound."""
    HYBRID_FILE_CHUNKS = "hybrid_file_chunks"
    """An RSA-wrapped AES-256-GCM key per file, chunks under it."""


SERVER_FEATURES: Final[tuple[Feature, ...]] = (Feature.DELIVERY_RECEIPTS,)
"""What our servers announce (each extension adds itself here once both ends implement it)."""
CLIENT_FEATURES: Final[tuple[Feature, ...]] = (Feature.DELIVERY_RECEIPTS, Feature.HYBRID_FILE_CHUNKS)
"""What our client announces in ``USER_HELLO.meta.features``."""


def announced(payload: Mapping[str, Any] | None) -> frozenset[str]:
    """The feature names a payload (or ``meta``) announces: its ``features`` list of strings, else none.

    Anything malformed counts as announcing nothing (a peer without extensions), never as an error.
    """
    raw = payload.get("features") if isinstance(payload, Mapping) else None
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(item for item in raw if isinstance(item, str))


def wire_list(features: tuple[Feature, ...]) -> list[str]:
    """``features`` as the JSON list a payload carries."""
    return [feature.value for feature in features]
