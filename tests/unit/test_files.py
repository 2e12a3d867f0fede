"""File transfer (WIRE §5) through ServerState and UserSession on the fake wire: no event loop.

dm mode: RSA-OAEP chunks of up to 8 blocks; public mode: AES-GCM under the sender key. The server routes chunks
only after a verified FILE_START and enforces its size limit; the receiver hands a file over only when size and
SHA-256 match, and reports every refusal once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.envelope import FrameType
from socp.server import MAX_FILES_PER_SENDER
from socp.user import (
    DM_CHUNK_BYTES,
    FILE_IDLE_MS,
    FileIncoming,
    FileProgress,
    FileReceived,
    FileRejected,
    FrameRejected,
    OutboundFrame,
    OutgoingFile,
)
from tests.unit.harness import Net, Node
from tests.unit.test_public_channel_support import SessionUser, session_users


@dataclass
class Pair:
    net: Net
    a: Node
    b: Node
    alice: SessionUser
    bob: SessionUser
    carol: SessionUser


@pytest.fixture
def pair(net: Net) -> Pair:
    """alice on A; bob and carol on B (carol accepts at most 64 KiB). bob and carol do not announce hybrid file
    chunks, so the files here are the plain standard's (tests/unit/test_files_hybrid.py has the extension)."""
    intro = net.introducer("I")
    a, b = net.peer("A", intro, max_file_bytes=1024 * 1024), net.peer("B", intro)
    [alice] = session_users(net, a, "alice")
    [bob] = session_users(net, b, "bob", hybrid_files=False)
    [carol] = session_users(net, b, "carol", max_file_bytes=64 * 1024, hybrid_files=False)
    return Pair(net, a, b, alice, bob, carol)


def received(user: SessionUser) -> list[FileReceived]:
    return user.of(FileReceived)


def test_dm_file_across_servers_arrives_intact(pair: Pair) -> None:
    data = os.urandom(3 * DM_CHUNK_BYTES + 100)
    frames = pair.alice.file_frames(pair.bob.user_id, "notes.bin", data)
    types = [env.parse(f).type for f in frames]
    assert types == [FrameType.FILE_START] + [FrameType.FILE_CHUNK] * 4 + [FrameType.FILE_END]
    for frame in frames[1:-1]:
        blocks = len(crypto.b64url_decode(env.parse(frame).payload["ciphertext"])) // crypto.OAEP_BLOCK_BYTES
        assert 1 <= blocks <= 8
    pair.alice.send_frames(frames)
    [incoming] = pair.bob.of(FileIncoming)
    assert (incoming.sender_label, incoming.name, incoming.size, incoming.mode) == ("alice", "notes.bin",
                                                                                     len(data), "dm")
    [done] = received(pair.bob)
    assert done.data == data and done.sha256 == hashlib.sha256(data).hexdigest() and done.name == "notes.bin"
    assert pair.bob.of(FileRejected) == [] and received(pair.carol) == []
    # Between servers the frames travel as SERVER_DELIVER with kind; the far server hands them over signed.
    kinds = [env.parse(p.text).payload.get("kind") for p in pair.net.packets(src="A", dst="B",
                                                                           frame_type="SERVER_DELIVER")]
    assert kinds == ["FILE_START"] + ["FILE_CHUNK"] * 4 + ["FILE_END"]
    start = pair.bob.frames(FrameType.FILE_START)[0]
    assert start.sender == pair.alice.user_id and start.to == pair.bob.user_id and pair.bob.signed_by_server(start)


def test_start_is_signed_as_the_wire_says(pair: Pair) -> None:
    frames = pair.alice.file_frames(pair.bob.user_id, "a.txt", b"abc")
    start = env.parse(frames[0])
    p = start.payload
    assert set(p) == {"file_id", "name", "size", "sha256", "mode", "sender_pub", "content_sig"}
    signed = (p["file_id"] + p["name"] + str(p["size"]) + p["sha256"] + start.sender + start.to
              + str(start.ts)).encode()
    assert crypto.verify(pair.alice.key.public_key(), signed, p["content_sig"])
    assert env.parse(frames[-1]).payload == {"file_id": p["file_id"]}


def test_public_file_reaches_every_member(pair: Pair) -> None:
    data = os.urandom(100_000)
    frames = pair.alice.file_frames("public", "photo.jpg", data)
    types = [env.parse(f).type for f in frames]
    assert types[0] is FrameType.PUBLIC_CHANNEL_KEY_SHARE  # the key reaches members before the file
    assert types[1:] == [FrameType.FILE_START, FrameType.FILE_CHUNK, FrameType.FILE_CHUNK, FrameType.FILE_CHUNK,
                         FrameType.FILE_END]
    pair.alice.send_frames(frames)
    assert [f.data for f in received(pair.bob)] == [data]
    [rejected] = pair.carol.of(FileRejected)  # carol's own limit is 64 KiB
    assert "above this client's limit" in rejected.reason and received(pair.carol) == []


def test_large_files_report_progress_every_ten_percent(pair: Pair) -> None:
    data = os.urandom(600_000)
    pair.alice.send_frames(pair.alice.file_frames("public", "big.bin", data))
    steps = [event.received * 10 // event.size for event in pair.bob.of(FileProgress)]
    assert steps == sorted(set(steps)) and len(steps) >= 7 and steps[-1] == 9
    assert [f.data for f in received(pair.bob)] == [data]


def test_a_tampered_chunk_is_rejected_and_nothing_is_kept(pair: Pair) -> None:
    net, bob = pair.net, pair.bob
    data = os.urandom(2 * DM_CHUNK_BYTES)
    frames = pair.alice.file_frames(bob.user_id, "doc.pdf", data)
    # A malicious server swaps chunk 1 for other data encrypted to bob: it decrypts, but the hash gives it away.
    chunk = env.parse(frames[2])
    forged = crypto.rsa_encrypt(crypto.decode_public_key(bob.pubkey), b"x" * DM_CHUNK_BYTES)
    swapped = env.make(FrameType.FILE_CHUNK, pair.alice.user_id, bob.user_id, chunk.ts,
                       {**chunk.payload, "ciphertext": forged}, pair.b.key)
    bob_link = next(end for end, other in net._wires.items() if end[0] == "B" and other[0] == "bob")
    net.drop = lambda packet: packet.dst == "bob" and packet.type == "FILE_CHUNK" and '"index":1' in packet.text
    pair.alice.send_frames(frames[:3])
    net.drop = None
    net._enqueue_data(bob_link, swapped.to_wire())
    pair.alice.send_frames(frames[3:])
    [rejected] = bob.of(FileRejected)
    assert rejected.reason == "SHA-256 mismatch: the file was altered in transit"
    assert received(bob) == []


def test_garbage_chunk_hash_and_size_mismatch_are_rejected(pair: Pair) -> None:
    alice, bob, net = pair.alice, pair.bob, pair.net
    # A chunk that does not decrypt.
    frames = alice.file_frames(bob.user_id, "a.bin", os.urandom(1000))
    chunk = env.parse(frames[1])
    garbled = alice.frame(FrameType.FILE_CHUNK, bob.user_id, {**chunk.payload, "ciphertext": "A" * 683})
    alice.send_frames([frames[0], garbled.to_wire(), frames[2]])
    # The announced SHA-256 does not match (signed that way by the sender itself).
    data = os.urandom(500)
    wrong_hash = alice.session.send_file(bob.user_id, "b.bin", data, net.now)
    wrong_hash.sha256 = "0" * 64
    alice.send_frames(list(iter(lambda: wrong_hash.next_frame(net.now), None)))
    # Fewer bytes than announced.
    short = alice.session.send_file(bob.user_id, "c.bin", data, net.now)
    short.size = 501
    alice.send_frames(list(iter(lambda: short.next_frame(net.now), None)))
    reasons = [event.reason for event in bob.of(FileRejected)]
    assert reasons == ["chunk 0 does not decrypt (altered in transit?)",
                       "SHA-256 mismatch: the file was altered in transit",
                       "received 500 bytes, but 501 were announced"]
    assert received(bob) == []
    assert bob.of(FrameRejected) == []  # the END after a discarded transfer is dropped quietly


def test_chunks_out_of_order_discard_the_file(pair: Pair) -> None:
    frames = pair.alice.file_frames(pair.bob.user_id, "a.bin", os.urandom(3 * DM_CHUNK_BYTES))
    pair.net.drop = lambda packet: packet.dst == "bob" and '"index":1' in packet.text
    pair.alice.send_frames(frames)
    [rejected] = pair.bob.of(FileRejected)
    assert rejected.reason == "chunk 2 arrived where chunk 1 was expected" and received(pair.bob) == []


def test_the_server_enforces_its_size_limit(pair: Pair) -> None:
    alice, net = pair.alice, pair.net
    big = alice.session.send_file(pair.bob.user_id, "huge.iso", b"", net.now)
    big.size = 2 * 1024 * 1024  # over A's 1 MiB limit; the content_sig covers this size
    frames = list(iter(lambda: big.next_frame(net.now), None))
    alice.send_frames(frames)
    [error] = alice.errors()
    assert error.payload["code"] == "TOO_LARGE"
    assert error.payload["detail"] == "file of 2097152 bytes exceeds this server's limit of 1048576 bytes (1 MiB)"
    assert pair.bob.frames(FrameType.FILE_START) == [] and pair.bob.frames(FrameType.FILE_END) == []


def test_the_server_refuses_file_frames_that_do_not_verify(pair: Pair) -> None:
    alice, bob, net = pair.alice, pair.bob, pair.net
    frames = [env.parse(f) for f in alice.file_frames(bob.user_id, "a.txt", b"hello")]
    start = frames[0]
    bad_sig = alice.frame(FrameType.FILE_START, bob.user_id, {**start.payload, "size": 6})
    other_key = alice.frame(FrameType.FILE_START, bob.user_id, {**start.payload, "sender_pub": bob.pubkey,
                                                                "file_id": "f2"})
    wrong_mode = alice.frame(FrameType.FILE_START, bob.user_id, {**start.payload, "mode": "public",
                                                                 "file_id": "f3"})
    reused = alice.frame(FrameType.FILE_START, bob.user_id, {**start.payload, "file_id": "f3"})
    for frame, code, words in [(bad_sig, "INVALID_SIG", "content_sig"), (other_key, "BAD_FRAME", "sender_pub"),
                               (wrong_mode, "BAD_FRAME", "mode"), (reused, "BAD_FRAME", "used already")]:
        alice.clear()
        alice.send(frame)
        [error] = alice.errors()
        assert (error.payload["code"], error.payload["msg_ref"]) == (code, frame.msg_ref)
        assert words in error.payload["detail"]
    alice.clear()
    alice.send_frames([f.to_wire() for f in frames[1:]])  # the refused transfer's chunks: dropped quietly
    assert alice.errors() == []
    stray = alice.frame(FrameType.FILE_CHUNK, bob.user_id, {**frames[1].payload, "file_id": "never-started"})
    alice.send(stray)
    [error] = alice.errors()
    assert error.payload["code"] == "BAD_FRAME" and "without an accepted FILE_START" in error.payload["detail"]
    assert bob.frames(FrameType.FILE_START) == [] and bob.frames(FrameType.FILE_CHUNK) == []
    assert not any(p.type == "SERVER_DELIVER" and "FILE_" in p.text for p in net.delivered)


def test_a_sender_that_lies_about_the_size_is_cut_off(pair: Pair) -> None:
    alice, net = pair.alice, pair.net
    outgoing = alice.session.send_file("public", "tiny.txt", b"", net.now)
    outgoing.size = 1
    frames = list(iter(lambda: outgoing.next_frame(net.now), None))
    start = frames[-2]
    file_id = env.parse(start).payload["file_id"]
    alice.send_frames(frames[:-1])
    blob = crypto.aes_encrypt(b"k" * 32, os.urandom(30 * 1024))  # 40 kB of base64: the second one overflows
    alice.clear()
    for index in range(3):
        alice.send(alice.frame(FrameType.FILE_CHUNK, "public", {"file_id": file_id, "index": index,
                                                                "ciphertext": blob}))
    codes = [error.payload["code"] for error in alice.errors()]
    assert codes == ["TOO_LARGE"]  # told once; the rest of the transfer is dropped quietly
    assert len(pair.bob.frames(FrameType.FILE_CHUNK)) == 1


def test_a_recipient_who_left_is_reported_once_per_file(pair: Pair) -> None:
    alice, bob, net = pair.alice, pair.bob, pair.net
    frames = alice.file_frames(bob.user_id, "a.bin", os.urandom(4 * DM_CHUNK_BYTES))
    alice.send_frames(frames[:2])
    # bob leaves B, but A has not heard yet: B bounces the rest, A tells alice once.
    net.drop = lambda packet: packet.type == "USER_REMOVE"
    bob.disconnect()
    alice.send_frames(frames[2:])
    net.drop = None
    errors = alice.errors("USER_NOT_FOUND")
    # (Every frame here has the same ts, so the msg_ref may name any frame of the file.)
    assert len(errors) == 1 and errors[0].payload["msg_ref"].startswith("FILE_")


def test_stalled_transfers_are_abandoned(pair: Pair) -> None:
    frames = pair.alice.file_frames(pair.bob.user_id, "a.bin", os.urandom(2 * DM_CHUNK_BYTES))
    pair.alice.send_frames(frames[:2])
    assert pair.bob.session.expire_transfers(pair.net.now + FILE_IDLE_MS) == []
    [event] = pair.bob.session.expire_transfers(pair.net.now + FILE_IDLE_MS + 1)
    assert isinstance(event, FileRejected) and "abandoned" in event.reason


def test_the_sender_refuses_files_above_its_limit(pair: Pair) -> None:
    with pytest.raises(Exception, match="above the limit of 65536 bytes"):
        pair.carol.session.send_file(pair.bob.user_id, "big", b"x" * 65537, pair.net.now)


def test_a_sender_may_have_only_so_many_files_in_flight(pair: Pair) -> None:
    alice, net = pair.alice, pair.net
    starts = []
    for i in range(MAX_FILES_PER_SENDER + 1):
        outgoing = alice.session.send_file(pair.bob.user_id, f"f{i}", b"x", net.now)
        starts.append(outgoing.next_frame(net.now) or "")
    alice.send_frames(starts)
    codes = [error.payload["code"] for error in alice.errors()]
    assert codes == ["RATE_LIMITED"]
    assert len(pair.bob.frames(FrameType.FILE_START)) == MAX_FILES_PER_SENDER


def test_any_frame_abandons_a_stalled_transfer(pair: Pair) -> None:
    net, bob = pair.net, pair.bob
    frames = pair.alice.file_frames(bob.user_id, "a.bin", os.urandom(2 * DM_CHUNK_BYTES))
    pair.alice.send_frames(frames[:2])
    net.now += FILE_IDLE_MS + 1
    pair.alice.public("still there?")  # unrelated traffic after the idle time
    [rejected] = bob.of(FileRejected)
    assert "abandoned" in rejected.reason and received(bob) == []


class RecordingSigner:
    """All an :class:`OutgoingFile` needs of its sender (socp.user.FileSigner): no session, no private key."""

    user_id = "sender"
    pubkey = "SENDER-PUB"

    def __init__(self) -> None:
        self.signed: list[tuple[str, str, int, str, str, int]] = []

    def sign_file(self, file_id: str, name: str, size: int, sha256: str, to: str, ts: int) -> str:
        self.signed.append((file_id, name, size, sha256, to, ts))
        return "SIG"

    def next_ts(self, now: int) -> int:
        return now

    def frame(self, frame_type: FrameType, to: str, now: int, payload: dict[str, Any], *,
              signed: bool = False) -> OutboundFrame:
        made = env.make(frame_type, self.user_id, to, now, payload)
        return OutboundFrame(made.to_wire(), made.msg_ref)


def test_an_outgoing_file_needs_only_a_signer() -> None:
    signer = RecordingSigner()
    data = b"x" * 100
    outgoing = OutgoingFile(signer, "public", "a.txt", data, "f1", [], (bytes(32), "k1"), None)
    frames = []
    while (text := outgoing.next_frame(10 + len(frames))) is not None:
        frames.append(env.parse(text))
    assert [f.type for f in frames] == [FrameType.FILE_START, FrameType.FILE_CHUNK, FrameType.FILE_END]
    assert frames[0].payload["content_sig"] == "SIG" and frames[0].payload["key_id"] == "k1"
    assert signer.signed == [("f1", "a.txt", 100, hashlib.sha256(data).hexdigest(), "public", 10)]
    assert outgoing.done and outgoing.sent_bytes == 100
