"""The node runtime: the core runs off the event loop, ``/status`` reports loop lag and process load, HTTP
answers while the core thread is busy signing, and a bug in one core call costs one connection, not the node."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from node.config import build_parser, config_from_args
from node.runtime import NodeRuntime
from node.storage import Database, load_or_create_identity
from socp import envelope as env
from socp.actions import LinkId
from socp.envelope import FrameType
from socp.server import ServerState
from testbed.backend import ClusterBackend
from tests import scaled
from tests.integration.conftest import FIRST_USER_KEY
from tests.integration.wire import RawUser
from tests.keypool import KeyPool

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.socp_cluster(peers=1)]

FLOOD_USERS = 4
FLOOD_FRAMES = 150  # per user: well inside the per-connection burst (1000), each answered by a signed ERROR


async def http_get(cluster: ClusterBackend, node: str, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """``GET path`` on ``node``'s port: (HTTP status, JSON body); fails the test if no answer within ``timeout``
    (scaled)."""
    address = urlsplit(cluster.url(node))
    assert address.hostname and address.port
    return await http_get_port(address.hostname, address.port, path, timeout)


async def http_get_port(host: str, port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """``GET path`` on ``host:port``, as :func:`http_get`."""
    async with asyncio.timeout(scaled(timeout)):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest_asyncio.fixture(loop_scope="module")
async def flooders(cluster: ClusterBackend, key_pool: KeyPool) -> AsyncIterator[list[RawUser]]:
    """Joined raw users on peer1."""
    users = []
    try:
        for index in range(FLOOD_USERS):
            user = await RawUser.open(cluster.url("peer1"), key_pool.key(FIRST_USER_KEY + index))
            await user.join(f"flood{index}")
            users.append(user)
        yield users
    finally:
        for user in users:
            await user.close()


async def test_status_reports_loop_lag_and_process_load(cluster: ClusterBackend) -> None:
    deadline = time.monotonic() + scaled(10)
    while True:
        status, body = await http_get(cluster, "peer1", "/status")
        assert status == 200, body
        if body["loop_lag_ms"]["samples"] >= 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    lag = body["loop_lag_ms"]
    assert set(lag) == {"p50", "p99", "max", "samples"}, lag
    assert lag["samples"] >= 3, lag
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"], lag
    process = body["process"]
    assert set(process) == {"cpu_seconds", "rss_mib", "peak_rss_mib"}, process
    assert process["cpu_seconds"] > 0, process
    assert 5 < process["rss_mib"] < 4096, process
    assert process["peak_rss_mib"] >= process["rss_mib"] - 0.1, process
    # The core's own fields are still there, merged with the runtime's.
    assert body["healthy"] is True and body["server_id"] and isinstance(body["linked_servers"], list), body
    health_status, health = await http_get(cluster, "peer1", "/healthz")
    assert health_status == 200 and "loop_lag_ms" in health and "process" in health, health


async def test_http_answers_while_the_core_signs_a_burst(cluster: ClusterBackend, flooders: list[RawUser]) -> None:
    """Each bad frame costs the core an RSA signature (its ERROR); /healthz must answer in the middle of it."""
    before = (await http_get(cluster, "peer1", "/status"))[1]["process"]["cpu_seconds"]
    last_error_at = 0.0
    probes: list[tuple[float, int]] = []

    async def drain(user: RawUser) -> None:
        nonlocal last_error_at
        for _ in range(FLOOD_FRAMES):
            error = await user.recv_type(FrameType.ERROR, timeout=30)
            assert error.payload["code"] == "BAD_FRAME", error.payload
        last_error_at = max(last_error_at, time.monotonic())

    async def probe() -> None:
        while True:
            status, _ = await http_get(cluster, "peer1", "/healthz")
            probes.append((time.monotonic(), status))
            await asyncio.sleep(0.05)

    for user in flooders:
        for _ in range(FLOOD_FRAMES):
            await user.send("{not json")
    async with asyncio.TaskGroup() as tasks:
        prober = tasks.create_task(probe())
        await asyncio.gather(*(drain(user) for user in flooders))
        prober.cancel()

    assert probes, "no /healthz answer at all during the burst"
    assert all(status == 200 for _, status in probes), probes
    assert probes[0][0] < last_error_at, "/healthz answered only after the core had answered every bad frame"
    status, body = await http_get(cluster, "peer1", "/status")
    assert status == 200 and body["healthy"], body
    assert body["process"]["cpu_seconds"] > before, body["process"]
    print(f"\nafter {FLOOD_USERS * FLOOD_FRAMES} signed ERRORs: {len(probes)} /healthz answers during the burst, "
          f"loop_lag_ms {body['loop_lag_ms']}, process {body['process']}")


async def test_core_runs_off_the_loop_and_a_failing_call_costs_one_connection(
        tmp_path: Path, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process introducer whose core raises on one frame and on its first timer keeps serving."""
    receive_threads: set[str] = set()
    timer_calls = 0
    receive_text, handle_timer = ServerState.receive_text, ServerState.handle_timer

    def receive(state: ServerState, link_id: LinkId, text: str | bytes, now: int) -> None:
        receive_threads.add(threading.current_thread().name)
        if text == "boom":
            raise RuntimeError("a bug reached by this frame")
        receive_text(state, link_id, text, now)

    def timer(state: ServerState, now: int, *, processed_until: int | None = None) -> None:
        nonlocal timer_calls
        timer_calls += 1
        if timer_calls == 1:
            raise RuntimeError("a bug in a timer")
        handle_timer(state, now, processed_until=processed_until)

    monkeypatch.setattr(ServerState, "receive_text", receive)
    monkeypatch.setattr(ServerState, "handle_timer", timer)
    key_pool.write_pem(0, tmp_path / "server.key.pem")
    args = build_parser().parse_args(["--introducer", "--name", "introducer", "--host", "127.0.0.1", "--port", "0",
                                      "--data-dir", str(tmp_path), "--heartbeat-interval", "0.5",
                                      "--peer-timeout", "2", "--presence-sync-interval", "0.5"])
    config = config_from_args(args, "test")
    identity = load_or_create_identity(config.data_dir, config.name, config.server_id)
    database = Database(config.data_dir / "socp.sqlite3")
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    runtime = NodeRuntime(config, identity, database, lambda _host, port: listening.set_result(port))
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tasks:
            node = tasks.create_task(runtime.run(stop))
            port = await asyncio.wait_for(listening, scaled(10))
            url = f"ws://127.0.0.1:{port}"
            async with connect(url) as victim:
                await victim.send("boom")
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(scaled(5)):
                        while True:
                            await victim.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011, closed.value
            async with connect(url) as bystander:
                await bystander.send("{not json")
                async with asyncio.timeout(scaled(5)):
                    frame = env.parse(await bystander.recv())
                assert frame.type is FrameType.ERROR and frame.payload["code"] == "BAD_FRAME", frame
            async with asyncio.timeout(scaled(10)):
                while timer_calls < 3:
                    await asyncio.sleep(0.05)
            status, body = await http_get_port("127.0.0.1", port, "/status")
            assert status == 200 and body["server_id"] and body["loop_lag_ms"]["samples"] >= 0, body
            assert receive_threads and threading.current_thread().name not in receive_threads, receive_threads
            stop.set()
            await asyncio.wait_for(node, scaled(10))
    finally:
        stop.set()
        database.close()
