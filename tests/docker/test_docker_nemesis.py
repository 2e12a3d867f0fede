"""Network faults on the docker backend: a partition into groups (one network per group) and its heal."""

from __future__ import annotations

import pytest

from testbed import checks
from testbed.backend import BackendUnsupported
from testbed.docker_backend import DockerCluster, docker_client
from testbed.proxy import Effect
from testbed.waiting import Pending, poll
from tests import scaled
from tests.clients import UserFactory

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]


async def _links(cluster: DockerCluster) -> dict[str, set[str]]:
    answers = {name: (await cluster.health(name))[1] for name in cluster.node_names}
    names = {str(body.get("server_id")): name for name, body in answers.items()}
    result = {}
    for name, body in answers.items():
        linked = body.get("linked_servers")
        result[name] = {names.get(str(s), str(s)) for s in linked} if isinstance(linked, list) else set()
    return result


async def test_partition_into_groups_and_heal(connect: UserFactory, docker_cluster: DockerCluster) -> None:
    users = [await connect(node, f"u-{node}") for node in docker_cluster.peer_names]
    result = await checks.converged(users, {u.user_id for u in users}, timeout=scaled(15))
    assert result.ok, result.detail

    await docker_cluster.partition_groups([["introducer", "peer1"], ["peer2", "peer3"]])
    want = {"introducer": {"peer1"}, "peer1": {"introducer"}, "peer2": {"peer3"}, "peer3": {"peer2"}}

    async def split() -> bool | Pending:
        links = await _links(docker_cluster)
        return True if links == want else Pending(f"links {links}")

    await poll(split, scaled(20), "the links across the partition to die")
    assert not any(u.closed for u in users), "users keep their connections: the access network is not cut"

    await docker_cluster.heal_network()
    await docker_cluster.wait_healthy(scaled(60))
    # The group's network stays attached (links formed inside the group survive the heal) until the next one.
    groups = [n.name for n in docker_client().networks.list() if n.name.startswith(f"{docker_cluster.network}-part")]
    assert groups == [f"{docker_cluster.network}-part2"]
    result = await checks.converged(users, {u.user_id for u in users}, timeout=scaled(30))
    assert result.ok, result.detail

    with pytest.raises(BackendUnsupported):
        await docker_cluster.degrade(Effect(delay=0.1))
