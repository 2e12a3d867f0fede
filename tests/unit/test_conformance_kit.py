"""The conformance kit's reading of another server's frames (client/conformance.py), without sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from client.conformance import CheckFailed, Peer
from socp import crypto
from socp.envelope import FrameType

SERVER = "6c1b9a52-29f5-4c44-9a43-5f3a3c1f5a10"
USER = "a11ce000-0000-4000-8000-000000000001"


class _Socket:
    """Hands out the given texts, then waits (as a quiet server does)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    async def recv(self) -> str:
        if self.texts:
            return self.texts.pop(0)
        await asyncio.sleep(3600)  # a silent server; the caller's timeout ends the wait
        raise AssertionError("unreachable")


def _peer(texts: list[str], key: Any) -> Peer:
    return Peer(_Socket(texts), key, USER, 0.2)  # type: ignore[arg-type]


async def test_a_failed_check_names_the_frames_it_could_not_read(key_pool: Any) -> None:
    # fengyuan213/Secure-Programming-Group: LIST_RESPONSE never comes, and an unreadable frame did; say which
    bad = json.dumps({"type": "LIST_RESPONSE", "from": SERVER, "to": USER, "ts": 1, "payload": {"users": "x"}})
    peer = _peer(["{not json", bad], key_pool.key(6))
    with pytest.raises(CheckFailed) as failed:
        await peer.expect(lambda f: f.type is FrameType.LIST_RESPONSE, "LIST_RESPONSE")
    reason = str(failed.value)
    assert "unreadable:" in reason and "users" in reason, reason
    with pytest.raises(CheckFailed) as again:  # reported once
        await peer.expect(lambda f: f.type is FrameType.LIST_RESPONSE, "LIST_RESPONSE")
    assert "unreadable" not in str(again.value)


async def test_a_delivery_without_sender_is_read_and_named(key_pool: Any) -> None:
    # parsed as the interop variant (sender ""), so the check can say what is missing instead of timing out
    server_key = key_pool.key(5)
    payload = {"ciphertext": "AAAA", "sender_pub": crypto.encode_public_key(key_pool.key(7).public_key()),
               "content_sig": "AAAA"}
    frame = json.dumps({"type": "USER_DELIVER", "from": SERVER, "to": USER, "ts": 1, "payload": payload,
                        "sig": crypto.sign(server_key, json.dumps(payload, sort_keys=True,
                                                                  separators=(",", ":")).encode())})
    deliver = await _peer([frame], key_pool.key(6)).expect(lambda f: f.type is FrameType.USER_DELIVER, "delivery")
    assert deliver.payload["sender"] == ""
