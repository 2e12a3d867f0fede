"""Issue 11, finding 5, against a real node process core on real sockets: a stranger's junk costs the node no
RSA signature (unsigned, counted ERRORs), and connection caps close surplus connections with 1013."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from node.config import build_parser, config_from_args
from node.runtime import CLOSE_TRY_AGAIN_LATER, NodeRuntime
from node.storage import Database, load_or_create_identity
from socp import envelope as env
from socp.envelope import FrameType
from tests import scaled
from tests.integration.test_runtime_load import http_get_port
from tests.keypool import KeyPool

pytestmark = pytest.mark.asyncio(loop_scope="function")

JUNK_FRAMES = 300  # 5-byte junk, well inside the per-connection burst, each refused with BAD_FRAME


@contextlib.asynccontextmanager
async def running_node(tmp_path: Path, key_pool: KeyPool, *flags: str) -> AsyncIterator[tuple[str, int]]:
    """A founding introducer in this process (its core on its own thread), with extra ``flags``: (url, port)."""
    key_pool.write_pem(0, tmp_path / "server.key.pem")
    args = build_parser().parse_args(["--introducer", "--name", "introducer", "--host", "127.0.0.1", "--port", "0",
                                      "--data-dir", str(tmp_path), *flags])
    config = config_from_args(args, "test")
    identity = load_or_create_identity(config.data_dir, config.name, config.server_id)
    database = Database(config.data_dir / "socp.sqlite3")
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    runtime = NodeRuntime(config, identity, database, lambda _host, port: listening.set_result(port))
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(runtime.run(stop))
            port = await asyncio.wait_for(listening, scaled(10))
            try:
                yield f"ws://127.0.0.1:{port}", port
            finally:
                stop.set()
    finally:
        database.close()


async def status(port: int) -> dict[str, Any]:
    """The node's ``/status`` body."""
    code, body = await http_get_port("127.0.0.1", port, "/status")
    assert code == 200, body
    return body


async def close_code(connection: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str]:
    """(code, reason) with which the server closes ``connection`` (the test fails if it stays open)."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                await connection.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")
    raise AssertionError("unreachable")


async def test_junk_from_an_unauthenticated_connection_costs_no_signature(tmp_path: Path, key_pool: KeyPool) -> None:
    async with running_node(tmp_path, key_pool) as (url, port):
        before = await status(port)
        async with connect(url) as stranger:
            for _ in range(JUNK_FRAMES):
                await stranger.send("junk!")
            errors = []
            async with asyncio.timeout(scaled(30)):
                while len(errors) < JUNK_FRAMES:
                    errors.append(env.parse(await stranger.recv()))
        assert {(e.type, e.payload["code"], e.sig) for e in errors} == {(FrameType.ERROR, "BAD_FRAME", "")}
        after = await status(port)
        assert after["unsigned_errors"] - before["unsigned_errors"] == JUNK_FRAMES
        assert after["signatures"] == before["signatures"], "an RSA signature was spent on a stranger's junk"


@pytest.mark.parametrize(("flags", "reason"), [
    (("--max-connections-per-ip", "3"), "too many connections from your address (3)"),
    (("--max-connections", "3"), "too many connections (3)"),
])
async def test_connections_over_a_cap_are_closed_with_1013(tmp_path: Path, key_pool: KeyPool,
                                                           flags: tuple[str, ...], reason: str) -> None:
    async with running_node(tmp_path, key_pool, *flags) as (url, port):
        held = [await connect(url) for _ in range(3)]
        try:
            # The three are open: each still answers (an unsigned BAD_FRAME for junk).
            for connection in held:
                await connection.send("junk!")
                assert env.parse(await asyncio.wait_for(connection.recv(), scaled(5))).type is FrameType.ERROR
            async with connect(url) as surplus:
                code, text = await close_code(surplus)
            assert (code, text) == (CLOSE_TRY_AGAIN_LATER, f"{reason}; try again later")
            body = await status(port)
            assert body["connections"]["refused"] == 1 and body["connections"]["open"] == 3
            await held.pop().close()
            # A place is free again once the node saw the close: poll for it, bounded.
            async with asyncio.timeout(scaled(10)):
                while (await status(port))["connections"]["open"] != 2:
                    await asyncio.sleep(0.05)
            async with connect(url) as again:
                await again.send("junk!")
                assert env.parse(await asyncio.wait_for(again.recv(), scaled(5))).type is FrameType.ERROR
        finally:
            for connection in held:
                await connection.close()
