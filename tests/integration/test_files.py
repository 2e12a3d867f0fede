"""File transfer (/file) across a real federation: intact delivery, tampering, hostile names, size limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

from socp import crypto
from socp import envelope as env
from socp.envelope import FrameType
from socp.user import DM_CHUNK_BYTES, FileIncoming, FileProgress, FileReceived, FileRejected
from testbed.local import LocalCluster
from tests import scaled
from tests.clients import UserFactory, converge
from tests.integration.conftest import FIRST_USER_KEY
from tests.integration.wire import RawUser, now_ms
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]


def raw_file(sender: RawUser, to: str, name: str, data: bytes, *, recipient_pub: str | None = None,
             sha256: str | None = None, size: int | None = None) -> list[env.Envelope]:
    """A dm file as a hand-built sender would send it (correctly signed, whatever it claims)."""
    ts = now_ms()
    file_id = crypto.random_token(9)
    digest = sha256 or hashlib.sha256(data).hexdigest()
    size = len(data) if size is None else size
    start = env.make(FrameType.FILE_START, sender.user_id, to, ts, {
        "file_id": file_id, "name": name, "size": size, "sha256": digest, "mode": "dm",
        "sender_pub": sender.pubkey,
        "content_sig": crypto.sign_file(sender.key, file_id, name, size, digest, sender.user_id, to, ts)})
    key = crypto.decode_public_key(recipient_pub) if recipient_pub else None
    chunks = [env.make(FrameType.FILE_CHUNK, sender.user_id, to, ts, {
        "file_id": file_id, "index": i,
        "ciphertext": crypto.rsa_encrypt(key, data[o:o + DM_CHUNK_BYTES]) if key else "A" * 683})
        for i, o in enumerate(range(0, len(data), DM_CHUNK_BYTES))]
    return [start, *chunks, env.make(FrameType.FILE_END, sender.user_id, to, ts, {"file_id": file_id})]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_a_file_of_several_hundred_kib_crosses_nodes_intact(connect: UserFactory, tmp_path: Path) -> None:
    alice = await connect("peer1", "alice")
    bob = await connect("peer3", "bob")
    await converge([alice, bob])
    data = os.urandom(300 * 1024)
    source = tmp_path / "holiday.jpg"
    source.write_bytes(data)
    await alice.send_file("bob", source)
    incoming = await bob.wait_for(lambda e: isinstance(e, FileIncoming), scaled(10))
    assert isinstance(incoming, FileIncoming) and (incoming.name, incoming.size) == ("holiday.jpg", len(data))
    done = await bob.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), scaled(60),
                              description="the whole file")
    assert isinstance(done, FileReceived), done
    assert done.path is not None and Path(done.path) == tmp_path / "bob" / "holiday.jpg"
    assert Path(done.path).read_bytes() == data and done.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_public_file_reaches_everyone_with_progress(connect: UserFactory, tmp_path: Path) -> None:
    alice = await connect("peer1", "alice")
    others = [await connect("peer2", "bob"), await connect("peer3", "carol")]
    await converge([alice, *others])
    data = os.urandom(700 * 1024)
    source = tmp_path / "slides.pdf"
    source.write_bytes(data)
    await alice.send_file("all", source)
    for user in others:
        progress = await user.wait_for(lambda e: isinstance(e, FileProgress), scaled(30))
        assert isinstance(progress, FileProgress) and progress.size == len(data)
        done = await user.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), scaled(30))
        assert isinstance(done, FileReceived) and done.mode == "public", done
        assert done.path is not None and Path(done.path).read_bytes() == data


async def test_hash_mismatch_and_tampered_chunks_are_rejected_and_nothing_is_written(
        connect: UserFactory, cluster: LocalCluster, key_pool: KeyPool, tmp_path: Path) -> None:
    bob = await connect("peer2", "bob")
    mallory = await RawUser.open(cluster.url("peer1"), key_pool.key(FIRST_USER_KEY + 9))
    try:
        await mallory.join("mallory")
        await converge([bob], mallory.user_id)
        data = os.urandom(10_000)
        lying = raw_file(mallory, bob.user_id, "lie.bin", data, recipient_pub=bob.session.pubkey,
                         sha256=hashlib.sha256(b"something else").hexdigest())
        garbage = raw_file(mallory, bob.user_id, "garbage.bin", data)  # chunks that do not decrypt
        for frame in [*lying, *garbage]:
            await mallory.send(frame)
        reasons = []
        for _ in range(2):
            event = await bob.wait_for(lambda e: isinstance(e, FileRejected | FileReceived), scaled(20))
            assert isinstance(event, FileRejected), event
            reasons.append((event.name, event.reason))
        assert reasons == [("lie.bin", "SHA-256 mismatch: the file was altered in transit"),
                           ("garbage.bin", "chunk 0 does not decrypt (altered in transit?)")]
        assert files_in(tmp_path / "bob") == []
    finally:
        await mallory.close()


async def test_path_traversal_names_are_neutralised(connect: UserFactory, cluster: LocalCluster, key_pool: KeyPool,
                                                    tmp_path: Path) -> None:
    bob = await connect("peer3", "bob")
    mallory = await RawUser.open(cluster.url("peer1"), key_pool.key(FIRST_USER_KEY + 9))
    try:
        await mallory.join("mallory")
        await converge([bob], mallory.user_id)
        for name in ["../../escape.txt", "/etc/cron.d/evil", "..\\..\\win.ini", ".bashrc", ".."]:
            for frame in raw_file(mallory, bob.user_id, name, name.encode(), recipient_pub=bob.session.pubkey):
                await mallory.send(frame)
            done = await bob.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), scaled(20))
            assert isinstance(done, FileReceived) and done.path is not None, done
            assert Path(done.path).parent == tmp_path / "bob" and Path(done.path).read_bytes() == name.encode()
        assert files_in(tmp_path / "bob") == ["_bashrc", "escape.txt", "evil", "file", "win.ini"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bob"]
    finally:
        await mallory.close()


async def test_size_limits_are_enforced_with_a_clear_error(connect: UserFactory, cluster: LocalCluster,
                                                           key_pool: KeyPool, tmp_path: Path) -> None:
    small = await connect("peer2", "small", max_file_bytes=1000)
    mallory = await RawUser.open(cluster.url("peer1"), key_pool.key(FIRST_USER_KEY + 9))
    try:
        await mallory.join("mallory")
        await converge([small], mallory.user_id)
        # The node's limit (16 MiB by default): refused at the sender's node, nothing forwarded.
        [start, *_] = raw_file(mallory, small.user_id, "huge.iso", b"", size=17 * 1024 * 1024)
        await mallory.send(start)
        error = await mallory.error()
        assert error["code"] == "TOO_LARGE" and "exceeds this server's limit of 16777216 bytes" in error["detail"]
        # The client's own limit: refused on arrival, nothing written.
        for frame in raw_file(mallory, small.user_id, "big.bin", os.urandom(5000), recipient_pub=small.session.pubkey):
            await mallory.send(frame)
        rejected = await small.wait_for(lambda e: isinstance(e, FileRejected | FileReceived), scaled(20))
        assert isinstance(rejected, FileRejected) and "above this client's limit of 1000 bytes" in rejected.reason
        assert files_in(tmp_path / "small") == []
        # And the sender's: refused before anything is sent.
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(2000))
        with pytest.raises(Exception, match="above the limit of 1000 bytes"):
            await small.send_file(mallory.user_id, source)
    finally:
        await mallory.close()


async def test_the_cli_sends_and_receives_all_and_files(cluster: LocalCluster, key_pool: KeyPool,
                                                        tmp_path: Path) -> None:
    """Two people on different nodes, each running socp-client: /all and /file both ways, verified."""
    people = {}
    for name, node, index in (("alice", "peer1", FIRST_USER_KEY + 10), ("bob", "peer2", FIRST_USER_KEY + 11)):
        key_dir = tmp_path / f"{name}-keys"
        key_pool.write_pem(index, key_dir / f"{name}.key.pem")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", "--user", name, "--server", cluster.url(node), "--key-dir",
            str(key_dir), "--downloads", str(tmp_path / f"{name}-downloads"), cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        people[name] = process
    lines: dict[str, list[str]] = {name: [] for name in people}

    async def expect(name: str, wanted: str) -> None:
        stream = people[name].stdout
        assert stream is not None
        async with asyncio.timeout(scaled(30)):
            while not any(wanted in line for line in lines[name]):
                raw = await stream.readline()
                assert raw, f"{name} exited; output so far: {lines[name]}"
                lines[name].append(raw.decode().rstrip("\n"))

    async def say(name: str, line: str) -> None:
        stdin = people[name].stdin
        assert stdin is not None
        stdin.write((line + "\n").encode())
        await stdin.drain()

    try:
        await expect("alice", "Connected to")
        await expect("bob", "Connected to")
        await expect("alice", "bob has joined")
        note = tmp_path / "note.txt"
        note.write_text("a note for bob\n")
        await say("alice", "/all hello from alice")
        await expect("bob", "[all] alice: hello from alice")
        await say("bob", "/all hi alice")
        await expect("alice", "[all] bob: hi alice")
        await say("alice", f"/file bob {note}")
        await expect("alice", "[file] sent note.txt to bob")
        await expect("bob", "[file] received note.txt from alice")
        saved = tmp_path / "bob-downloads" / "note.txt"
        assert saved.read_text() == "a note for bob\n"
        assert f"SHA-256 verified): {saved}" in lines["bob"][-1]
    finally:
        for process in people.values():
            if process.stdin is not None:
                process.stdin.close()
        for process in people.values():
            try:
                async with asyncio.timeout(scaled(10)):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
