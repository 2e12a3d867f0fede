"""The hybrid file chunks extension (WIRE §7, docs/PROTOCOL.md §7.2) through ServerState and UserSession on the
fake wire: one RSA-OAEP-wrapped AES-256-GCM key per file, chunks bound to their file and index, repeats
dropped by index, chunks streamed into a sink, and the plain RSA-OAEP chunks toward a peer without it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pytest

from socp import crypto
from socp import envelope as env
from socp.codec import b64url_decode, b64url_encode
from socp.envelope import Envelope, FrameType
from socp.errors import CryptoError
from socp.user import (
    DM_CHUNK_BYTES,
    HYBRID_CHUNK_BYTES,
    FileIncoming,
    FileProgress,
    FileReceived,
    FileRejected,
    FileSink,
)
from tests.unit.harness import Net, Node
from tests.unit.test_public_channel_support import SessionUser, session_users


@dataclass
class Trio:
    net: Net
    b: Node
    alice: SessionUser
    bob: SessionUser
    dave: SessionUser


@pytest.fixture
def trio(net: Net) -> Trio:
    """alice on A; bob (announces hybrid file chunks) and dave (does not) on B."""
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    [alice] = session_users(net, a, "alice")
    [bob] = session_users(net, b, "bob")
    [dave] = session_users(net, b, "dave", hybrid_files=False)
    return Trio(net, b, alice, bob, dave)


def parsed(frames: list[str]) -> list[Envelope]:
    return [env.parse(frame) for frame in frames]


def resend(user: SessionUser, frame: Envelope, ts_shift: int = 1) -> str:
    """``frame`` again under a new ts (so the replay cache lets it through): what a far server's copy after a
    link loss, or a confused sender, looks like to the recipient."""
    return user.frame(frame.type, frame.to, dict(frame.payload), ts=frame.ts + ts_shift).to_wire()


def test_wrapped_file_keys_and_chunk_binding(net: Net) -> None:
    bob_key = net.pool.key(0)
    file_key = crypto.generate_symmetric_key()
    wrapped = crypto.wrap_file_key(bob_key.public_key(), file_key)
    assert crypto.rsa_block_count(wrapped) == 1 and crypto.unwrap_file_key(bob_key, wrapped) == file_key
    with pytest.raises(CryptoError):
        crypto.unwrap_file_key(net.pool.key(1), wrapped)  # someone else's key
    with pytest.raises(CryptoError):
        crypto.unwrap_file_key(bob_key, crypto.rsa_encrypt(bob_key.public_key(), b"short"))
    chunk = crypto.aes_encrypt(file_key, b"piece", crypto.file_chunk_aad("f1", 3))
    assert crypto.aes_decrypt(file_key, chunk, crypto.file_chunk_aad("f1", 3)) == b"piece"
    for aad in (crypto.file_chunk_aad("f1", 4), crypto.file_chunk_aad("f2", 3), None):
        with pytest.raises(CryptoError):
            crypto.aes_decrypt(file_key, chunk, aad)


def test_a_hybrid_file_crosses_servers_intact(trio: Trio) -> None:
    alice, bob = trio.alice, trio.bob
    assert alice.session.takes_hybrid_files(bob.user_id) and not alice.session.takes_hybrid_files(trio.dave.user_id)
    data = os.urandom(2 * HYBRID_CHUNK_BYTES + 1000)
    frames = parsed(alice.file_frames(bob.user_id, "video.mp4", data))
    assert [f.type for f in frames] == [FrameType.FILE_START] + [FrameType.FILE_CHUNK] * 3 + [FrameType.FILE_END]
    start = frames[0].payload
    assert crypto.rsa_block_count(start["wrapped_key"]) == 1
    # 12-byte nonce + ciphertext + 16-byte tag: AES-GCM, not 8 RSA blocks.
    sizes = [len(b64url_decode(f.payload["ciphertext"])) for f in frames[1:-1]]
    assert sizes == [HYBRID_CHUNK_BYTES + 28, HYBRID_CHUNK_BYTES + 28, 1000 + 28]
    assert len({f.msg_ref for f in frames}) == len(frames)  # every frame has its own msg_ref
    alice.send_frames([f.to_wire() for f in frames])
    [done] = bob.of(FileReceived)
    assert done.data == data and done.sha256 == hashlib.sha256(data).hexdigest() and bob.of(FileRejected) == []
    assert len(bob.of(FileProgress)) >= 2


def test_a_peer_without_the_extension_gets_rsa_chunks(trio: Trio) -> None:
    data = os.urandom(DM_CHUNK_BYTES + 10)
    frames = parsed(trio.alice.file_frames(trio.dave.user_id, "a.bin", data))
    assert "wrapped_key" not in frames[0].payload
    blocks = [len(b64url_decode(f.payload["ciphertext"])) // crypto.OAEP_BLOCK_BYTES for f in frames[1:-1]]
    assert blocks == [8, 1]
    trio.alice.send_frames([f.to_wire() for f in frames])
    assert [f.data for f in trio.dave.of(FileReceived)] == [data]
    # dave's hello did not announce it; bob's did (alice learns it from the adverts).
    dave, bob = (trio.alice.session.directory.get(user.user_id) for user in (trio.dave, trio.bob))
    assert dave is not None and "hybrid_file_chunks" not in dave.meta.get("features", [])
    assert bob is not None and "hybrid_file_chunks" in bob.meta.get("features", [])


def test_chunks_cannot_be_reordered_or_moved_between_files(trio: Trio) -> None:
    alice, bob, net = trio.alice, trio.bob, trio.net
    data = os.urandom(2 * HYBRID_CHUNK_BYTES)
    frames = parsed(alice.file_frames(bob.user_id, "a.bin", data))
    # chunk 1's ciphertext presented as chunk 0 (a server reordering chunks): refused by the AAD.
    swapped = alice.frame(FrameType.FILE_CHUNK, bob.user_id, {**frames[1].payload, "index": 0,
                                                              "ciphertext": frames[2].payload["ciphertext"]},
                          ts=frames[1].ts)
    alice.send_frames([frames[0].to_wire(), swapped.to_wire()])
    [rejected] = bob.of(FileRejected)
    assert rejected.reason == "chunk 0 does not decrypt (altered in transit?)" and bob.of(FileReceived) == []
    # A chunk of another file (even under the same key, were it reused) does not fit either.
    other = parsed(alice.file_frames(bob.user_id, "b.bin", os.urandom(HYBRID_CHUNK_BYTES)))
    moved = alice.frame(FrameType.FILE_CHUNK, bob.user_id,
                        {**frames[1].payload, "file_id": other[0].payload["file_id"]}, ts=net.now + 50)
    alice.send_frames([other[0].to_wire(), moved.to_wire()])
    assert [event.reason for event in bob.of(FileRejected)][1] == "chunk 0 does not decrypt (altered in transit?)"


def test_a_tampered_chunk_is_refused(trio: Trio) -> None:
    alice, bob = trio.alice, trio.bob
    frames = parsed(alice.file_frames(bob.user_id, "a.bin", os.urandom(3000)))
    raw = bytearray(b64url_decode(frames[1].payload["ciphertext"]))
    raw[40] ^= 1
    tampered = alice.frame(FrameType.FILE_CHUNK, bob.user_id,
                           {**frames[1].payload, "ciphertext": b64url_encode(bytes(raw))}, ts=frames[1].ts)
    alice.send_frames([frames[0].to_wire(), tampered.to_wire(), frames[2].to_wire()])
    [rejected] = bob.of(FileRejected)
    assert "does not decrypt" in rejected.reason and bob.of(FileReceived) == []


def test_a_wrapped_key_that_does_not_unwrap_refuses_the_file(trio: Trio) -> None:
    alice, bob = trio.alice, trio.bob
    outgoing = alice.session.send_file(bob.user_id, "a.bin", b"abc", trio.net.now)
    start = env.parse(outgoing.next_frame(trio.net.now) or "")
    # Wrapped for dave, not bob (the content_sig does not cover the wrapped key; the unwrap fails instead).
    bad = alice.frame(FrameType.FILE_START, bob.user_id, {
        **start.payload, "wrapped_key": crypto.wrap_file_key(crypto.decode_public_key(trio.dave.pubkey),
                                                             bytes(32))}, ts=start.ts)
    alice.send(bad)
    [rejected] = bob.of(FileRejected)
    assert rejected.reason.startswith("its file key does not unwrap")


def test_repeated_chunks_are_dropped_by_index(trio: Trio) -> None:
    alice, bob = trio.alice, trio.bob
    data = os.urandom(3 * HYBRID_CHUNK_BYTES)
    frames = parsed(alice.file_frames(bob.user_id, "a.bin", data))
    # chunk 0 again as a new frame (dropped by its index), chunk 1 again as the very same frame (the replay cache)
    again = [resend(alice, frames[1], 1000), frames[2].to_wire()]
    alice.send_frames([f.to_wire() for f in frames[:3]] + again + [f.to_wire() for f in frames[3:]])
    assert len(bob.frames(FrameType.FILE_CHUNK)) >= 4  # the repeats did reach bob's session
    assert [f.data for f in bob.of(FileReceived)] == [data] and bob.of(FileRejected) == []


def test_a_gap_is_filled_when_the_missing_chunk_comes_after_the_end(trio: Trio) -> None:
    """Chunks after a gap are kept (a few), FILE_END waits for the missing chunk: a late copy repairs it."""
    alice, bob, net = trio.alice, trio.bob, trio.net
    data = os.urandom(3 * HYBRID_CHUNK_BYTES)
    frames = alice.file_frames(bob.user_id, "a.bin", data)
    held: list[str] = []

    def hold_chunk_one(packet: object) -> bool:
        text = getattr(packet, "text", "")
        if getattr(packet, "dst", None) == "bob" and '"index":1,' in text and "FILE_CHUNK" in text:
            held.append(text)
            return True
        return False

    net.drop = hold_chunk_one
    alice.send_frames(frames)  # START, 0, (1 held back), 2, END
    net.drop = None
    assert len(held) == 1 and bob.of(FileReceived) == [] and bob.of(FileRejected) == []
    bob_link = next(end for end, other in net._wires.items() if end[0] == "B" and other[0] == "bob")
    net._enqueue_data(bob_link, held[0])  # B's own signed copy, late
    net.pump()
    assert [f.data for f in bob.of(FileReceived)] == [data] and bob.of(FileRejected) == []


class RecordingSink:
    """A FileSink that keeps only the sizes written (as a disk file would, nothing is held)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def write(self, data: bytes) -> None:
        self.log.append(f"write {len(data)}")

    def finish(self) -> tuple[bytes, str | None]:
        self.log.append("finish")
        return b"", "/somewhere/a.bin"

    def discard(self) -> None:
        self.log.append("discard")


def test_chunks_stream_into_the_sink(trio: Trio) -> None:
    alice, bob = trio.alice, trio.bob
    log: list[str] = []
    opened: list[tuple[str, int]] = []

    def sinks(name: str, size: int) -> FileSink:
        opened.append((name, size))
        return RecordingSink(log)

    bob.session.file_sinks = sinks
    data = os.urandom(2 * HYBRID_CHUNK_BYTES + 5)
    frames = alice.file_frames(bob.user_id, "../../a.bin", data)
    alice.send_frames(frames[:2])
    assert bob.of(FileIncoming) and log == [f"write {HYBRID_CHUNK_BYTES}"]  # written as it arrives
    alice.send_frames(frames[2:])
    assert opened == [("../../a.bin", len(data))]
    assert log == [f"write {HYBRID_CHUNK_BYTES}", f"write {HYBRID_CHUNK_BYTES}", "write 5", "finish"]
    [done] = bob.of(FileReceived)
    assert done.path == "/somewhere/a.bin" and done.data == b""
    # A file that fails its hash is discarded from the sink.
    log.clear()
    wrong = alice.session.send_file(bob.user_id, "b.bin", b"xyz", trio.net.now)
    wrong.sha256 = "0" * 64
    alice.send_frames(list(iter(lambda: wrong.next_frame(trio.net.now), None)))
    assert log == ["write 3", "discard"]


def test_the_sender_window_counts_unacknowledged_chunks(trio: Trio) -> None:
    alice, bob = trio.alice, trio.bob
    outgoing = alice.session.send_file(bob.user_id, "a.bin", os.urandom(3 * HYBRID_CHUNK_BYTES), trio.net.now)
    assert outgoing.hybrid and outgoing.chunk_count == 3
    start = outgoing.next_frame(trio.net.now)
    assert start is not None and outgoing.next_is_chunk and outgoing.in_flight == 0
    chunks = [outgoing.next_frame(trio.net.now) for _ in range(2)]
    assert outgoing.in_flight == 2
    assert not outgoing.acknowledge(start.msg_ref)  # only chunks count
    assert outgoing.acknowledge(chunks[0].msg_ref if chunks[0] else "") and outgoing.in_flight == 1
    assert not outgoing.acknowledge(chunks[0].msg_ref if chunks[0] else "")  # twice: no effect
