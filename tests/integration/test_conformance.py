"""The conformance kit (client/conformance.py) scores our own node 100 % over real sockets, join included."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.conformance import PASS, SKIP, Conformance
from socp.settings import Timings
from testbed.backend import ClusterBackend, ClusterSpec
from testbed.local import LocalCluster
from tests.integration.conftest import FIRST_USER_KEY, pool_prepare
from tests.keypool import KeyPool

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.socp_cluster(peers=1)]


async def test_our_node_scores_100_percent(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    keys = [key_pool.key(FIRST_USER_KEY + i) for i in range(3)]
    report = await Conformance(cluster.url("peer1"), keys, introducer=cluster.url("introducer"), timeout=10.0,
                               heartbeat_wait=10.0, join_token=cluster.join_token).run()
    print(report.table())
    assert report.score == 100.0, report.table()
    statuses = {r.clause: r.status for r in report.results}
    assert SKIP not in statuses.values(), report.table()
    assert {"hello", "list", "dm.raw-bytes", "dm.b64-text", "dm.json-object", "dm.reverse", "replay", "stale",
            "join", "heartbeat"} <= {clause for clause, status in statuses.items() if status == PASS}
    variants = {r.clause: r.variant for r in report.results}
    assert variants["error.invalid-sig"] == "INVALID_SIG" and variants["stale"] == "ERROR STALE"


async def test_a_link_kept_busy_without_heartbeats_passes_the_heartbeat_clause(tmp_path: Path,
                                                                                key_pool: KeyPool) -> None:
    """WIRE §4.7: a link that carried another frame in an interval gets no HEARTBEAT. A node whose presence sync
    (1 s) is shorter than its heartbeat interval (30 s) never sends one to the probe; the kit takes the later
    frames for liveness and says so, but not the burst that follows the join."""
    spec = ClusterSpec(peers=0, timings=Timings(heartbeat_interval=30.0, peer_timeout=90.0,
                                                presence_sync_interval=1.0))
    async with LocalCluster(tmp_path, spec, prepare=pool_prepare(key_pool)) as cluster:
        keys = [key_pool.key(FIRST_USER_KEY + i) for i in range(3)]
        kit = Conformance(cluster.url("introducer"), keys, introducer=cluster.url("introducer"),
                          join_token=cluster.join_token, heartbeat_wait=4.0, heartbeat_interval=2.0)
        report = await kit.run_server_link()  # the introducer takes no users: the server-link clauses only
        results = {r.clause: r for r in report.results}
        assert results["join"].status == PASS, report.table()
        assert results["heartbeat"].status == PASS, report.table()
        assert results["heartbeat"].variant.startswith("no HEARTBEAT: the link carried"), report.table()
