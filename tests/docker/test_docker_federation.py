"""The docker backend end to end: containers, published ports on 127.0.0.1, crashes and partitions.

The tests share one federation (an introducer and three peers) and run in file order; the last one
stops it and checks that nothing labelled with the run is left.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testbed import checks, compose
from testbed.backend import ClusterSpec
from testbed.docker_backend import DockerCluster, DockerUnavailable, docker_client
from tests import scaled
from tests.clients import UserFactory

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]


async def test_full_mesh_healthy_and_container_healthchecks_pass(docker_cluster: DockerCluster) -> None:
    nodes = docker_cluster.node_names
    assert nodes == ["introducer", "peer1", "peer2", "peer3"]
    ids = docker_cluster.server_ids
    for node in nodes:
        assert docker_cluster.url(node).startswith("ws://127.0.0.1:")
        status, body = await docker_cluster.health(node)
        assert status == 200, (node, body)
        assert body["server_id"] == ids[node]
        linked = body["linked_servers"]
        assert isinstance(linked, list)
        assert set(linked) == {sid for name, sid in ids.items() if name != node}
    states: dict[str, str] = {}

    async def all_healthy() -> bool:
        states.update({node: await docker_cluster.container_health(node) for node in nodes})
        return all(state == "healthy" for state in states.values())

    deadline = asyncio.get_running_loop().time() + scaled(30)
    while not await all_healthy():
        assert asyncio.get_running_loop().time() < deadline, f"HEALTHCHECK states: {states}"
        await asyncio.sleep(0.5)


async def test_every_container_is_labelled_and_published_on_loopback_only(docker_cluster: DockerCluster) -> None:
    client = docker_client()
    containers = client.containers.list(filters={"label": f"{compose.RUN_LABEL}={docker_cluster.project}"})
    assert sorted(c.labels[compose.NODE_LABEL] for c in containers) == sorted(docker_cluster.node_names)
    for container in containers:
        assert container.labels[compose.PROJECT_LABEL] == compose.PROJECT_VALUE
        assert container.name == f"{docker_cluster.project}-{container.labels[compose.NODE_LABEL]}"
        bindings = [binding for bound in container.attrs["NetworkSettings"]["Ports"].values() if bound
                    for binding in bound]
        assert bindings and {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}
    network = client.networks.get(docker_cluster.network)
    assert network.attrs["Labels"][compose.RUN_LABEL] == docker_cluster.project


async def test_users_on_every_peer_converge_and_delivery_is_exactly_once(
        connect: UserFactory, docker_cluster: DockerCluster) -> None:
    clients = [await connect(node, f"user{i}") for i, node in enumerate(docker_cluster.peer_names * 2)]
    result = await checks.converged(clients, {client.user_id for client in clients}, timeout=scaled(15))
    assert result.ok, result.detail
    delivered = await checks.delivery(clients, timeout=scaled(30))
    assert delivered.ok, delivered.detail
    assert delivered.data["delivered"] == len(clients) * (len(clients) - 1) == 30
    assert delivered.data["duplicates"] == 0


async def test_killed_peer_leaves_every_directory_and_reconverges_after_restart(
        connect: UserFactory, docker_cluster: DockerCluster) -> None:
    survivors = [await connect("peer1", "s1"), await connect("peer2", "s2")]
    doomed = await connect("peer3", "doomed")
    result = await checks.converged(survivors, {c.user_id for c in [*survivors, doomed]}, timeout=scaled(15))
    assert result.ok, result.detail

    await docker_cluster.kill("peer3")
    result = await checks.converged(survivors, {c.user_id for c in survivors}, timeout=scaled(15))
    assert result.ok, result.detail
    assert (await docker_cluster.health("peer3"))[0] == 0

    await docker_cluster.start_node("peer3")
    await docker_cluster.wait_healthy(scaled(60))
    back = await connect("peer3", "back")
    everyone = [*survivors, back]
    result = await checks.converged(everyone, {c.user_id for c in everyone}, timeout=scaled(15))
    assert result.ok, result.detail
    delivered = await checks.delivery(everyone, timeout=scaled(20))
    assert delivered.ok, delivered.detail


async def test_partitioned_peer_loses_its_users_everywhere_and_heals(
        connect: UserFactory, docker_cluster: DockerCluster) -> None:
    survivors = [await connect("peer1", "p1"), await connect("peer2", "p2")]
    cut_off = await connect("peer3", "cut-off")
    everyone = [*survivors, cut_off]
    result = await checks.converged(everyone, {c.user_id for c in everyone}, timeout=scaled(15))
    assert result.ok, result.detail
    url = docker_cluster.url("peer3")

    await docker_cluster.partition("peer3")
    # Server links die by timeout (2 s) on both sides; the users stay connected to their own node.
    result = await checks.converged(survivors, {c.user_id for c in survivors}, timeout=scaled(15))
    assert result.ok, result.detail
    assert result.seconds > 1.0, "users must leave through the peer timeout, not through a disconnect"
    result = await checks.converged([cut_off], {cut_off.user_id}, timeout=scaled(15))
    assert result.ok, result.detail
    assert not cut_off.closed and docker_cluster.url("peer3") == url
    await docker_cluster.wait_healthy(scaled(30))  # the others are still fully meshed
    _, body = await docker_cluster.health("peer3")
    assert body.get("linked_servers") == [], body

    await docker_cluster.heal("peer3")
    await docker_cluster.wait_healthy(scaled(60))
    result = await checks.converged(everyone, {c.user_id for c in everyone}, timeout=scaled(20))
    assert result.ok, result.detail
    newcomer = await connect("peer3", "newcomer")
    everyone.append(newcomer)
    result = await checks.converged(everyone, {c.user_id for c in everyone}, timeout=scaled(20))
    assert result.ok, result.detail
    delivered = await checks.delivery(everyone, timeout=scaled(20))
    assert delivered.ok, delivered.detail


async def test_missing_image_is_a_clear_error(docker_ready: None, tmp_path: Path) -> None:
    cluster = DockerCluster(tmp_path, ClusterSpec(peers=1), image="socp-node:no-such-tag")
    with pytest.raises(DockerUnavailable, match="make image"):
        await cluster.start(timeout=10)
    await cluster.stop()
    assert not docker_client().volumes.list(filters={"label": f"{compose.RUN_LABEL}={cluster.project}"})


async def test_stop_removes_everything_of_the_run(docker_cluster: DockerCluster) -> None:
    # Runs last: stops the shared federation (the fixture's own stop() then finds nothing to do).
    await docker_cluster.stop()
    await docker_cluster.stop()  # idempotent
    client = docker_client()
    label = {"label": f"{compose.RUN_LABEL}={docker_cluster.project}"}
    assert client.containers.list(all=True, filters=label) == []
    assert client.networks.list(filters=label) == []
    assert client.volumes.list(filters=label) == []
    logs = docker_cluster.collect_logs(docker_cluster.workdir / "collected")
    assert {path.stem for path in logs} == set(docker_cluster.node_names), "logs are kept after stop()"

