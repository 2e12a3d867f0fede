"""The seed's walkthrough, for real: two ``socp-client`` processes on two nodes, driven through their stdin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from testbed.backend import ClusterBackend
from tests import scaled
from tests.integration.conftest import FIRST_USER_KEY
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Console:
    """A ``socp-client`` process: type lines into it, wait for lines out of it."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []

    async def type(self, line: str) -> None:
        """Type one line (a command or a message)."""
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())
        await self.process.stdin.drain()

    async def expect(self, text: str, timeout: float = 10.0) -> str:
        """Read stdout until a line containing ``text`` appears; fails with everything seen."""
        assert self.process.stdout is not None
        for line in self.lines:
            if text in line:
                self.lines.remove(line)
                return line
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        raise AssertionError(f"{self.name} exited before printing {text!r}; saw {self.lines}")
                    line = raw.decode().rstrip("\n")
                    if text in line:
                        return line
                    self.lines.append(line)
        except TimeoutError:
            raise AssertionError(f"{self.name} did not print {text!r} within {timeout}s; saw {self.lines}") from None


@pytest_asyncio.fixture(loop_scope="module")
async def console(tmp_path: Path, key_pool: KeyPool, cluster: ClusterBackend) -> AsyncIterator[object]:
    """``await console("alice", "peer1")`` starts a client process; all are stopped after the test."""
    started: list[Console] = []

    async def start(user: str, node: str, *extra: str) -> Console:
        key_dir = tmp_path / "keys"
        if not (key_dir / f"{user}.key.pem").exists():  # the same user again keeps its key
            key_pool.write_pem(FIRST_USER_KEY + len(started), key_dir / f"{user}.key.pem")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", "--user", user, "--server", cluster.url(node), "--key-dir", str(key_dir),
            *extra, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        started.append(Console(process, user))
        return started[-1]

    yield start
    for item in started:
        with contextlib.suppress(ProcessLookupError):
            item.process.kill()
        await item.process.wait()


async def test_walkthrough_tell_and_list_across_nodes(console: object, cluster: ClusterBackend) -> None:
    alice = await console("alice", "peer1")  # type: ignore[operator]
    await alice.expect(f"Connected to {cluster.url('peer1')} as alice")
    await alice.expect("[bootstrap] learned SERVER pubkey for")
    bob = await console("bob", "peer2", "--id", str(uuid.uuid4()))  # type: ignore[operator]
    await bob.expect(f"Connected to {cluster.url('peer2')} as bob")
    await bob.expect("[remote] alice has joined the network via server")
    await alice.expect("[remote] bob has joined the network via server")

    await alice.type("/tell bob hey there!")
    assert await bob.expect("alice: hey there!") == "alice: hey there!"

    for person, me, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
        await person.type("/list")
        await person.expect("Online users (2):")
        assert "(you)" in await person.expect(f"  {me} ")
        assert "(you)" not in await person.expect(f"  {other} ")

    await alice.type("/quit")
    assert await asyncio.wait_for(alice.process.wait(), scaled(10)) == 0
    await bob.expect("[remote] alice has left the network")


async def test_errors_are_clear_sentences(console: object) -> None:
    carol = await console("carol", "peer3")  # type: ignore[operator]
    await carol.expect("as carol")
    await carol.type("/tell nobody hello?")
    line = await carol.expect("[error]")
    assert "nobody" in line and "not online" in line
    await carol.type("/frobnicate")
    assert "/help" in await carol.expect("[error] unknown command")
    carol.process.stdin.close()  # end of input quits cleanly
    assert await asyncio.wait_for(carol.process.wait(), scaled(10)) == 0


async def test_introducer_refusal_exits_with_a_message(console: object,
                                                                             cluster: ClusterBackend) -> None:
    refused = await console("dave", cluster.node_names[0])  # type: ignore[operator]
    line = await refused.expect("introducer")
    assert "refused" in line or "introducer" in line
    assert await asyncio.wait_for(refused.process.wait(), scaled(10)) == 1


async def test_unreachable_server_exits_with_a_message(tmp_path: Path, key_pool: KeyPool) -> None:
    key_pool.write_pem(FIRST_USER_KEY, tmp_path / "erin.key.pem")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "--user", "erin", "--server", "ws://127.0.0.1:1", "--key-dir", str(tmp_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), scaled(15))
    assert process.returncode == 1
    assert "cannot connect to ws://127.0.0.1:1" in stderr.decode()


async def test_server_key_is_pinned_across_sessions(console: object, cluster: ClusterBackend, tmp_path: Path,
                                                    key_pool: KeyPool) -> None:
    first = await console("frank", "peer1")  # type: ignore[operator]
    assert "pinned for next time" in await first.expect("[bootstrap]")
    await first.type("/quit")
    assert await asyncio.wait_for(first.process.wait(), scaled(10)) == 0
    again = await console("frank", "peer1")  # type: ignore[operator]
    assert "matches the one pinned earlier" in await again.expect("[bootstrap]")
    await again.type("/quit")
    await asyncio.wait_for(again.process.wait(), scaled(10))
    # Another server answering at a pinned URL is refused: pin a different key for peer2's URL.
    known = tmp_path / "keys" / "known_servers.json"
    pins = json.loads(known.read_text())
    pins[cluster.url("peer2")] = key_pool.public_text(3)
    known.write_text(json.dumps(pins))
    impostor = await console("frank", "peer2")  # type: ignore[operator]
    assert "different server key" in await impostor.expect("socp-client:")
    assert await asyncio.wait_for(impostor.process.wait(), scaled(10)) == 1
