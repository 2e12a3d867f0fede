"""A raw SOCP user over a real WebSocket, for tests that must send what a correct client never would."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client.connection import now_ms
from socp import crypto
from socp import envelope as env
from socp.envelope import Envelope, FrameType
from socp.presence import Attestation
from tests import scaled


class RawUser:
    """A hand-driven user connection: build frames, send any text, read frames back."""

    def __init__(self, connection: ClientConnection, key: crypto.PrivateKey, user_id: str) -> None:
        self.connection = connection
        self.key = key
        self.user_id = user_id
        self.pubkey = crypto.encode_public_key(key.public_key())

    @classmethod
    async def open(cls, url: str, key: crypto.PrivateKey, user_id: str | None = None) -> RawUser:
        """Connect without saying hello."""
        connection = await connect(url, max_size=16 * 1024 * 1024)
        return cls(connection, key, user_id or str(uuid.uuid4()))

    def hello(self, name: str = "raw", *, ts: int | None = None, signed: bool = True, to: str = "*") -> Envelope:
        """A USER_HELLO for this user, addressed to ``to`` (a server id, or ``"*"``), signed through the one
        envelope signing function unless ``signed=False``."""
        ts = ts or now_ms()
        payload: dict[str, Any] = {"client": "tests", "pubkey": self.pubkey, "enc_pubkey": self.pubkey,
                                   "meta": {"display_name": name}}
        if to != "*":
            # As the real client does: its own proof of where it is, so other servers list it (PROTOCOL.md §5.5.1).
            payload["attest"] = Attestation.make(self.key, self.user_id, to, ts).to_wire()
        return env.make(FrameType.USER_HELLO, self.user_id, to, ts, payload, self.key if signed else None)

    async def join(self, name: str = "raw") -> dict[str, Any]:
        """Say hello and return the server's ACK payload (fails the test on anything else).

        Like the real client: a hello to ``"*"`` is answered by an ERROR naming the server's id (PROTOCOL.md
        §3.6), and the hello goes again, addressed to that id.
        """
        await self.send(self.hello(name))
        frame = await self.recv()
        if frame.type is FrameType.ERROR and isinstance(frame.payload.get("server_id"), str):
            await self.send(self.hello(name, to=frame.payload["server_id"]))
            frame = await self.recv_type(FrameType.ACK)
        assert frame.type is FrameType.ACK, dict(frame.payload)
        return dict(frame.payload)

    def direct(self, recipient: str, recipient_key: str, text: str, *, ts: int | None = None) -> Envelope:
        """A correct MSG_DIRECT to ``recipient``."""
        ts = ts or now_ms()
        ciphertext = crypto.rsa_encrypt(crypto.decode_public_key(recipient_key), text.encode())
        payload = {"ciphertext": ciphertext, "sender_pub": self.pubkey,
                   "content_sig": crypto.sign_direct(self.key, ciphertext, self.user_id, recipient, ts)}
        return env.make(FrameType.MSG_DIRECT, self.user_id, recipient, ts, payload, self.key)

    async def send(self, frame: Envelope | str | bytes) -> None:
        """Send a frame, or any raw text/bytes."""
        await self.connection.send(frame.to_wire() if isinstance(frame, Envelope) else frame)

    async def recv(self, timeout: float = 5.0) -> Envelope:
        """The next frame from the server."""

        async with asyncio.timeout(scaled(timeout)):
            return env.parse(await self.connection.recv())

    async def recv_type(self, frame_type: FrameType, timeout: float = 5.0) -> Envelope:
        """Skip frames until one of ``frame_type`` arrives (adverts arrive interleaved)."""

        seen: list[str] = []
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    frame = env.parse(await self.connection.recv())
                    if frame.type is frame_type:
                        return frame
                    seen.append(f"{frame.type}:{json.dumps(dict(frame.payload))[:120]}")
        except TimeoutError:
            raise AssertionError(f"no {frame_type} within {timeout}s; saw {seen}") from None

    async def error(self, timeout: float = 5.0) -> dict[str, Any]:
        """The payload of the next ERROR frame."""
        return dict((await self.recv_type(FrameType.ERROR, timeout)).payload)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within ``timeout`` (frames before are skipped)."""

        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    await self.connection.recv()
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Close the connection."""
        await self.connection.close()
