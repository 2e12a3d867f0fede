"""Three introducers: one network, and peers still join when the first introducer is down."""

from __future__ import annotations

from pathlib import Path

from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from tests import scaled
from tests.clients import UserFactory, converge
from tests.keypool import KeyPool


async def test_three_introducers_form_one_mesh_and_survive_the_first(tmp_path: Path, key_pool: KeyPool) -> None:
    cluster = LocalCluster(tmp_path, ClusterSpec(peers=2, introducers=3))
    users = UserFactory(cluster.url, key_pool)
    async with cluster:
        assert cluster.node_names == ["introducer1", "introducer2", "introducer3", "peer1", "peer2"]
        await cluster.kill("introducer1")
        await cluster.restart("peer2")          # must rejoin through introducer2 or introducer3
        await cluster.wait_healthy(scaled(30))
        log = cluster.node("peer2").log_path.read_text()
        assert log.count("joined the network through") >= 2
        alice, bob = await users("peer1", "alice"), await users("peer2", "bob")
        try:
            await converge([alice, bob])
        finally:
            await users.close_all()
