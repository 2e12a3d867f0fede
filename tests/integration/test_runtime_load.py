"""The node runtime under load: ``/status`` reports loop lag and process load, and HTTP answers while the
core thread is busy signing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from socp.envelope import FrameType
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
    async with asyncio.timeout(scaled(timeout)):
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
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
